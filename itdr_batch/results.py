"""The results contract (README, "Results"): one Parquet file per task, rejects with reasons.

Every frame here is built with explicit dtypes, so that a batch with no rows, or with nothing
but nulls in a column, has the same schema as any other and the per-batch files concatenate.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import polars as pl

from itdr_batch.scoring import Scored
from itdr_batch.tasks import RANKING_TASKS, Task

ATTRIBUTES = pl.List(pl.Struct({"key": pl.String, "value": pl.String}))
# Why a row of the shard has no result for a task (and adapter).
REJECT_REASONS = (
    "unknown_user",
    "unknown_item",
    "empty_history",
    "too_few_candidates",
    "no_target",
    "prompt_too_long",
    "engine_error",
    "unparsed",
)


@dataclass(frozen=True)
class Ids:
    """The dtypes of the shard's key (user_id, or item_id for TUI) and of item ids."""

    key: str
    key_dtype: pl.DataType
    item_dtype: pl.DataType


def result_schema(task: Task, ids: Ids) -> pl.Schema:
    """The columns of a task's results file, in order."""
    columns: dict[str, pl.DataType] = {ids.key: ids.key_dtype, "adapter": pl.String()}
    if task in RANKING_TASKS:
        columns |= {
            "item_id": ids.item_dtype,
            "position": pl.UInt32(),
            "rank": pl.UInt32(),
            "score": pl.Float64(),
            "prob": pl.Float64(),
            "status": pl.String(),
            "label": pl.Boolean(),
        }
    elif task is Task.RP:
        columns |= {
            "item_id": ids.item_dtype,
            "rating": pl.Float64(),
            "rating_argmax": pl.Float64(),
            "status": pl.String(),
            "label": pl.Float64(),
        }
    elif task is Task.UAP:
        columns |= {"text": pl.String(), "fields": ATTRIBUTES, "status": pl.String()}
        columns["label"] = ATTRIBUTES
    else:
        columns |= {"text": pl.String(), "status": pl.String(), "label": pl.String()}
    return pl.Schema(columns | {"model": pl.String(), "run_id": pl.String()})


def dry_run_schema(task: Task, ids: Ids) -> pl.Schema:
    """A dry run's file per task: the prompts and candidates that would have been scored."""
    columns: dict[str, pl.DataType] = {ids.key: ids.key_dtype, "prompt": pl.String()}
    if task in RANKING_TASKS:
        columns["candidates"] = pl.List(ids.item_dtype)
    if task is Task.RP:
        columns["target_item_id"] = ids.item_dtype
    if task in RANKING_TASKS | {Task.RP}:
        columns["held_out_item_id"] = ids.item_dtype
    if task in RANKING_TASKS:
        columns["held_out_position"] = pl.UInt32()
    return pl.Schema(columns | {"run_id": pl.String()})


def rejects_schema(ids: Ids) -> pl.Schema:
    return pl.Schema(
        {
            "task": pl.String(),
            "adapter": pl.String(),
            ids.key: ids.key_dtype,
            "reason": pl.String(),
            "detail": pl.String(),
            "run_id": pl.String(),
        }
    )


def results_frame(
    task: Task,
    ids: Ids,
    rows: pl.DataFrame,
    scored: Sequence[Scored],
    adapter: str | None,
    labels: Sequence[Any],
    model: str,
    run_id: str,
) -> pl.DataFrame:
    """Rows of the contract for scored prompts; ``rows`` are the built prompts, in order."""
    columns: dict[str, list[Any]] = {name: [] for name in result_schema(task, ids)}
    keys = rows[ids.key].to_list()
    if task in RANKING_TASKS:
        candidates = rows["candidates"].to_list()
        for key, items, held_out, result in zip(keys, candidates, labels, scored, strict=True):
            ranks = result.ranks or []
            # Generate mode ranks without scores: -rank keeps "higher is better".
            scores = result.scores or [-float(r) for r in ranks]
            probs: list[float | None] = [*result.probs] if result.probs else [None] * len(items)
            for position, item in enumerate(items):
                columns[ids.key].append(key)
                columns["item_id"].append(item)
                columns["position"].append(position)
                columns["rank"].append(ranks[position])
                columns["score"].append(scores[position])
                columns["prob"].append(probs[position])
                columns["status"].append(result.status)
                columns["label"].append(None if held_out is None else item == held_out)
    else:
        for key, label, result in zip(keys, labels, scored, strict=True):
            columns[ids.key].append(key)
            columns["status"].append(result.status)
            columns["label"].append(label)
            if task is Task.RP:
                columns["rating"].append(result.rating)
                columns["rating_argmax"].append(result.rating_argmax)
            else:
                columns["text"].append(result.text)
                if task is Task.UAP:
                    columns["fields"].append(
                        [{"key": k, "value": v} for k, v in result.fields.items()]
                    )
        if task is Task.RP:
            # The target: the shard's, or the held-out item in evaluation runs.
            target = "held_out_item_id" if "held_out_item_id" in rows.columns else "target_item_id"
            columns["item_id"] = rows[target].to_list()
    n = len(columns[ids.key])
    columns["adapter"] = [adapter] * n
    columns["model"] = [model] * n
    columns["run_id"] = [run_id] * n
    return pl.DataFrame(columns, schema=result_schema(task, ids))


def rejects_frame(
    ids: Ids,
    task: Task,
    adapter: str | None,
    keys: Sequence[Any],
    reasons: Sequence[str],
    details: Sequence[str | None],
    run_id: str,
) -> pl.DataFrame:
    n = len(keys)
    return pl.DataFrame(
        {
            "task": [str(task)] * n,
            "adapter": [adapter] * n,
            ids.key: list(keys),
            "reason": list(reasons),
            "detail": list(details),
            "run_id": [run_id] * n,
        },
        schema=rejects_schema(ids),
    )
