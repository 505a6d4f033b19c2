"""How sure a run's figures are: per-user bootstrap intervals and paired differences.

Each ranking and rating metric is a mean over users of a per-user value (hr@k: the held-out item
in the top k; ndcg@k: 1/log2(1 + rank) within k; mrr: 1/rank; p@5: hr@5/5; mae: the absolute
error; rmse: the root of the mean squared error), so resampling users (scipy.stats.bootstrap,
``RESAMPLES`` resamples, percentile intervals at ``CONFIDENCE``, seeded by the run's seed) gives
its interval. Two scorers on the same users (the model and a baseline) are compared pairwise: the
difference's interval, and a two-sided p-value from the bootstrap distribution (twice the share
of resampled differences on the far side of zero); two runs (or adapters) likewise on the users
both scored (``compare``). Percentile intervals, not BCa: BCa fails on a
metric every user shares (all hits), which small runs produce.
"""

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
from scipy.stats import bootstrap

RESAMPLES = 2000
CONFIDENCE = 0.95
# Values resampled at once per input (scipy holds resamples x users of them): ~160 MB, so a night
# of millions of users is bootstrapped in batches of resamples instead of all 2,000 at once.
RESAMPLED_VALUES = 20_000_000
# Per-user values -> the metric (along ``axis``, as scipy's vectorised statistics take them).
Statistic = Callable[[npt.NDArray[np.float64], int], npt.NDArray[np.float64]]
Values = dict[str, npt.NDArray[np.float64]]


def _mean(values: npt.NDArray[np.float64], axis: int = -1) -> npt.NDArray[np.float64]:
    return np.asarray(np.mean(values, axis=axis))


def _root_mean(values: npt.NDArray[np.float64], axis: int = -1) -> npt.NDArray[np.float64]:
    return np.asarray(np.sqrt(np.mean(values, axis=axis)))


# rmse's per-user value is the squared error; every other metric's is averaged as it is.
STATISTICS: dict[str, Statistic] = {"rmse": _root_mean}


def _bootstrap(data: tuple[Any, ...], statistic: Any, seed: int, paired: bool = False) -> Any:
    """scipy's percentile bootstrap with this module's settings, resampling users in batches of
    at most ``RESAMPLED_VALUES`` values per input."""
    users = len(data[0])
    return bootstrap(
        data,
        statistic,
        paired=paired,
        n_resamples=RESAMPLES,
        batch=max(1, min(RESAMPLES, RESAMPLED_VALUES // users)),
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=np.random.default_rng(seed),
    )


def ranks(relevance: npt.NDArray[np.int64], scores: npt.NDArray[np.float64]) -> npt.NDArray[Any]:
    """Each user's rank of the held-out item (1 = first) under tie-free ``scores``."""
    users = np.arange(relevance.shape[0])
    truth = scores[users, relevance.argmax(axis=1)]
    return np.asarray(1 + (scores > truth[:, None]).sum(axis=1))


def ranking_values(
    relevance: npt.NDArray[np.int64],
    scores: npt.NDArray[np.float64],
    hit_ks: tuple[int, ...],
    ndcg_ks: tuple[int, ...],
) -> Values:
    """Per user, the value each ranking metric averages."""
    rank = ranks(relevance, scores).astype(float)
    values = {f"hr@{k}": (rank <= k).astype(float) for k in hit_ks}
    values |= {f"ndcg@{k}": np.where(rank <= k, 1 / np.log2(rank + 1), 0.0) for k in ndcg_ks}
    values["mrr"] = 1 / rank
    values["p@5"] = (rank <= 5) / 5
    return values


def rating_values(truth: npt.NDArray[np.float64], predicted: npt.NDArray[np.float64]) -> Values:
    """Per user, the value RMSE (squared error) and MAE (absolute error) average."""
    error = predicted - truth
    return {"rmse": error**2, "mae": np.abs(error)}


def intervals(values: Values, seed: int) -> dict[str, dict[str, float] | None]:
    """Per metric, ``ci_low``/``ci_high`` of its bootstrap interval (None under two users)."""
    out: dict[str, dict[str, float] | None] = {}
    for name, per_user in values.items():
        if len(per_user) < 2:
            out[name] = None
            continue
        result = _bootstrap((per_user,), STATISTICS.get(name, _mean), seed)
        low, high = result.confidence_interval
        out[name] = {"ci_low": float(low), "ci_high": float(high)}
    return out


def paired(first: Values, second: Values, seed: int) -> dict[str, dict[str, float] | None]:
    """Per metric, ``first`` minus ``second`` on the same users: the difference, its bootstrap
    interval and a two-sided p-value (None under two users)."""
    out: dict[str, dict[str, float] | None] = {}
    for name, a in first.items():
        b = second[name]
        statistic = STATISTICS.get(name, _mean)
        difference = float(statistic(a, -1) - statistic(b, -1))
        if len(a) < 2:
            out[name] = None
            continue

        def gap(x: Any, y: Any, axis: int = -1, f: Statistic = statistic) -> Any:
            return f(x, axis) - f(y, axis)

        result = _bootstrap((a, b), gap, seed, paired=True)
        low, high = result.confidence_interval
        spread = result.bootstrap_distribution
        p_value = min(1.0, 2 * min(float(np.mean(spread <= 0)), float(np.mean(spread >= 0))))
        out[name] = {
            "difference": difference,
            "ci_low": float(low),
            "ci_high": float(high),
            "p_value": p_value,
        }
    return out


def compare(first: pl.DataFrame, second: pl.DataFrame, key: str, seed: int) -> dict[str, Any]:
    """``first`` minus ``second`` (per-user values keyed by ``key``, as ``evaluate`` gives them)
    on the users both scored: ``users`` and ``paired``'s figures per metric, each with
    ``significant`` (its interval leaves out zero); None under two users in common."""
    metrics = [c for c in first.columns if c != key and c in second.columns]
    theirs = second.select(key, *(pl.col(m).alias(f"second/{m}") for m in metrics))
    both = first.select(key, *metrics).join(theirs, on=key, how="inner")
    if both.height < 2:
        return {"users": both.height, "metrics": dict.fromkeys(metrics)}
    a = {m: both[m].to_numpy().astype(float) for m in metrics}
    b = {m: both[f"second/{m}"].to_numpy().astype(float) for m in metrics}
    differences = paired(a, b, seed)
    for figures in differences.values():
        if figures is not None:
            figures["significant"] = not figures["ci_low"] <= 0.0 <= figures["ci_high"]
    return {"users": both.height, "metrics": differences}
