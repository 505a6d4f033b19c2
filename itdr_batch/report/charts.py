"""The report's charts: matplotlib figures written as inline SVG.

Why matplotlib and SVG: the report must open offline from a laptop or a CI artifact, so it holds
no script at all; an SVG is vector (sharp at any zoom, prints), is part of the page's DOM (a
browser test can count the marks) and keeps its text as text. The object API (``Figure``, no
pyplot) holds no global state. Every mark drawn from data gets an id ``<chart>-data-<n>`` so the
rendered page shows which charts have data.
"""

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib import rcParams
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure

# Deterministic ids inside the SVG (clip paths), and text as text rather than glyph outlines.
rcParams["svg.hashsalt"] = "itdr-batch"
rcParams["svg.fonttype"] = "none"
WIDTH = 7.5
COLORS = {"model": "#1f77b4", "random": "#b0b0b0", "popularity": "#ff7f0e"}


class Chart:
    """One figure being drawn: its id, and a counter for the ids of its data marks."""

    def __init__(self, chart_id: str, height: float = 3.0, rows: int = 1) -> None:
        self.id = chart_id
        self.figure = Figure(figsize=(WIDTH, height), layout="constrained")
        self.axes: list[Axes] = [self.figure.add_subplot(rows, 1, r + 1) for r in range(rows)]
        self._marks = 0

    def mark(self, *artists: Any) -> None:
        """Tags data marks (artists, or containers of them) with this chart's data ids."""
        for artist in artists:
            inner = artist if isinstance(artist, Sequence) else [artist]
            for a in inner:
                if isinstance(a, Artist):
                    a.set_gid(f"{self.id}-data-{self._marks}")
                    self._marks += 1

    def svg(self) -> str:
        """The figure as an ``<svg>`` element (no XML prologue)."""
        buffer = io.StringIO()
        # No metadata block: it holds a date (the page would differ run to run) and RDF links.
        none = dict.fromkeys(("Date", "Creator", "Format", "Type"))
        self.figure.savefig(buffer, format="svg", metadata=none)
        text = buffer.getvalue()
        return text[text.index("<svg") :]


def metric_bars(
    chart_id: str, metrics: dict[str, dict[str, float] | None], ci: dict[str, Any]
) -> str:
    """Per metric, one bar per scorer (model, baselines) with its 95% interval where known."""
    chart = Chart(chart_id)
    ax = chart.axes[0]
    scorers = [s for s, m in metrics.items() if m]
    names = list(next(m for m in metrics.values() if m))
    width = 0.8 / len(scorers)
    x = np.arange(len(names))
    for i, scorer in enumerate(scorers):
        values = np.array([(metrics[scorer] or {}).get(n, np.nan) for n in names], dtype=float)
        bounds = [(ci.get(scorer) or {}).get(n) for n in names]
        # A percentile interval need not hold the estimate (a skewed metric, a tiny sample).
        errors = np.clip(
            [
                [v - b["ci_low"], b["ci_high"] - v] if b else [0.0, 0.0]
                for v, b in zip(values, bounds, strict=True)
            ],
            0.0,
            None,
        ).T
        bars = ax.bar(
            x + (i - (len(scorers) - 1) / 2) * width,
            values,
            width,
            yerr=errors,
            capsize=2,
            label=scorer,
            color=COLORS.get(scorer),
        )
        chart.mark(bars.patches)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.legend(fontsize="small", ncols=len(scorers))
    ax.grid(axis="y", alpha=0.3)
    return chart.svg()


def differences(chart_id: str, rows: list[dict[str, Any]]) -> str:
    """A forest plot: each (comparison, metric)'s difference with its interval; filled where the
    interval leaves out zero."""
    chart = Chart(chart_id, height=max(2.0, 0.28 * len(rows) + 0.8))
    ax = chart.axes[0]
    y = np.arange(len(rows))[::-1]
    for row, at in zip(rows, y, strict=True):
        low, high, diff = row["ci_low"], row["ci_high"], row["difference"]
        (line,) = ax.plot([low, high], [at, at], color="#444444")
        (point,) = ax.plot(
            [diff],
            [at],
            "o",
            color="#d62728" if row["significant"] else "white",
            markeredgecolor="#d62728",
        )
        chart.mark(line, point)
    ax.axvline(0.0, color="#888888", linewidth=0.8)
    ax.set_yticks(y, [row["label"] for row in rows], fontsize="small")
    ax.set_xlabel("difference (first minus second); filled: 95% interval leaves out 0")
    ax.grid(axis="x", alpha=0.3)
    return chart.svg()


def by_position(chart_id: str, bias: dict[str, Any]) -> str:
    """Hit rate @1 of the model and the random baseline by the held-out item's position."""
    chart = Chart(chart_id)
    ax = chart.axes[0]
    positions = np.asarray(bias["position"])
    for scorer, style in (("model", "o-"), ("random", "s--")):
        values = [np.nan if v is None else v for v in bias[scorer]["hr@1"]]
        (line,) = ax.plot(positions, values, style, label=scorer, color=COLORS[scorer])
        chart.mark(line)
    share = ax.bar(
        positions, bias["model"]["top1_share"], 0.6, alpha=0.25, label="model top-1 share"
    )
    chart.mark(share.patches)
    ax.set_xticks(positions)
    ax.set_xlabel("presented position of the held-out item (0 = first)")
    ax.set_ylabel("hit rate @1")
    ax.set_ylim(0, 1)
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return chart.svg()


def reliability(
    chart_id: str,
    bins: list[tuple[float, float, int]],
    limits: tuple[float, float],
    labels: tuple[str, str],
    counted: str,
) -> str:
    """A reliability diagram: per bin (predicted mean, observed mean, count; empty bins left
    out), a point of area by count; on the diagonal the predictions are right on average."""
    chart = Chart(chart_id, height=3.2)
    ax = chart.axes[0]
    ax.plot(limits, limits, ":", color="#888888", label="perfectly calibrated")
    kept = [b for b in bins if b[2]]
    largest = max(n for _, _, n in kept)
    points = ax.scatter(
        [x for x, _, _ in kept],
        [y for _, y, _ in kept],
        s=[20 + 200 * n / largest for _, _, n in kept],
        color=COLORS["model"],
        label=f"bins (area: {counted})",
    )
    chart.mark(points)
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    margin = (limits[1] - limits[0]) / 20
    ax.set_xlim(limits[0] - margin, limits[1] + margin)
    ax.set_ylim(limits[0] - margin, limits[1] + margin)
    ax.legend(fontsize="small")
    return chart.svg()


def confusion(chart_id: str, table: list[list[int]], scale: Sequence[float]) -> str:
    """The confusion heat map: true rating (rows) against the most likely rating (columns)."""
    chart = Chart(chart_id, height=3.4)
    ax = chart.axes[0]
    counts = np.asarray(table)
    image = ax.imshow(counts, cmap="Blues")
    chart.mark(image)
    labels = [f"{v:g}" for v in scale]
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("most likely rating (model)")
    ax.set_ylabel("true rating")
    for (i, j), n in np.ndenumerate(counts):
        dark = n > counts.max() / 2
        ax.text(j, i, str(n), ha="center", va="center", color="white" if dark else "black")
    chart.figure.colorbar(image, ax=ax, label="users")
    return chart.svg()


def distributions(chart_id: str, values: dict[str, Any], what: str) -> str:
    """Histograms of ``what`` per adapter, on shared bins."""
    chart = Chart(chart_id)
    ax = chart.axes[0]
    every = np.concatenate(list(values.values()))
    bins = np.histogram_bin_edges(every, bins=40).tolist()
    for adapter, v in values.items():
        _, _, patches = ax.hist(v, bins=bins, alpha=0.55, label=f"{adapter} ({len(v):,})")
        chart.mark(patches)
    ax.set_xlabel(what)
    ax.set_ylabel("count")
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return chart.svg()


def throughput(chart_id: str, series: dict[str, dict[str, Any]]) -> str:
    """Prompts/s and prompt tokens/s of each unit (batch x task) against when it finished."""
    chart = Chart(chart_id, height=4.2, rows=2)
    top, bottom = chart.axes
    for name, s in series.items():
        (a,) = top.plot(s["minutes"], s["prompts_per_s"], "o-", markersize=3, label=name)
        (b,) = bottom.plot(s["minutes"], s["tokens_per_s"], "o-", markersize=3, label=name)
        chart.mark(a, b)
    top.set_ylabel("prompts/s")
    bottom.set_ylabel("prompt tokens/s")
    bottom.set_xlabel("minutes since the run's first unit started")
    top.legend(fontsize="small")
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    return chart.svg()


def outcomes(chart_id: str, rows: list[dict[str, Any]]) -> str:
    """Per (task, adapter), rows scored and rejected by reason, stacked."""
    chart = Chart(chart_id, height=max(2.0, 0.4 * len(rows) + 1.0))
    ax = chart.axes[0]
    labels = [row["label"] for row in rows]
    y = np.arange(len(rows))[::-1]
    reasons = sorted({r for row in rows for r in row["reasons"]})
    left = np.zeros(len(rows))
    for name in ["scored", *reasons]:
        counts = np.array(
            [row["scored"] if name == "scored" else row["reasons"].get(name, 0) for row in rows],
            dtype=float,
        )
        color = "#2ca02c" if name == "scored" else None
        bars = ax.barh(y, counts, left=left, label=name, color=color)
        chart.mark(bars.patches)
        left += counts
    ax.set_yticks(y, labels, fontsize="small")
    ax.set_xlabel("rows")
    ax.legend(fontsize="small", ncols=min(4, 1 + len(reasons)))
    ax.grid(axis="x", alpha=0.3)
    return chart.svg()
