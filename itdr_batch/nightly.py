"""The nightly scoring flow: shard the users, score every shard on Ray, publish a summary.

It lives in the package (``flows/`` holds the deployment entry points) because Ray workers must
import the tasks they run. Thin by design: splitting is ``itdr_batch.tables.shard.split``
(``itdr-batch shard --interactions``: the users, their interactions and the whole log's item
counts) and each shard runs ``itdr_batch.run.job.run_job``, the very code behind
``itdr-batch score``, on its own interactions and those counts. So a shard's folder is an
ordinary run folder (results, rejects, manifest) and a complete one is skipped. The night's
``report.html`` (``itdr_batch.report``, the night's shards as one run) compares it with the
previous night; a markdown artifact carries its headline figures.

Shards run as Prefect tasks on a Ray cluster through prefect-ray's ``RayTaskRunner``: the address
comes from the parameters (a local cluster when none is given), each task asks Ray for one GPU on
GPU clusters and ``cpus_per_shard`` CPUs otherwise, and at most ``gpu_slots`` shards run at once.
"""

import socket
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import PrefectFuture
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from itdr_batch.errors import ItdrError
from itdr_batch.evaluate import BASELINES
from itdr_batch.report import Report, build_report, write_report
from itdr_batch.run import EngineCrashed, Manifest, load_config, run_job
from itdr_batch.run.progress import LogReporter
from itdr_batch.tables.shard import split
from itdr_batch.tables.sink import write_json_atomic

SUMMARY = "_summary.json"
REPORT = "report.html"


def transient(_task: Any, _run: Any, state: Any) -> bool:
    """Retry what may pass: a crashed engine, I/O. Bad input (an ``ItdrError``) and bugs (an
    accounting error, anything else) fail at once."""
    try:
        state.result()
    except (EngineCrashed, OSError):
        return True
    except Exception:
        return False
    return False


@dataclass(frozen=True)
class ShardResult:
    """``node`` and ``host``: where the shard ran (the Ray node id, the machine's name)."""

    shard: str
    out: str
    skipped: bool
    manifest: Manifest
    node: str
    host: str


@task(retries=3, retry_condition_fn=transient, persist_result=False)
def score_shard(config: str, shard: str, out: str, overrides: dict[str, Any]) -> ShardResult:
    """One shard through the score job; a complete run is reported as skipped."""
    import ray

    logger = get_run_logger()
    node, host = ray.get_runtime_context().get_node_id(), socket.gethostname()
    job = load_config(Path(config), overrides)
    result = run_job(job, Path(shard), Path(out), reporter=LogReporter(logger))
    outcome = "already complete, skipped" if result.skipped else "done"
    logger.info("%s: run %s %s on %s (node %s)", shard, result.manifest.run_id, outcome, host, node)
    return ShardResult(shard, out, result.skipped, result.manifest, node, host)


@flow(name="itdr-score-shards")
def score_shards(
    config: str,
    shards: list[str],
    interactions: list[str],
    item_counts: str,
    out: str,
    overrides: dict[str, Any],
    gpu_slots: int,
    cpus_per_shard: float,
    retry_delay_s: float,
) -> list[ShardResult]:
    """Every shard as a task, on its own ``interactions`` and the whole log's ``item_counts``, at
    most ``gpu_slots`` at a time, in shard order."""
    import ray
    from prefect_ray.context import remote_options

    gpus = ray.cluster_resources().get("GPU")  # type: ignore[no-untyped-call]
    resources: dict[str, float] = {"num_gpus": 1} if gpus else {"num_cpus": cpus_per_shard}
    scorer = score_shard.with_options(retry_delay_seconds=exponential_backoff(retry_delay_s))
    running: list[PrefectFuture[ShardResult]] = []
    done: list[ShardResult] = []
    for shard, log in zip(shards, interactions, strict=True):
        if len(running) == gpu_slots:
            done.append(running.pop(0).result())
        inputs = {**overrides, "data.interactions": log, "data.item_counts": item_counts}
        with remote_options(**resources):
            running.append(scorer.submit(config, shard, str(Path(out) / Path(shard).stem), inputs))
    done += [future.result() for future in running]
    return done


@flow(name="itdr-nightly")
def nightly(
    config: str,
    users: str,
    out: str = "out/nightly",
    night: str | None = None,
    shards: int = 4,
    gpu_slots: int = 1,
    ray_address: str | None = None,
    cpus_per_shard: float = 1.0,
    retry_delay_s: float = 30.0,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Shard ``users`` and the job's interactions, score each shard on its own interactions into
    ``out/NIGHT/shard-*``; publish the summary.

    ``night`` (default: the UTC date the flow run was scheduled for) names the night's folder, so
    each night is a run of its own while a retried or rerun night finds its finished shards. The
    night's ``report.html`` compares it with the latest earlier night in ``out``.
    """
    logger = get_run_logger()
    night = night or flow_run.scheduled_start_time.astimezone(UTC).date().isoformat()
    folder = (Path(out) / night).resolve()  # Ray workers need not share our working directory
    data = load_config(Path(config), overrides).data
    done = split(Path(users), data.interactions, data.items, shards, folder / "shards")
    logger.info("%s: %d shards under %s/shards", users, len(done.users), folder)
    runner = _ray_runner(ray_address)
    results = score_shards.with_options(task_runner=runner)(
        config=str(Path(config).resolve()),
        shards=[str(p) for p in done.users],
        interactions=[str(p) for p in done.interactions],
        item_counts=str(done.item_counts),
        out=str(folder),
        overrides=overrides or {},
        gpu_slots=gpu_slots,
        cpus_per_shard=cpus_per_shard,
        retry_delay_s=retry_delay_s,
    )
    summary = {"night": night, "out": str(folder), **_summary(results)}
    report = _report(folder)
    summary["report"] = str(write_report(report, folder / REPORT))
    write_json_atomic(summary, folder / SUMMARY)
    _publish(summary, report)
    return summary


def _report(folder: Path) -> Report:
    """Tonight's report; against the latest earlier finished night beside it, when one exists
    and can be read (otherwise tonight alone, with a warning: it must not fail the night)."""
    logger = get_run_logger()
    earlier = sorted(
        p.parent for p in folder.parent.glob(f"*/{SUMMARY}") if p.parent.name < folder.name
    )
    if earlier:
        try:
            return build_report([earlier[-1], folder])
        except ItdrError as exc:
            logger.warning("%s: no comparison with the previous night: %s", folder, exc)
    return build_report([folder])


def _ray_runner(address: str | None) -> Any:
    """prefect-ray's task runner on the cluster at ``address``, or on a local one."""
    # itdr_batch/__init__.py keeps Ray from building a `uv run` environment per worker.
    from prefect_ray import RayTaskRunner

    return RayTaskRunner(
        address=address, init_kwargs=None if address else {"include_dashboard": False}
    )


def _summary(results: list[ShardResult]) -> dict[str, Any]:
    shards = []
    for result in results:
        manifest = result.manifest
        shards.append(
            {
                "shard": Path(result.shard).stem,
                "out": result.out,
                "run_id": manifest.run_id,
                "skipped": result.skipped,
                "node": result.node,
                "host": result.host,
                "rows": manifest.counts.rows,
                "tasks": manifest.counts.dump()["tasks"],
                "left_out": manifest.counts.left_out,
                "prompts_per_s": manifest.throughput.prompts_per_s,
                "prompt_tokens_per_s": manifest.throughput.prompt_tokens_per_s,
                "evaluation": manifest.config.prompts.evaluation,
            }
        )
    return {"rows": sum(s["rows"] for s in shards), "shards": shards}


def _publish(summary: dict[str, Any], report: Report) -> None:
    """Per-shard counts, throughput and rejects; the headline figures of evaluation runs."""
    table = []
    for shard in summary["shards"]:
        for task_name, adapters in shard["tasks"].items():
            for adapter, counts in adapters.items():
                table.append(
                    {
                        "shard": shard["shard"],
                        "task": task_name,
                        "adapter": adapter,
                        "rows": shard["rows"],
                        "scored": counts["scored"],
                        "rejected": counts["rejected"],
                        "reasons": ", ".join(f"{r}: {n}" for r, n in counts["reasons"].items()),
                        "left_out": ", ".join(
                            f"{kind}: {n}"
                            for kind, n in shard["left_out"].get(task_name, {}).items()
                        ),
                        "prompts_per_s": shard["prompts_per_s"],
                        "skipped": shard["skipped"],
                    }
                )
    create_table_artifact(table, key="itdr-nightly-shards", description="Shards of the run")
    create_markdown_artifact(
        _headline(report, summary["report"]), key="itdr-nightly-report", description="Evaluation"
    )


def _headline(report: Report, path: str) -> str:
    """Markdown: tonight's metrics with their 95% intervals next to the baselines, and, when the
    report holds an earlier night, tonight minus it (interval, p-value, significance)."""
    tonight = report.runs[-1]
    lines = [f"Night {tonight.name}: {tonight.users:,} users. Report: `{path}`", ""]
    if tonight.evaluation is None:
        return "\n".join([*lines, "Not an evaluation-mode run: no metrics."])
    previous = report.runs[0].name if len(report.runs) > 1 else None
    versus = {
        (task_name, c["first"], metric): figures
        for task_name, found in report.comparisons.items()
        for c in found
        if previous and c["second"].startswith(f"{previous}/")
        for metric, figures in c["metrics"].items()
    }
    header = "| task | adapter | metric | tonight | 95% interval | random | popularity |"
    rule = "|---|---|---|---|---|---|---|"
    if previous:
        header += f" minus {previous} | 95% interval | p |"
        rule += "---|---|---|"
    lines += [header, rule]
    for task_name, groups in tonight.evaluation.result["tasks"].items():
        for adapter, group in groups.items():
            for metric, value in (group["metrics"]["model"] or {}).items():
                bounds = group.get("metrics_ci", {}).get("model", {}).get(metric)
                cells = [task_name, adapter, metric, _cell(value), _bounds(bounds)]
                cells += [_cell((group["metrics"][b] or {}).get(metric)) for b in BASELINES]
                if previous:
                    d = versus.get((task_name, f"{tonight.name}/{adapter}", metric))
                    mark = "" if d is None or d["significant"] else " (not significant)"
                    cells += [
                        "-" if d is None else f"{d['difference']:+.4f}{mark}",
                        _bounds(d),
                        "-" if d is None else f"{d['p_value']:.3g}",
                    ]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _bounds(figures: dict[str, Any] | None) -> str:
    return "-" if figures is None else f"[{figures['ci_low']:.4f}, {figures['ci_high']:.4f}]"


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
