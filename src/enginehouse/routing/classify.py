"""The ``auto`` router's classifier: which route (code, math, writing, general, ...) a request belongs to.

Two tiers, cheapest first, on the last user turn plus the system prompt::

    last user turn ──▶ keyword tier ──unambiguous──▶ Decision(tier="keyword")
    (+ system)            │ no rule, or two routes close
                          ▼
                   too little text? ──yes──▶ Decision(tier="default", route=router.default_route)
                          │ no
                          ▼
                   embedding tier: cosine to each route's examples (top-k mean)
                          │ best < threshold ──▶ Decision(tier="default")
                          ▼
                   Decision(tier="embedding", route=best)

- Keyword tier: per route, regexes with weights (negative ones allowed). A route's score is the sum of
  the weights of its rules that match the user turn, plus half of that for matches in the system prompt.
  It decides only when the best score is at least ``keyword_min`` and at least ``keyword_ratio`` times
  the runner-up's, so "write a Python function for the derivative" (code and math) goes on to the
  embedding tier instead of being decided by whichever word came first.
- Embedding tier: an injected ``embed(texts) -> vectors`` (the gateway passes one bound to its own
  embedding runner). Every route's examples are embedded once (:meth:`Classifier.prepare`) into one
  L2-normalised matrix; a decision is one embedding request for the (truncated) user turn, one
  matrix-vector product and a top-k mean per route. A system prompt is embedded in the same request
  the first time it is seen (then cached) and weighs ``system_weight`` in the scores.
- The user turn is cut to about ``max_tokens`` word pieces before embedding (head and tail: the
  instruction is usually at the start or the end of a long turn), estimated without a tokenizer call.

Everything here but :meth:`Classifier.classify` and :meth:`Classifier.prepare` is pure and
synchronous; the unit tests drive it with a bag-of-words fake embedder.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from enginehouse.config_routers import Router
from enginehouse.routing.softmax_head import softmax, train_head

Embed = Callable[[list[str]], Awaitable[Sequence[Any]]]
TIERS = ("keyword", "embedding", "default")
ABSTAIN = "(abstain)"  # the key of the abstain examples' score in Decision.scores

_PIECE = re.compile(r"\w+|[^\w\s]")
KEYWORD_SCAN = (4000, 1000)  # the keyword tier reads this many characters from the head and the tail
_WORD = re.compile(r"[^\W\d_]{2,}|\d+")  # words of two letters or more, and numbers


@dataclass(frozen=True, slots=True)
class Decision:
    """What the classifier decided and why. ``scores`` are the deciding tier's (keyword weights, or
    cosine similarities for the embedding and default tiers; empty when nothing was embedded)."""

    router: str
    route: str
    tier: str
    scores: dict[str, float]
    keyword_scores: dict[str, float]
    elapsed_ms: float
    reason: str
    candidates: tuple[str, ...]
    prefer: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "router": self.router,
            "route": self.route,
            "tier": self.tier,
            "scores": {k: round(v, 4) for k, v in self.scores.items()},
            "keyword_scores": {k: round(v, 3) for k, v in self.keyword_scores.items() if v},
            "candidates": list(self.candidates),
            "prefer": self.prefer,
            "reason": self.reason,
            "elapsed_ms": round(self.elapsed_ms, 3),
        }


# ---- pure helpers -------------------------------------------------------------------------------
def _scan(text: str) -> str:
    head, tail = KEYWORD_SCAN
    return text if len(text) <= head + tail else text[:head] + "\n" + text[-tail:]


def keyword_scores(
    router: Router, system: str, text: str, hits: dict[str, list[str]] | None = None
) -> dict[str, float]:
    """Per route, the summed weights of the rules matching ``text`` (+ half for ``system``); only
    the head and tail of a very long text are read (``KEYWORD_SCAN``). ``hits``, when given, collects
    what matched, per route (system prompt matches marked ``system:``)."""
    text, system = _scan(text), _scan(system)
    low_text, low_system = text.lower(), system.lower()
    scores: dict[str, float] = {}
    for route in router.routes:
        total = 0.0
        for rule in route.rules:
            if m := rule.search(text, low_text):
                weight, where = rule.weight, ""
            elif system and (m := rule.search(system, low_system)):
                weight, where = rule.weight * 0.5, "system: "
            else:
                continue
            total += weight
            if hits is not None:
                hits.setdefault(route.name, []).append(f"{where}{m.group(0)[:30]!r} {weight:+g}")
        scores[route.name] = total
    return scores


def keyword_winner(router: Router, scores: Mapping[str, float]) -> str | None:
    """The route the keyword tier picks, or None when no route is clearly ahead."""
    best, top, second = None, 0.0, 0.0
    for name, s in scores.items():
        if s > top:
            best, top, second = name, s, top
        elif s > second:
            second = s
    if best is None or top < router.keyword_min or top < router.keyword_ratio * second:
        return None
    return best


def truncate_tokens(text: str, max_tokens: int) -> str:
    """``text`` cut to about ``max_tokens`` BERT word pieces: the head (3/4) and the tail (1/4).

    A piece is a run of word characters or one punctuation mark; a long word counts one piece per
    6 characters (WordPiece splits rare words). Two tokens are left for [CLS] and [SEP], and a
    sixteenth of the budget for what the estimate misses (measured on the labelled set with the
    runner's /tokenize: at most 63 BERT tokens for ``max_tokens=64``).
    """
    budget = max_tokens - 2 - max_tokens // 16
    if len(text) <= budget:  # every piece has at least one character
        return text
    spans = [(m.start(), m.end()) for m in _PIECE.finditer(text)]
    costs = [1 + (e - s - 1) // 6 for s, e in spans]
    if sum(costs) <= budget:
        return text
    head_budget = budget * 3 // 4
    used, head_end = 0, 0
    for (_, e), c in zip(spans, costs, strict=True):
        if used + c > head_budget:
            break
        used, head_end = used + c, e
    tail_budget, tail_start = budget - used - 1, len(text)  # one piece for the ellipsis
    for (s, e), c in zip(reversed(spans), reversed(costs), strict=True):
        if c > tail_budget or e <= head_end:
            break
        tail_budget, tail_start = tail_budget - c, s
    return text[:head_end] + " … " + text[tail_start:] if tail_start < len(text) else text[:head_end]


def word_count(text: str, limit: int) -> int:
    """Words of two letters or more, and numbers, counted up to ``limit``."""
    n = 0
    for _ in _WORD.finditer(text):
        n += 1
        if n >= limit:
            break
    return n


def _unit_rows(vectors: Sequence[Any]) -> np.ndarray:
    m = np.asarray(vectors, dtype=np.float32)
    if m.ndim != 2 or m.shape[0] == 0:
        raise ValueError("the embedder returned no vectors")
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return m / norms


def examples_digest(router: Router, model: str) -> str:
    """Names the example matrix: the embedding model and every route's examples, in order."""
    h = hashlib.sha256(model.encode())
    for route, example in all_examples(router):
        h.update(b"\0" + route.encode() + b"\0" + example.encode())
    return h.hexdigest()


# ---- the classifier -----------------------------------------------------------------------------
class Classifier:
    """Classifies requests for one router. ``embed`` may be None: then only the keyword tier and the
    default route are used (the reason says so).

    ``prepare()`` embeds the routes' examples once (or takes ``example_matrix`` computed before, e.g.
    loaded from a cache named by :func:`examples_digest`); ``classify()`` prepares on first use, and
    concurrent first calls share one preparation.

    ``fail_open`` (the default): when ``embed`` raises, the decision is the default route with the
    error in its reason, so a sick embedding runner slows routing down but never fails a request.
    """

    def __init__(
        self,
        router: Router,
        embed: Embed | None = None,
        *,
        example_matrix: np.ndarray | None = None,
        batch: int = 32,
        system_cache: int = 64,
        fail_open: bool = True,
    ) -> None:
        self.router = router
        self.embed = embed
        self.batch = batch
        self.fail_open = fail_open
        self._prepare_lock = asyncio.Lock()
        self._names = tuple(r.name for r in router.routes)
        self._by_name = {r.name: r for r in router.routes}
        bounds, start = [], 0
        for examples in (*(r.examples for r in router.routes), router.abstain_examples):
            bounds.append((start, start + len(examples)))
            start += len(examples)
        if not router.abstain_examples:
            bounds.pop()
        self._bounds = tuple(bounds)
        self._n_routes = len(router.routes)
        self._matrix: np.ndarray | None = None
        self._head: tuple[np.ndarray, np.ndarray] | None = None
        if example_matrix is not None:
            self._set_matrix(example_matrix)
        self._system_vecs: OrderedDict[str, np.ndarray] = OrderedDict()
        self._system_cache = system_cache

    @property
    def example_matrix(self) -> np.ndarray | None:
        return self._matrix

    def set_example_matrix(self, matrix: np.ndarray) -> None:
        """Use ``matrix`` (one row per example, in :func:`all_examples` order) instead of embedding."""
        self._set_matrix(matrix)

    def _set_matrix(self, matrix: np.ndarray) -> None:
        expected = self._bounds[-1][1] if self._bounds else 0
        if matrix.shape[0] != expected:
            raise ValueError(
                f"example matrix has {matrix.shape[0]} rows, the routes have {expected} examples"
            )
        self._matrix = _unit_rows(matrix) if expected else matrix
        self._head = None  # trained for this matrix by prepare(), off the event loop

    @property
    def ready(self) -> bool:
        """Whether the embedding tier has what it needs: the example matrix, and the softmax head
        when the router weighs one in."""
        return self._matrix is not None and (self._head is not None or not self._wants_head())

    def _wants_head(self) -> bool:
        bounds = self._bounds[: self._n_routes]
        return bool(self.router.head_weight) and all(hi > lo for lo, hi in bounds)

    async def prepare(self) -> None:
        """Embed every route's examples (in batches of ``batch``), once; then train the softmax head
        (``head_weight``) in a worker thread, so the event loop goes on meanwhile."""
        async with self._prepare_lock:
            if self._matrix is None and self.embed is not None:
                texts = [e for _, e in all_examples(self.router)]
                rows: list[Any] = []
                for i in range(0, len(texts), self.batch):
                    rows.extend(await self.embed(texts[i : i + self.batch]))
                self._set_matrix(np.asarray(rows, dtype=np.float32))
            if self._matrix is not None and self._head is None and self._wants_head():
                matrix, bounds = self._matrix, self._bounds[: self._n_routes]
                head = await asyncio.to_thread(train_head, matrix, bounds)
                if self._matrix is matrix:  # not replaced meanwhile
                    self._head = head

    def route_scores(self, vec: np.ndarray) -> np.ndarray:
        """Per route (then the abstain examples, if any), the mean of the ``top_k`` best cosine
        similarities of ``vec`` to its examples."""
        assert self._matrix is not None
        sims = self._matrix @ vec
        out = np.full(len(self._bounds), -1.0, dtype=np.float32)
        k = self.router.top_k
        for i, (lo, hi) in enumerate(self._bounds):
            if hi == lo:
                continue
            part = sims[lo:hi]
            if k == 1 or hi - lo <= k:
                out[i] = part.max() if k == 1 else part.mean()
            else:
                out[i] = np.partition(part, hi - lo - k)[hi - lo - k :].mean()
        return out

    def head_probabilities(self, vec: np.ndarray) -> np.ndarray:
        """Per route, the softmax head's probability for ``vec`` (zeros without a head)."""
        if self._head is None:
            return np.zeros(self._n_routes, dtype=np.float32)
        w, b = self._head
        return softmax(vec @ w + b)

    def _decision(
        self, route: str, tier: str, scores: dict[str, float], kw: dict[str, float], t0: int, reason: str
    ) -> Decision:
        r = self._by_name[route]
        elapsed = (time.perf_counter_ns() - t0) / 1e6
        return Decision(self.router.name, route, tier, scores, kw, elapsed, reason, r.candidates, r.prefer)

    def classify_keywords(self, system: str, text: str) -> Decision | None:
        """The keyword tier alone: a Decision when it is unambiguous, else None."""
        return self._keyword_tier(system, text, time.perf_counter_ns())[0]

    def _keyword_tier(self, system: str, text: str, t0: int) -> tuple[Decision | None, dict[str, float]]:
        hits: dict[str, list[str]] = {}
        kw = keyword_scores(self.router, system, text, hits)
        winner = keyword_winner(self.router, kw)
        if winner is None:
            return None, kw
        why = f"keyword rules for {winner} matched: {', '.join(hits.get(winner, [])[:4])}"
        return self._decision(winner, "keyword", kw, kw, t0, why), kw

    async def classify(self, system: str | None, last_user_turn: str) -> Decision:
        """Decide the route of a request from its system prompt and last user turn (see the module
        docstring). With ``fail_open`` False, raises what ``embed`` raises."""
        t0 = time.perf_counter_ns()
        router, system, text = self.router, system or "", last_user_turn or ""
        decided, kw = self._keyword_tier(system, text, t0)
        if decided is not None:
            return decided
        if word_count(text, router.min_words) < router.min_words:
            why = f"too little text to classify (fewer than {router.min_words} words)"
            return self._decision(router.default_route, "default", {}, kw, t0, why)
        if self.embed is None:
            return self._decision(router.default_route, "default", {}, kw, t0, "no embedding model")
        try:
            if not self.ready:
                await self.prepare()
            all_scores, probs = await self._embedding_scores(system, truncate_tokens(text, router.max_tokens))
        except Exception as exc:
            if not self.fail_open:
                raise
            why = f"embedding failed ({str(exc)[:120] or 'no answer'})"
            return self._decision(router.default_route, "default", {}, kw, t0, why)
        sims, abstain = all_scores[: self._n_routes], all_scores[self._n_routes :]
        blended = sims + router.head_weight * probs  # the route: similarity plus the head's share
        scores = dict(zip(self._names, blended.tolist(), strict=True))
        best = int(blended.argmax())
        name, top, nearest = self._names[best], float(blended[best]), float(sims.max())
        # whether anything was asked at all: the plain similarities
        short = not router.abstain_max_words or word_count(text, router.abstain_max_words + 1) <= (
            router.abstain_max_words
        )
        if len(abstain) and short and abstain[0] > nearest:
            scores[ABSTAIN] = float(abstain[0])
            why = f"closest to the examples with nothing to classify ({abstain[0]:.3f} > {nearest:.3f})"
            return self._decision(router.default_route, "default", scores, kw, t0, why)
        if nearest < router.threshold:
            why = f"best embedding similarity {nearest:.3f} is below the threshold {router.threshold:.2f}"
            return self._decision(router.default_route, "default", scores, kw, t0, why)
        ranked = sorted(blended.tolist(), reverse=True)
        margin = ranked[0] - ranked[1] if len(ranked) > 1 else ranked[0]
        why = f"closest to the {name} examples: {top:.3f}, {margin:.3f} ahead of the next route"
        return self._decision(name, "embedding", scores, kw, t0, why)

    async def _embedding_scores(self, system: str, text: str) -> tuple[np.ndarray, np.ndarray]:
        """Similarities per route (then the abstain examples') and the head's probabilities, the
        system prompt's weighing ``system_weight`` in both."""
        sys_vec = self._system_vecs.get(system) if system else None
        texts = [text] if not system or sys_vec is not None else [text, system]
        vecs = _unit_rows(await self.embed(texts))  # type: ignore[misc]
        scores, probs = self.route_scores(vecs[0]), self.head_probabilities(vecs[0])
        if not system:
            return scores, probs
        if sys_vec is None:
            sys_vec = vecs[1]
            self._system_vecs[system] = sys_vec
            if len(self._system_vecs) > self._system_cache:
                self._system_vecs.popitem(last=False)
        else:
            self._system_vecs.move_to_end(system)
        w = self.router.system_weight
        return (
            (1 - w) * scores + w * self.route_scores(sys_vec),
            (1 - w) * probs + w * self.head_probabilities(sys_vec),
        )


def all_examples(router: Router) -> Iterable[tuple[str, str]]:
    """(route, example) pairs in matrix order, the abstain examples last (route ``ABSTAIN``)."""
    for r in router.routes:
        for e in r.examples:
            yield r.name, e
    for e in router.abstain_examples:
        yield ABSTAIN, e
