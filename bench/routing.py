"""How well and how fast the ``auto`` router's classifier decides (a benchmark, not a test).

    .venv/bin/python -m bench.routing [--home DIR] [--sweep] [--errors dev] [--repeat 3] [--testset PATH]

Three labelled sets live here, all written for this project:

- ``routing_prompts.jsonl`` ("project", 358): code in several languages, debugging, SQL, shell; maths
  word problems, algebra, calculus, statistics; writing, editing and summaries of given text; general
  facts, advice, trivia and chit-chat; and 45 that should fall to the default route (greetings,
  one-word follow-ups, emoji, keyboard mash). ``dev``: every third prompt of each label (120).
- ``routing_prompts_varied.jsonl`` ("varied", 357, labelled by route only): requests as they really
  arrive, 3 to 110 words: terse, slangy, polite, non-native, French/Spanish/German, pasted error output
  without a code word, pasted figures in writing and general requests, questions about writing,
  multi-part requests. ``dev``: every other prompt of each label (180).
- ``routing_prompts_fresh.jsonl`` ("fresh", 120, all ``test``): written in the same spirit after the
  rules and examples had been tuned on the dev splits, as a holdout.

``--testset PATH`` (repeatable) scores any other labelled JSONL file too: one object per line with
``label`` (code, math, writing, general, or default) and ``text`` (or ``prompt``), optionally
``system``; it is reported whole, as one set named by the file's stem. With ``--repeat 0`` nothing is
timed, which is the quick way to score a set.

No leakage: the route examples the embedding tier compares against live in
``enginehouse/config_auto_examples.py`` and were written separately; this script refuses to run if
any labelled prompt equals an example (case and spacing ignored). The router's knobs and the rules
were tuned by looking at the *dev* splits only (``--errors dev``, ``--sweep``); the figures to quote
are the *test* splits'.

A prompt's predicted label is its route, or ``default`` when the classifier abstained (tier
``default``). In a set with ``default`` prompts the 5-class macro-F1 asks the router both to pick the
right route and to abstain on them; in a set labelled by route only, an abstention counts as
``general``, the route it is served by, and the macro-F1 is over the four routes. ``served`` F1 scores
the route a request really ends on (the default route is ``general``; the default prompts' expected
route is ``general`` too).

The embedding runner is the bundled all-MiniLM-L6-v2 converted to GGUF (into ``--home``, once) and
served by a private llama-server with the router's pinned settings (1 thread, 1 slot); the classifier
reaches it through ``RunnerEmbedder`` (aiohttp, one pooled connection), exactly as ``enginehouse
route`` does. Decision times are wall-clock inside ``Classifier.classify`` with the runner warm,
``--repeat`` passes over the sets kept here; the 64-token row classifies every prompt padded past the
cap.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from enginehouse.config import Config
from enginehouse.config_auto_router import default_router
from enginehouse.engines.llama_install import require_llama_server
from enginehouse.routing.classify import Classifier, Router, all_examples, truncate_tokens
from enginehouse.routing.minilm import EMBED_MODEL, local_embedding_runner

HERE = Path(__file__).resolve().parent
PROMPTS = HERE / "routing_prompts.jsonl"
VARIED = HERE / "routing_prompts_varied.jsonl"
FRESH = HERE / "routing_prompts_fresh.jsonl"
SETS = {"project": PROMPTS, "varied": VARIED, "fresh": FRESH}  # the labelled sets kept here, by name
RESULTS = HERE / "results" / "routing.json"
LABELS = ("code", "math", "writing", "general", "default")
ROUTES = ("code", "math", "writing", "general")


def load_prompts(path: Path = PROMPTS, *, split: str | None = None) -> list[dict[str, Any]]:
    """A labelled JSONL file: ``label`` and ``text`` (or ``prompt``), optional ``system``, ``id`` and
    ``split``. ``split`` fills in a missing split (an outside test set is all ``test``)."""
    rows = []
    for n, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        r = json.loads(line)
        r.setdefault("text", r.get("prompt"))
        r.setdefault("id", f"{path.stem}-{n}")
        if split is not None:
            r.setdefault("split", split)
        assert r["label"] in LABELS and r["split"] in ("dev", "test") and isinstance(r["text"], str), r
        rows.append(r)
    return rows


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def check_leakage(router: Router, rows: list[dict[str, Any]], *, fatal: bool = True) -> None:
    """Labelled prompts must not equal route examples: the sets kept here stop the run; an outside
    ``--testset`` is still scored, with a warning naming them (its score is then flattered)."""
    examples = {_norm(e) for _, e in all_examples(router)}
    leaked = [r["id"] for r in rows if _norm(r["text"]) in examples]
    if leaked and fatal:
        sys.exit(f"labelled prompts equal route examples: {leaked}")
    if leaked:
        print(f"warning: these test-set prompts equal route examples: {leaked}", file=sys.stderr)


class MemoEmbed:
    """Wraps the runner's embedder; remembers vectors so ``--sweep`` replays without the runner."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.memo, self.replay = inner, {}, False

    async def __call__(self, texts: list[str]) -> list[np.ndarray]:
        if self.replay:
            return [self.memo[t] for t in texts]
        vecs = await self.inner(texts)
        self.memo.update(zip(texts, vecs, strict=True))
        return vecs


def predicted(decision: Any) -> str:
    return "default" if decision.tier == "default" else decision.route


def f1_table(pairs: list[tuple[str, str]], labels: tuple[str, ...]) -> dict[str, Any]:
    per: dict[str, dict[str, float]] = {}
    for lab in labels:
        tp = sum(1 for t, p in pairs if t == lab and p == lab)
        fp = sum(1 for t, p in pairs if t != lab and p == lab)
        fn = sum(1 for t, p in pairs if t == lab and p != lab)
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per[lab] = {"precision": round(prec, 4), "recall": round(rec, 4), "f1": round(f1, 4), "n": tp + fn}
    seen = {t for t, _ in pairs} | {p for _, p in pairs}  # as scikit-learn: labels in truth or predictions
    macro = statistics.fmean(v["f1"] for lab, v in per.items() if lab in seen)
    accuracy = sum(1 for t, p in pairs if t == p) / len(pairs)
    return {"macro_f1": round(macro, 4), "accuracy": round(accuracy, 4), "per_class": per}


def evaluate(rows: list[dict[str, Any]], preds: list[str]) -> dict[str, Any]:
    """Scores of one labelled set or split. With ``default`` prompts in it, the 5-label scores ask
    the router to abstain on them; without (an outside set that labels by route), an abstention
    counts as ``general``, the route it is served by, and the labels are the four routes."""
    five = any(r["label"] == "default" for r in rows)
    labels = LABELS if five else ROUTES
    pairs = [
        (r["label"], p if five or p != "default" else "general") for r, p in zip(rows, preds, strict=True)
    ]
    strict = f1_table(pairs, labels)
    served = f1_table(
        [("general" if t == "default" else t, p if p != "default" else "general") for t, p in pairs], ROUTES
    )
    confusion = {t: {p: sum(1 for a, b in pairs if a == t and b == p) for p in labels} for t in labels}
    n_cw = sum(confusion["code"].values())
    n_wc = sum(confusion["writing"].values())
    code_writing = (confusion["code"]["writing"] + confusion["writing"]["code"]) / max(1, n_cw + n_wc)
    abstained = {
        t: sum(1 for r, p in zip(rows, preds, strict=True) if r["label"] == t and p == "default")
        for t in labels
    }
    return {
        "n": len(pairs),
        "labels": list(labels),
        "macro_f1": strict["macro_f1"],
        "accuracy": strict["accuracy"],
        "per_class": strict["per_class"],
        "served_macro_f1": served["macro_f1"],
        "confusion": confusion,
        "code_writing_confusion": round(code_writing, 4),
        "code_to_writing": confusion["code"]["writing"],
        "writing_to_code": confusion["writing"]["code"],
        "abstentions": abstained,
        "abstention_rate_non_default": round(
            sum(v for k, v in abstained.items() if k != "default")
            / max(1, sum(1 for t, _ in pairs if t != "default")),
            4,
        ),
    }


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


async def classify_all(clf: Classifier, rows: list[dict[str, Any]]) -> list[Any]:
    return [await clf.classify(r.get("system"), r["text"]) for r in rows]


async def time_keyword_tier(clf: Classifier, rows: list[dict[str, Any]], repeat: int) -> list[float]:
    """Decision time of the prompts the keyword tier decides, without touching the runner."""
    out = []
    for _ in range(repeat):
        for r in rows:
            t0 = time.perf_counter_ns()
            d = clf.classify_keywords(r.get("system") or "", r["text"])
            if d is not None:
                out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


async def count_tokens(base_url: str, texts: list[str], headers: dict[str, str]) -> list[float]:
    """BERT tokens of each text as the runner sees them, [CLS] and [SEP] included (/tokenize, with
    the runner's key in ``headers``)."""
    async with aiohttp.ClientSession(headers=headers) as session:
        out = []
        for text in texts:
            async with session.post(f"{base_url}/tokenize", json={"content": text}) as resp:
                out.append(float(len((await resp.json())["tokens"]) + 2))
        return out


def pad_past_cap(text: str) -> str:
    """A prompt long enough to be cut at the 64-token cap (the worst case the target speaks of)."""
    filler = " Please be thorough and explain each step of your reasoning in plain words."
    while len(text.split()) < 120:
        text += filler
    return text


async def sweep(
    clf: Classifier, sets: dict[str, list[dict[str, Any]]], memo: MemoEmbed
) -> list[dict[str, Any]]:
    """Replay the dev splits over a grid of knobs (no runner calls: vectors are memoised); the score
    is the mean of each set's dev macro-F1."""
    memo.replay = True
    devs = {name: [r for r in rows if r["split"] == "dev"] for name, rows in sets.items()}
    devs = {name: rows for name, rows in devs.items() if rows}
    out = []
    grid = itertools.product((0.10, 0.15, 0.20), (1, 3, 5), (0.0, 0.25), (0.0, 0.1, 0.2, 0.3))
    for threshold, top_k, sw, head in grid:
        router = replace(clf.router, threshold=threshold, top_k=top_k, system_weight=sw, head_weight=head)
        c = Classifier(router, memo, example_matrix=clf.example_matrix, fail_open=False)
        per = {}
        for name, dev in devs.items():
            per[name] = evaluate(dev, [predicted(d) for d in await classify_all(c, dev)])["macro_f1"]
        out.append(
            {"threshold": threshold, "top_k": top_k, "system_weight": sw, "head_weight": head}
            | {"dev_macro_f1": round(statistics.fmean(per.values()), 4)}
            | {f"{name}_dev": f for name, f in per.items()}
        )
    memo.replay = False
    return sorted(out, key=lambda x: -x["dev_macro_f1"])


def print_scores(title: str, m: dict[str, Any]) -> None:
    labels = m["labels"]
    what = "5 labels incl. default" if len(labels) == 5 else "4 routes, an abstention counts as general"
    print(
        f"\n== {title} ({m['n']} prompts): macro-F1 {m['macro_f1']:.3f} ({what}), "
        f"served-route macro-F1 {m['served_macro_f1']:.3f}, accuracy {m['accuracy']:.3f}"
    )
    print(
        "   per-label F1 "
        + ", ".join(f"{k} {m['per_class'][k]['f1']:.3f}" for k in labels)
        + f"; code/writing confusion {m['code_writing_confusion']:.1%}; abstentions {m['abstentions']}"
    )
    print("   true \\ predicted " + "".join(f"{p:>9}" for p in labels) + "       F1")
    for t in labels:
        row = "".join(f"{m['confusion'][t][p]:>9}" for p in labels)
        print(f"   {t:<17}{row}    {m['per_class'][t]['f1']:.3f}")


def print_report(res: dict[str, Any]) -> None:
    for name, splits in res["sets"].items():
        for split, m in splits.items():
            print_scores(f"{name} {split}", m)
    t = res["timing_ms"]
    if t:
        print("\n== decision time (ms), runner warm")
        for name, v in t.items():
            print(f"   {name:<28} n={v['n']:<5} p50 {v['p50']:.3f}  p95 {v['p95']:.3f}  max {v['max']:.3f}")
        print(f"   tiers on the labelled sets: {res['tiers']}; tokens sent: {res['tokens_sent']}")


def timing(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": round(pct(values, 50), 3),
        "p95": round(pct(values, 95), 3),
        "max": round(max(values), 3) if values else float("nan"),
    }


def labelled_sets(extra: list[Path]) -> dict[str, list[dict[str, Any]]]:
    """The sets kept here, then each ``--testset`` file (named by its stem; all of it ``test`` unless
    its rows say a split)."""
    sets = {name: load_prompts(path) for name, path in SETS.items()}
    for path in extra:
        if path.resolve() not in {p.resolve() for p in SETS.values()}:
            sets[path.stem if path.stem not in sets else str(path)] = load_prompts(path, split="test")
    return sets


async def run(args: argparse.Namespace, home: Path) -> dict[str, Any]:
    user = Config.from_env()
    config = Config.from_env(
        {}, home=home, llama_server=require_llama_server(user).path, engines_dir=user.engines
    )
    router = default_router()
    sets = labelled_sets(args.testset)
    rows = [r for name in sets for r in sets[name]]
    own = [r for name in SETS for r in sets[name]]  # timed, tokenised and swept: the sets kept here
    check_leakage(router, own)
    check_leakage(router, [r for name in sets if name not in SETS for r in sets[name]], fatal=False)
    print(
        f"{len(rows)} labelled prompts ({', '.join(f'{k} {len(v)}' for k, v in sets.items())}); "
        f"{sum(len(r.examples) for r in router.routes)} route examples, "
        f"{len(router.abstain_examples)} abstain examples",
        file=sys.stderr,
    )
    async with local_embedding_runner(
        config, model=args.model, threads=args.threads, log=lambda s: None
    ) as embedder:
        memo = MemoEmbed(embedder)
        clf = Classifier(router, memo, fail_open=False)
        started = time.perf_counter()
        await clf.prepare()
        prepare_s = time.perf_counter() - started
        decisions = await classify_all(clf, rows)
        timing_ms: dict[str, dict[str, float]] = {}
        tokens_sent: dict[str, float] = {}
        if args.repeat > 0:
            emb_ms, cap_ms = [], []
            for _ in range(args.repeat):
                for r in own:
                    d = await clf.classify(r.get("system"), r["text"])
                    if d.tier == "embedding" or (d.tier == "default" and d.scores):
                        emb_ms.append(d.elapsed_ms)
            for r in own:
                d = await clf.classify(None, pad_past_cap(r["text"]))
                if d.scores:
                    cap_ms.append(d.elapsed_ms)
            kw_ms = await time_keyword_tier(clf, own, args.repeat)
            base = embedder.url.removesuffix("/v1/embeddings")
            tokens = await count_tokens(
                base, [truncate_tokens(r["text"], router.max_tokens) for r in own], embedder.headers
            )
            cap_tokens = await count_tokens(
                base,
                [truncate_tokens(pad_past_cap(r["text"]), router.max_tokens) for r in own],
                embedder.headers,
            )
            timing_ms = {
                "keyword tier": timing(kw_ms),
                "embedding tier": timing(emb_ms),
                "embedding tier, 64-token cap": timing(cap_ms),
                "all decisions (first pass)": timing([d.elapsed_ms for d in decisions[: len(own)]]),
            }
            tokens_sent = {
                "labelled p50": pct(tokens, 50),
                "labelled max": max(tokens),
                "64-token cap p50": pct(cap_tokens, 50),
                "64-token cap max": max(cap_tokens),
            }
        swept = await sweep(clf, {name: sets[name] for name in SETS}, memo) if args.sweep else []
    preds = dict(zip((id(r) for r in rows), (predicted(d) for d in decisions), strict=True))
    by_row = dict(zip((id(r) for r in rows), decisions, strict=True))
    scores: dict[str, dict[str, Any]] = {}
    for name, set_rows in sets.items():
        splits = ("test", "dev", "all") if len({r["split"] for r in set_rows}) > 1 else ("all",)
        scores[name] = {}
        for split in splits:
            part = [r for r in set_rows if split == "all" or r["split"] == split]
            if part:
                scores[name][split] = evaluate(part, [preds[id(r)] for r in part])
    errors = [
        {
            "set": name,
            "id": r["id"],
            "split": r["split"],
            "label": r["label"],
            "predicted": preds[id(r)],
            **by_row[id(r)].to_dict(),
            "text": r["text"][:120],
        }
        for name, set_rows in sets.items()
        for r in set_rows
        if preds[id(r)] != r["label"]
        and not (
            r["label"] == "general"
            and preds[id(r)] == "default"
            and name not in SETS
            and scores[name]["all"]["labels"] == list(ROUTES)
        )
    ]
    return {
        "router": {
            k: getattr(router, k, None)  # None: a router from before the knob
            for k in (
                "threshold",
                "keyword_min",
                "keyword_ratio",
                "top_k",
                "system_weight",
                "max_tokens",
                "min_words",
                "abstain_max_words",
                "head_weight",
            )
        },
        "examples": {r.name: len(r.examples) for r in router.routes}
        | {"(abstain)": len(router.abstain_examples)},
        "prompts": {
            name: {
                f"{k[0]}/{k[1]}": v
                for k, v in sorted(Counter((r["label"], r["split"]) for r in set_rows).items())
            }
            for name, set_rows in sets.items()
        },
        "sets": scores,
        "tiers": dict(Counter(d.tier for d in decisions[: len(own)])),
        "timing_ms": timing_ms,
        "prepare_s": round(prepare_s, 2),
        "tokens_sent": tokens_sent,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_1m": round(os.getloadavg()[0], 2),
            "runner_threads": args.threads,
            "embed_model": args.model,
        },
        "sweep_dev_top10": swept[:10],
        "errors_dev": [e for e in errors if e["split"] == "dev" and e["set"] in SETS],
        "errors_test_count": {
            name: sum(1 for e in errors if e["set"] == name and e["split"] == "test") for name in sets
        },
        "errors_testsets": [e for e in errors if e["set"] not in SETS],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--home", type=Path, help="ENGINEHOUSE_HOME for the converted model (default: a temp dir)"
    )
    ap.add_argument("--repeat", type=int, default=3, help="timed passes over the sets (0: no timing)")
    ap.add_argument("--threads", type=int, default=1, help="embedding runner threads")
    ap.add_argument("--model", default=EMBED_MODEL, help="embedding model (the bundled MiniLM: q8_0 or f16)")
    ap.add_argument("--sweep", action="store_true", help="grid over threshold/top_k/system_weight on dev")
    ap.add_argument(
        "--errors", choices=("none", "dev"), default="none", help="print misclassified dev prompts"
    )
    ap.add_argument(
        "--testset",
        type=Path,
        action="append",
        default=[],
        metavar="PATH",
        help="also score this labelled JSONL file (label + text per line; repeatable)",
    )
    ap.add_argument("--no-write", action="store_true", help="do not write bench/results/routing.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="eh-routing-") as tmp:
        res = asyncio.run(run(args, args.home or Path(tmp)))
    print_report(res)
    if args.sweep:
        print("\n== dev sweep (best first)")
        for s in res["sweep_dev_top10"]:
            print(f"   {s}")
    if args.errors == "dev":
        print("\n== dev errors")
        for e in res["errors_dev"]:
            print(f"   {e['id']:<16} -> {e['predicted']:<8} [{e['tier']}] {e['scores']} {e['text']!r}")
    if not args.no_write:
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n")
        print(f"\nwrote {RESULTS.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
