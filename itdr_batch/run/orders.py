"""Stage 2b of a ranking unit scored in several presentation orders: one row per user again.

Reads: a unit's scored prompts, a user's ``orders`` rows next to each other in order 0, 1, ...
(``build_unit``): ``order``, ``candidates``, ``rank``, ``score``, ``prob``, ``status``,
``reason``, ``detail``. Writes one row per user, order 0's columns (its candidate order is the
user's, as ``position`` reports it) with:

- ``score``: the candidate's mean score over the orders (generate mode: minus the mean rank, a
  Borda count: the whole ranking counts, as in LLMRank's summed ranks, and the fused score stays
  on the scale of one order's minus rank); ``score_std``: its spread (sample standard deviation);
- ``rank`` by that mean; exact ties (common for Borda, and what a purely positional scorer gives)
  break by a stable hash of (user, item), never by position, which would bring the bias back;
- ``prob``: likelihood mode, the softmax of the mean scores; otherwise null;
- ``kendall_tau``: the mean Kendall tau-b (scipy) between the rankings of the user's orders;
- ``status``: ``ok`` unless an order's is not (then the first such); ``reason``/``detail``: the
  first failed order's, so a user is scored only when every order is;
- ``n_perms``: the number of orders.

With one order nothing changes but ``n_perms`` (1); ``score_std`` and ``kendall_tau`` are null.
"""

import itertools
import math

import numpy as np
import polars as pl

from itdr_batch import _core
from itdr_batch.status import SCORE_STATUS, ScoreStatus
from itdr_batch.tasks import Mode

ROW = "__user"
ITEM = "__item"


def fuse_orders(frame: pl.DataFrame, key: str, orders: int, mode: Mode) -> pl.DataFrame:
    """``frame`` (``orders`` scored rows per user) as one row per user (see the module)."""
    if orders == 1:
        return frame.with_columns(n_perms=pl.lit(1, pl.UInt32))
    if frame.height % orders:
        raise ValueError(f"{frame.height} scored prompts are not {orders} orders per user")
    frame = frame.with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).floordiv(orders).alias(ROW))
    outcome = frame.group_by(ROW, maintain_order=True).agg(
        pl.col("reason").drop_nulls().first(),
        pl.col("detail").filter(pl.col("reason").is_not_null()).first(),
        status=pl.col("status").cast(pl.String).filter(pl.col("status") != ScoreStatus.OK).first(),
    )
    # A user with a failed order gets no scores: it is rejected with that order's reason.
    scored = frame.join(outcome.filter(pl.col("reason").is_null()).select(ROW), on=ROW)
    # Generate mode ranks without scores: minus the rank keeps "higher is better".
    filled = pl.col("score").fill_null(pl.col("rank").list.eval(-pl.element().cast(pl.Float64)))
    long = scored.select(ROW, key, "order", pl.col("candidates").alias(ITEM), filled).explode(
        ITEM, "score"
    )
    # A user's groups come in order 0's candidate order (its rows come first); the sorted sum
    # makes a candidate's mean independent of which order showed it where.
    stats = long.group_by(ROW, ITEM, maintain_order=True).agg(
        pl.first(key),
        mean=pl.col("score").sort().mean(),
        std=pl.col("score").std(),
    )
    stats = stats.with_columns(tie=_hash(stats[key]) ^ _hash(stats[ITEM]))
    ranked = (
        stats.with_row_index("__canonical")
        .sort(ROW, "mean", "tie", descending=[False, True, False], nulls_last=True)
        .with_columns(rank=(pl.int_range(pl.len(), dtype=pl.UInt32) + 1).over(ROW))
        .sort("__canonical")
    )
    prob = (pl.col("mean") - pl.col("mean").max()).exp()
    lists = ranked.group_by(ROW, maintain_order=True).agg(
        score=pl.col("mean"),
        score_std=pl.col("std"),
        rank=pl.col("rank"),
        prob=(prob / prob.sum()) if mode is Mode.LIKELIHOOD else pl.col("mean") * None,
    )
    return (
        frame.filter(pl.col("order") == 0)
        .drop("rank", "score", "prob", "status", "reason", "detail")
        .join(outcome, on=ROW, how="left", maintain_order="left")
        .join(lists, on=ROW, how="left", maintain_order="left")
        .join(_agreement(long, orders), on=ROW, how="left", maintain_order="left")
        .with_columns(
            status=pl.col("status").fill_null(ScoreStatus.OK.value).cast(SCORE_STATUS),
            n_perms=pl.lit(orders, pl.UInt32),
        )
        .drop(ROW)
    )


def _hash(ids: pl.Series) -> pl.Series:
    return pl.Series(_core.stable_hash(ids))


def _agreement(long: pl.DataFrame, orders: int) -> pl.DataFrame:
    """Per user, the mean Kendall tau-b between its orders' scores of the same candidates."""
    # Imported here: scipy.stats takes seconds to import, and every command starts by importing
    # the job, which needs it only for runs with several orders.
    from scipy.stats import kendalltau

    aligned = long.sort(ROW, "order", ITEM, maintain_order=True)
    users, taus = [], []
    for (user,), group in aligned.group_by(ROW, maintain_order=True):
        scores = group["score"].to_numpy().reshape(orders, -1)
        pairs = [kendalltau(a, b).statistic for a, b in itertools.combinations(scores, 2)]
        mean = float(np.mean(pairs))
        users.append(user)
        taus.append(None if math.isnan(mean) else mean)
    return pl.DataFrame(
        {ROW: users, "kendall_tau": taus}, schema={ROW: pl.UInt32, "kendall_tau": pl.Float64}
    )
