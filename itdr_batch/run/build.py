"""Stage 1 of a unit (one batch of shard rows, one task): its prompts, reject reasons and truth.

Reads: the batch's shard rows (the key; the shard's attribute or ``reference`` columns for
evaluation truth), their interactions only (``itdr_batch.run.extract``), the items. Writes a
frame, one row per shard row and presentation order (``order``; ranking tasks with
``scoring.permutations`` > 1 have several) in shard order: the prompt columns of ``build_prompts``,
``reason`` (why the row cannot be scored, null when it can) and ``truth``
(``itdr_batch.run.results.TRUTH``).
"""

import time
from dataclasses import dataclass

import polars as pl

from itdr_batch.prompts.build import ROW, prepare, rated
from itdr_batch.run.plan import Plan
from itdr_batch.run.results import TRUTH, truth_dtype
from itdr_batch.status import REJECT_REASON, PromptStatus, RejectReason
from itdr_batch.tasks import ResultKind, Task, spec

# Rows without interactions, by the shard's key.
UNKNOWN = {"user_id": RejectReason.UNKNOWN_USER, "item_id": RejectReason.UNKNOWN_ITEM}
# Prompt statuses of rows that get no prompt or must not be scored: their reject reason.
INPUT_REJECTS = {
    PromptStatus.EMPTY_HISTORY: RejectReason.EMPTY_HISTORY,
    PromptStatus.TOO_FEW_CANDIDATES: RejectReason.TOO_FEW_CANDIDATES,
    PromptStatus.NO_TARGET: RejectReason.NO_TARGET,
}


@dataclass(frozen=True)
class Built:
    """One unit's prompts, with ``reason`` and ``truth``, and how long building took."""

    batch: int
    task: Task
    prompts: pl.DataFrame
    seconds: float
    # Calibrated tasks (``scoring.pmi``, ``calibrate_ratings``): the task's content-free prompt.
    content_free: str | None = None


def build_unit(plan: Plan, batch: int, task: Task, interactions: pl.DataFrame) -> Built:
    """A batch's prompts for one task, from its rows' ``interactions`` (``Extract.batch``)."""
    started = time.perf_counter()
    key = plan.ids.key
    rows = plan.shard.slice(batch * plan.batch_size, plan.batch_size).collect()
    prompt_config = plan.config.prompt_config(task)
    prepared = prepare(
        rows, interactions, plan.items, prompt_config, plan.item_counts, extracted=True
    )
    prompts = prepared.render_orders(plan.config.orders(task))
    # Rows with interactions: those whose position (``ROW``) the batch's interactions name.
    known = plan.items[key] if key == "item_id" else rows[key].gather(interactions[ROW].unique())
    reason = (
        pl.when(~pl.col(key).is_in(known.implode()))
        .then(pl.lit(UNKNOWN[key].value))
        .otherwise(
            pl.col("status")
            .cast(pl.String)
            .replace_strict({s.value: r.value for s, r in INPUT_REJECTS.items()}, default=None)
        )
        .cast(REJECT_REASON)
    )
    truth = _truth(plan, task, rows, prompts, interactions)
    prompts = prompts.with_columns(reason=reason, truth=truth)
    content_free = prepared.content_free_prompt() if plan.config.calibrated(task) else None
    return Built(batch, task, prompts, time.perf_counter() - started, content_free)


def _truth(
    plan: Plan, task: Task, rows: pl.DataFrame, prompts: pl.DataFrame, interactions: pl.DataFrame
) -> pl.Series:
    """Evaluation truth per row: the held-out item (ranking), its rating, the user's attributes
    (the shard's columns) or a reference text: the shard's ``reference`` column where it has one
    (ground truth the user provides), else the held-out review. Null outside evaluation runs."""
    dtype = truth_dtype(task, plan.ids)
    none = pl.repeat(None, rows.height, dtype=dtype, eager=True)
    if not plan.config.prompts.evaluation:
        return none.alias(TRUTH)
    result = spec(task).result
    if result is ResultKind.RANKING:
        return prompts["held_out_item_id"].alias(TRUTH)
    if result is ResultKind.RATING:
        # The held-out entry: the last interaction RP shows (a rating within the scale).
        # The interactions are in (row, time) order already (``Extract.batch``).
        shown = interactions.filter(rated(plan.config.prompt_config(task)))
        last = shown.group_by(ROW).agg(pl.col("rating").last())
        joined = rows.with_row_index(ROW).join(last, on=ROW, how="left", maintain_order="left")
        return joined["rating"].cast(dtype).alias(TRUTH)
    if result is ResultKind.ATTRIBUTES:
        names = [n.replace(" ", "_") for n in plan.config.prompt_config(task).attribute_names]
        present = [c for c in names if c in rows.columns]
        if not present:
            return none.alias(TRUTH)
        pairs = pl.concat_list(
            pl.struct(key=pl.lit(name), value=pl.col(name).cast(pl.String)) for name in present
        ).list.eval(pl.element().filter(pl.element().struct.field("value").is_not_null()))
        return rows.select(pairs.cast(dtype).alias(TRUTH)).to_series()
    reference = prompts["held_out_text"]
    if "reference" in rows.columns:
        reference = rows["reference"].cast(pl.String).fill_null(reference)
    return reference.alias(TRUTH)
