"""The three scoring modes (README, "Engines and scoring modes") on top of any engine.

- ``generate``: greedy decoding of the trained answer, parsed back (``itdr_batch.scoring.parsing``).
- ``likelihood``: per candidate, the mean log-probability of the answer the adapter would emit
  for it (TKR/CDR ``1. <title>``, NIR ``<title>``, RP each rating of the scale), softmax within
  the list. The engines prefill each shared prompt once.
- ``label``: next-token log-probabilities of fixed label tokens (RP: the scale's ratings), giving
  the expected rating and the most likely one.

Prompts are tokenized in three parts: the chat format's opening and closing with the model's
tokenizer (its markers become their special tokens) and the user turn between them, which holds
titles, reviews and attributes from sellers and users, as plain text: a ``<|im_end|>`` in a title
stays characters and can never end the turn.
"""

import copy
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from itdr_batch.engines import Engine, Failure, Prompt
from itdr_batch.errors import ItdrError
from itdr_batch.prompts.chat import ChatFormat, chat_format
from itdr_batch.scoring.parsing import parse_attributes, parse_ranking, parse_rating, parse_text
from itdr_batch.status import ScoreStatus
from itdr_batch.tasks import Mode, ResultKind, Task, spec

# The ratings RP scores when the configuration names none.
RATING_SCALE = (1.0, 2.0, 3.0, 4.0, 5.0)


class ScoringError(ItdrError):
    """A scoring configuration that cannot run with this task or tokenizer."""


@dataclass(frozen=True)
class ScoringConfig:
    """``chat``: the format the prompts were built with; only its markers become special tokens."""

    task: Task
    mode: Mode
    chat: ChatFormat | str
    rating_scale: tuple[float, ...] = RATING_SCALE
    max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        allowed = spec(self.task).modes
        if Mode(self.mode) not in allowed:
            names = ", ".join(sorted(allowed))
            raise ScoringError(
                f"task {self.task} cannot be scored in mode {self.mode}; use {names}"
            )
        if not self.rating_scale:
            raise ScoringError("rating_scale must hold at least one rating")


@dataclass(frozen=True)
class Row:
    """One prompt to score; ``candidates`` are the presented titles, in order (ranking tasks)."""

    prompt: str
    candidates: Sequence[str] = ()
    adapter: str | None = None


@dataclass
class Scored:
    """One row's result. Per-candidate lists follow the presented order; ranks start at 1."""

    status: ScoreStatus
    scores: list[float] | None = None
    probs: list[float] | None = None
    ranks: list[int] | None = None
    rating: float | None = None
    rating_argmax: float | None = None
    text: str | None = None
    fields: dict[str, str] = field(default_factory=dict)
    detail: str | None = None

    def __post_init__(self) -> None:
        # A status outside the vocabulary fails here, where it is made.
        self.status = ScoreStatus(self.status)


class PromptEncoder:
    """Token ids of prompts rendered in one chat format, and of text from the data."""

    def __init__(self, tokenizer: Any, chat: ChatFormat | str) -> None:
        self._before, self._after = chat_format(chat).split()
        self._before_ids, self._after_ids = tokenizer(
            [self._before, self._after], add_special_tokens=False
        )["input_ids"]
        self._text = _text_tokenizer(tokenizer)

    def prompts(self, prompts: Sequence[str]) -> list[list[int]]:
        """What the engines score: the format's markup around the user turn, read as text.

        A prompt not wrapped in this chat format was built with another one.
        """
        before, after = self._before, self._after
        bodies = []
        for prompt in prompts:
            fits = len(prompt) >= len(before) + len(after)
            if not (fits and prompt.startswith(before) and prompt.endswith(after)):
                raise ScoringError(
                    f"a prompt is not wrapped in the scoring chat format ({before!r} ... "
                    f"{after!r}): build and score prompts with the same chat format; the prompt "
                    f"starts {prompt[:60]!r}"
                )
            bodies.append(prompt[len(before) : len(prompt) - len(after)])
        return [self._before_ids + ids + self._after_ids for ids in self.text(bodies)]

    def text(self, texts: Sequence[str]) -> list[list[int]]:
        """Text from the data: markup in it is tokenized as characters, never as special tokens."""
        if not texts:
            return []
        ids: list[list[int]] = self._text(
            list(texts), add_special_tokens=False, split_special_tokens=True
        )["input_ids"]
        return ids


# Each tokenizer's copy for text (copying Qwen's takes ~1 s), or None where it needs none. Never
# the tokenizer itself: a value holding its weak key would keep it alive.
_TEXT_COPIES: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def _text_tokenizer(tokenizer: Any) -> Any:
    """``tokenizer`` for text from the data, checked to yield none of its added tokens.

    ``split_special_tokens`` spells special tokens out, but a fast tokenizer still matches its
    added tokens not flagged special (Qwen's ``<tool_call>``, ``<|fim_prefix|>``), so a copy
    flags them special too.
    """
    if tokenizer in _TEXT_COPIES:
        cached = _TEXT_COPIES[tokenizer]
        return tokenizer if cached is None else cached
    added = tokenizer.added_tokens_decoder
    copied = None
    if not all(token.special for token in added.values()):
        copied = copy.deepcopy(tokenizer)
        # The copy's own tokens: a Python tokenizer hands out the ones it keeps.
        plain = [token for token in copied.added_tokens_decoder.values() if not token.special]
        for token in plain:
            token.special = True
        copied.add_tokens(plain, special_tokens=True)
    text = tokenizer if copied is None else copied
    contents = [token.content for token in added.values()]
    if contents:
        ids = text(contents, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        leaked = sorted({i for row in ids for i in row} & set(added))
        if leaked:
            raise ScoringError(
                f"the tokenizer turns text into its added tokens {leaked[:5]} even with "
                "split_special_tokens, so data could inject chat markup; use another tokenizer"
            )
    _TEXT_COPIES[tokenizer] = copied
    return text


class Scorer:
    """Scores rows of one task in one mode with an engine and the model's tokenizer."""

    def __init__(self, engine: Engine, tokenizer: Any, config: ScoringConfig) -> None:
        self.engine = engine
        self.tokenizer = tokenizer
        self.config = config
        self.task = Task(config.task)
        self.spec = spec(self.task)
        self.mode = Mode(config.mode)
        self._ratings = [f"{r:g}" for r in config.rating_scale]
        self.encoder = PromptEncoder(tokenizer, config.chat)
        self._label_ids: list[int] = []
        # Prompt tokens sent to the engine, for throughput figures.
        self.prompt_tokens = 0
        if self.mode is Mode.LABEL:
            for rating, ids in zip(self._ratings, self.encoder.text(self._ratings), strict=True):
                if len(ids) != 1:
                    raise ScoringError(
                        f"label mode needs each rating to be one token; {rating!r} is {len(ids)} "
                        "tokens for this tokenizer: use likelihood mode"
                    )
                self._label_ids.append(ids[0])

    @property
    def path(self) -> str:
        """How this mode runs on the engine, in words (a run's manifest shows it per task)."""
        if self.mode is Mode.LIKELIHOOD:
            return f"likelihood, {self.engine.name}: {self.engine.likelihood_path}"
        if self.mode is Mode.LABEL:
            return f"label, {self.engine.name}: one next-token pass over the rating tokens"
        return f"generate, {self.engine.name}: greedy decoding"

    def score(self, rows: Sequence[Row]) -> list[Scored]:
        unknown = {r.adapter for r in rows} - {None, *self.engine.adapters}
        if unknown:
            raise ScoringError(f"unknown adapter(s) {sorted(map(str, unknown))}")
        prompts = [
            Prompt(ids, row.adapter)
            for ids, row in zip(self.encoder.prompts([r.prompt for r in rows]), rows, strict=True)
        ]
        self.prompt_tokens += sum(len(p.ids) for p in prompts)
        if self.mode is Mode.GENERATE:
            return self._generate(rows, prompts)
        if self.mode is Mode.LABEL:
            outs = self.engine.next_token_logprobs(prompts, self._label_ids)
            return [_failed(o) if isinstance(o, Failure) else self._rating(o) for o in outs]
        return self._likelihood(rows, prompts)

    def _likelihood(self, rows: Sequence[Row], prompts: list[Prompt]) -> list[Scored]:
        answer = self.spec.likelihood_answer
        if answer is None:
            answers = [self._ratings] * len(rows)
        else:
            answers = [[answer.format(title=title) for title in r.candidates] for r in rows]
        # Answers hold titles from the data: text, like the user turn; one call for the batch.
        flat = iter(self.encoder.text([a for row in answers for a in row]))
        encoded = [[next(flat) for _ in row] for row in answers]
        outs = self.engine.continuation_logprobs(prompts, encoded)
        results = []
        for out in outs:
            if isinstance(out, Failure):
                results.append(_failed(out))
                continue
            means = [sum(lp) / len(lp) if lp else -math.inf for lp in out]
            if answer is None:
                results.append(self._rating(means))
            elif not means:
                results.append(Scored(ScoreStatus.NO_CANDIDATES))
            else:
                results.append(
                    Scored(ScoreStatus.OK, scores=means, probs=_softmax(means), ranks=_ranks(means))
                )
        return results

    def _rating(self, logprobs: list[float]) -> Scored:
        probs = _softmax(logprobs)
        scale = self.config.rating_scale
        best = max(range(len(scale)), key=probs.__getitem__)
        expected = sum(p * r for p, r in zip(probs, scale, strict=True))
        return Scored(
            ScoreStatus.OK, scores=logprobs, probs=probs, rating=expected, rating_argmax=scale[best]
        )

    def _generate(self, rows: Sequence[Row], prompts: list[Prompt]) -> list[Scored]:
        limit = self.config.max_new_tokens
        if limit is None:
            widest = max((len(r.candidates) for r in rows), default=1)
            limit = self.spec.max_new_tokens(widest)
        outs = self.engine.generate(prompts, limit)
        results = []
        for row, out in zip(rows, outs, strict=True):
            if isinstance(out, Failure):
                results.append(_failed(out))
                continue
            text = self.tokenizer.decode(out, skip_special_tokens=True)
            results.append(self._parsed(row, text))
        return results

    def _parsed(self, row: Row, text: str) -> Scored:
        result = self.spec.result
        if result is ResultKind.RANKING:
            if not row.candidates:
                return Scored(ScoreStatus.NO_CANDIDATES, text=text)
            single = not self.spec.ranked_list_answer
            ranking = parse_ranking(text, row.candidates, single=single)
            ranks = [0] * len(ranking.order)
            for position, candidate in enumerate(ranking.order):
                ranks[candidate] = position + 1
            return Scored(ranking.status, ranks=ranks, text=text)
        if result is ResultKind.RATING:
            rating, status = parse_rating(text, self.config.rating_scale)
            return Scored(status, rating=rating, text=text)
        if result is ResultKind.ATTRIBUTES:
            fields, status = parse_attributes(text)
            return Scored(status, text=text, fields=fields)
        stripped, status = parse_text(text)
        return Scored(status, text=stripped)


def _failed(failure: Failure) -> Scored:
    return Scored(failure.reason, detail=failure.detail)


def _softmax(values: list[float]) -> list[float]:
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def _ranks(scores: list[float]) -> list[int]:
    """1 = highest score; ties keep the presented order."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    ranks = [0] * len(scores)
    for position, i in enumerate(order):
        ranks[i] = position + 1
    return ranks


def rows_from_prompts(prompts: pl.DataFrame, adapter: str | None = None) -> list[Row]:
    """Rows for the built prompts of ``build_prompts``, with their candidates' titles."""
    built = prompts.filter(pl.col("prompt").is_not_null())
    if "candidate_titles" not in built.columns:
        return [Row(p, adapter=adapter) for p in built["prompt"].to_list()]
    return [
        Row(p, t, adapter)
        for p, t in zip(built["prompt"].to_list(), built["candidate_titles"].to_list(), strict=True)
    ]
