"""Whether a run's probabilities and ratings can be taken at their word.

Ranking tasks (likelihood mode, where ``prob`` exists): every candidate's ``prob`` against its
label (held out or not): ROC AUC, log-loss and Brier score (scikit-learn), and the expected
calibration error over ``BINS`` equal-width bins of ``prob`` (the share-weighted gap between the
mean ``prob`` and the hit rate in each bin; scikit-learn has none), with the bins themselves.
rp: the confusion table of the true rating against ``rating_argmax`` and a reliability table of
the expected rating (``rating``) against the mean true rating, both over the scale's values (a
true rating off the scale, e.g. a half star, counts at the nearest value).
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.metrics import brier_score_loss, confusion_matrix, log_loss, roc_auc_score

BINS = 10
Array = npt.NDArray[np.float64]


def probability_calibration(label: npt.NDArray[np.bool_], prob: Array) -> dict[str, Any] | None:
    """AUC, log-loss, Brier score, ECE and the bins; None without both outcomes."""
    if label.all() or not label.any():
        return None
    edges = np.linspace(0.0, 1.0, BINS + 1)
    which = np.clip(np.digitize(prob, edges[1:-1]), 0, BINS - 1)
    bins = []
    ece = 0.0
    for b in range(BINS):
        inside = which == b
        n = int(inside.sum())
        mean_prob = float(prob[inside].mean()) if n else None
        hit_rate = float(label[inside].mean()) if n else None
        if n:
            ece += n / len(prob) * abs(float(label[inside].mean()) - float(prob[inside].mean()))
        bins.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "n": n,
                "mean_prob": mean_prob,
                "hit_rate": hit_rate,
            }
        )
    return {
        "candidates": len(prob),
        "auc": float(roc_auc_score(label, prob)),
        "log_loss": float(log_loss(label, prob, labels=[False, True])),
        "brier": float(brier_score_loss(label, prob)),
        "ece": ece,
        "bins": bins,
    }


def rating_tables(
    truth: Array, expected: Array, argmax: Array, scale: Sequence[float]
) -> dict[str, Any]:
    """The confusion table (rows: true, columns: ``argmax``) and the reliability table of the
    expected rating, over the scale's values."""
    values = np.asarray(scale, dtype=float)
    true_at = _nearest(truth, values)
    confusion = confusion_matrix(true_at, _nearest(argmax, values), labels=range(len(values)))
    expected_at = _nearest(expected, values)
    rows = []
    for i, value in enumerate(values):
        inside = expected_at == i
        n = int(inside.sum())
        rows.append(
            {
                "rating": float(value),
                "n": n,
                "mean_expected": float(expected[inside].mean()) if n else None,
                "mean_true": float(truth[inside].mean()) if n else None,
            }
        )
    return {
        "scale": values.tolist(),
        "confusion": confusion.tolist(),
        "reliability": rows,
    }


def _nearest(ratings: Array, values: Array) -> npt.NDArray[np.int64]:
    """Each rating's index among the scale's values (the nearest; ties to the lower)."""
    return np.asarray(np.abs(ratings[:, None] - values[None, :]).argmin(axis=1))
