"""The status vocabulary: what became of a row at each stage, declared once.

Each is a ``StrEnum`` and, in frames and result files, a Polars ``Enum`` column (Parquet: a
dictionary-encoded string), so a value outside the vocabulary fails where it is made instead of
travelling on as a typo.
"""

from enum import StrEnum

import polars as pl


class PromptStatus(StrEnum):
    """What prompt building made of a row (``itdr_batch.prompts``)."""

    OK = "ok"
    EMPTY_HISTORY = "empty_history"
    TOO_FEW_CANDIDATES = "too_few_candidates"
    NO_TARGET = "no_target"


class ScoreStatus(StrEnum):
    """What scoring made of a prompt (``itdr_batch.scoring``), as written in the results."""

    OK = "ok"
    # Generate mode: titles matched loosely, or unnamed candidates appended in presented order.
    FUZZY = "fuzzy"
    PARTIAL = "partial"
    UNPARSED = "unparsed"
    OUT_OF_SCALE = "out_of_scale"
    NO_CANDIDATES = "no_candidates"
    PROMPT_TOO_LONG = "prompt_too_long"
    ENGINE_ERROR = "engine_error"


class RejectReason(StrEnum):
    """Why a (task, adapter, shard row) has no result (``rejects.parquet``)."""

    UNKNOWN_USER = "unknown_user"
    UNKNOWN_ITEM = "unknown_item"
    EMPTY_HISTORY = "empty_history"
    TOO_FEW_CANDIDATES = "too_few_candidates"
    NO_TARGET = "no_target"
    PROMPT_TOO_LONG = "prompt_too_long"
    ENGINE_ERROR = "engine_error"
    UNPARSED = "unparsed"


def enum_dtype(vocabulary: type[StrEnum]) -> pl.Enum:
    """The Polars ``Enum`` of a vocabulary, categories in declaration order."""
    return pl.Enum([member.value for member in vocabulary])


PROMPT_STATUS = enum_dtype(PromptStatus)
SCORE_STATUS = enum_dtype(ScoreStatus)
REJECT_REASON = enum_dtype(RejectReason)
