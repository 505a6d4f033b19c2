"""Stage 2c of a unit scored against a content-free prompt: item-prior calibration of ranking
tasks' likelihood scores (``scoring.pmi``) and contextual calibration of RP's rating scale
(``scoring.calibrate_ratings``).

Reads: a unit's fused rows (``candidates``, ``candidate_titles``, ``score``, ``rank``, ``prob``,
``reason``) and its task's content-free prompt (``Built.content_free``: every list shown as
``N/A``). Writes ``score_pmi``: per candidate, the score minus the mean log-probability of the
same answer after the content-free prompt (domain-conditional PMI, Holtzman et al. 2021, with the
content-free input of Zhao et al. 2021): what the user adds beyond how readily the model names
the item anyway. With ``scoring.rank_by = "score_pmi"``, ``rank`` (ties: presented position) and
``prob`` (softmax) follow it.

An item's prior depends only on the task's template, the adapter and the item's answer, so it is
scored once per run, by the first unit that shows the item (in chunks of ``CHUNK`` answers after
one prompt, in order of first appearance), and kept in ``_parts/priors/<task>.<adapter>.parquet``:
later units and a resumed run read it back instead of scoring it again.

RP: the content-free prompt's log-probabilities of the scale's ratings, p(r | N/A), scored once
per run and adapter the same way; ``rating_calibrated`` is the expected rating under
p(r | prompt) / p(r | N/A), renormalised (Zhao et al.'s contextual calibration with a diagonal
W), beside the uncalibrated ``rating``.
"""

from collections.abc import Callable, Sequence
from pathlib import Path

import polars as pl

from itdr_batch.scoring import Row, Scored
from itdr_batch.tables.sink import write_parquet_atomic
from itdr_batch.tasks import Task

# Answers scored after the content-free prompt per request.
CHUNK = 64
PRIOR = "prior"
# The run folder's work area for them (under ``_parts``).
PRIORS = "priors"


class Priors:
    """What a run's content-free prompts scored (item priors; RP: the scale's), per task and
    adapter, kept under ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._known: dict[Path, pl.DataFrame] = {}

    def of(
        self,
        task: Task,
        adapter: str | None,
        items: pl.DataFrame,
        prompt: str,
        score: Callable[[list[Row]], Sequence[Scored]],
    ) -> pl.DataFrame:
        """``item_id`` and ``prior`` of ``items`` (``item_id``, ``title``), scoring with ``score``
        (after ``prompt``) those no earlier unit of the run did; ``score`` raises rather than
        return a failed row."""
        path, known = self._kept(task, adapter)
        new = items.unique("item_id", maintain_order=True)
        if known is not None:
            new = new.join(known, on="item_id", how="anti", maintain_order="left")
        if new.height:
            titles = new["title"].to_list()
            chunks = [titles[i : i + CHUNK] for i in range(0, len(titles), CHUNK)]
            priors: list[float] = []
            for scored in score([Row(prompt, chunk, adapter) for chunk in chunks]):
                assert scored.scores is not None, "score() returns scored rows or raises"
                priors.extend(scored.scores)
            scored_items = new.select("item_id", pl.Series(PRIOR, priors, pl.Float64))
            known = scored_items if known is None else pl.concat([known, scored_items])
            self._keep(path, known)
        assert known is not None
        return known

    def scale(
        self,
        task: Task,
        adapter: str | None,
        prompt: str,
        score: Callable[[list[Row]], Sequence[Scored]],
    ) -> list[float]:
        """The rating scale's log-probabilities after ``prompt``: scored by the run's first unit,
        read back from the run folder by the others and by a resumed run."""
        path, known = self._kept(task, adapter)
        if known is None:
            (scored,) = score([Row(prompt, (), adapter)])
            assert scored.scores is not None, "score() returns scored rows or raises"
            known = pl.DataFrame({PRIOR: scored.scores}, schema={PRIOR: pl.Float64})
            self._keep(path, known)
        return known[PRIOR].to_list()

    def _kept(self, task: Task, adapter: str | None) -> tuple[Path, pl.DataFrame | None]:
        """Where ``task`` and ``adapter``'s scores are kept, and those kept so far (this process
        holds them once read; a resumed run reads them from the folder)."""
        path = self.folder / f"{task}.{adapter or 'base'}.parquet"
        known = self._known.get(path)
        if known is None and path.is_file():
            known = self._known[path] = pl.read_parquet(path)
        return path, known

    def _keep(self, path: Path, known: pl.DataFrame) -> None:
        write_parquet_atomic(known, path)
        self._known[path] = known


def with_calibrated_rating(
    frame: pl.DataFrame, prior: Sequence[float], scale: Sequence[float]
) -> pl.DataFrame:
    """``frame`` (RP rows with the scale's log-probabilities in ``score``) with
    ``rating_calibrated``: the expected rating under p(r | prompt) / p(r | content-free prompt),
    normalised (contextual calibration, Zhao et al. 2021)."""
    frame = frame.with_row_index("__row")
    table = pl.DataFrame(
        {"__at": range(len(scale)), PRIOR: prior, "__rating": scale},
        schema={"__at": pl.UInt32, PRIOR: pl.Float64, "__rating": pl.Float64},
    )
    long = (
        frame.filter(pl.col("score").is_not_null())
        .select("__row", "score", __at=pl.int_ranges(pl.col("score").list.len(), dtype=pl.UInt32))
        .explode("score", "__at")
        .join(table, on="__at", how="left", maintain_order="left")
        .with_columns(shifted=pl.col("score") - pl.col(PRIOR))
        .with_columns(weight=(pl.col("shifted") - pl.col("shifted").max().over("__row")).exp())
    )
    expected = long.group_by("__row", maintain_order=True).agg(
        rating_calibrated=(pl.col("weight") * pl.col("__rating")).sum() / pl.col("weight").sum()
    )
    return frame.join(expected, on="__row", how="left", maintain_order="left").drop("__row")


def with_pmi(frame: pl.DataFrame, priors: pl.DataFrame, rank_by: str) -> pl.DataFrame:
    """``frame`` (one row per user) with ``score_pmi``, and ``rank``/``prob`` from it when
    ``rank_by`` says so; rows without scores (rejected) keep null lists."""
    frame = frame.with_row_index("__user")
    long = (
        frame.filter(pl.col("score").is_not_null())
        .select("__user", item_id="candidates", score="score")
        .explode("item_id", "score")
        .join(priors, on="item_id", how="left", maintain_order="left")
        .with_columns(score_pmi=pl.col("score") - pl.col(PRIOR))
    )
    columns: tuple[str, ...] = ("score_pmi",)
    if rank_by == "score_pmi":
        long = long.with_columns(
            rank=pl.col("score_pmi").rank("ordinal", descending=True).over("__user"),
            prob=(pl.col("score_pmi") - pl.col("score_pmi").max().over("__user")).exp(),
        ).with_columns(prob=pl.col("prob") / pl.col("prob").sum().over("__user"))
        columns = ("score_pmi", "rank", "prob")
    lists = long.group_by("__user", maintain_order=True).agg(*columns)
    frame = frame.drop([c for c in columns if c in frame.columns])
    return frame.join(lists, on="__user", how="left", maintain_order="left").drop("__user")
