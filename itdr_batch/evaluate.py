"""Metrics of a finished evaluation-mode run, next to a random and a popularity baseline.

Every metric comes from a maintained library (scikit-learn, sacrebleu, Google's rouge-score), so
the numbers mean what they mean elsewhere. Baselines see the same users and candidates as the
model. A failed model output is never dropped, which would flatter the model: it counts as the
worst answer (held-out item ranked last, the rating farthest from the truth, no attributes, empty
text), and each group reports how many users failed.
"""

import math
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import sacrebleu
from rich.table import Table
from rouge_score import rouge_scorer
from sklearn.metrics import (
    accuracy_score,
    label_ranking_average_precision_score,
    mean_absolute_error,
    mean_squared_error,
    ndcg_score,
    top_k_accuracy_score,
)

from itdr_batch.errors import ItdrError
from itdr_batch.hashing import file_digest
from itdr_batch.intervals import Values, intervals, paired, ranking_values, rating_values
from itdr_batch.position_bias import position_bias
from itdr_batch.reliability import probability_calibration, rating_tables
from itdr_batch.run.folder import MANIFEST
from itdr_batch.run.manifest import AdapterCounts, Manifest, ManifestError, read_record
from itdr_batch.scoring.parsing import normalise
from itdr_batch.tables.sink import write_json_atomic
from itdr_batch.tasks import ResultKind, Task, spec

BASELINES = ("random", "popularity")
HIT_KS = (1, 5, 10)
NDCG_KS = (5, 10)
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
# The name a null adapter (the base model) gets in the result.
BASE = "base"

Matrix = npt.NDArray[np.float64]
Metrics = dict[str, float]


class EvaluationError(ItdrError):
    """The run directory cannot be evaluated: what is wrong and where."""


@dataclass(frozen=True)
class Evaluation:
    """``result``: what ``evaluation.json`` holds. ``users``: per (task, adapter) of a ranking or
    rating task, the model's per-user metric values keyed by the run's ``key`` column, so two runs
    can be compared on the users both scored (``itdr_batch.intervals.compare``)."""

    result: dict[str, Any]
    users: dict[tuple[str, str], pl.DataFrame]
    key: str
    seed: int


def evaluate(run_dir: Path, interactions_path: Path | None = None) -> dict[str, Any]:
    """Metrics per task and adapter for the model and both baselines (JSON-serialisable).

    The baselines read the run's interactions table: the manifest's, or ``interactions_path``
    (a moved copy); either way its content must be the run's (the manifest's sha256).
    """
    return evaluation([run_dir], interactions_path).result


def evaluation(run_dirs: Sequence[Path], interactions_path: Path | None = None) -> Evaluation:
    """``evaluate`` over one run, or over the shards of one job (a night: the same job on
    disjoint users, each shard on its own interactions) as one run of all their users."""
    manifests = _manifests(run_dirs)
    if interactions_path is not None and len(run_dirs) > 1:
        raise EvaluationError("--interactions names the table of one run, not of several shards")
    first = manifests[0]
    config, key = first.config, first.key
    interactions = _Interactions(
        [
            (interactions_path or m.config.data.interactions, m.inputs["interactions"].sha256)
            for m in manifests
        ]
    )
    if config.data.item_counts is not None and "item_counts" in first.inputs:
        # A shard run on its own interactions: popularity is the whole table's, as it sampled.
        interactions.use_counts(config.data.item_counts, first.inputs["item_counts"].sha256)
    tasks: dict[str, Any] = {}
    users: dict[tuple[str, str], pl.DataFrame] = {}
    absent: dict[str, str] = {}
    for task in config.prompts.tasks:
        frame = _read_task(run_dirs, manifests, task)
        kind = spec(task).result
        groups: dict[str, Any] = {}
        for adapter, group in _by_adapter(frame, key):
            if kind is ResultKind.RANKING:
                groups[adapter], per_user = _ranking(
                    group, key, task, interactions.counts(), config.seed
                )
                users[task.value, adapter] = per_user
            elif kind is ResultKind.RATING:
                scale = config.scoring.rating_scale
                ratings = interactions.ratings(scale)
                groups[adapter], per_user = _rating(group, key, ratings, scale, config.seed)
                users[task.value, adapter] = per_user
            elif kind is ResultKind.ATTRIBUTES:
                groups[adapter] = _attributes(group, config.seed)
            else:
                groups[adapter] = _text(group)
        # Rows the job rejected (no prompt, engine failure, unparsable output) are not in the
        # task's file: their count says how much of the shard the metrics cover.
        counts = task_counts(manifests, task)
        for adapter, group in groups.items():
            group["rejected"] = counts[adapter].rejected if adapter in counts else 0
            if kind is ResultKind.RANKING and group["metrics"]["model"]:
                group["metrics_overall"] = _overall(group)
        if kind is ResultKind.TEXT and not any(g["metrics"]["model"] for g in groups.values()):
            absent[task.value] = _why_no_text_metrics(groups, counts)
        tasks[task.value] = groups
    note = _note(first, tasks, absent)
    ids = [m.run_id for m in manifests]
    result = {"run_id": "+".join(ids), "tasks": tasks, "note": note}
    if len(ids) > 1:
        result["runs"] = ids
    return Evaluation(result, users, key, config.seed)


def write_json(result: dict[str, Any], path: Path) -> None:
    write_json_atomic(result, path)


def render(result: dict[str, Any]) -> Table:
    """One row per (task, adapter, metric): the model next to the baselines, 4 decimals."""
    table = Table(title=f"Evaluation of run {result.get('run_id')}")
    columns = ("task", "adapter", "users", "rejected", "metric", "model", "95% CI", *BASELINES)
    for name in columns:
        table.add_column(name, justify="left" if name in ("task", "adapter", "metric") else "right")
    for task, groups in result["tasks"].items():
        for adapter, group in groups.items():
            model = group["metrics"]["model"] or {}
            for metric, value in model.items():
                baselines = [(group["metrics"][b] or {}).get(metric) for b in BASELINES]
                interval = group.get("metrics_ci", {}).get("model", {}).get(metric)
                cells = [_number(value), _interval(interval), *map(_number, baselines)]
                users, rejected = str(group["users"]), str(group["rejected"])
                table.add_row(task, adapter, users, rejected, metric, *cells)
    if result.get("note"):
        table.caption = result["note"]
    return table


def _manifest(run_dir: Path) -> Manifest:
    path = run_dir / MANIFEST
    if not path.is_file():
        raise EvaluationError(f"{run_dir} has no {MANIFEST}: not a run directory")
    try:
        manifest = read_record(path, Manifest)
    except ManifestError as exc:
        raise EvaluationError(str(exc)) from exc
    if manifest.status != "complete":
        raise EvaluationError(
            f"{path}: run status is {manifest.status!r}, not 'complete'; evaluate a finished run"
        )
    if manifest.dry_run:
        raise EvaluationError(f"{path}: a dry run holds prompts, not scores")
    if not manifest.config.prompts.evaluation:
        raise EvaluationError(
            f"{path}: not an evaluation-mode run (config.prompts.evaluation is false), "
            "so it has no held-out labels"
        )
    return manifest


def run_folders(path: Path) -> list[Path]:
    """The run folders of ``path``: itself when it is one, else the runs one level down (a
    night's shards); empty when neither."""
    if (path / MANIFEST).is_file():
        return [path]
    return sorted(p.parent for p in path.glob(f"*/{MANIFEST}"))


def _manifests(run_dirs: Sequence[Path]) -> list[Manifest]:
    """Each run's manifest; several must be one job's shards (only their data differs)."""
    if not run_dirs:
        raise EvaluationError("no run folder to evaluate")
    manifests = [_manifest(d) for d in run_dirs]
    first = manifests[0]
    job = first.config.model_dump(mode="json", exclude={"data", "output"})
    for run_dir, manifest in zip(run_dirs[1:], manifests[1:], strict=True):
        if (
            manifest.key != first.key
            or manifest.config.model_dump(mode="json", exclude={"data", "output"}) != job
        ):
            raise EvaluationError(
                f"{run_dir / MANIFEST}: not a shard of the same job as {run_dirs[0]} (its "
                "configuration differs beyond data and output); evaluate such runs apart"
            )
    return manifests


def _read_task(run_dirs: Sequence[Path], manifests: Sequence[Manifest], task: Task) -> pl.DataFrame:
    """The task's results of every run; a task without its file is an error, and so is a user
    in two shards (each would count twice)."""
    frames: list[pl.DataFrame] = []
    for run_dir, manifest in zip(run_dirs, manifests, strict=True):
        if task.value not in manifest.files:
            raise EvaluationError(f"{run_dir / MANIFEST}: no entry in files for task {task!r}")
        path = run_dir / manifest.files[task.value]
        if not path.is_file():
            raise EvaluationError(f"missing result file for task {task.value!r}: {path}")
        frames.append(_read_results(path).with_columns(_run=pl.lit(len(frames))))
    frame = pl.concat(frames, how="vertical_relaxed")
    key = manifests[0].key
    runs = frame.group_by(key).agg(pl.col("_run").n_unique())
    shared = runs.filter(pl.col("_run") > 1).sort(key)
    if shared.height:
        raise EvaluationError(
            f"{key} {shared[key][0]!r} was scored for {task.value!r} by more than one of "
            f"{', '.join(map(str, run_dirs))} ({shared.height} in all): shards hold disjoint users"
        )
    return frame.drop("_run")


def _read_results(path: Path) -> pl.DataFrame:
    try:
        return pl.read_parquet(path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise EvaluationError(f"{path}: cannot be read as Parquet ({exc})") from exc


def task_counts(manifests: Sequence[Manifest], task: Task) -> dict[str, AdapterCounts]:
    """Per adapter, the runs' counts of ``task`` added up (a night's shards as one run)."""
    summed: dict[str, AdapterCounts] = {}
    for manifest in manifests:
        for adapter, c in manifest.counts.tasks.get(task.value, {}).items():
            was = summed.get(adapter, AdapterCounts(scored=0, rejected=0, reasons={}))
            reasons = Counter(was.reasons) + Counter(c.reasons)
            summed[adapter] = AdapterCounts(
                scored=was.scored + c.scored,
                rejected=was.rejected + c.rejected,
                reasons=dict(reasons),
            )
    return summed


def _by_adapter(frame: pl.DataFrame, key: str) -> Iterator[tuple[str, pl.DataFrame]]:
    """Rows per adapter, the base model first, rows in key order (deterministic baselines)."""
    frame = frame.sort(key, maintain_order=True)
    adapters = frame["adapter"].unique().sort(nulls_last=False).to_list()
    for adapter in adapters:
        chosen = pl.col("adapter").is_null() if adapter is None else pl.col("adapter") == adapter
        yield BASE if adapter is None else adapter, frame.filter(chosen)


def _verify(path: Path, sha256: str, what: str, fix: str) -> None:
    """``path`` is the run's ``what``, byte for byte: another file would give other baselines
    without a word. ``fix`` says how to give it the right one."""
    if not path.is_file():
        raise EvaluationError(
            f"the baselines need the run's {what}, {path}, which is missing; {fix}"
        )
    found = file_digest(path)
    if found != sha256:
        raise EvaluationError(
            f"{path} is not the run's {what} (sha256 {found[:12]}, the run read "
            f"{sha256[:12]}); {fix}"
        )


class _Interactions:
    """The run's interactions table (a night's: its shards' tables together), read only if a
    baseline needs it, and at most once each."""

    def __init__(self, tables: list[tuple[Path, str]]) -> None:
        self.tables = tables
        self.path = tables[0][0] if len(tables) == 1 else tables[0][0].parent
        self._verified = False
        self._counts: pl.DataFrame | None = None
        self._ratings: tuple[pl.DataFrame, float] | None = None

    def _scan(self, *columns: str) -> pl.LazyFrame:
        if not self._verified:
            self._verify()
        scan = pl.scan_parquet([path for path, _ in self.tables])
        absent = set(columns) - set(scan.collect_schema().names())
        if absent:
            raise EvaluationError(f"{self.path} has no column(s) {sorted(absent)}")
        return scan.select(columns)

    def _verify(self) -> None:
        fix = "pass --interactions with a copy of the table the run read"
        for path, sha256 in self.tables:
            _verify(path, sha256, "interactions table", fix)
        self._verified = True

    def use_counts(self, path: Path, sha256: str) -> None:
        """Item counts from ``path`` (the run's ``data.item_counts``, checked like the table)."""
        _verify(path, sha256, "item counts", "put the counts the run read back at that path")
        self._counts = pl.read_parquet(path).select("item_id", "count")

    def counts(self) -> pl.DataFrame:
        """``item_id``, ``count``: interactions per item over the whole table."""
        if self._counts is None:
            self._counts = self._scan("item_id").group_by("item_id").len("count").collect()
        return self._counts

    def ratings(self, scale: list[float] | tuple[float, ...]) -> tuple[pl.DataFrame, float]:
        """Per item the sum and count of its ratings, and the global mean rating: only ratings
        within the scale count (as in the job's prompts), so NaN, infinite and out-of-scale ones
        never reach the averages."""
        if self._ratings is None:
            rated = pl.col("rating").is_between(min(scale), max(scale))
            scan = self._scan("item_id", "rating").filter(rated)
            stats = scan.group_by("item_id").agg(
                pl.col("rating").sum().alias("rating_sum"),
                pl.col("rating").count().alias("rating_count"),
            )
            mean = scan.select(pl.col("rating").mean()).collect().item()
            if mean is None:
                raise EvaluationError(
                    f"{self.path} holds no ratings for the RP popularity baseline"
                )
            self._ratings = (stats.collect(), float(mean))
        return self._ratings


def _ranking(
    group: pl.DataFrame, key: str, task: Task, counts: pl.DataFrame, seed: int
) -> tuple[dict[str, Any], pl.DataFrame]:
    """HR@k, NDCG@k, MRR and P@5 over users, each user's candidates one row of a score matrix;
    and the model's per-user values."""
    group = group.with_columns(pl.col("label").fill_null(False), pl.col("score").fill_nan(None))
    per_user = group.group_by(key).agg(pl.col("label").sum().alias("labels"))
    bad = per_user.filter(pl.col("labels") != 1).sort(key)
    if bad.height:
        raise EvaluationError(
            f"{task.value} results: {key} {bad[key][0]!r} has {bad['labels'][0]} candidates "
            f"labelled true ({bad.height} user(s) in all); an evaluation run has exactly one "
            "per user"
        )
    group = group.sort(key, "position").with_columns(
        row=pl.col(key).rle_id(),
        col=pl.int_range(pl.len()).over(key),
        has_score=pl.col("score").is_not_null().all().over(key),
        has_rank=pl.col("rank").is_not_null().all().over(key),
    )
    # The list as written: `rank` (it follows `scoring.rank_by`, and several presentation
    # orders' fused scores); a user without one failed: held-out item last.
    model = (
        pl.when("has_rank")
        .then(-pl.col("rank").cast(pl.Float64))
        .when("has_score")
        .then(pl.col("score"))
        .otherwise(pl.when("label").then(-1.0).otherwise(0.0))
    )
    counts = counts.with_columns(pl.col("item_id").cast(group["item_id"].dtype, strict=False))
    popularity = (
        group.select("item_id")
        .join(counts, on="item_id", how="left", maintain_order="left")["count"]
        .fill_null(0)
    )
    group = group.with_columns(model=model, popularity=popularity)
    rows, cols = group["row"].to_numpy(), group["col"].to_numpy()
    n = int(rows.max()) + 1
    # Padding ranks below every real candidate with relevance 0, which changes no metric; a width
    # above the largest k also keeps sklearn's top-k from reading 2-item lists as binary labels.
    width = max(int(cols.max()) + 1, max(HIT_KS) + 1)
    relevance = np.zeros((n, width), dtype=np.int64)
    relevance[rows, cols] = group["label"].to_numpy()
    present = np.zeros((n, width), dtype=bool)
    present[rows, cols] = True
    draws = np.random.default_rng(seed).random((n, width))
    scores = {
        "model": _scatter(_ordinal(group, "model", key, tie="rank"), (n, width)),
        "random": _padded(np.where(present, draws, np.nan)),
        "popularity": _scatter(_ordinal(group, "popularity", key), (n, width)),
    }
    failed = group.filter(~pl.col("has_score") & ~pl.col("has_rank"))[key].n_unique()
    values = {name: ranking_values(relevance, s, HIT_KS, NDCG_KS) for name, s in scores.items()}
    # Rows of the matrices are users in key order (``row`` above).
    per_user = pl.DataFrame({key: group[key].unique(maintain_order=True), **values["model"]})
    return {
        "users": n,
        "failed": failed,
        "metrics": {name: _ranking_metrics(relevance, s) for name, s in scores.items()},
        **_uncertainty(values, seed),
        "calibration": _probabilities(group),
        # Columns are presented positions: each user's candidates sorted by position above.
        "position_bias": position_bias(relevance, present, scores) | _orders(group, key),
    }, per_user


def _orders(group: pl.DataFrame, key: str) -> dict[str, Any]:
    """Presentation orders per user (``scoring.permutations``) and, with several, the mean over
    users of the Kendall tau between the rankings of a user's orders (1: the order never mattered).
    """
    orders = group["n_perms"].max() if "n_perms" in group.columns else None
    if not isinstance(orders, int) or orders < 2:
        return {"orders": 1, "kendall_tau": None}
    tau = group.group_by(key).agg(pl.col("kendall_tau").first())["kendall_tau"].mean()
    return {"orders": orders, "kendall_tau": tau}


def _ordinal(group: pl.DataFrame, column: str, key: str, tie: str = "position") -> pl.DataFrame:
    """Strictly ordered scores (0 best, then -1, ...): equal values go to the lower ``tie``.

    The three sklearn metrics treat ties differently (NDCG averages over them, top-k accuracy picks
    the later column, label-ranking AP the worst case), so ties are broken once: the model's as
    its own ``rank`` does (one order: by presented position; several: not by position, which
    would bring a positional bias back), a baseline's by position. Exact, unlike adding
    ``-position * 1e-9``.
    """
    ordered = group.sort(
        [key, column, tie, "position"], descending=[False, True, False, False], nulls_last=True
    )
    return ordered.select("row", "col", value=-pl.int_range(pl.len()).over(key).cast(pl.Float64))


def _scatter(values: pl.DataFrame, shape: tuple[int, int]) -> Matrix:
    matrix = np.full(shape, np.nan)
    matrix[values["row"].to_numpy(), values["col"].to_numpy()] = values["value"].to_numpy()
    return _padded(matrix)


def _padded(matrix: Matrix) -> Matrix:
    """Padding (NaN) becomes a score below the row's minimum."""
    floor = np.nanmin(matrix, axis=1, keepdims=True) - 1.0
    return np.where(np.isnan(matrix), floor, matrix)


def _ranking_metrics(relevance: npt.NDArray[np.int64], scores: Matrix) -> Metrics:
    target = relevance.argmax(axis=1)
    labels = np.arange(relevance.shape[1])
    metrics = {f"hr@{k}": top_k_accuracy_score(target, scores, k=k, labels=labels) for k in HIT_KS}
    # Scores are tie-free but for the padding (relevance 0, where order does not count), so
    # sklearn's per-row tie averaging, 60x slower, would change nothing.
    metrics |= {f"ndcg@{k}": ndcg_score(relevance, scores, k=k, ignore_ties=True) for k in NDCG_KS}
    # With exactly one relevant item per list, label-ranking average precision is 1/rank: MRR.
    metrics["mrr"] = label_ranking_average_precision_score(relevance, scores)
    # One relevant item per list: P@5 = hits in the top 5 / 5 = HR@5 / 5.
    metrics["p@5"] = metrics["hr@5"] / 5
    return {name: float(value) for name, value in metrics.items()}


def _rating(
    group: pl.DataFrame,
    key: str,
    ratings: tuple[pl.DataFrame, float],
    scale: list[float] | tuple[float, ...],
    seed: int,
) -> tuple[dict[str, Any], pl.DataFrame]:
    """RMSE and MAE of the predicted ratings over users whose held-out rating is known (and
    finite), a non-finite prediction counting as failed; and the model's per-user values."""
    group = group.filter(pl.col("label").is_finite()).with_columns(
        rating=pl.when(pl.col("rating").is_finite()).then("rating")
    )
    if group.is_empty():
        return _empty(), pl.DataFrame({key: group[key]})
    stats, global_mean = ratings
    stats = stats.with_columns(pl.col("item_id").cast(group["item_id"].dtype, strict=False))
    low, high = min(scale), max(scale)
    # A failed prediction counts as the end of the scale farthest from the truth.
    worst = pl.when(pl.col("label") - low > high - pl.col("label")).then(low).otherwise(high)
    # The item's mean rating without this user's held-out rating, which would leak the answer
    # (the held-out interaction is in the table: evaluation mode keeps it out of the prompt only);
    # the global mean where no other rating of the item is left.
    # Signed: an item without ratings (count 0 or none) must give -1, not wrap around as a u32.
    others = pl.col("rating_count").fill_null(0).cast(pl.Int64) - 1
    popularity = (
        pl.when(others > 0)
        .then((pl.col("rating_sum") - pl.col("label")) / others)
        .otherwise(global_mean)
    )
    group = group.join(stats, on="item_id", how="left", maintain_order="left").select(
        key,
        "label",
        model=pl.col("rating").fill_null(worst),
        popularity=popularity,
        failed=pl.col("rating").is_null(),
        # Generate mode has one number: it is both the expected and the most likely rating.
        argmax=pl.col("rating_argmax").fill_null(pl.col("rating")),
    )
    predicted = group.filter(~pl.col("failed"))
    truth = group["label"].to_numpy()
    predictions = {
        "model": group["model"].to_numpy(),
        "random": np.random.default_rng(seed).choice(np.asarray(scale, float), group.height),
        "popularity": group["popularity"].to_numpy(),
    }
    values = {n: rating_values(truth, p) for n, p in predictions.items()}
    return {
        "users": group.height,
        "failed": int(group["failed"].sum()),
        "metrics": {
            name: {
                "rmse": math.sqrt(mean_squared_error(truth, p)),
                "mae": float(mean_absolute_error(truth, p)),
            }
            for name, p in predictions.items()
        },
        **_uncertainty(values, seed),
        "tables": rating_tables(
            predicted["label"].to_numpy(),
            predicted["model"].to_numpy(),
            predicted["argmax"].to_numpy(),
            scale,
        ),
    }, pl.DataFrame({key: group[key], **values["model"]})


def _overall(group: dict[str, Any]) -> Metrics:
    """The model's ranking metrics with the rejected users counted as misses (0), beside the
    scored-only ``metrics``."""
    users, rejected = group["users"], group["rejected"]
    share = users / (users + rejected) if users + rejected else 0.0
    return {name: value * share for name, value in group["metrics"]["model"].items()}


def _probabilities(group: pl.DataFrame) -> dict[str, Any] | None:
    """The model's ``prob`` against the labels (likelihood mode; null in generate mode)."""
    scored = group.filter(pl.col("prob").is_finite())
    if scored.is_empty():
        return None
    return probability_calibration(scored["label"].to_numpy(), scored["prob"].to_numpy())


def _uncertainty(values: dict[str, Values], seed: int) -> dict[str, Any]:
    """Each scorer's per-metric bootstrap interval (``metrics_ci``) and the model minus each
    baseline on the same users (``model_vs``), from per-user values (``itdr_batch.intervals``)."""
    return {
        "metrics_ci": {name: intervals(v, seed) for name, v in values.items()},
        "model_vs": {b: paired(values["model"], values[b], seed) for b in BASELINES},
    }


def _fields(entries: list[dict[str, str | None]] | None) -> dict[str, str]:
    """Key/value entries, normalised as the UAP parser does its keys; empty values say nothing."""
    pairs = ((normalise(e["key"] or ""), normalise(e["value"] or "")) for e in entries or [])
    return {k: v for k, v in pairs if k and v}


def _attributes(group: pl.DataFrame, seed: int) -> dict[str, Any]:
    """Accuracy per attribute key in the labels, and their mean; a missing prediction is wrong."""
    group = group.filter(pl.col("label").is_not_null())
    truths = [_fields(v) for v in group["label"].to_list()]
    predicted = [_fields(v) for v in group["fields"].to_list()]
    attributes = sorted({k for truth in truths for k in truth})
    if not attributes:
        return _empty(group.height)
    rng = np.random.default_rng(seed)
    scores: dict[str, Metrics] = {"model": {}, "random": {}, "popularity": {}}
    for attribute in attributes:
        rows = [i for i, truth in enumerate(truths) if attribute in truth]
        y_true = [truths[i][attribute] for i in rows]
        values = sorted(set(y_true))
        tally = Counter(y_true)
        guesses = {
            # "" never equals a true value: those with nothing in them were dropped above.
            "model": [predicted[i].get(attribute, "") for i in rows],
            "random": [str(v) for v in rng.choice(values, len(rows))],
            # The most frequent true value; among equals the first in sorted order.
            "popularity": [max(values, key=tally.__getitem__)] * len(rows),
        }
        for name, y_pred in guesses.items():
            scores[name][f"accuracy/{attribute}"] = float(accuracy_score(y_true, y_pred))
    for metrics in scores.values():
        metrics["accuracy"] = float(np.mean(list(metrics.values())))
    return {
        "users": group.height,
        "failed": sum(not p for p in predicted),
        "metrics": scores,
    }


def _text(group: pl.DataFrame) -> dict[str, Any]:
    """Corpus BLEU (0-100) and mean ROUGE F-measures against the reference texts."""
    group = group.filter(pl.col("label").is_not_null())
    if group.is_empty():
        return _empty()
    hypotheses = [t or "" for t in group["text"].to_list()]
    references: list[str] = group["label"].to_list()
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES))
    rouge = [scorer.score(r, h) for r, h in zip(references, hypotheses, strict=True)]
    metrics = {"bleu": float(sacrebleu.corpus_bleu(hypotheses, [references]).score)}
    metrics |= {t: float(np.mean([s[t].fmeasure for s in rouge])) for t in ROUGE_TYPES}
    return {
        "users": group.height,
        "failed": sum(not h for h in hypotheses),
        "metrics": {"model": metrics, "random": None, "popularity": None},
    }


def _empty(users: int = 0) -> dict[str, Any]:
    return {
        "users": users,
        "failed": 0,
        "metrics": {"model": None, "random": None, "popularity": None},
    }


def _why_no_text_metrics(groups: dict[str, Any], counts: Mapping[str, AdapterCounts]) -> str:
    """Why a text task has no BLEU/ROUGE: said, as an empty table would say nothing."""
    if groups:
        return (
            "no scored row has a reference text (a `reference` column in the shard, or the "
            "review an evaluation run holds out)"
        )
    rejected = sum(c.rejected for c in counts.values())
    return f"no row was scored ({rejected} rejected: see rejects.parquet)"


def _note(manifest: Manifest, tasks: dict[str, Any], absent: Mapping[str, str]) -> str:
    sentences = [
        "random and popularity are baselines on the same users and candidates; failed model "
        "outputs count as the worst answer."
    ]
    text_tasks = sorted(t for t in tasks if not spec(t).has_baselines)
    if text_tasks:
        sentences.append(
            f"{', '.join(text_tasks)}: no baselines (null), as free text has no candidates."
        )
    sentences += [f"{task}: no BLEU/ROUGE, as {why}." for task, why in absent.items()]
    if manifest.model is not None and manifest.model.untrained:
        sentences.append(
            "The model is untrained: its metrics show the pipeline working, not model quality."
        )
    return " ".join(sentences)


def _interval(interval: dict[str, float] | None) -> str:
    if interval is None:
        return "-"
    return f"[{interval['ci_low']:.4f}, {interval['ci_high']:.4f}]"


def _number(value: float | None) -> str:
    """A metric with 4 decimals; "-" where it is undefined (null in the JSON)."""
    return "-" if value is None or not math.isfinite(value) else f"{value:.4f}"
