"""``itdr-batch report RUN [RUN ...]``: one self-contained HTML page about one or more runs.

No script, no network: styles inline, charts inline SVG (``charts``), so the file opens from a
laptop or as a CI artifact. Each (run, task, adapter) counts as a run for comparisons, made on
the users both scored (``intervals.compare``): within the first RUN each adapter minus its
first, and each later RUN's adapter minus the first RUN's same adapter.
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from jinja2 import Environment, select_autoescape
from markupsafe import Markup

from itdr_batch.evaluate import BASELINES
from itdr_batch.intervals import RESAMPLES, compare
from itdr_batch.report import charts
from itdr_batch.report.runs import ReportError, Run, read_run
from itdr_batch.tables.sink import write_atomic
from itdr_batch.tasks import ResultKind, Task, spec


@dataclass
class Figure:
    id: str
    title: str
    caption: str
    svg: Markup


@dataclass
class Section:
    title: str
    intro: str = ""
    figures: list[Figure] = field(default_factory=list)
    table: list[list[str]] | None = None


@dataclass(frozen=True)
class Entity:
    """One run's (task, adapter): what comparisons pair."""

    run: Run
    task: str
    adapter: str

    @property
    def label(self) -> str:
        return f"{self.run.name}/{self.adapter}"

    def values(self) -> pl.DataFrame:
        assert self.run.evaluation is not None
        return self.run.evaluation.users[self.task, self.adapter]

    def group(self) -> dict[str, Any]:
        assert self.run.evaluation is not None
        group: dict[str, Any] = self.run.evaluation.result["tasks"][self.task][self.adapter]
        return group


@dataclass(frozen=True)
class Report:
    runs: list[Run]
    # Per task: ``intervals.compare``'s figures with the two labels (``_comparisons``).
    comparisons: dict[str, list[dict[str, Any]]]
    sections: list[Section]
    generated_at: str


def build_report(paths: list[Path]) -> Report:
    """Reads and evaluates every RUN, compares them and draws every chart."""
    runs = [read_run(path) for path in paths]
    names = [run.name for run in runs]
    if len(set(names)) < len(names):
        raise ReportError(f"two RUNs share a folder name ({names}): name each run's folder apart")
    entities = [
        Entity(run, task, adapter)
        for run in runs
        if run.evaluation is not None
        for task, adapter in run.evaluation.users
    ]
    comparisons = _comparisons(entities)
    sections = [
        _metrics(runs),
        _differences(comparisons),
        _positions(entities),
        _probabilities(entities),
        _ratings(entities),
        _distributions(runs),
        _throughput(runs),
        _outcomes(runs),
    ]
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return Report(runs, comparisons, [s for s in sections if s.figures or s.intro], now)


def write_report(report: Report, out: Path) -> Path:
    """The page, written atomically."""
    environment = Environment(autoescape=select_autoescape(default=True))
    template = environment.from_string(
        files("itdr_batch.report").joinpath("page.html.j2").read_text(encoding="utf-8")
    )
    page = template.render(report=report, runs=_run_rows(report.runs))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return out


def _comparisons(entities: list[Entity]) -> dict[str, list[dict[str, Any]]]:
    """Per task: within the first run, each adapter minus its first; each later run's adapter
    minus the first run's same adapter (its first adapter where it has none)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for task in dict.fromkeys(e.task for e in entities):
        of_task = [e for e in entities if e.task == task]
        first = of_task[0]
        same = {e.adapter: e for e in of_task if e.run is first.run}
        for other in of_task[1:]:
            reference = first if other.run is first.run else same.get(other.adapter, first)
            assert reference.run.evaluation is not None
            ev = reference.run.evaluation
            found = compare(other.values(), reference.values(), ev.key, ev.seed)
            out.setdefault(task, []).append(
                {"first": other.label, "second": reference.label, **found}
            )
    return out


def _figure(id_: str, title: str, caption: str, svg: str) -> Figure:
    return Figure(id_, title, caption, Markup(svg))


def _slug(*parts: str) -> str:
    text = "-".join(parts).lower()
    return "".join(c if c.isalnum() else "-" for c in text)


def _metrics(runs: list[Run]) -> Section:
    """Every task's metrics (ranking and rp with intervals; uap and text tasks without)."""
    section = Section("Metrics against the baselines")
    rows = [["run", "task", "adapter", "users", "rejected", "metric", "model", "95% interval"]]
    rows[0] += ["overall", *BASELINES]
    for run in runs:
        tasks = run.evaluation.result["tasks"] if run.evaluation else {}
        for task, groups in tasks.items():
            for adapter, group in groups.items():
                if group["metrics"]["model"]:
                    rows += _metric_rows(run.name, task, adapter, group)
                    section.figures.append(_metric_figure(run.name, task, adapter, group))
    not_scored = [r.name for r in runs if r.evaluation is None]
    if not_scored:
        section.intro += (
            f"{', '.join(not_scored)}: not evaluation-mode runs (no held-out labels), so no "
            "metrics; the sections below still describe them."
        )
    if len(rows) > 1:
        section.table = rows
        section.intro += (
            " model: the scored users only; overall: the rejected users counted as misses "
            "(ranking tasks)."
        )
    return section


def _metric_rows(run: str, task: str, adapter: str, group: dict[str, Any]) -> list[list[str]]:
    ci = group.get("metrics_ci", {})
    overall = group.get("metrics_overall", {})
    rows = []
    for metric, value in group["metrics"]["model"].items():
        bounds = (ci.get("model") or {}).get(metric)
        interval = f"[{bounds['ci_low']:.4f}, {bounds['ci_high']:.4f}]" if bounds else "-"
        baselines = [(group["metrics"][b] or {}).get(metric) for b in BASELINES]
        counts = [str(group["users"]), str(group["rejected"])]
        rows.append(
            [run, task, adapter, *counts, metric, _number(value), interval]
            + [_number(v) for v in (overall.get(metric), *baselines)]
        )
    return rows


def _metric_figure(run: str, task: str, adapter: str, group: dict[str, Any]) -> Figure:
    chart_id = _slug("metrics", run, task, adapter)
    bars = (
        f"Bars: 95% intervals from a per-user bootstrap ({RESAMPLES:,} resamples)."
        if group.get("metrics_ci")
        else "No intervals for this task."
    )
    return _figure(
        chart_id,
        f"{task} / {adapter} ({run}): model against the baselines",
        f"{group['users']:,} users scored ({group['rejected']:,} rejected). {bars}",
        charts.metric_bars(chart_id, group["metrics"], group.get("metrics_ci", {})),
    )


def _differences(comparisons: dict[str, list[dict[str, Any]]]) -> Section:
    section = Section("Paired differences")
    if not comparisons:
        section.intro = (
            "One run and one adapter per task: nothing to compare. Give two or more RUNs, or "
            "a run with several adapters."
        )
    for task, found in comparisons.items():
        rows = []
        notes = []
        for c in found:
            name = f"{c['first']} minus {c['second']}"
            if not c["metrics"] or all(v is None for v in c["metrics"].values()):
                notes.append(f"{name}: fewer than two users in common, no comparison")
                continue
            insignificant = [m for m, v in c["metrics"].items() if v and not v["significant"]]
            if insignificant:
                notes.append(f"{name}: not significant at 95% for {', '.join(insignificant)}")
            for metric, v in c["metrics"].items():
                if v is not None:
                    rows.append({"label": f"{name}: {metric}", **v})
        if not rows:
            section.intro += " ".join(notes)
            continue
        users = ", ".join(f"{c['first']} minus {c['second']}: {c['users']:,}" for c in found)
        chart_id = _slug("differences", task)
        section.figures.append(
            _figure(
                chart_id,
                f"{task}: paired differences between runs and adapters",
                f"Paired bootstrap over the users both scored ({users} users; {RESAMPLES:,} "
                f"resamples). Lower is better for rmse and mae. {'; '.join(notes)}",
                charts.differences(chart_id, rows),
            )
        )
    return section


def _positions(entities: list[Entity]) -> Section:
    section = Section("Position bias")
    for e in entities:
        bias = e.group().get("position_bias")
        if not bias:
            continue
        chart_id = _slug("position", e.run.name, e.task, e.adapter)
        orders = bias.get("orders", 1)
        tau = bias.get("kendall_tau")
        more = f" {orders} presentation orders per user (Kendall tau {tau:.3f})." if tau else ""
        p = bias["model"]["top1_uniform_p"]
        uniform = f" Top-1 positions uniform? chi-square p = {p:.3g}." if p is not None else ""
        section.figures.append(
            _figure(
                chart_id,
                f"{e.task} / {e.adapter} ({e.run.name}): hit rate @1 by presented position",
                f"{sum(bias['users']):,} users, grouped by where their held-out item stood "
                f"(users per position: {', '.join(map(str, bias['users']))}); bars: the share of "
                f"users whose top-ranked candidate stood there.{uniform}{more}",
                charts.by_position(chart_id, bias),
            )
        )
    return section


def _probabilities(entities: list[Entity]) -> Section:
    section = Section("Calibration of prob")
    for e in entities:
        found = e.group().get("calibration")
        if not found:
            continue
        chart_id = _slug("calibration", e.run.name, e.task, e.adapter)
        section.figures.append(
            _figure(
                chart_id,
                f"{e.task} / {e.adapter} ({e.run.name}): calibration of prob",
                f"{found['candidates']:,} candidates of {e.group()['users']:,} users in "
                f"{len(found['bins'])} equal-width bins of prob. AUC {found['auc']:.3f}, "
                f"log-loss {found['log_loss']:.3f}, Brier {found['brier']:.3f}, "
                f"ECE {found['ece']:.3f}.",
                charts.reliability(
                    chart_id,
                    [(b["mean_prob"], b["hit_rate"], b["n"]) for b in found["bins"]],
                    (0.0, 1.0),
                    ("mean prob (model)", "share that is the held-out item"),
                    "candidates",
                ),
            )
        )
    return section


def _ratings(entities: list[Entity]) -> Section:
    section = Section("Rating prediction")
    for e in entities:
        tables = e.group().get("tables")
        if not tables:
            continue
        users = sum(r["n"] for r in tables["reliability"])
        name = f"{e.task} / {e.adapter} ({e.run.name})"
        rel_id = _slug("reliability", e.run.name, e.task, e.adapter)
        conf_id = _slug("confusion", e.run.name, e.task, e.adapter)
        section.figures += [
            _figure(
                rel_id,
                f"{name}: reliability of the expected rating",
                f"{users:,} users with a prediction, binned by the expected rating (nearest "
                "scale value); on the diagonal the model's expectation is right on average.",
                charts.reliability(
                    rel_id,
                    [(r["mean_expected"], r["mean_true"], r["n"]) for r in tables["reliability"]],
                    (min(tables["scale"]), max(tables["scale"])),
                    ("expected rating (model)", "mean true rating"),
                    "users",
                ),
            ),
            _figure(
                conf_id,
                f"{name}: true rating against the most likely rating",
                f"{users:,} users; a half star counts at the nearest scale value.",
                charts.confusion(conf_id, tables["confusion"], tables["scale"]),
            ),
        ]
    return section


def _distributions(runs: list[Run]) -> Section:
    section = Section("Score distributions")
    for run in runs:
        for task in run.manifests[0].config.prompts.tasks:
            values = {a: s.to_numpy() for a, s in run.scores(task).items() if s.len()}
            if not values:
                continue
            what = "expected rating" if spec(task).result is ResultKind.RATING else "score"
            chart_id = _slug("scores", run.name, task.value)
            rows = "candidate rows" if spec(task).result is ResultKind.RANKING else "users"
            section.figures.append(
                _figure(
                    chart_id,
                    f"{task.value} ({run.name}): {what} per adapter",
                    f"All {rows} with a finite {what} (legend: how many per adapter), "
                    f"{_users(run, task)} users.",
                    charts.distributions(chart_id, values, what),
                )
            )
    return section


def _throughput(runs: list[Run]) -> Section:
    section = Section("Throughput")
    for run in runs:
        units = run.units()
        if units.is_empty() or units["finished_at"].null_count() == units.height:
            section.intro += f"{run.name}: no unit records with times (_units.ndjson). "
            continue
        units = units.filter(pl.col("finished_at").is_not_null() & (pl.col("score_s") > 0))
        start = (units["finished_at"] - units["score_s"] - units["build_s"]).min()
        series = {}
        for (task,), group in units.sort("finished_at").group_by("task", maintain_order=True):
            seconds = group["score_s"].to_numpy()
            series[str(task)] = {
                "minutes": (group["finished_at"].to_numpy() - start) / 60,
                "prompts_per_s": group["prompts"].to_numpy() / seconds,
                "tokens_per_s": group["prompt_tokens"].to_numpy() / seconds,
            }
        chart_id = _slug("throughput", run.name)
        section.figures.append(
            _figure(
                chart_id,
                f"{run.name}: throughput over the run",
                f"One point per unit (a batch of one task, {units.height:,} units over "
                f"{len(run.folders)} folder(s), {run.users:,} users): its prompts and prompt "
                "tokens per second of scoring, at the time it finished.",
                charts.throughput(chart_id, series),
            )
        )
    return section


def _outcomes(runs: list[Run]) -> Section:
    section = Section("Rows scored and rejected")
    for run in runs:
        rows: list[dict[str, Any]] = [
            {"label": f"{task.value} / {adapter}", "scored": c.scored, "reasons": c.reasons}
            for task in run.manifests[0].config.prompts.tasks
            for adapter, c in run.counts(task).items()
        ]
        rejected = sum(sum(r["reasons"].values()) for r in rows)
        chart_id = _slug("outcomes", run.name)
        section.figures.append(
            _figure(
                chart_id,
                f"{run.name}: rows scored and rejected by reason",
                f"{run.users:,} users in the shard(s); {rejected:,} rejected rows over all "
                "tasks and adapters (rejects.parquet holds each with its reason).",
                charts.outcomes(chart_id, rows),
            )
        )
    return section


def _users(run: Run, task: Task) -> str:
    return ", ".join(f"{a}: {c.scored:,}" for a, c in run.counts(task).items())


def _run_rows(runs: list[Run]) -> list[dict[str, str]]:
    out = []
    for run in runs:
        first = run.manifests[0]
        out.append(
            {
                "name": run.name,
                "path": str(run.path),
                "run_ids": ", ".join(m.run_id for m in run.manifests),
                "users": f"{run.users:,}",
                "tasks": ", ".join(t.value for t in first.config.prompts.tasks),
                "model": first.model.name if first.model else "-",
                "engine": first.engine or "-",
                "finished": max(m.timings.finished_at for m in run.manifests),
                "note": run.evaluation.result["note"] if run.evaluation else "",
            }
        )
    return out


def _number(value: float | None) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.4f}"


__all__ = ["Report", "build_report", "write_report"]
