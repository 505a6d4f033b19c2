"""The run folder's records, typed: ``_manifest.json`` (README, "Results") and the progress files.

The manifest is the contract's index: the CLI prints it, ``evaluate`` and the nightly flow read
it. One pydantic model per record, so a reader names fields instead of string keys, and a
malformed or foreign file is an error naming the field.
"""

import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from itdr_batch.errors import ItdrError
from itdr_batch.run.config import JobConfig


class ManifestError(ItdrError):
    """A run folder's record that is missing or cannot be read."""


class Record(BaseModel):
    model_config = ConfigDict(frozen=True)

    def dump(self) -> dict[str, Any]:
        """JSON-ready, with the job configuration's TOML spellings (``engine.kind``)."""
        value: dict[str, Any] = self.model_dump(mode="json", by_alias=True)
        return value


R = TypeVar("R", bound=Record)


class FileIdentity(Record):
    path: str
    bytes: int
    sha256: str


class ModelEntry(Record):
    name: str
    path: str
    sha256: str
    # Built by itdr_batch.dev.tiny: its scores show the pipeline working, not quality.
    untrained: bool


class AdapterEntry(Record):
    name: str
    # The engine's name for it: name@sha256[:12].
    key: str
    path: str
    sha256: str
    rank: int
    base_model: str | None


class AdapterCounts(Record):
    """One task and adapter: rows scored, rows rejected, rejects by reason."""

    scored: int
    rejected: int
    reasons: dict[str, int]


class Counts(Record):
    rows: int
    # task -> adapter ("base" for the base model) -> counts.
    tasks: dict[str, dict[str, AdapterCounts]]
    # task -> what prompt building left out (`LEFT_OUT` in itdr_batch/run/score.py) -> count.
    left_out: dict[str, dict[str, int]] = {}


class Timings(Record):
    started_at: str
    finished_at: str
    batch_seconds: float
    build_seconds: float
    score_seconds: float


class Throughput(Record):
    rows_per_s: float | None
    prompts_per_s: float | None
    prompt_tokens_per_s: float | None
    prompts: int
    prompt_tokens: int
    # Per row scored (each task and adapter counts): what presentation orders multiply.
    prompts_per_row: float | None = None
    prompt_tokens_per_row: float | None = None


class EngineTokens(Record):
    """Prompt-side tokens the engine handled over the run (``TokenCounts``): sent in requests,
    served from a prefix cache, computed; ``computed`` per token of the prompts themselves is
    what the scoring modes cost beyond reading each prompt once (1.0)."""

    sent: int
    cached: int
    computed: int
    computed_per_prompt_token: float | None


class Manifest(Record):
    """A complete run: written last, so its presence means the run's files are all there."""

    run_id: str
    status: str
    dry_run: bool
    # The shard's id column (user_id; item_id for tasks whose rows are items).
    key: str
    config_hash: str
    config: JobConfig
    inputs: dict[str, FileIdentity]
    model: ModelEntry | None
    adapters: list[AdapterEntry]
    engine: str | None
    # task -> how its mode ran on the engine (``Scorer.path``): the path each engine takes.
    scoring_paths: dict[str, str] = {}
    engine_tokens: EngineTokens | None = None
    versions: dict[str, str]
    # task -> file name, "rejects", and a dry run's batch requests ("<task>.jsonl" -> itself).
    files: dict[str, str]
    # task -> template fields its prompts show without: the items lack them (README, "Prompts
    # and candidates").
    prompt_fallbacks: dict[str, list[str]] = {}
    # The prompts' domain words: prompts.domain, else resolved from the items (``make_plan``).
    domain: str | None = None
    counts: Counts
    timings: Timings
    throughput: Throughput


class RunState(Record):
    """``_parts/_run.json``: the run in progress, so a rerun resumes only the same run."""

    run_id: str
    config: dict[str, Any]
    started_at: str


class UnitRecord(Record):
    """One committed (batch, task): what it scored and rejected, per adapter, and its times."""

    batch: int
    task: str
    rows: int
    # adapter ("base" for the base model) -> rows with a result / rejects by reason.
    scored: dict[str, int]
    rejected: dict[str, dict[str, int]]
    prompts: int
    prompt_tokens: int
    # What prompt building left out of the unit's prompts, by kind.
    left_out: dict[str, int] = {}
    # The engine's ``TokenCounts`` added while scoring the unit; empty in a dry run.
    engine_tokens: dict[str, int] = {}
    # ``Scorer.path`` when the unit was scored.
    path: str | None = None
    build_s: float
    score_s: float
    # When the unit was scored (epoch seconds): the report's throughput over time.
    finished_at: float | None = None


def read_record(path: Path, model: type[R]) -> R:
    """``path`` as ``model``; a missing, malformed or foreign file is a ``ManifestError``."""
    if not path.is_file():
        raise ManifestError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ManifestError(f"{path} does not hold a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise ManifestError(f"{path}: not a {model.__name__} of this version: {problems}") from None
