"""Position bias of a ranking run: how a scorer's results depend on where candidates stood.

LLM rankers favour candidates by their place in the prompt's list, not only by the user (LLMRank,
Hou et al. 2024). Per presented position (0: first in the list), over the users whose held-out
item stood there: each scorer's hit rate @1 and mean rank of that item; and over all users, the
share whose top-ranked candidate stood there. Without position bias the hit rate is flat over
positions and the top-1 shares are uniform; the chi-square p-value (scipy) says how surprising the
observed top-1 shares are under uniformity. The random baseline shows the noise at this size.
"""

from typing import Any

import numpy as np
import numpy.typing as npt
from rich.table import Table
from scipy.stats import chisquare

from itdr_batch.intervals import ranks


def position_bias(
    relevance: npt.NDArray[np.int64],
    present: npt.NDArray[np.bool_],
    scores: dict[str, npt.NDArray[np.float64]],
) -> dict[str, Any]:
    """``relevance`` (users x positions, one 1 per row), ``present`` (the real candidates) and
    tie-free ``scores`` per scorer (padding below every candidate), as ``evaluate`` builds them."""
    held = relevance.argmax(axis=1)
    lengths = present.sum(axis=1)
    width = int(lengths.max())
    at = [held == p for p in range(width)]
    # Top-1 uniformity is tested on the users shown the longest list (one expected share each).
    full = lengths == width
    testable = width > 1 and full.sum() > 1
    out: dict[str, Any] = {
        "position": list(range(width)),
        "users": [int(m.sum()) for m in at],
        "users_with_full_list": int(full.sum()),
    }
    for name, matrix in scores.items():
        rank = ranks(relevance, matrix)
        top = matrix.argmax(axis=1)
        counts = np.bincount(top[full], minlength=width)[:width]
        out[name] = {
            "hr@1": [float((rank[m] == 1).mean()) if m.any() else None for m in at],
            "mean_rank": [float(rank[m].mean()) if m.any() else None for m in at],
            "top1_share": (np.bincount(top, minlength=width)[:width] / len(top)).tolist(),
            "top1_uniform_p": float(chisquare(counts).pvalue) if testable else None,
        }
    return out


def render_position_bias(result: dict[str, Any]) -> Table | None:
    """One row per (task, adapter, position): the held-out item's users there, hit rate @1 and
    mean rank (model, random), and the model's top-1 share; None without ranking tasks."""
    table = Table(title="Position bias: by where the held-out item was presented (0 = first)")
    columns = ("task", "adapter", "position", "users", "hr@1", "random", "mean rank", "top-1 share")
    for name in columns:
        table.add_column(name, justify="left" if name in ("task", "adapter") else "right")
    notes = []
    for task, groups in result["tasks"].items():
        for adapter, group in groups.items():
            bias = group.get("position_bias")
            if not bias:
                continue
            model, random = bias["model"], bias["random"]
            for p, users in zip(bias["position"], bias["users"], strict=True):
                cells = (model["hr@1"][p], random["hr@1"][p], model["mean_rank"][p])
                shown = ["-" if v is None else f"{v:.3f}" for v in cells]
                table.add_row(
                    task, adapter, str(p), str(users), *shown, f"{model['top1_share'][p]:.3f}"
                )
            if bias.get("kendall_tau") is not None:
                notes.append(
                    f"{task}/{adapter}: {bias['orders']} orders per user, mean Kendall tau "
                    f"between a user's orders {bias['kendall_tau']:.3f}"
                )
            if model["top1_uniform_p"] is not None:
                p_model, p_random = model["top1_uniform_p"], random["top1_uniform_p"]
                notes.append(
                    f"{task}/{adapter}: top-1 positions uniform? chi-square p = {p_model:.3g} "
                    f"(random baseline: {p_random:.3g})"
                )
    if not table.row_count:
        return None
    table.caption = "; ".join(notes)
    return table
