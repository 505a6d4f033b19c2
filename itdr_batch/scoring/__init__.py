"""Scoring: the three modes on top of any engine (``modes``) and the parsers of generated
answers (``parsing``)."""

from itdr_batch.scoring.modes import (
    RATING_SCALE,
    Row,
    Scored,
    Scorer,
    ScoringConfig,
    ScoringError,
    rows_from_prompts,
)

__all__ = [
    "RATING_SCALE",
    "Row",
    "Scored",
    "Scorer",
    "ScoringConfig",
    "ScoringError",
    "rows_from_prompts",
]
