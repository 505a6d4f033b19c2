"""The task table: every per-task rule in one place, read by every stage.

ITDR has seven subtasks. What differs between them (which id a shard row holds, what a result
row looks like, which scoring modes apply, what evaluation holds out, which columns the data needs,
how many tokens a generated answer may take) is declared once here, in ``TASKS``. Adding a task is
a row here plus its template in ``itdr_batch.prompts.templates``.
"""

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from types import MappingProxyType


class Task(StrEnum):
    RP = "rp"
    TKR = "tkr"
    CDR = "cdr"
    NIR = "nir"
    UAP = "uap"
    IR = "ir"
    TUI = "tui"


class Mode(StrEnum):
    """How a prompt is scored (README, "Engines and scoring modes")."""

    GENERATE = "generate"
    LIKELIHOOD = "likelihood"
    LABEL = "label"


class ResultKind(StrEnum):
    """The shape of a task's result rows (README, "Results")."""

    # One row per (row, candidate): rank, score, prob.
    RANKING = "ranking"
    # One row per row: a rating of its target item.
    RATING = "rating"
    # One row per row: generated ``key:value`` attributes.
    ATTRIBUTES = "attributes"
    # One row per row: generated free text.
    TEXT = "text"


@dataclass(frozen=True)
class TaskSpec:
    task: Task
    result: ResultKind
    modes: frozenset[Mode]
    default_mode: Mode
    # Generated tokens allowed; a ranked-list answer gets this many per presented candidate.
    generate_tokens: int
    # The trained answer ranks every candidate (TKR, CDR) instead of naming one (NIR).
    ranked_list_answer: bool = False
    # The shard's id column: rows are users, or items (TUI describes an item's users).
    key: str = "user_id"
    # Likelihood mode: the answer scored for each candidate ({title}); None: the rating scale.
    likelihood_answer: str | None = None
    # Evaluation runs hold each row's last interaction out: among the candidates, as the target,
    # or (text results) as the reference text, its review.
    holds_out: bool = False
    interaction_columns: tuple[str, ...] = ()
    item_columns: tuple[str, ...] = ()
    # CDR: a source and a target domain (items' `domain` values) must be configured.
    needs_domains: bool = False

    @property
    def ranking(self) -> bool:
        return self.result is ResultKind.RANKING

    @property
    def has_baselines(self) -> bool:
        """Random and popularity baselines need candidates, a scale or attribute values."""
        return self.result is not ResultKind.TEXT

    def max_new_tokens(self, candidates: int) -> int:
        """The generate budget for a batch whose widest list has ``candidates`` entries."""
        if self.ranked_list_answer:
            return self.generate_tokens * max(candidates, 1)
        return self.generate_tokens


_RANK_MODES = frozenset({Mode.GENERATE, Mode.LIKELIHOOD})
_TEXT_MODES = frozenset({Mode.GENERATE})
_TKR = TaskSpec(
    Task.TKR,
    ResultKind.RANKING,
    _RANK_MODES,
    Mode.LIKELIHOOD,
    generate_tokens=24,
    ranked_list_answer=True,
    likelihood_answer="1. {title}",
    holds_out=True,
)

TASKS: Mapping[Task, TaskSpec] = MappingProxyType(
    {
        Task.RP: TaskSpec(
            Task.RP,
            ResultKind.RATING,
            frozenset(Mode),
            Mode.LABEL,
            generate_tokens=8,
            holds_out=True,
            interaction_columns=("rating",),
        ),
        Task.TKR: _TKR,
        # Top-K across domains: target-domain candidates after a source-domain history.
        Task.CDR: replace(_TKR, task=Task.CDR, item_columns=("domain",), needs_domains=True),
        Task.NIR: TaskSpec(
            Task.NIR,
            ResultKind.RANKING,
            _RANK_MODES,
            Mode.LIKELIHOOD,
            generate_tokens=64,
            likelihood_answer="{title}",
            holds_out=True,
        ),
        Task.UAP: TaskSpec(
            Task.UAP, ResultKind.ATTRIBUTES, _TEXT_MODES, Mode.GENERATE, generate_tokens=64
        ),
        Task.IR: TaskSpec(
            Task.IR,
            ResultKind.TEXT,
            _TEXT_MODES,
            Mode.GENERATE,
            generate_tokens=256,
            holds_out=True,
            interaction_columns=("rating", "review"),
        ),
        Task.TUI: TaskSpec(
            Task.TUI,
            ResultKind.TEXT,
            _TEXT_MODES,
            Mode.GENERATE,
            generate_tokens=256,
            key="item_id",
            holds_out=True,
            interaction_columns=("review",),
        ),
    }
)


def spec(task: Task | str) -> TaskSpec:
    """The rules of ``task`` (an unknown name raises ``ValueError``)."""
    return TASKS[Task(task)]
