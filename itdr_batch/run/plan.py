"""A run's plan: every input validated and its identity fixed, before anything is written.

``make_plan`` reads the tables, builds each task's prompts for zero rows (so a missing column or an
unknown template field fails here), checks the model, adapters and chat markup, and derives the
run id from the configuration and the inputs' content. The plan is immutable: the batch loop only
reads it.
"""

import hashlib
import json
import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from itdr_batch.engines import Adapter, load_model, load_tokenizer
from itdr_batch.engines.adapters import model_identity
from itdr_batch.hashing import file_digest
from itdr_batch.prompts.build import build_prompts, missing_fields, popularity_counts
from itdr_batch.prompts.chat import check_tokenizer
from itdr_batch.prompts.templates import DOMAINS
from itdr_batch.run.config import DEFAULT_DOMAIN, JobConfig
from itdr_batch.run.manifest import AdapterEntry, FileIdentity, ModelEntry
from itdr_batch.tables.checked import STAMP, is_checked, stamp_path
from itdr_batch.tables.load import (
    Table,
    load_checked_interactions,
    load_interactions,
    load_item_shard,
    load_items,
    load_users,
)
from itdr_batch.tables.shard import load_item_counts
from itdr_batch.tasks import Task, spec

log = logging.getLogger(__name__)

# Amazon 2018 categories whose items are all one kind of domain word (after ``_spelling``).
DOMAIN_ALIASES = {
    "movies_and_tv": "movie",
    "video_games": "game",
    "digital_music": "music",
    "cds_and_vinyl": "music",
    "kindle_store": "book",
}


@dataclass(frozen=True)
class Ids:
    """The dtypes of the shard's key (user_id, or item_id for item rows) and of item ids."""

    key: str
    key_dtype: pl.DataType
    item_dtype: pl.DataType


@dataclass(frozen=True)
class Plan:
    """What a run reads, validated, and its identity."""

    config: JobConfig
    users: Path
    dry_run: bool
    ids: Ids
    items: pl.DataFrame
    interactions: pl.LazyFrame
    shard: pl.LazyFrame
    n_rows: int
    inputs: dict[str, FileIdentity]
    # Interactions per item over the whole table (popularity sampling; ``data.item_counts``
    # when set, counted from the table otherwise), else None.
    item_counts: pl.DataFrame | None
    adapters: tuple[Adapter, ...]
    model: ModelEntry | None
    # The model's tokenizer (None in a dry run, which tokenizes nothing).
    tokenizer: Any
    run_id: str
    # task -> template fields its entries show without (the items lack them, ``missing_fields``).
    prompt_fallbacks: dict[str, list[str]]

    @property
    def tasks(self) -> tuple[Task, ...]:
        return self.config.prompts.tasks

    @property
    def adapter_names(self) -> list[str | None]:
        """Every row is scored with each adapter; with none, with the base model. A dry run
        writes each prompt once."""
        if self.dry_run:
            return [None]
        return [a.name for a in self.adapters] or [None]

    @property
    def batch_size(self) -> int:
        return self.config.scoring.batch_size

    @property
    def batches(self) -> int:
        return -(-self.n_rows // self.batch_size)

    def batch_rows(self, batch: int) -> int:
        return min(self.batch_size, self.n_rows - batch * self.batch_size)

    def adapter_entries(self) -> list[AdapterEntry]:
        return [
            AdapterEntry(
                name=a.name,
                key=a.key,
                path=str(a.path),
                sha256=a.content_hash,
                rank=a.rank,
                base_model=a.base_model,
            )
            for a in self.adapters
        ]


def make_plan(config: JobConfig, users: Path, dry_run: bool) -> Plan:
    """Validates every input without writing anything."""
    model_path = None if dry_run else config.model_path()
    files = {"users": users, "interactions": config.data.interactions, "items": config.data.items}
    if config.data.item_counts is not None:
        files["item_counts"] = config.data.item_counts
    identities = _identities(files)
    items = load_items(config.data.items)
    interactions = _load_log(config.data.interactions, items, identities)
    items_frame = items.frame.collect()
    # The resolved domain is part of the configuration from here on (prompts, run id, manifest):
    # a job that omits it gets the run id it had when "movie" was the default, on movie data.
    domain = resolve_domain(items_frame, config.prompts.domain)
    config = config.model_copy(
        update={"prompts": config.prompts.model_copy(update={"domain": domain})}
    )
    key = config.key()
    if key == "user_id":
        shard = load_users(users, items, interactions)
    else:
        shard = load_item_shard(users, items)
    n_rows = shard.frame.select(pl.len()).collect().item()
    ids = Ids(key, shard.frame.collect_schema()[key], items_frame.schema["item_id"])
    counts = None
    if config.data.item_counts is not None:
        counts = load_item_counts(config.data.item_counts, items)
    ranking = any(spec(task).ranking for task in config.prompts.tasks)
    if config.prompts.strategy == "popularity" and ranking and counts is None:
        counts = popularity_counts(interactions.frame)
    empty = shard.frame.head(0).collect()
    fallbacks: dict[str, list[str]] = {}
    for task in config.prompts.tasks:
        config.scoring_config(task)
        prompt_config = config.prompt_config(task)
        # Missing columns, unknown template fields or domains fail here, before any output.
        build_prompts(empty, interactions.frame.head(0), items_frame, prompt_config)
        if missing := missing_fields(items_frame.columns, prompt_config):
            fallbacks[str(task)] = missing
    inputs = identities.result()
    adapters: list[Adapter] = []
    model = tokenizer = None
    if model_path is not None:
        engine_config = config.engine_config()
        adapters = load_model(engine_config)
        tokenizer = load_tokenizer(engine_config)
        check_tokenizer(config.model.chat_format(), tokenizer, str(model_path))
        model = ModelEntry(**vars(model_identity(model_path)))
    identity = {
        "config": config.digest(),
        "inputs": {name: i.sha256 for name, i in inputs.items()},
        "model": model and model.sha256,
        "adapters": [a.content_hash for a in adapters],
        "dry_run": dry_run,
    }
    run_id = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return Plan(
        config=config,
        users=users,
        dry_run=dry_run,
        ids=ids,
        items=items_frame,
        interactions=interactions.frame,
        shard=shard.frame,
        n_rows=n_rows,
        inputs=inputs,
        item_counts=counts,
        adapters=tuple(adapters),
        model=model,
        tokenizer=tokenizer,
        run_id=run_id,
        prompt_fallbacks=fallbacks,
    )


def resolve_domain(items: pl.DataFrame, configured: str | None) -> str:
    """The domain words to use: the configured ones, else the items' single ``domain`` value when
    it names a known domain (``_spelling``), else the default, with a WARNING saying why."""
    if configured is not None:
        return configured
    if "domain" not in items.columns:
        why = "the items have no domain column"
    else:
        values = items["domain"].drop_nulls().unique().sort().to_list()
        if len(values) == 1 and (known := _spelling(str(values[0]))):
            return known
        if not values:
            why = "the items' domain column is empty"
        elif len(values) > 1:
            why = f"the items hold {len(values)} domains ({', '.join(map(str, values[:5]))})"
        else:
            why = f"the items' domain {values[0]!r} is not one of {', '.join(DOMAINS)}"
    log.warning(
        "%s: prompts use the default domain words (%s); set prompts.domain to choose",
        why,
        DEFAULT_DOMAIN,
    )
    return DEFAULT_DOMAIN


def _spelling(value: str) -> str | None:
    """A known domain from an obvious spelling: any case, spaces or hyphens for underscores, a
    plural, or an Amazon category in ``DOMAIN_ALIASES``; None for anything less certain."""
    name = value.strip().lower().replace(" ", "_").replace("-", "_")
    for candidate in (name, name.removesuffix("s")):
        if candidate in DOMAINS:
            return candidate
    return DOMAIN_ALIASES.get(name)


def _load_log(path: Path, items: Table, identities: Future[dict[str, FileIdentity]]) -> Table:
    """The interactions, their rows checked unless ``itdr-batch shard`` checked them against
    these items (``tables.checked``), which takes their hashes first (the run's id needs them
    anyway)."""
    if path.is_file() and stamp_path(path).is_file():
        inputs = identities.result()
        if is_checked(path, inputs["interactions"].sha256, inputs["items"].sha256):
            log.info("%s: rows checked when split (%s); not checked again", path, STAMP)
            return load_checked_interactions(path, items)
    return load_interactions(path, items)


def _identities(files: dict[str, Path]) -> Future[dict[str, FileIdentity]]:
    """The files' identities, hashed on a thread of their own while the tables are validated:
    sha256 takes one core (0.9 s for a 165M-row log's 833 MB), validation takes them all, so on
    a node of many cores the hash would otherwise be the plan's longest step. A daemon thread: a
    table that fails validation raises at once, not after its hash."""
    identities: Future[dict[str, FileIdentity]] = Future()

    def hash_files() -> None:
        try:
            identities.set_result({name: _file_identity(path) for name, path in files.items()})
        except BaseException as exc:  # handed to the caller, as a pool's future would
            identities.set_exception(exc)

    threading.Thread(target=hash_files, name="hash-inputs", daemon=True).start()
    return identities


def _file_identity(path: Path) -> FileIdentity:
    return FileIdentity(
        path=str(path.resolve()),
        bytes=path.stat().st_size,
        sha256=file_digest(path),
    )
