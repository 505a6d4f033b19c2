"""A scoring job's configuration: one TOML file, validated by pydantic, every key overridable.

Errors name the key (``scoring.mode``) and what is allowed. Relative paths in the file are read
relative to the file's folder, so a job folder can be moved as a whole; paths given on the command
line are relative to the working directory.
"""

import hashlib
import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    field_validator,
    model_validator,
)

from itdr_batch.engines.config import Adapters, DType, EngineConfig, EngineOptions
from itdr_batch.errors import ItdrError
from itdr_batch.prompts.build import PromptConfig
from itdr_batch.prompts.chat import CHAT_FORMATS, ChatFormat
from itdr_batch.prompts.templates import DOMAINS
from itdr_batch.scoring.modes import RATING_SCALE, ScoringConfig
from itdr_batch.tasks import Mode, ResultKind, Task, spec

# Where overrides come from, in error messages.
COMMAND_LINE = "command line"
# A job that would open the model and has none: only a dry run builds prompts without one.
MODEL_REQUIRED = "model.path: required key missing (only a --dry-run runs without a model)"
# The domain words of items that name no domain (PromptConfig's default): MovieLens is movies.
DEFAULT_DOMAIN = "movie"
# Keys holding paths: relative ones in a TOML file are relative to that file's folder.
PATH_KEYS = (
    ("data", "interactions"),
    ("data", "items"),
    ("data", "item_counts"),
    ("model", "path"),
    ("output", "dir"),
)


class ConfigError(ItdrError):
    """A configuration that cannot run; the message names the key and what is allowed."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(Section):
    interactions: Path
    items: Path
    # A split's whole-log item counts (``itdr-batch shard --interactions``): popularity weights
    # when `interactions` hold one shard's users. Unset, it stays out of the digest (run ids).
    item_counts: Path | None = Field(default=None, exclude_if=lambda path: path is None)


class PromptsConfig(Section):
    tasks: tuple[Task, ...] = Field(default=(Task.TKR,), min_length=1)
    # Unset: the items' `domain` value, else the default (``itdr_batch.run.plan.resolve_domain``).
    domain: str | None = None
    history_len: int = Field(default=10, ge=1)
    candidates: int = Field(default=10, ge=1)
    strategy: Literal["uniform", "popularity"] = "uniform"
    popularity_exponent: float = Field(default=1.0, ge=0)
    # Leave-last-out: hold each user's last interaction out and score it among the candidates.
    evaluation: StrictBool = False
    item_fields: dict[str, str] = Field(default_factory=dict)
    source_domain: str | None = None
    target_domain: str | None = None

    @field_validator("tasks")
    @classmethod
    def _distinct(cls, tasks: tuple[Task, ...]) -> tuple[Task, ...]:
        if len(set(tasks)) != len(tasks):
            raise ValueError("tasks must not repeat")
        # A shard's rows are users or items: tasks whose rows are items run in a job of their own.
        for task in tasks:
            key = spec(task).key
            if key != "user_id" and len(tasks) > 1:
                raise ValueError(
                    f"{task} scores items (a shard of {key}), so it runs in a job of its own"
                )
        return tasks

    @field_validator("domain")
    @classmethod
    def _known_domain(cls, domain: str | None) -> str | None:
        if domain is not None and domain not in DOMAINS:
            raise ValueError(f"unknown domain {domain!r}; known: {', '.join(DOMAINS)}")
        return domain


class ModelConfig(Section):
    # Required to score (``JobConfig.model_path``); a dry run reads only the chat format.
    path: Path | None = None
    # A named chat format (qwen, glm4, llama3, raw) or a template holding {content}.
    chat: str = "qwen"
    # Replaces the format's default system prompt ({system}).
    system: str | None = None
    dtype: DType = "auto"
    allow_pickle: StrictBool = False
    trust_remote_code: StrictBool = False

    @field_validator("chat")
    @classmethod
    def _known_chat(cls, chat: str) -> str:
        if chat not in CHAT_FORMATS and "{content}" not in chat:
            known = ", ".join(CHAT_FORMATS)
            raise ValueError(
                f"unknown chat format {chat!r}; use {known} or a template with {{content}}"
            )
        return chat

    def chat_format(self) -> ChatFormat:
        base = CHAT_FORMATS.get(self.chat) or ChatFormat(self.chat)
        return base if self.system is None else ChatFormat(base.template, self.system)


class ScoringSection(Section):
    # One mode for every task, or per task in `modes`; unset: each task's default mode.
    mode: Mode | None = None
    modes: dict[Task, Mode] = Field(default_factory=dict)
    # Users per batch: sets peak memory and the unit of resumption.
    batch_size: int = Field(default=256, ge=1)
    rating_scale: tuple[float, ...] = Field(default=RATING_SCALE, min_length=1)
    max_new_tokens: int | None = Field(default=None, ge=1)
    # How many times requests that failed in the engine are sent again before being rejected.
    retries: int = Field(default=2, ge=0)
    # Ranking tasks: presentation orders per user (balanced cyclic shifts of its candidates),
    # scores averaged over them (README, "Presentation orders"). Left out of the digest at 1 (the
    # default), so configurations from before it keep their run ids.
    permutations: int = Field(default=1, ge=1, exclude_if=lambda k: k == 1)
    # Ranking tasks in likelihood mode: also write `score_pmi`, the score minus the answer's
    # log-probability after a content-free prompt (README, "Item-prior calibration"); and which
    # of the two orders the list (`rank`, `prob`). Left out of the digest at their defaults.
    pmi: StrictBool = Field(default=False, exclude_if=lambda on: not on)
    rank_by: Literal["score", "score_pmi"] = Field(
        default="score", exclude_if=lambda by: by == "score"
    )
    # RP in label or likelihood mode: also write `rating_calibrated`, the expected rating after
    # contextual calibration of the scale's distribution (README, "Rating calibration").
    calibrate_ratings: StrictBool = Field(default=False, exclude_if=lambda on: not on)


class OutputConfig(Section):
    dir: Path = Path("out/run")


class JobConfig(Section):
    """A whole job: ``itdr-batch score --config job.toml`` (see README, "The score job")."""

    data: DataConfig
    model: ModelConfig = ModelConfig()
    prompts: PromptsConfig = PromptsConfig()
    adapters: Adapters = ()
    engine: EngineOptions = EngineOptions()
    scoring: ScoringSection = ScoringSection()
    output: OutputConfig = OutputConfig()
    # Candidate sampling and the engine's seed.
    seed: int = 0

    @model_validator(mode="after")
    def _modes_fit_tasks(self) -> "JobConfig":
        if self.scoring.rank_by == "score_pmi" and not self.scoring.pmi:
            raise ValueError('scoring.rank_by = "score_pmi" needs scoring.pmi = true')
        for task in self.prompts.tasks:
            mode, allowed = self.mode(task), spec(task).modes
            if mode not in allowed:
                key = "scoring.modes." + task if task in self.scoring.modes else "scoring.mode"
                raise ValueError(
                    f"{key}: task {task} cannot be scored in mode {mode}; "
                    f"use {', '.join(sorted(allowed))}"
                )
            if self.scoring.pmi and spec(task).ranking and mode is not Mode.LIKELIHOOD:
                raise ValueError(
                    f"scoring.pmi: task {task} is scored in {mode} mode; the item prior "
                    "calibrates likelihood scores"
                )
            rating = spec(task).result is ResultKind.RATING
            if self.scoring.calibrate_ratings and rating and mode is Mode.GENERATE:
                raise ValueError(
                    f"scoring.calibrate_ratings: task {task} is scored in generate mode; "
                    "calibration needs the scale's probabilities (label or likelihood mode)"
                )
            if spec(task).ranking and self.scoring.permutations > self.prompts.candidates:
                raise ValueError(
                    f"scoring.permutations ({self.scoring.permutations}) is more than "
                    f"prompts.candidates ({self.prompts.candidates}): orders beyond one per "
                    "candidate repeat a shift"
                )
            if spec(task).needs_domains and not (
                self.prompts.source_domain and self.prompts.target_domain
            ):
                raise ValueError(
                    f"task {task} needs prompts.source_domain and prompts.target_domain"
                )
        return self

    def calibrated(self, task: Task) -> bool:
        """Whether ``task``'s scores are calibrated by a content-free prompt: ranking tasks by
        the item prior (``scoring.pmi``), RP's scale (``scoring.calibrate_ratings``)."""
        if spec(task).ranking:
            return self.scoring.pmi
        return self.scoring.calibrate_ratings and spec(task).result is ResultKind.RATING

    def orders(self, task: Task) -> int:
        """Presentation orders per row: ``scoring.permutations`` for ranking tasks, else 1."""
        return self.scoring.permutations if spec(task).ranking else 1

    def mode(self, task: Task) -> Mode:
        return self.scoring.modes.get(task) or self.scoring.mode or spec(task).default_mode

    def key(self) -> str:
        """The shard's id column (the tasks of a job share it: see ``PromptsConfig``)."""
        return spec(self.prompts.tasks[0]).key

    def model_path(self) -> Path:
        """The model folder, which every run but a dry run opens."""
        if self.model.path is None:
            raise ConfigError(MODEL_REQUIRED)
        return self.model.path

    def engine_config(self) -> EngineConfig:
        return EngineConfig(
            **self.engine.model_dump(),
            model=self.model_path(),
            adapters=self.adapters,
            dtype=self.model.dtype,
            seed=self.seed,
            allow_pickle=self.model.allow_pickle,
            trust_remote_code=self.model.trust_remote_code,
        )

    def prompt_config(self, task: Task) -> PromptConfig:
        p = self.prompts
        return PromptConfig(
            task=task,
            # A plan resolves an unset domain first (``make_plan``); without one, the default.
            domain=p.domain or DEFAULT_DOMAIN,
            chat=self.model.chat_format(),
            history_len=p.history_len,
            candidates=p.candidates,
            strategy=p.strategy,
            popularity_exponent=p.popularity_exponent,
            evaluation=p.evaluation and spec(task).holds_out,
            seed=self.seed,
            item_fields=p.item_fields,
            source_domain=p.source_domain,
            target_domain=p.target_domain,
            rating_range=(min(self.scoring.rating_scale), max(self.scoring.rating_scale)),
        )

    def scoring_config(self, task: Task) -> ScoringConfig:
        return ScoringConfig(
            task,
            self.mode(task),
            self.model.chat_format(),
            rating_scale=self.scoring.rating_scale,
            max_new_tokens=self.scoring.max_new_tokens,
        )

    def dump(self) -> dict[str, Any]:
        """As written in manifests: JSON values, the TOML spellings (``engine.kind``)."""
        settings: dict[str, Any] = self.model_dump(mode="json", by_alias=True)
        return settings

    def digest(self) -> str:
        """A hash of everything that shapes the results (not where they are written)."""
        settings = self.model_dump(mode="json", exclude={"output"})
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def load_config(path: Path | None, overrides: dict[str, Any] | None = None) -> JobConfig:
    """The TOML file (if any) with ``overrides`` (dotted keys, e.g. ``scoring.batch_size``)."""
    data: dict[str, Any] = {}
    source = str(path) if path else "job configuration"
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such configuration file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        _resolve_paths(data, path.parent)
    overrides = overrides or {}
    for key, value in overrides.items():
        _set(data, key, value, COMMAND_LINE)
    # Paths given on the command line are relative to the working directory; all are stored
    # absolute, so a run's manifest names its inputs wherever it is read from.
    _resolve_paths(data, Path.cwd())
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, set(overrides))) from None


def parse_override(pair: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as a TOML value (``64``, ``true``, ``["tkr", "rp"]``), else
    as a plain string."""
    key, sep, text = pair.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"expected KEY=VALUE, got {pair!r}")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    return key.strip(), value


def _resolve_paths(data: dict[str, Any], folder: Path) -> None:
    """Relative path values joined to ``folder``, made absolute (symbolic links kept)."""

    def resolved(value: Any) -> Any:
        return os.path.abspath(folder / value) if isinstance(value, str) else value

    for section, key in PATH_KEYS:
        table = data.get(section)
        if isinstance(table, dict) and key in table:
            table[key] = resolved(table[key])
    adapters = data.get("adapters")
    if isinstance(adapters, list):
        for adapter in adapters:
            if isinstance(adapter, dict) and "path" in adapter:
                adapter["path"] = resolved(adapter["path"])


def _set(data: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    *parents, last = dotted.split(".")
    table = data
    for i, part in enumerate(parents):
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: {'.'.join(parents[: i + 1])} is not a table")
    table[last] = value


def _describe(exc: ValidationError, source: str, overridden: set[str]) -> str:
    """One line per problem, each under the source that set its key: the file, or the command
    line (``--set`` and the flags)."""
    lines: dict[str, list[str]] = {}
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        # Whole-configuration checks name their key at the start of the message.
        named = key or message.partition(":")[0]
        origin = COMMAND_LINE if _overridden(named, overridden) else source
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required key missing"
        given = error.get("input")
        hide = error["type"] in ("missing", "extra_forbidden") or isinstance(given, dict)
        if key:
            message = f"{key}: {message}" + ("" if hide else f" (got {given!r})")
        lines.setdefault(origin, []).append(message)
    return "\n".join(
        f"{origin}: " + (found[0] if len(found) == 1 else "\n  " + "\n  ".join(found))
        for origin, found in lines.items()
    )


def _overridden(key: str, overridden: set[str]) -> bool:
    """Whether an override set ``key`` or a table holding it (``adapters`` for ``adapters.0``)."""
    return any(key == o or key.startswith(o + ".") for o in overridden)
