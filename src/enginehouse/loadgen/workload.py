"""What is sent: synthetic prompts of a given token length, or real prompts from a JSONL file.

Synthetic prompts are random common words after a short instruction, distinct per request so no
server can answer from its prompt cache. Their length is token-exact when some target tokenizes
(llama-server and vLLM serve ``POST /tokenize``): the word count is corrected until the server counts
``input_len`` tokens. Otherwise a word is taken for a token, and the report says it is approximate.
Lengths count the user message only; the chat template adds its own few tokens, which the servers'
reported prompt token counts include.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from enginehouse.loadgen.targets import Target

INSTRUCTION = "Write a long story that uses these words:"
# Common words, each about one token in BPE vocabularies, so a word count lands near a token count.
_WORD_TEXT = (
    "time year people way day man thing woman life child world school state family student group country "
    "problem hand part place case week company system program question work government number night point "
    "home water room mother area money story fact month lot right study book eye job word business issue "
    "side kind head house service friend father power hour game line end member law car city name team "
    "minute idea kid body back parent face others level office door health person art war history party "
    "result change morning reason research girl guy moment air teacher force education river light sea "
    "lamp tower ship storm rock bird wind stone bridge garden forest road window letter bottle island"
)
WORDS = tuple(_WORD_TEXT.split())


@dataclass(frozen=True)
class WorkItem:
    messages: list[dict[str, Any]]
    max_tokens: int
    input_tokens: int | None = None  # the user content's length in tokens, when counted by a server


@dataclass
class Workload:
    items: list[WorkItem]
    description: str
    exact: bool = False  # synthetic lengths counted by a server's tokenizer
    tokenizer: str | None = None  # the label of the target that counted them
    notes: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "description": self.description,
            "prompts": len(self.items),
            "token_exact": self.exact,
            "tokenizer": self.tokenizer,
            "notes": self.notes,
        }


Tokenize = Callable[[str], Awaitable[int | None]]


def load_prompts(path: Path, default_max_tokens: int) -> Workload:
    """One JSON object a line: {"prompt": str} or {"messages": [...]}, optional "max_tokens"."""
    items: list[WorkItem] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}:{number}: expected an object")
        if isinstance(data.get("messages"), list) and data["messages"]:
            messages = data["messages"]
        elif isinstance(data.get("prompt"), str):
            messages = [{"role": "user", "content": data["prompt"]}]
        else:
            raise ValueError(f'{path}:{number}: expected "prompt" (a string) or "messages" (a list)')
        max_tokens = data.get("max_tokens", default_max_tokens)
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"{path}:{number}: max_tokens must be a positive integer")
        items.append(WorkItem(messages, max_tokens))
    if not items:
        raise ValueError(f"{path}: no prompts")
    return Workload(items, f"{len(items)} prompts from {path.name}")


def _text(words: list[str], with_instruction: bool) -> str:
    body = " ".join(words)
    return f"{INSTRUCTION} {body}" if with_instruction else body


async def exact_prompt(rng: random.Random, input_len: int, tokenize: Tokenize) -> tuple[str, int | None]:
    """A prompt of ``input_len`` tokens by the server's count: the word count is corrected by the
    measured tokens per word, kept inside the bounds seen so far (so it cannot oscillate); the
    closest found when no word count gives exactly ``input_len``."""
    with_instruction = input_len >= 16
    words = rng.choices(WORDS, k=input_len * 2)
    lo, hi = 0, len(words) + 1  # word counts known to give too few / too many tokens
    n = max(1, input_len - (9 if with_instruction else 0))
    best: tuple[int, str, int] | None = None  # (distance, text, count)
    for _ in range(12):
        text = _text(words[:n], with_instruction)
        count = await tokenize(text)
        if count is None:
            return text, None
        if best is None or abs(count - input_len) < best[0]:
            best = (abs(count - input_len), text, count)
        if count == input_len:
            break
        if count < input_len:
            lo = n
        else:
            hi = n
        guess = n + round((input_len - count) * n / max(count, 1))
        n = guess if lo < guess < hi else (lo + hi) // 2
        if n <= lo or n >= hi:
            break  # no word count in between: the closest one stands
    assert best is not None
    return best[1], best[2]


async def synthetic(
    n: int, input_len: int, output_len: int, seed: int, tokenize: Tokenize | None, tokenizer: str | None
) -> Workload:
    rng = random.Random(seed)
    items: list[WorkItem] = []
    exact = tokenize is not None
    for _ in range(n):
        if tokenize is not None:
            text, count = await exact_prompt(rng, input_len, tokenize)
            exact = exact and count == input_len
        else:
            with_instruction = input_len >= 16
            text = _text(
                rng.choices(WORDS, k=max(1, input_len - (9 if with_instruction else 0))), with_instruction
            )
            count = None
        items.append(WorkItem([{"role": "user", "content": text}], output_len, count))
    desc = f"synthetic: {input_len} input tokens, {output_len} output tokens, {n} distinct prompts"
    workload = Workload(items, desc, exact, tokenizer if tokenize else None)
    if tokenize is None:
        workload.notes.append(
            "input lengths are approximate: no target tokenizes (POST /tokenize); one word taken as one token"
        )
    elif not exact:
        workload.notes.append(
            f"some prompts could not be made exactly {input_len} tokens; the closest was used"
        )
    return workload


def tokenizer_for(session: aiohttp.ClientSession, target: Target) -> Tokenize:
    """POST {root}/tokenize as llama-server ({"content"}) and vLLM ({"model", "prompt"}) take it."""

    async def count(text: str) -> int | None:
        body = {"content": text, "prompt": text, "model": target.model}
        try:
            async with session.post(
                target.root + "/tokenize", json=body, timeout=aiohttp.ClientTimeout(total=10)
            ) as resp:
                if resp.status != 200:
                    return None
                data = orjson.loads(await resp.read())
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError, OSError):
            return None
        tokens = data.get("tokens") if isinstance(data, dict) else None
        return len(tokens) if isinstance(tokens, list) else None

    return count


async def find_tokenizer(
    session: aiohttp.ClientSession, targets: list[Target]
) -> tuple[Tokenize, str] | None:
    """The first target whose /tokenize answers; the same tokenizer serves all (same model)."""
    for target in targets:
        tokenize = tokenizer_for(session, target)
        if await tokenize("hello world") is not None:
            return tokenize, target.label
    return None
