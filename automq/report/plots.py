"""The report's figures, each returned as PNG bytes.

Figures are built on :class:`matplotlib.figure.Figure` objects, which render through the Agg canvas without
touching pyplot's global state: no backend switch, no figure left open, safe in a headless process. Functions
take plain numbers and labels (no trials, no search directories), so they can be tested and reused on their own;
:mod:`automq.report.report` decides what to plot.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import BoundaryNorm, ListedColormap, LogNorm, to_hex
from matplotlib.figure import Figure

DPI = 120
BASELINE_COLOR = "#222222"
_MISSING_CELL = "#eeeeee"  # inactive layer or block in a heatmap
_MAX_ANNOTATED_COLUMNS = 28  # beyond this cell labels become unreadable; the colour bar still names formats


@dataclass(frozen=True)
class Axis:
    """How one metric is shown: ``label [unit]``, values divided by ``divisor`` (e.g. bytes -> KiB), log or not."""

    metric: str
    label: str
    unit: str = ""
    divisor: float = 1.0
    log: bool = False

    @property
    def title(self) -> str:
        return f"{self.label} [{self.unit}]" if self.unit else self.label

    def values(self, raw: Sequence[float]) -> np.ndarray:
        return np.asarray(raw, dtype=float) / self.divisor


@dataclass(frozen=True)
class Cloud:
    """One strategy's points in a 2-D projection: all feasible trials and the non-dominated subset."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    front_x: Sequence[float]
    front_y: Sequence[float]


def run_colors(labels: Sequence[str]) -> dict[str, str]:
    """One fixed colour per run label, in order, so a strategy has the same colour in every figure."""
    palette = colormaps["tab10" if len(labels) <= 10 else "tab20"].colors
    return {label: to_hex(palette[i % len(palette)]) for i, label in enumerate(labels)}


def to_png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes (no ``Software`` metadata, so identical data gives identical files)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def pareto_figure(
    clouds: Sequence[Cloud],
    colors: Mapping[str, str],
    baselines: Sequence[tuple[str, float, float]],
    x_axis: Axis,
    y_axis: Axis,
) -> bytes:
    """Accuracy against one cost: every strategy's trials (faint), its front as a staircase (the accuracy
    attainable at each cost), and uniform-precision baselines as labelled black crosses."""
    fig = Figure(figsize=(8.0, 5.0))
    ax = fig.add_subplot()
    for cloud in clouds:
        color = colors[cloud.label]
        ax.scatter(x_axis.values(cloud.x), y_axis.values(cloud.y), s=12, color=color, alpha=0.25, linewidths=0)
        order = np.argsort(cloud.front_x)
        fx, fy = x_axis.values(cloud.front_x)[order], y_axis.values(cloud.front_y)[order]
        ax.plot(fx, fy, drawstyle="steps-post", marker="o", markersize=5, color=color, lw=1.8, label=cloud.label)
    for i, (name, x, y) in enumerate(baselines):
        bx, by = float(x_axis.values([x])[0]), float(y_axis.values([y])[0])
        ax.scatter([bx], [by], marker="X", s=70, color=BASELINE_COLOR, zorder=5,
                   label="uniform precision" if i == 0 else None)
        ax.annotate(name, (bx, by), xytext=(6, -4), textcoords="offset points", fontsize=8, color=BASELINE_COLOR)
    if x_axis.log:
        ax.set_xscale("log")
    ax.margins(x=0.1, y=0.08)  # room for the baseline labels at the edges
    ax.set_xlabel(x_axis.title)
    ax.set_ylabel(y_axis.title)
    ax.set_title(f"{y_axis.label} vs {x_axis.label}")
    ax.grid(True, which="major", alpha=0.3)
    if clouds or baselines:
        ax.legend(loc="best", fontsize=9)
    return to_png(fig)


def hypervolume_figure(curves: Mapping[str, Sequence[float]], colors: Mapping[str, str]) -> bytes:
    """Hypervolume of the feasible trials seen so far against the number of evaluations, one line per run."""
    fig = Figure(figsize=(8.0, 4.0))
    ax = fig.add_subplot()
    for label, curve in curves.items():
        ax.step(np.arange(1, len(curve) + 1), curve, where="post", color=colors[label], lw=1.8, label=label)
    ax.set_xlabel("evaluations (trials, in the order they finished)")
    ax.set_ylabel("hypervolume (normalised)")
    ax.set_title("Search progress")
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(loc="lower right", fontsize=9)
    return to_png(fig)


def format_heatmap(
    rows: Sequence[str],
    layers: Sequence[str],
    weights: Sequence[Sequence[str | None]],
    activations: Sequence[Sequence[str | None]],
    format_order: Sequence[str],
    separators: Sequence[int] = (),
) -> bytes:
    """Per-layer weight and activation formats of candidates (rows) over layers (columns, network order).

    ``format_order`` lists the formats from cheapest to most expensive: colours follow that order, so darker
    is cheaper at a glance, and the colour bar names each one. ``None`` marks a layer the candidate lacks;
    ``separators`` are row indices where a new group (run) starts.
    """
    index = {name: i for i, name in enumerate(format_order)}
    cmap = ListedColormap(colormaps["viridis"](np.linspace(0.0, 1.0, max(len(format_order), 1))))
    norm = BoundaryNorm(np.arange(len(format_order) + 1) - 0.5, cmap.N)
    fig = Figure(figsize=(min(4.0 + 0.22 * len(layers), 16.0), 2 * _panel_height(rows)), layout="constrained")
    for ax, grid, kind in zip(fig.subplots(2, 1), (weights, activations), ("weight", "activation")):
        codes = np.array([[index[f] if f is not None else np.nan for f in row] for row in grid], dtype=float)
        codes = codes.reshape(len(rows), len(layers))
        text = [[_short_format(f) for f in row] for row in grid] if len(layers) <= _MAX_ANNOTATED_COLUMNS else None
        image = _heatmap(ax, codes, cmap, norm, rows, layers, f"{kind} format per layer", text, separators)
        bar = fig.colorbar(image, ax=ax, ticks=np.arange(len(format_order)), fraction=0.03, pad=0.01)
        bar.ax.set_yticklabels(list(format_order), fontsize=8)
    return to_png(fig)


def architecture_heatmap(
    rows: Sequence[str],
    blocks: Sequence[str],
    kernel_size: np.ndarray,
    expand_ratio: np.ndarray,
    separators: Sequence[int] = (),
) -> bytes:
    """Kernel size and expansion ratio of every active block (columns ``stage.block``); blank = block absent,
    so the depth of each stage is the number of coloured cells. Width multipliers belong in the row labels."""
    fig = Figure(figsize=(min(5.0 + 0.45 * len(blocks), 16.0), 2 * _panel_height(rows)), layout="constrained")
    for ax, values, name in zip(fig.subplots(2, 1), (kernel_size, expand_ratio), ("kernel size", "expansion ratio")):
        levels = np.unique(values[np.isfinite(values)]) if np.isfinite(values).any() else np.zeros(1)
        cmap = ListedColormap(colormaps["cividis"](np.linspace(0.0, 1.0, len(levels))))
        edges = np.concatenate([[levels[0] - 1], (levels[1:] + levels[:-1]) / 2, [levels[-1] + 1]])
        text = [[("" if np.isnan(v) else f"{v:g}") for v in row] for row in values]
        image = _heatmap(ax, values, cmap, BoundaryNorm(edges, cmap.N), rows, blocks, f"{name} per block", text,
                         separators)
        fig.colorbar(image, ax=ax, ticks=levels, fraction=0.03, pad=0.01)
    return to_png(fig)


def fidelity_figure(
    oneshot: Sequence[float], standalone: Sequence[float], bitops: Sequence[float] | None, title: str
) -> bytes:
    """Stand-alone against one-shot accuracy (in %), coloured by BitOps when known, with the y = x line."""
    x, y = 100 * np.asarray(oneshot, dtype=float), 100 * np.asarray(standalone, dtype=float)
    fig = Figure(figsize=(6.0, 5.0))
    ax = fig.add_subplot()
    if bitops is not None and np.all(np.asarray(bitops) > 0):
        points = ax.scatter(x, y, c=bitops, cmap="viridis", norm=LogNorm(), s=30)
        fig.colorbar(points, ax=ax).set_label("BitOps")
    else:
        ax.scatter(x, y, s=30)
    low, high = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    ax.plot([low, high], [low, high], ls="--", color="#888888", lw=1, label="y = x")
    ax.set_xlabel("one-shot accuracy estimate [%]")
    ax.set_ylabel("stand-alone accuracy [%]")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    return to_png(fig)


def _panel_height(rows: Sequence[str]) -> float:
    return 1.6 + 0.28 * len(rows)


def _heatmap(ax, values: np.ndarray, cmap: ListedColormap, norm: BoundaryNorm, rows: Sequence[str],
             columns: Sequence[str], title: str, text: Sequence[Sequence[str]] | None, separators: Sequence[int]):
    """One categorical heatmap panel: grey for missing cells, optional cell labels, lines between groups."""
    cmap = cmap.with_extremes(bad=_MISSING_CELL)
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    ax.set_yticks(np.arange(len(rows)), labels=list(rows), fontsize=8)
    ax.set_xticks(np.arange(len(columns)), labels=list(columns), fontsize=7, rotation=90)
    ax.set_title(title, fontsize=10)
    for row in separators:
        ax.axhline(row - 0.5, color="white", lw=2.5)
    if text is not None:
        for (i, j), label in np.ndenumerate(np.array(text, dtype=object).reshape(values.shape)):
            if label:  # black or white, whichever reads better on the cell's colour
                dark = sum(cmap(norm(values[i, j]))[:3]) < 1.5
                ax.text(j, i, label, ha="center", va="center", fontsize=6.5, color="white" if dark else "black")
    return image


def _short_format(name: str | None) -> str:
    """Compact cell label: ``fp8_e4m3`` -> ``e4m3``, ``mxfp4_e2m1`` -> ``mx-e2m1``, ``int4`` -> ``i4``."""
    if name is None:
        return ""
    if name.startswith("int"):
        return "i" + name[3:]
    if name.startswith("mx"):
        return "mx-" + name.split("_")[-1] if "_" in name else name
    return name.split("_")[-1] if "_" in name else name
