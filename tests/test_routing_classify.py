"""The auto router's classifier: keyword tier, thresholds and the default route, truncation, config
tables. The embedder here is a deterministic bag-of-words fake, for the logic only; the real
MiniLM runner is exercised in tests/integration/test_router_embed.py and measured by bench/routing.py."""

from __future__ import annotations

import asyncio
import json
import re
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from enginehouse.config_auto_router import default_router, resolve_router
from enginehouse.config_routers import Route, Router, Rule, router_from_table
from enginehouse.errors import InvalidRequest
from enginehouse.routing.classify import (
    ABSTAIN,
    Classifier,
    all_examples,
    examples_digest,
    keyword_scores,
    keyword_winner,
    truncate_tokens,
    word_count,
)
from enginehouse.routing.minilm import prepare_cached
from enginehouse.routing.softmax_head import softmax, train_head

DIM = 512
BENCH = Path(__file__).resolve().parent.parent / "bench" / "routing_prompts.jsonl"


class BagOfWords:
    """Hashed word counts: texts sharing words are similar. Records every call."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    async def __call__(self, texts: list[str]) -> list[np.ndarray]:
        self.calls.append(list(texts))
        out = []
        for text in texts:
            v = np.zeros(DIM, dtype=np.float32)
            for word in re.findall(r"[a-z]+", text.lower()):
                v[zlib.crc32(word.encode()) % DIM] += 1.0
            out.append(v)
        return out


def toy_router(**knobs: object) -> Router:
    routes = (
        Route(
            "cats",
            "cats",
            ("cats purr and nap", "kittens chase yarn"),
            (Rule(r"\bmeow\b", 2.0),),
            ("cat-llm",),
        ),
        Route(
            "dogs",
            "dogs",
            ("dogs bark and fetch", "puppies chew shoes"),
            (Rule(r"\bwoof\b", 2.0),),
            ("dog-llm",),
        ),
        Route("misc", "the rest", ("weather and news",), (), ("small-llm",)),
    )
    values: dict[str, object] = {"threshold": 0.3, "top_k": 1, "abstain_examples": ("zzz qqq",)}
    values.update(knobs)
    return Router("pets", routes, "misc", **values)  # type: ignore[arg-type]


def classify(clf: Classifier, text: str, system: str | None = None):  # type: ignore[no-untyped-def]
    return asyncio.run(clf.classify(system, text))


# ---- keyword tier, with the default routes ------------------------------------------------------
@pytest.mark.parametrize(
    ("prompt", "route"),
    [
        ("```python\nprint('hi')\n```\nwhy does this fail?", "code"),
        ("Traceback (most recent call last):\n  ...\nKeyError: 'id'", "code"),
        ("SELECT name FROM users WHERE id = 3 is slow", "code"),
        ("how do I undo a git rebase that went wrong", "code"),
        ("write a bash script that tails a log", "code"),
        ("What is the derivative of tan(x)?", "math"),
        ("find the eigenvalues of this matrix", "math"),
        ("solve for x: 2x + 3 = 11", "math"),
        ("Write a haiku about rain on a tin roof", "writing"),
        ("Please proofread my paragraph", "writing"),
        ("make this email more formal", "writing"),
        ("summarize this: the board met and agreed on a budget", "writing"),
        # not decided by keywords: nothing matches, a weak word alone, or two routes close
        ("What is the capital of Peru?", None),
        ("Tell me about the history of the bicycle", None),
        ("please select the best one from the list", None),
        ("our team's code of conduct needs an update", None),
        ("Write a Python function that returns the derivative of a polynomial", None),
        ("Write a TypeScript interface for a blog post", None),
        ("Is the function f(x) = x^3 odd or even?", "math"),
        # error output with no code word, regex syntax, "write a function" beside a writing word
        ("  File \"app.py\", line 3, in <module>\n    run()\nNameError: name 'run' is not defined", "code"),
        ("fatal: refusing to merge unrelated histories", "code"),
        ("what does ^\\d{3}-\\d{4}$ match", "code"),
        ("Write a function that strips punctuation from a string", "code"),
        # arithmetic asked outright; a number alone is not arithmetic
        ("12 * 17 = ?", "math"),
        ("whats 15% of 240", "math"),
        ("12345", None),
        # rewrite, edit and tone cues; "proof-read" is not a proof
        ("Proof-read: their going too the park tomorow", "writing"),
        ("can you make this sound less rude: send it now", "writing"),
        ("Edit for clarity: the meeting, which was long, was long.", "writing"),
        # French, Spanish, German
        ("Écris-moi un poème sur la mer", "writing"),
        ("escribe una carta a mi abuela", "writing"),
        ("Löse die Gleichung 2x + 3 = 7", "math"),
        ("¿cuánto es el 20 por ciento de 80?", "math"),
    ],
)
def test_keyword_tier(prompt: str, route: str | None) -> None:
    decision = Classifier(default_router()).classify_keywords("", prompt)
    assert (decision.route if decision else None) == route
    if decision:
        assert decision.tier == "keyword"
        assert decision.route in decision.reason
        assert decision.candidates == default_router().route(route).candidates


def test_keyword_decides_only_when_unambiguous() -> None:
    router = toy_router(keyword_min=1.0, keyword_ratio=2.0)
    assert keyword_winner(router, {"cats": 2.0, "dogs": 0.0, "misc": 0}) == "cats"
    assert keyword_winner(router, {"cats": 2.0, "dogs": 1.0, "misc": 0}) == "cats"  # exactly 2x
    assert keyword_winner(router, {"cats": 2.0, "dogs": 1.5, "misc": 0}) is None
    assert keyword_winner(router, {"cats": 0.5, "dogs": 0.0, "misc": 0}) is None  # below keyword_min
    assert keyword_winner(router, {"cats": -1.0, "dogs": 0.0, "misc": 0}) is None


def test_system_prompt_counts_half() -> None:
    router = toy_router()
    assert keyword_scores(router, "", "meow")["cats"] == 2.0
    assert keyword_scores(router, "meow", "hello")["cats"] == 1.0
    assert keyword_scores(router, "meow", "meow")["cats"] == 2.0  # the user turn's match wins
    decided = Classifier(router).classify_keywords("you answer meow", "tell me things")
    assert decided is not None and decided.route == "cats"
    assert "system: 'meow'" in decided.reason


def test_case_rules() -> None:
    lowered, sensitive = Rule(r"\bpython\b"), Rule(r"(?-i:\bSELECT\b)")
    assert lowered.lowered and not sensitive.lowered
    assert lowered.search("PYTHON", "python")
    assert sensitive.search("SELECT x", "select x") and not sensitive.search("select x", "select x")
    with pytest.raises(InvalidRequest, match="not a valid regular expression"):
        Rule("(unclosed")


# ---- embedding tier and the default route -------------------------------------------------------
def test_embedding_tier_picks_the_closest_route() -> None:
    embed = BagOfWords()
    clf = Classifier(toy_router(), embed)
    d = classify(clf, "my cats purr and nap a lot")
    assert (d.route, d.tier) == ("cats", "embedding")
    assert d.scores["cats"] > d.scores["dogs"]
    assert d.candidates == ("cat-llm",)
    assert d.elapsed_ms > 0
    assert "closest to the cats examples" in d.reason
    d = classify(clf, "the puppies bark at shoes")
    assert (d.route, d.tier) == ("dogs", "embedding")
    assert len(embed.calls) == 3  # one batch of examples, then one request per decision


def test_below_threshold_takes_the_default_route() -> None:
    clf = Classifier(toy_router(threshold=0.3), BagOfWords())
    d = classify(clf, "quantum chromodynamics lectures")  # shares no word with any example
    assert (d.route, d.tier) == ("misc", "default")
    assert "below the threshold" in d.reason
    assert set(d.scores) == {"cats", "dogs", "misc"}
    assert d.candidates == ("small-llm",)
    low = Classifier(toy_router(threshold=-1.0), BagOfWords())
    assert classify(low, "quantum chromodynamics lectures").tier == "embedding"


def test_abstain_examples_take_the_default_route() -> None:
    clf = Classifier(toy_router(), BagOfWords())
    d = classify(clf, "zzz qqq please")
    assert (d.route, d.tier) == ("misc", "default")
    assert d.scores[ABSTAIN] > max(v for k, v in d.scores.items() if k != ABSTAIN)


def test_abstain_examples_only_for_short_turns() -> None:
    long_turn = "zzz qqq " * 5  # ten words, all from the abstain example
    assert classify(Classifier(toy_router(), BagOfWords()), long_turn).tier == "default"
    d = classify(Classifier(toy_router(abstain_max_words=6, threshold=-1.0), BagOfWords()), long_turn)
    assert d.tier == "embedding" and ABSTAIN not in d.scores
    short = classify(Classifier(toy_router(abstain_max_words=6), BagOfWords()), "zzz qqq please")
    assert short.tier == "default" and ABSTAIN in short.scores


def test_softmax_head_learns_the_routes_and_weighs_in() -> None:
    rng = np.random.default_rng(0)
    centres = np.eye(3, 8)
    rows = np.concatenate([c + 0.1 * rng.standard_normal((20, 8)) for c in centres])
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    bounds = ((0, 20), (20, 40), (40, 60))
    w, b = train_head(rows, bounds)
    assert np.array_equal(w, train_head(rows, bounds)[0])  # deterministic
    probs = softmax(centres @ w + b)
    assert probs.argmax(axis=1).tolist() == [0, 1, 2] and (probs.max(axis=1) > 0.5).all()
    embed = BagOfWords()
    with_head = Classifier(toy_router(head_weight=0.5, threshold=-1.0), embed)
    d = classify(with_head, "kittens purr")
    assert (
        d.route == "cats"
        and d.scores["cats"] > classify(Classifier(toy_router(), embed), "kittens purr").scores["cats"]
    )
    assert Classifier(toy_router()).head_probabilities(np.ones(DIM, dtype=np.float32)).tolist() == [0, 0, 0]
    # a matrix from the cache: prepare() trains the head without embedding anything
    cached = Classifier(toy_router(head_weight=0.5), example_matrix=with_head.example_matrix)
    assert not cached.ready
    asyncio.run(cached.prepare())
    assert cached.ready and cached.head_probabilities(with_head.example_matrix[0]).argmax() == 0


@pytest.mark.parametrize(
    "knobs",
    [{"head_weight": -1}, {"abstain_max_words": -1}],
)
def test_blend_knobs_are_checked(knobs: dict) -> None:
    with pytest.raises(InvalidRequest, match="router 'pets'"):
        toy_router(**knobs)


def test_too_little_text_never_embeds() -> None:
    embed = BagOfWords()
    clf = Classifier(toy_router(), embed)
    for text in ("hi", "?", "👍", "a b", "", "12"):
        d = classify(clf, text)
        assert (d.route, d.tier, d.scores) == ("misc", "default", {}), text
    assert embed.calls == []
    assert word_count("hi there", 5) == 2 and word_count("x y z", 5) == 0 and word_count("a lot of", 2) == 2


def test_keyword_tier_comes_first_and_never_embeds() -> None:
    embed = BagOfWords()
    d = classify(Classifier(toy_router(), embed), "woof woof, dogs")
    assert (d.route, d.tier) == ("dogs", "keyword")
    assert embed.calls == []


def test_without_an_embedder_only_keywords_and_default() -> None:
    clf = Classifier(toy_router())
    assert classify(clf, "meow").route == "cats"
    d = classify(clf, "tell me about kittens")
    assert (d.route, d.tier, d.reason) == ("misc", "default", "no embedding model")


def test_system_prompt_is_embedded_once_and_weighs_in() -> None:
    embed = BagOfWords()
    clf = Classifier(toy_router(system_weight=0.5), embed)
    plain = classify(clf, "tell me about the weather news")
    with_system = classify(clf, "tell me about the weather news", system="you love kittens that purr")
    assert with_system.scores["cats"] > plain.scores["cats"]
    classify(clf, "more weather news please", system="you love kittens that purr")
    assert [len(c) for c in embed.calls[1:]] == [1, 2, 1]  # the system prompt went once, then cached


def test_prepare_once_and_matrix_checks() -> None:
    embed = BagOfWords()
    clf = Classifier(toy_router(), embed, batch=2)
    asyncio.run(clf.prepare())
    asyncio.run(clf.prepare())
    assert [len(c) for c in embed.calls] == [2, 2, 2]  # 5 examples + 1 abstain, batches of 2
    matrix = clf.example_matrix
    assert matrix is not None and matrix.shape == (6, DIM)
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0)
    with pytest.raises(ValueError, match="rows"):
        Classifier(toy_router(), embed, example_matrix=matrix[:3])


def test_top_k_is_a_mean_of_the_best() -> None:
    clf = Classifier(toy_router(top_k=2), example_matrix=np.eye(6, 4, dtype=np.float32))
    scores = clf.route_scores(np.array([1.0, 0.0, 0.0, 0.0], dtype=np.float32))
    assert scores.tolist() == [0.5, 0.0, 0.0, 0.0]  # cats: mean(1, 0); the abstain row is last


def test_prepare_cached_round_trip(tmp_path: Path) -> None:
    embed = BagOfWords()
    first = Classifier(toy_router(), embed)
    assert asyncio.run(prepare_cached(first, tmp_path, "fake")) is False
    second = Classifier(toy_router(), embed)
    assert asyncio.run(prepare_cached(second, tmp_path, "fake")) is True
    assert len(embed.calls) == 1
    assert np.allclose(first.example_matrix, second.example_matrix)
    assert examples_digest(toy_router(), "fake") != examples_digest(toy_router(), "other")
    assert examples_digest(toy_router(), "fake") != examples_digest(toy_router(abstain_examples=()), "fake")


# ---- truncation ---------------------------------------------------------------------------------
def test_truncate_keeps_short_text() -> None:
    assert truncate_tokens("fix my loop", 64) == "fix my loop"


def test_truncate_keeps_head_and_tail() -> None:
    words = [f"w{i}" for i in range(200)]
    cut = truncate_tokens(" ".join(words) + " summarize this", 64)
    head, tail = cut.split(" … ")
    assert head.startswith("w0 w1 ") and tail.endswith("summarize this")
    assert len(head.split()) + len(tail.split()) + 1 <= 62
    assert len(head.split()) > len(tail.split())


def test_truncate_counts_punctuation_and_long_words() -> None:
    assert len(truncate_tokens("!" * 300, 16).replace(" … ", "")) <= 14
    long_words = " ".join(["antidisestablishmentarianism"] * 40)
    assert len(truncate_tokens(long_words, 64).split()) < 20


# ---- configuration ------------------------------------------------------------------------------
def test_router_from_table_merges_with_the_default_routes() -> None:
    base = default_router()
    table = {
        "threshold": 0.2,
        "routes": {
            "code": {"candidates": ["my-coder:7b"], "prefer": "quality"},
            "legal": {
                "description": "contracts",
                "examples": ["review this contract clause"],
                "keywords": [r"\bcontract\b"],
                "rules": [{"pattern": r"\bNDA\b", "weight": 2}],
                "candidates": ["lawyer:8b"],
            },
        },
    }
    router = router_from_table("auto", table, base)
    assert router.threshold == 0.2 and router.default_route == "general"
    assert (router.head_weight, router.abstain_max_words) == (base.head_weight, base.abstain_max_words)
    knobs = {"head_weight": 0, "abstain_max_words": 0}
    assert router_from_table("auto", {**table, **knobs}, base).head_weight == 0
    code = router.route("code")
    assert code.candidates == ("my-coder:7b",) and code.prefer == "quality"
    assert code.examples == base.route("code").examples and code.rules == base.route("code").rules
    legal = router.route("legal")
    assert [(r.pattern, r.weight) for r in legal.rules] == [(r"\bcontract\b", 1.0), (r"\bNDA\b", 2.0)]
    assert [r.name for r in router.routes] == ["code", "math", "writing", "general", "legal"]


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"routes": {"a": {"examples": ["x"]}}}, "no default route"),
        ({"default": "b", "routes": {"a": {"examples": ["x"]}}}, "is not a route"),
        ({"default": "a", "routes": {"a": {"colour": "red"}}}, "unknown key"),
        ({"default": "a", "threshold": 1, "nonsense": 1, "routes": {"a": {}}}, "unknown key"),
        ({"default": "a", "routes": {"a": {"examples": "one string"}}}, "list of strings"),
        ({"default": "a", "routes": {"a": {"rules": [{"weight": 2}]}}}, "a rule is"),
        ({"default": "a", "routes": {"a": {"prefer": "random"}}}, "prefer must be"),
        ({"default": "a", "routes": {}}, "has no routes"),
    ],
)
def test_router_from_table_errors(table: dict, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        router_from_table("mine", table)


def test_resolve_router() -> None:
    assert resolve_router("auto") == default_router()
    assert resolve_router("auto", {"auto": {"threshold": 0.5}}).threshold == 0.5
    mine = resolve_router("mine", {"mine": {"default": "a", "routes": {"a": {"examples": ["x"]}}}})
    assert mine.default_route == "a"
    with pytest.raises(InvalidRequest, match="no router named 'nope'"):
        resolve_router("nope", {"mine": {}})


# ---- the default routes and the labelled set ----------------------------------------------------
def test_default_routes_shape() -> None:
    router = default_router()
    assert [r.name for r in router.routes] == ["code", "math", "writing", "general"]
    assert router.default_route == "general"
    for route in router.routes:
        assert len(route.examples) >= 30 and route.candidates[-1] == "smollm2:135m"
    assert len(router.abstain_examples) >= 20


def test_bench_prompts_are_labelled_and_do_not_leak() -> None:
    rows = [json.loads(line) for line in BENCH.read_text().splitlines() if line.strip()]
    assert len(rows) >= 300
    labels = {r["label"] for r in rows}
    assert labels == {"code", "math", "writing", "general", "default"}
    assert sum(r["label"] == "default" for r in rows) >= 40
    assert {r["split"] for r in rows} == {"dev", "test"}
    assert len({r["id"] for r in rows}) == len(rows)
    examples = {" ".join(e.lower().split()) for _, e in all_examples(default_router())}
    assert not [r["id"] for r in rows if " ".join(r["text"].lower().split()) in examples]


@pytest.mark.parametrize("name", ["routing_prompts_varied.jsonl", "routing_prompts_fresh.jsonl"])
def test_route_labelled_sets_are_labelled_and_do_not_leak(name: str) -> None:
    rows = [json.loads(line) for line in (BENCH.parent / name).read_text().splitlines() if line.strip()]
    assert len(rows) >= 100 and len({r["id"] for r in rows}) == len(rows)
    assert {r["label"] for r in rows} == {"code", "math", "writing", "general"}
    assert {r["split"] for r in rows} <= {"dev", "test"}
    examples = {" ".join(e.lower().split()) for _, e in all_examples(default_router())}
    assert not [r["id"] for r in rows if " ".join(r["text"].lower().split()) in examples]


# ---- the CLI, on the paths that need no runner --------------------------------------------------
def test_cli_route_keyword_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from enginehouse.cli.main import cli, main
    from enginehouse.cli.route import route

    monkeypatch.setenv("ENGINEHOUSE_HOME", str(tmp_path))
    monkeypatch.setattr("sys.argv", ["enginehouse", "--help"])
    with pytest.raises(SystemExit):
        main()  # registers the commands
    assert cli.commands["route"] is route
    runner = CliRunner()
    out = runner.invoke(cli, ["route", "--json", "def add(a, b):\n    return a - b  # bug?"])
    assert out.exit_code == 0, out.output
    d = json.loads(out.output)
    assert (d["route"], d["tier"], d["chosen"], d["setup"]) == ("code", "keyword", None, {})
    out = runner.invoke(cli, ["route", "hi"])
    assert out.exit_code == 0, out.output
    assert "general  (router auto, tier default)" in out.output
    assert "too little text" in out.output
    out = runner.invoke(cli, ["route", "--router", "nope", "hello there friend"])
    assert out.exit_code == 1 and "no router named 'nope'" in out.output


def test_a_failing_embedder_fails_open_to_the_default_route() -> None:
    async def broken(texts: list[str]) -> list[np.ndarray]:
        raise ConnectionError("runner gone")

    d = classify(Classifier(toy_router(), broken), "tell me about kittens")
    assert (d.route, d.tier) == ("misc", "default")
    assert "embedding failed (runner gone)" in d.reason
    assert classify(Classifier(toy_router(), broken), "meow").route == "cats"  # keywords need no runner
    with pytest.raises(ConnectionError):
        classify(Classifier(toy_router(), broken, fail_open=False), "tell me about kittens")


def test_concurrent_first_calls_prepare_once() -> None:
    embed = BagOfWords()
    clf = Classifier(toy_router(), embed)

    async def many() -> list[str]:
        got = await asyncio.gather(*(clf.classify(None, f"cats purr and nap {i}") for i in range(5)))
        return [d.route for d in got]

    assert asyncio.run(many()) == ["cats"] * 5
    assert len(embed.calls) == 1 + 5  # one batch of examples, one call per decision
