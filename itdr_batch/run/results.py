"""The results contract (README, "Results"): one Parquet file per task, rejects with reasons.

Schemas follow each task's result kind (``itdr_batch.tasks``). Frames are built from a unit's
prompts and scores with Polars expressions and cast to the schema, so that a batch with no rows,
or with nothing but nulls in a column, has the same schema as any other and the parts
concatenate. Statuses and reasons are Polars ``Enum`` columns of ``itdr_batch.status``.
"""

from collections.abc import Sequence

import polars as pl

from itdr_batch.run.plan import Ids
from itdr_batch.scoring import Scored
from itdr_batch.status import REJECT_REASON, SCORE_STATUS
from itdr_batch.tasks import ResultKind, Task, spec

ATTRIBUTES = pl.List(pl.Struct({"key": pl.String, "value": pl.String}))
# The truth an evaluation run scores against, per result kind (null outside evaluation runs):
# the held-out item, its rating, the user's attributes, a reference text.
TRUTH = "truth"


def truth_dtype(task: Task, ids: Ids) -> pl.DataType:
    return {
        ResultKind.RANKING: ids.item_dtype,
        ResultKind.RATING: pl.Float64(),
        ResultKind.ATTRIBUTES: ATTRIBUTES,
        ResultKind.TEXT: pl.String(),
    }[spec(task).result]


def result_schema(task: Task, ids: Ids) -> pl.Schema:
    """The columns of a task's results file, in order."""
    columns: dict[str, pl.DataType] = {ids.key: ids.key_dtype, "adapter": pl.String()}
    result = spec(task).result
    if result is ResultKind.RANKING:
        columns |= {
            "item_id": ids.item_dtype,
            "position": pl.UInt32(),
            "rank": pl.UInt32(),
            "score": pl.Float64(),
            "prob": pl.Float64(),
            "status": SCORE_STATUS,
            "label": pl.Boolean(),
            # Presentation orders (``scoring.permutations``, ``itdr_batch.run.orders``).
            "score_std": pl.Float64(),
            # Item-prior calibration (``scoring.pmi``, ``itdr_batch.run.calibration``).
            "score_pmi": pl.Float64(),
            "n_perms": pl.UInt32(),
            "kendall_tau": pl.Float64(),
        }
    elif result is ResultKind.RATING:
        columns |= {
            "item_id": ids.item_dtype,
            "rating": pl.Float64(),
            "rating_argmax": pl.Float64(),
            "status": SCORE_STATUS,
            "label": pl.Float64(),
            # ``scoring.calibrate_ratings`` (``itdr_batch.run.calibration``).
            "rating_calibrated": pl.Float64(),
        }
    elif result is ResultKind.ATTRIBUTES:
        columns |= {"text": pl.String(), "fields": ATTRIBUTES, "status": SCORE_STATUS}
        columns["label"] = ATTRIBUTES
    else:
        columns |= {"text": pl.String(), "status": SCORE_STATUS, "label": pl.String()}
    return pl.Schema(columns | {"model": pl.String(), "run_id": pl.String()})


def dry_run_schema(task: Task, ids: Ids) -> pl.Schema:
    """A dry run's file per task: the prompts and candidates that would have been scored."""
    rules = spec(task)
    columns: dict[str, pl.DataType] = {ids.key: ids.key_dtype, "prompt": pl.String()}
    if rules.ranking:
        columns["candidates"] = pl.List(ids.item_dtype)
    if rules.result is ResultKind.RATING:
        columns["target_item_id"] = ids.item_dtype
    if rules.holds_out:
        columns["held_out_item_id"] = ids.item_dtype
    if rules.ranking:
        columns["held_out_position"] = pl.UInt32()
        columns["order"] = pl.UInt32()
    return pl.Schema(columns | {"run_id": pl.String()})


def rejects_schema(ids: Ids) -> pl.Schema:
    return pl.Schema(
        {
            "task": pl.String(),
            "adapter": pl.String(),
            ids.key: ids.key_dtype,
            "reason": REJECT_REASON,
            "detail": pl.String(),
            "run_id": pl.String(),
        }
    )


def scored_frame(task: Task, scored: Sequence[Scored]) -> pl.DataFrame:
    """What the scorer returned, one row per prompt, with the columns the task's results read,
    ``status`` and ``detail`` (the error or the unusable text, for rejects)."""
    result = spec(task).result
    columns: dict[str, pl.Series] = {
        "status": pl.Series([s.status for s in scored], dtype=pl.String).cast(SCORE_STATUS),
        "detail": pl.Series([s.detail or s.text for s in scored], dtype=pl.String),
    }
    if result is ResultKind.RANKING:
        columns["rank"] = pl.Series([s.ranks for s in scored], dtype=pl.List(pl.UInt32))
        columns["score"] = pl.Series([s.scores for s in scored], dtype=pl.List(pl.Float64))
        columns["prob"] = pl.Series([s.probs for s in scored], dtype=pl.List(pl.Float64))
    elif result is ResultKind.RATING:
        columns["rating"] = pl.Series([s.rating for s in scored], dtype=pl.Float64)
        columns["rating_argmax"] = pl.Series([s.rating_argmax for s in scored], dtype=pl.Float64)
        # The scale's log-probabilities, which calibration reads.
        columns["score"] = pl.Series([s.scores for s in scored], dtype=pl.List(pl.Float64))
    else:
        columns["text"] = pl.Series([s.text for s in scored], dtype=pl.String)
        if result is ResultKind.ATTRIBUTES:
            fields = [[{"key": k, "value": v} for k, v in s.fields.items()] for s in scored]
            columns["fields"] = pl.Series(fields, dtype=ATTRIBUTES)
    return pl.DataFrame(columns)


def results_frame(
    task: Task, ids: Ids, rows: pl.DataFrame, adapter: str | None, model: str, run_id: str
) -> pl.DataFrame:
    """Rows of the contract from scored prompts: ``rows`` holds the prompts' columns (key,
    candidates, targets, ``truth``) beside their ``scored_frame`` columns."""
    result = spec(task).result
    if result is ResultKind.RANKING:
        rows = rows.with_columns(
            item_id=pl.col("candidates"),
            position=pl.int_ranges(pl.col("candidates").list.len(), dtype=pl.UInt32),
            # Generate mode ranks without scores: -rank keeps "higher is better".
            score=pl.col("score").fill_null(pl.col("rank").list.eval(-pl.element().cast(float))),
            prob=pl.col("prob").fill_null(
                pl.col("rank").list.eval(pl.element().cast(float) * None)
            ),
        ).explode("item_id", "position", "rank", "score", "prob", *_spread(rows))
        # Evaluation: true for the held-out item (null outside evaluation runs).
        rows = rows.with_columns(label=pl.col("item_id") == pl.col(TRUTH))
    else:
        rows = rows.with_columns(label=TRUTH)
        if result is ResultKind.RATING:
            # The target: the shard's, or the held-out item in evaluation runs.
            held_out = "held_out_item_id" in rows.columns
            rows = rows.with_columns(item_id="held_out_item_id" if held_out else "target_item_id")
    rows = rows.with_columns(
        adapter=pl.lit(adapter, pl.String), model=pl.lit(model), run_id=pl.lit(run_id)
    )
    return conform(rows, result_schema(task, ids))


def _spread(rows: pl.DataFrame) -> list[str]:
    """The per-candidate lists a run has beyond one order's scores: the spread over several
    presentation orders, the calibrated score."""
    return [c for c in ("score_std", "score_pmi") if c in rows.columns]


def rejects_frame(
    ids: Ids, task: Task, adapter: str | None, rows: pl.DataFrame, run_id: str
) -> pl.DataFrame:
    """``rows`` (key, ``reason``, ``detail``) as rejects of ``task`` and ``adapter``."""
    rows = rows.with_columns(
        task=pl.lit(str(task)), adapter=pl.lit(adapter, pl.String), run_id=pl.lit(run_id)
    )
    return conform(rows, rejects_schema(ids))


def conform(frame: pl.DataFrame, schema: pl.Schema) -> pl.DataFrame:
    """``frame`` with exactly ``schema``'s columns, in order; those it lacks (e.g. no held-out
    item outside evaluation runs) as nulls."""
    return frame.select(
        pl.col(name).cast(dtype) if name in frame.columns else pl.lit(None, dtype).alias(name)
        for name, dtype in schema.items()
    )
