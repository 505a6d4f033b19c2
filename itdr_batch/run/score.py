"""Stage 2 of a unit: score its prompts with every adapter (or, in a dry run, keep them).

Reads: the unit's ``Built`` frame (key, prompt columns, ``reason``, ``truth``). Writes: the
unit's results (the contract's rows) and rejects (key, ``reason``, ``detail``) over all adapters,
and the counts of its ``UnitRecord``. Rows with a reason are rejected before the engine; of the
scored, those without a usable result (too long, engine errors after the retries, unparsable
text where no fallback exists) are rejected after it. A row scored in several presentation
orders is fused into one (``itdr_batch.run.orders``) and counts once.
"""

import logging
import time
from dataclasses import dataclass, replace

import polars as pl

from itdr_batch.run.build import Built
from itdr_batch.run.calibration import Priors, with_calibrated_rating, with_pmi
from itdr_batch.run.manifest import UnitRecord
from itdr_batch.run.orders import fuse_orders
from itdr_batch.run.plan import Plan
from itdr_batch.run.results import (
    conform,
    dry_run_schema,
    rejects_frame,
    results_frame,
    scored_frame,
)
from itdr_batch.scoring import Row, Scored, Scorer, rows_from_prompts
from itdr_batch.status import REJECT_REASON, ScoreStatus
from itdr_batch.tasks import spec

log = logging.getLogger(__name__)

# Prompt columns counting data left out of a row's prompt -> the manifest's name for it.
LEFT_OUT = {
    # Ids in the shard's `candidates` that are not items: dropped before sampling.
    "unknown_candidates": "unknown_candidate_ids",
    # RP/IR: interactions without a rating inside the scale, left out of the history.
    "unrated": "unrated_interactions",
}
# Scored statuses that leave nothing to report (ranked lists always fall back to an order).
SCORE_REJECTS = (ScoreStatus.PROMPT_TOO_LONG, ScoreStatus.ENGINE_ERROR)


class EngineCrashed(RuntimeError):
    """Every request of a batch failed: the engine, not the data, is broken. The run stops and
    resumes from this batch when run again."""


@dataclass(frozen=True)
class ScoredUnit:
    results: pl.DataFrame
    rejects: pl.DataFrame
    record: UnitRecord


def score_unit(plan: Plan, scorers: dict[str, Scorer], built: Built, priors: Priors) -> ScoredUnit:
    """``built`` scored with each adapter; ``scorers`` by task (empty in a dry run); ``priors``
    keeps the run's content-free scores (``scoring.pmi``, ``calibrate_ratings``)."""
    started = time.perf_counter()
    task, key = built.task, plan.ids.key
    ok = built.prompts.filter(pl.col("reason").is_null())
    # A row's orders share its reason: one reject per row.
    refused = built.prompts.filter(pl.col("reason").is_not_null() & (pl.col("order") == 0)).select(
        key, "reason", detail=pl.lit(None, pl.String)
    )
    orders = plan.config.orders(task)
    engine = None if plan.dry_run else scorers[task].engine
    if engine is not None:
        # A cold prefix cache per unit: its floats then depend on its own prompts only (a cached
        # prefix runs other kernels), so a resumed run writes the uninterrupted run's rows.
        engine.forget()
        engine_before = replace(engine.tokens)
    results, rejects = [], []
    scored: dict[str, int] = {}
    rejected: dict[str, dict[str, int]] = {}
    prompts = prompt_tokens = 0
    for adapter in plan.adapter_names:
        if plan.dry_run:
            kept = ok.with_columns(run_id=pl.lit(plan.run_id))
            results.append(conform(kept, dry_run_schema(task, plan.ids)))
            unit_rejects = refused
            prompts += ok.height
            kept = kept.filter(pl.col("order") == 0)
        else:
            scorer = scorers[task]
            tokens_before = scorer.prompt_tokens
            rows = rows_from_prompts(ok, adapter)
            outcome = _score_with_retries(scorer, rows, plan.config.scoring.retries)
            prompts += len(rows)
            prompt_tokens += scorer.prompt_tokens - tokens_before
            frame = pl.concat(
                [ok.drop("status", "reason"), scored_frame(task, outcome)], how="horizontal"
            ).with_columns(reason=_score_reject(task))
            frame = fuse_orders(frame, key, orders, plan.config.mode(task))
            if built.content_free is not None:
                frame = _calibrated(plan, scorer, priors, built, frame, adapter)
            kept = frame.filter(pl.col("reason").is_null())
            model = plan.config.model_path().name
            results.append(results_frame(task, plan.ids, kept, adapter, model, plan.run_id))
            failed = frame.filter(pl.col("reason").is_not_null()).select(key, "reason", "detail")
            unit_rejects = pl.concat([refused, failed])
        rejects.append(rejects_frame(plan.ids, task, adapter, unit_rejects, plan.run_id))
        name = adapter or "base"
        scored[name] = kept.height
        reasons = unit_rejects["reason"].cast(pl.String).value_counts(sort=True, name="n")
        rejected[name] = dict(sorted(reasons.iter_rows()))
    record = UnitRecord(
        batch=built.batch,
        task=str(task),
        rows=built.prompts.height // orders,
        scored=scored,
        rejected=rejected,
        prompts=prompts,
        prompt_tokens=prompt_tokens,
        left_out=_left_out(built.prompts),
        engine_tokens={} if engine is None else engine.tokens.since(engine_before),
        path=None if plan.dry_run else scorers[task].path,
        build_s=built.seconds,
        score_s=time.perf_counter() - started,
        finished_at=time.time(),
    )
    return ScoredUnit(pl.concat(results), pl.concat(rejects), record)


def _calibrated(
    plan: Plan,
    scorer: Scorer,
    priors: Priors,
    built: Built,
    frame: pl.DataFrame,
    adapter: str | None,
) -> pl.DataFrame:
    """``frame`` calibrated against the content-free prompt (``run.calibration``): ranking tasks
    gain ``score_pmi`` from their candidates' priors, RP ``rating_calibrated``."""
    assert built.content_free is not None

    def score(rows: list[Row]) -> list[Scored]:
        scored = _score_with_retries(scorer, rows, plan.config.scoring.retries)
        failed = next((s for s in scored if s.scores is None), None)
        if failed is not None:
            raise EngineCrashed(
                f"the content-free prompt of {built.task} failed in the engine ({failed.status}: "
                f"{failed.detail}); the run stops here and resumes from this batch"
            )
        return scored

    if not spec(built.task).ranking:
        prior = priors.scale(built.task, adapter, built.content_free, score)
        return with_calibrated_rating(frame, prior, plan.config.scoring.rating_scale)
    items = (
        frame.filter(pl.col("reason").is_null())
        .select(item_id="candidates", title="candidate_titles")
        .explode("item_id", "title")
    )
    table = priors.of(built.task, adapter, items, built.content_free, score)
    return with_pmi(frame, table, plan.config.scoring.rank_by)


def _left_out(prompts: pl.DataFrame) -> dict[str, int]:
    """Per kind, how much of the rows' data their prompts do not show (counted, never silent)."""
    counts = {
        kind: int(prompts[column].sum())
        for column, kind in LEFT_OUT.items()
        if column in prompts.columns
    }
    return {kind: n for kind, n in counts.items() if n}


def _score_reject(task: str) -> pl.Expr:
    """Why a scored row has no usable result; null when it has one."""
    status = pl.col("status").cast(pl.String)
    unusable = [s.value for s in SCORE_REJECTS]
    if not spec(task).ranking:
        unusable.append(ScoreStatus.UNPARSED.value)
    return pl.when(status.is_in(unusable)).then(status).cast(REJECT_REASON)


def _score_with_retries(scorer: Scorer, rows: list[Row], retries: int) -> list[Scored]:
    """Scores ``rows``, sending those the engine failed on again up to ``retries`` times."""
    scored = scorer.score(rows)
    for _ in range(retries):
        failed = [i for i, s in enumerate(scored) if s.status == ScoreStatus.ENGINE_ERROR]
        if not failed:
            break
        log.warning("%d requests failed in the engine; retrying them", len(failed))
        for i, again in zip(failed, scorer.score([rows[i] for i in failed]), strict=True):
            scored[i] = again
    if len(rows) > 1 and all(s.status == ScoreStatus.ENGINE_ERROR for s in scored):
        raise EngineCrashed(
            f"all {len(rows)} requests of the batch failed in the engine "
            f"(first: {scored[0].detail}); the run stops here and resumes from this batch"
        )
    return scored
