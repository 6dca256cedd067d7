"""The Pareto report a user reads: ``automq report SEARCH_DIR [SEARCH_DIR ...] --out REPORT_DIR``.

:func:`build_report` compares any number of search directories (the format of :mod:`automq.search.results`) and writes
into ``REPORT_DIR``:

* ``report.html`` — self-contained: figures as base64 PNG, inline CSS, no script, font or network reference;
* ``report.md`` with its figures as ``*.png`` files next to it;
* ``trials.csv`` (every trial of every run), ``pareto.csv`` (each run's Pareto set) and ``summary.json``
  (per-run hypervolume, front size, wall time and counts, plus the notes and key findings);
* when ``REPORT_DIR/final.json`` exists (``automq final``, :mod:`automq.report.final`), a "Final measurement (test
  split)" section and ``final.csv``: each search against the uniform formats of each budget on the test split; the
  key findings then state its verdicts instead of the validation figures the search saw.

The page is assembled once as a list of blocks (:class:`Heading`, :class:`Table`, :class:`Figure`, ...) that
render themselves to HTML and to Markdown, so the two reports cannot drift apart. The numbers come from
:mod:`automq.report.comparison` and the figures from :mod:`automq.report.plots`.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from automq.report import plots
from automq.space.candidate import Candidate
from automq.report.comparison import (Baseline, RunAnalysis, analyse_runs, budget_rows, fidelity_stats, find_baselines,
                               front_2d, key_findings, load_fidelity, search_findings, usable)
from automq.errors import AutomqError, SpaceError
from automq.report.final import load_final, summarise
from automq.numerics.formats import format_names, get_format
from automq.io import atomic_write_json, atomic_write_text
from automq.search.pareto import reference_point
from automq.search.results import SPACE_FILE, SearchResult, load_search_dir
from automq.space.space import SearchSpace
from automq.space.schema import METRICS
from automq.search.trial import Trial

FIDELITY_FILE = "fidelity.json"
ACCURACY = plots.Axis("accuracy", "Top-1 accuracy", "%", divisor=0.01)
COST_AXES = (
    plots.Axis("bitops", "BitOps", log=True),
    plots.Axis("size", "Model size (weights)", "KiB", divisor=1024.0),
    plots.Axis("energy", "Energy per inference", "µJ"),
)
FIGURE_FILES = (*(f"pareto_{a.metric}.png" for a in COST_AXES), "hypervolume.png", "formats.png",
                "architecture.png", "fidelity.png")
MAX_HEATMAP_ROWS = 40  # more rows than this make an unreadable heatmap; fronts are then sampled evenly


# ------------------------------------------------------------------------------------------------ blocks
@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2

    def html(self) -> str:
        return f"<h{self.level}>{html.escape(self.text)}</h{self.level}>"

    def markdown(self) -> str:
        return f"{'#' * self.level} {self.text}"


@dataclass(frozen=True)
class Paragraph:
    text: str

    def html(self) -> str:
        return f"<p>{html.escape(self.text)}</p>"

    def markdown(self) -> str:
        return self.text


@dataclass(frozen=True)
class Bullets:
    items: Sequence[str]
    warning: bool = False  # shown as a highlighted box: notes about damaged or missing input

    def html(self) -> str:
        items = "".join(f"<li>{html.escape(item)}</li>" for item in self.items)
        return f"<ul class=\"{'warning' if self.warning else 'plain'}\">{items}</ul>"

    def markdown(self) -> str:
        return "\n".join(f"{'> ' if self.warning else ''}- {item}" for item in self.items)


@dataclass(frozen=True)
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[Any]]

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in self.header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                       for row in self.rows)
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"

    def markdown(self) -> str:
        def cells(row: Sequence[Any]) -> str:
            return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |"

        return "\n".join([cells(self.header), "|" + "---|" * len(self.header), *map(cells, self.rows)])


@dataclass(frozen=True)
class Figure:
    name: str  # file name next to report.md
    png: bytes
    caption: str

    def html(self) -> str:
        data = base64.b64encode(self.png).decode("ascii")
        caption = html.escape(self.caption)
        return (f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{caption}\">"
                f"<figcaption>{caption}</figcaption></figure>")

    def markdown(self) -> str:
        return f"![{Path(self.name).stem}]({self.name})\n\n*{self.caption}*"


@dataclass(frozen=True)
class Preformatted:
    text: str
    summary: str | None = None  # when set, the HTML folds the text under this summary line

    def html(self) -> str:
        pre = f"<pre>{html.escape(self.text)}</pre>"
        return f"<details><summary>{html.escape(self.summary)}</summary>{pre}</details>" if self.summary else pre

    def markdown(self) -> str:
        fence = "~~~~" if "```" in self.text else "```"
        return (f"{self.summary}:\n\n" if self.summary else "") + f"{fence}\n{self.text.rstrip()}\n{fence}"


Block = Heading | Paragraph | Bullets | Table | Figure | Preformatted

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI","DejaVu Sans",Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1.5em;color:#1a1a1a;line-height:1.5}
h1{border-bottom:2px solid #333;padding-bottom:.2em}h2{margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:1em 0;font-size:.9em;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}td{white-space:nowrap}th{background:#f0f0f0}
tr:nth-child(even) td{background:#fafafa}
figure{margin:1.5em 0}img{max-width:100%;height:auto;border:1px solid #eee}figcaption{color:#555;font-size:.9em}
ul.warning{background:#fff4d6;border-left:4px solid #e0a800;padding:.6em 1em .6em 2em}
pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.85em}summary{cursor:pointer;color:#333}
"""


def render_html(title: str, blocks: Sequence[Block]) -> str:
    """A complete standalone HTML page."""
    body = "\n".join(block.html() for block in blocks)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def render_markdown(title: str, blocks: Sequence[Block]) -> str:
    return f"# {title}\n\n" + "\n\n".join(block.markdown() for block in blocks) + "\n"


# ------------------------------------------------------------------------------------------------ figures
def pareto_figures(runs: Sequence[RunAnalysis], baselines: Sequence[Baseline],
                   colors: dict[str, str]) -> list[Figure]:
    """Accuracy against each cost that the trials carry, all strategies overlaid on one figure per cost."""
    figures = []
    for axis in COST_AXES:
        clouds = []
        for run in runs:
            points = usable(run.result.trials, ["accuracy", axis.metric])
            if points and not run.is_uniform:
                front = front_2d(points, axis.metric)
                clouds.append(plots.Cloud(run.label, *_xy(points, axis.metric), *_xy(front, axis.metric)))
        references = _baseline_points(baselines, axis.metric)
        if clouds or references:
            png = plots.pareto_figure(clouds, colors, references, axis, ACCURACY)
            figures.append(Figure(f"pareto_{axis.metric}.png", png, f"Accuracy vs {axis.title}: the line of each "
                                  "strategy is its front (best accuracy reachable at each cost); faint dots are "
                                  "all its feasible trials; black crosses are uniform-precision baselines."))
    return figures


def _xy(trials: Sequence[Trial], metric: str) -> tuple[list[float], list[float]]:
    return [t.metrics[metric] for t in trials], [t.metrics["accuracy"] for t in trials]


def _baseline_points(baselines: Sequence[Baseline], metric: str) -> list[tuple[str, float, float]]:
    """Per format, only its non-dominated baselines for this cost, so repeated formats do not clutter a plot."""
    points = []
    for name in dict.fromkeys(b.name for b in baselines):
        best = front_2d([b.trial for b in baselines if b.name == name], metric)
        points += [(name, t.metrics[metric], t.metrics["accuracy"]) for t in best]
    return points


def heatmap_figures(runs: Sequence[RunAnalysis]) -> list[Figure]:
    """Formats per layer and architecture choices per block of the Pareto-optimal candidates of every run."""
    chosen = _heatmap_trials(runs)
    if not chosen:
        return []
    candidates = [t.candidate for _, t in chosen]
    rows = [f"{label} #{t.number}, w={t.candidate.width_mult:g}" for label, t in chosen]
    separators = [i for i in range(1, len(chosen)) if chosen[i][0] != chosen[i - 1][0]]
    sampled = "" if len(chosen) == sum(len(r.front) for r in runs) else " (fronts sampled evenly)"
    layers, weights, activations = format_grid(candidates)
    order = _by_cost({name for grid in (weights, activations) for row in grid for name in row if name})
    blocks, kernel, expand = architecture_grid(candidates)
    return [
        Figure("formats.png", plots.format_heatmap(rows, [_short_layer(n) for n in layers], weights, activations,
                                                   order, separators),
               f"Weight and activation format of each layer for the Pareto-optimal candidates{sampled}, one row "
               "per candidate (run #trial, w = width multiplier); formats are coloured from cheapest (dark) to "
               "most expensive (light); grey = layer absent."),
        Figure("architecture.png", plots.architecture_heatmap(rows, [f"{i}.{j}" for i, j in blocks], kernel, expand,
                                                              separators),
               f"Architecture of the Pareto-optimal candidates{sampled}: kernel size and expansion ratio of each "
               "block (columns stage.block); grey = block not active, so the coloured cells of a stage give its "
               "depth."),
    ]


def format_grid(candidates: Sequence[Candidate]) -> tuple[list[str], list[list[str | None]],
                                                            list[list[str | None]]]:
    """Layers (union, network order) and each candidate's weight and activation format per layer (None: absent)."""
    layers = _merged_order([[name for name, _, _ in c.formats] for c in candidates])
    formats = [c.layer_formats() for c in candidates]
    weights = [[f[layer][0] if layer in f else None for layer in layers] for f in formats]
    activations = [[f[layer][1] if layer in f else None for layer in layers] for f in formats]
    return layers, weights, activations


def architecture_grid(candidates: Sequence[Candidate]) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray]:
    """Block positions ``(stage, block)`` up to the deepest candidate, and kernel size and expansion ratio of each
    candidate there (NaN where the candidate's stage is shallower)."""
    stages = max(len(c.blocks) for c in candidates)
    depth = [max(len(c.blocks[i]) for c in candidates if i < len(c.blocks)) for i in range(stages)]
    blocks = [(i, j) for i, d in enumerate(depth) for j in range(d)]
    kernel, expand = (np.full((len(candidates), len(blocks)), np.nan) for _ in range(2))
    for r, candidate in enumerate(candidates):
        for c, (i, j) in enumerate(blocks):
            if i < len(candidate.blocks) and j < len(candidate.blocks[i]):
                kernel[r, c] = candidate.blocks[i][j].kernel_size
                expand[r, c] = candidate.blocks[i][j].expand_ratio
    return blocks, kernel, expand


def _heatmap_trials(runs: Sequence[RunAnalysis]) -> list[tuple[str, Trial]]:
    quota = max(1, MAX_HEATMAP_ROWS // max(len(runs), 1))
    crowded = sum(len(run.front) for run in runs) > MAX_HEATMAP_ROWS
    chosen = []
    for run in runs:
        front = run.front
        if crowded and len(front) > quota:
            front = [front[i] for i in np.unique(np.linspace(0, len(front) - 1, quota).round().astype(int))]
        chosen += [(run.label, t) for t in front]
    return chosen


def _merged_order(sequences: Sequence[Sequence[str]]) -> list[str]:
    """Union of layer lists that share one relative order (network order), keeping that order."""
    order: list[str] = []
    for names in sequences:
        at = 0
        for name in names:
            if name in order:
                at = order.index(name) + 1
            else:
                order.insert(at, name)
                at += 1
    return order


def _by_cost(names: set[str]) -> list[str]:
    """Format names from fewest to most bits per element (registry order breaks ties; unknown names last)."""
    registry = format_names()

    def key(name: str) -> tuple[float, int, str]:
        try:
            return get_format(name).bits_per_element, registry.index(name), name
        except KeyError:
            return float("inf"), 0, name

    return sorted(names, key=key)


def _short_layer(name: str) -> str:
    """``blocks.3.1.conv_pw`` -> ``3.1.pw``; ``conv_stem`` -> ``stem``; ``classifier`` -> ``fc``."""
    if name.startswith("blocks."):
        return name[len("blocks."):].replace("conv_", "")
    return {"conv_stem": "stem", "conv_head": "head", "classifier": "fc"}.get(name, name)


# ------------------------------------------------------------------------------------------------ sections
def hypervolume_section(runs: Sequence[RunAnalysis], colors: dict[str, str]) -> list[Block]:
    """Hypervolume per run with its reference point stated, and the hypervolume-vs-evaluations curve."""
    blocks: list[Block] = [
        Heading("Hypervolume"),
        Paragraph("Hypervolume is computed in the normalised loss space of automq.search.pareto: accuracy becomes "
                  "1 - accuracy with reference 1.0; each cost is divided by its scale (the cost of the largest "
                  "candidate in the space) with reference 1.1. Larger is better; 0 means no feasible trial."),
        Table(["run", "strategy", "hypervolume", "front size", "objectives", "scales", "reference point"],
              [[r.label, r.strategy, f"{r.hypervolume:.4f}", len(r.front),
                ", ".join(f"{o.metric} ({o.mode})" for o in r.objectives),
                ", ".join(f"{o.metric}: {r.scales[o.metric]:.4g}" for o in r.objectives if o.metric in r.scales)
                or "-",
                "(" + ", ".join(f"{v:g}" for v in reference_point(r.objectives)) + ")"] for r in runs]),
    ]
    curves = {r.label: r.curve for r in runs if r.curve}
    if curves:
        blocks.append(Figure("hypervolume.png", plots.hypervolume_figure(curves, colors),
                             "Hypervolume of the feasible trials found so far against the number of evaluations."))
    return blocks


def budget_section(runs: Sequence[RunAnalysis], baselines: Sequence[Baseline]) -> list[Block]:
    """Best accuracy of every run within each BitOps budget, with the winner and its margin."""
    rows = budget_rows(runs, baselines)
    if not rows:
        return []
    header = ["BitOps budget", "budget of", *[r.label for r in runs], "winner", "margin [points]"]
    table = [[f"{row.budget:.4g}", row.label,
              *[f"{100 * t.metrics['accuracy']:.2f}" if (t := row.best[r.label]) is not None else "-" for r in runs],
              row.winner or "-", f"{100 * row.margin:.2f}" if row.margin is not None else "-"]
             for row in rows]
    text = ("For each budget, the most accurate feasible candidate each run found at or below it (accuracy as the "
            "searches measured it, %); the budgets are the BitOps of the uniform-precision baselines. The margin is "
            "the winner's lead over the next run.")
    images = _validation_images(runs)
    if images:
        accuracy = max(t.metrics["accuracy"] for row in rows for t in row.best.values() if t is not None)
        error = 100 * math.sqrt(accuracy * (1 - accuracy) / images)
        text += (f" Each accuracy is measured on {images} validation images: its binomial standard error near "
                 f"{100 * accuracy:.0f}% is {error:.2f} points, so margins of that size are not a clear win.")
    return [Heading("Best accuracy within a BitOps budget"), Paragraph(text), Table(header, table)]


def _validation_images(runs: Sequence[RunAnalysis]) -> int | None:
    """The validation images behind the searches' accuracies (``search.eval_size`` of their space file), when
    every run that records a space agrees on it."""
    sizes = set()
    for run in runs:
        space_file = run.result.path / SPACE_FILE
        try:
            space = SearchSpace.from_file(space_file) if space_file.is_file() else None
        except SpaceError:
            space = None
        if space is not None:
            sizes.add(space.search.eval_size or space.dataset.val_size)
    return sizes.pop() if len(sizes) == 1 else None


FINAL_HEADER = ["run", "BitOps budget", "uniform (binding)", "uniform test [%]", "searched trial", "searched BitOps",
                "searched val [%] (search)", "searched test [%]", "difference [points]", "95% interval",
                "uniform formats beaten", "verdict"]


def final_section(final: dict[str, Any] | None) -> list[Block]:
    """The final measurement on the test split (``automq final``), with the validation estimates beside it."""
    if final is None:
        return []
    rows = [final_row(c) for c in final["comparisons"]]
    return [
        Heading("Final measurement (test split)"),
        Paragraph(f"Deployment recipe: {final.get('recipe', 'not recorded')}. For each budget, each search's most "
                  "accurate candidate at or below it by validation accuracy is paired with every uniform format at or "
                  "below it, all scored on the same test images under the same calibrations. A win needs a lead of "
                  f"more than {final.get('margin_se', 2):g} paired standard errors and a 95% interval above zero over "
                  "each of them; a loss, some uniform format ahead by as much; the table shows the binding one (the "
                  "loss, else the lead furthest from a win, else the narrowest win). The standard errors count the "
                  "test images and, where each candidate was deployed on several calibration blocks, the spread over "
                  "them (the interval then uses Student's t with the error's degrees of freedom). The validation "
                  "accuracy is the search's estimate (refined on the whole validation split; in brackets the value "
                  "the search saw)."),
        Bullets([_verdict_count(run, counts) for run, counts in summarise(final["comparisons"]).items()]
                or ["No search was compared."]),
        Table(FINAL_HEADER, rows),
    ]


def final_findings(final: dict[str, Any]) -> list[str]:
    """The key findings on who wins each budget once ``automq final`` has measured: the final table's paired-SE
    verdicts on the test split, so that the findings and the table define a win the same way."""
    decided: dict[str, list[str]] = {}  # run -> "win at ≤ BUDGET BitOps (DIFFERENCE ± SE points)", losses too
    for c in final["comparisons"]:
        if c["verdict"] in ("win", "loss"):
            decided.setdefault(c["run"], []).append(
                f"{c['verdict']} at ≤ {c['budget']:.4g} BitOps ({100 * c['difference']:+.2f} ± {100 * c['se']:.2f} "
                "points)")
    images = f" ({final['test_images']} images)" if "test_images" in final else ""
    lines = [f"On the test split{images}, {_verdict_count(run, counts)}"
             + (f" ({'; '.join(decided[run])})." if run in decided else ".")
             for run, counts in summarise(final["comparisons"]).items()]
    return lines + _ceiling_findings(final) + [
        f"A win is a lead of more than {final.get('margin_se', 2):g} paired standard errors, with a 95% interval above "
        "zero, over every uniform format at or below the budget (Final measurement); the validation accuracies the "
        "search saw choose the candidates compared but decide no win."]


def _ceiling_findings(final: dict[str, Any]) -> list[str]:
    """The most accurate candidate measured against the most accurate uniform one (``final.json``'s ``ceiling``;
    none in the files written before it was kept)."""
    c = final.get("ceiling")
    if c is None:
        return []
    if (c["run"], c["trial"]) == (c["uniform_run"], c["uniform_trial"]):
        return [f"The most accurate candidate measured is uniform {c['uniform']} "
                f"({100 * c['uniform_test_accuracy']:.2f}%): no candidate measured is more accurate than the best "
                "uniform format, at any cost."]
    return [f"The most accurate candidate measured ({c['run']} trial #{c['trial']}, {100 * c['test_accuracy']:.2f}% "
            f"at {c['bitops']:.4g} BitOps) against the most accurate uniform one ({c['uniform']}, "
            f"{100 * c['uniform_test_accuracy']:.2f}%): {100 * c['difference']:+.2f} ± {100 * c['se']:.2f} points, a "
            f"{c['verdict']}. Both are picked by their test accuracy, so this bounds from above what mixed precision "
            "gains over the best uniform format here."]


def _verdict_count(run: str, counts: dict[str, int]) -> str:
    return (f"{run}: wins at {counts['win']} of {counts['budgets']} budgets, ties at {counts['tie']}, loses at "
            f"{counts['loss']}" + (f", no candidate at {counts['none']}" if counts["none"] else ""))


def final_row(c: dict[str, Any]) -> list[str]:
    """One comparison of ``final.json`` as a table row (points and percentages with two decimals)."""
    head = [c["run"], f"{c['budget']:.4g}", f"{c['uniform']} (#{c['uniform_trial']})",
            f"{100 * c['uniform_test_accuracy']:.2f}"]
    if c.get("searched_trial") is None:
        return head + ["-"] * (len(FINAL_HEADER) - len(head) - 1) + ["no candidate"]
    low, high = c["ci95"]
    return head + [f"#{c['searched_trial']}", f"{c['searched_bitops']:.4g}",
                   f"{100 * c['searched_val_accuracy']:.2f} ({100 * c['searched_search_accuracy']:.2f})",
                   f"{100 * c['searched_test_accuracy']:.2f}", f"{100 * c['difference']:+.2f} ± {100 * c['se']:.2f}",
                   f"[{100 * low:+.2f}, {100 * high:+.2f}]", _beaten(c), c["verdict"]]


def _beaten(c: dict[str, Any]) -> str:
    """How many of the uniform formats at or below the budget the candidate beats (a ``final.json`` from before
    every one was compared has only the one validation chose)."""
    references = c.get("references")
    if references is None:
        return "-"
    return f"{sum(r['verdict'] == 'win' for r in references)} of {len(references)}"


def fidelity_section(records: Sequence[dict[str, Any]]) -> tuple[list[Block], dict[str, Any] | None]:
    """One-shot estimate against stand-alone accuracy with rank correlations, when fidelity data exist."""
    blocks: list[Block] = [Heading("One-shot estimate vs stand-alone accuracy")]
    if not records:
        blocks.append(Paragraph(f"No fidelity data: pass a fidelity JSON file, or put {FIDELITY_FILE} in a "
                                "search directory, to compare one-shot estimates with stand-alone training."))
        return blocks, None
    result = fidelity_stats(records)
    text = (f"Kendall tau = {_num(result['kendall_tau'])} (p = {_num(result['kendall_p'])}), Spearman rho = "
            f"{_num(result['spearman_rho'])} (p = {_num(result['spearman_p'])}), n = {result['n']} candidates.")
    if result.get("loss_kendall_tau") is not None:
        text += (f" Ranked by one-shot loss instead (lower ranks higher): Kendall tau = "
                 f"{_num(result['loss_kendall_tau'])}, Spearman rho = {_num(result['loss_spearman_rho'])}.")
    blocks.append(Paragraph("How well the one-shot estimator ranks candidates: " + text))
    if result["n"] >= 2:
        bitops = [r.get("bitops") for r in records]
        png = plots.fidelity_figure([r["oneshot_accuracy"] for r in records],
                                    [r["standalone_accuracy"] for r in records],
                                    bitops if all(map(_is_number, bitops)) else None,
                                    f"Kendall τ = {_num(result['kendall_tau'])}, Spearman ρ = "
                                    f"{_num(result['spearman_rho'])}, n = {result['n']}")
        blocks.append(Figure("fidelity.png", png, "Stand-alone accuracy against the one-shot estimate; points on "
                             "the dashed line are estimated exactly."))
    return blocks, result


def candidates_table(runs: Sequence[RunAnalysis]) -> Table:
    """The Pareto-optimal candidates of every run, with their metrics (in the figures' units) and architecture."""
    axes = {a.metric: a for a in (ACCURACY, *COST_AXES)}
    for objective in (o for r in runs for o in r.objectives if o.metric not in axes):
        axes[objective.metric] = plots.Axis(objective.metric, objective.metric)
    shown = [a for a in axes.values() if any(_is_number(t.metrics.get(a.metric)) for r in runs for t in r.front)]
    return Table(["run", "trial", "candidate", *(a.title for a in shown), "width", "depths"],
                 [[r.label, t.number, t.candidate.id,
                   *(_axis_text(a, t.metrics.get(a.metric)) for a in shown),
                   f"{t.candidate.width_mult:g}", "-".join(map(str, t.candidate.depths))]
                  for r in runs for t in r.front])


def cost_table(runs: Sequence[RunAnalysis]) -> Table:
    """What each search cost: wall time, estimator evaluations and trials by outcome."""
    rows = []
    for r in runs:
        s = r.summary()
        wall = f"{s['wall_s']:.1f}" if _is_number(s["wall_s"]) else "unknown"
        rows.append([r.label, r.strategy, wall, f"{s['trial_wall_s']:.1f}", s["supernet_evaluations"],
                     s["trials"], s["counts"]["ok"], s["counts"]["infeasible"], s["counts"]["failed"]])
    return Table(["run", "strategy", "wall time [s]", "sum of trial times [s]", "supernet evaluations", "trials",
                  "ok", "infeasible", "failed"], rows)


def runs_section(runs: Sequence[RunAnalysis]) -> list[Block]:
    """Where each run came from: its folder, the command that produced it and its space file."""
    blocks: list[Block] = [Heading("Runs")]
    shown: dict[str, str] = {}  # space file text -> the run under which it is shown in full
    for r in runs:
        run = r.result.run
        blocks += [Heading(r.label, 3),
                   Bullets([f"folder: {r.result.path}", f"strategy: {r.strategy}",
                            f"status: {run.get('status', 'unknown')}",
                            f"options: {run.get('options', {})}"]),
                   Preformatted(str(run.get("command") or "(not recorded: run.json is missing)"))]
        space_file, name = r.result.path / SPACE_FILE, run.get("space", SPACE_FILE)
        if not space_file.is_file():
            blocks.append(Paragraph(f"No {SPACE_FILE} in {r.result.path}."))
            continue
        text = space_file.read_text(encoding="utf-8", errors="replace")
        if text in shown:  # a comparison searches one space: show it once, not once per strategy
            blocks.append(Paragraph(f"space file ({name}): the same as run {shown[text]}'s."))
        else:
            shown[text] = r.label
            blocks.append(Preformatted(text, f"space file ({name})"))
    return blocks


def _axis_text(axis: plots.Axis, value: Any) -> str:
    if not _is_number(value):
        return ""
    shown = float(axis.values([value])[0])
    return f"{shown:.2f}" if axis is ACCURACY else f"{shown:.4g}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _num(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


# ------------------------------------------------------------------------------------------------ tables
def trial_rows(runs: Sequence[RunAnalysis], pareto_only: bool = False) -> tuple[list[str], list[list[Any]]]:
    """CSV header and one row per trial of every run (or per member of each run's Pareto set)."""
    everything = [t for run in runs for t in run.result.trials]
    seen = {k for t in everything for k in t.metrics}
    metrics = [k for k in METRICS if k in seen] + sorted(seen - set(METRICS))  # space-file metrics first
    header = ["run", "strategy", "trial", "status", "candidate_id", *metrics,
              "width_mult", "depths", "wall_s", "worker", "error", "candidate"]
    rows = [[run.label, t.strategy or run.strategy, t.number, t.status, t.candidate.id,
             *[t.metrics.get(m, "") for m in metrics], t.candidate.width_mult,
             "-".join(map(str, t.candidate.depths)), f"{t.wall_s:.3f}", t.worker, t.error or "",
             t.candidate.to_json()]
            for run in runs for t in (run.front if pareto_only else run.result.trials)]
    return header, rows


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Write a CSV file atomically, so an interrupted report never leaves a torn table."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


# ------------------------------------------------------------------------------------------------ entry point
def build_report(search_dirs: Sequence[str | Path], out_dir: str | Path, *,
                 fidelity: str | Path | None = None) -> dict[str, Any]:
    """Write the report of ``search_dirs`` into ``out_dir`` and return the content of ``summary.json``.

    ``fidelity`` is an optional JSON file ``{"candidates": [{"id", "oneshot_accuracy", "standalone_accuracy",
    "bitops", ...}]}``; a ``fidelity.json`` inside a search directory is picked up as well. Damaged or missing
    input becomes a note at the top of the report; only an unusable ``out_dir`` raises :class:`AutomqError`.
    """
    out = _prepare_out_dir(Path(out_dir))
    notes: list[str] = []
    results = [result for result in (_load(Path(d), notes) for d in search_dirs) if result is not None]
    if not search_dirs:
        notes.append("No search directory was given: pass one or more SEARCH_DIR folders written by a search.")
    runs = analyse_runs(results, notes)
    baselines = find_baselines(runs)
    colors = plots.run_colors([r.label for r in runs])
    fidelity_files = ([Path(fidelity)] if fidelity else []) + [
        r.path / FIDELITY_FILE for r in results if (r.path / FIDELITY_FILE).is_file()]
    fidelity_blocks, fidelity_result = fidelity_section(load_fidelity(fidelity_files, notes))
    final = load_final(out, notes)
    findings = key_findings(runs, baselines) if final is None else search_findings(runs) + final_findings(final)
    pareto = pareto_figures(runs, baselines, colors)
    blocks: list[Block] = [
        Paragraph(f"{len(runs)} search run(s): " + (", ".join(r.label for r in runs) or "none") + "."),
        *([Heading("Notes on the input"), Bullets(notes, warning=True)] if notes else []),
        Heading("Key findings"), Bullets(findings),
        Heading("Pareto fronts"),
        *(pareto or [Paragraph("No feasible trial with an accuracy and a cost to plot.")]),
        *hypervolume_section(runs, colors),
        *budget_section(runs, baselines),
        *final_section(final),
        Heading("Pareto-optimal candidates"), candidates_table(runs), *heatmap_figures(runs),
        *fidelity_blocks,
        Heading("Search cost"), cost_table(runs),
        *runs_section(runs),
    ]
    title = "automq search report"
    figures = [b for b in blocks if isinstance(b, Figure)]
    for stale in set(FIGURE_FILES) - {f.name for f in figures}:
        (out / stale).unlink(missing_ok=True)  # a figure of an earlier report that this one no longer has
    for figure in figures:
        (out / figure.name).write_bytes(figure.png)
    atomic_write_text(out / "report.html", render_html(title, blocks))
    atomic_write_text(out / "report.md", render_markdown(title, blocks))
    write_csv(out / "trials.csv", *trial_rows(runs))
    write_csv(out / "pareto.csv", *trial_rows(runs, pareto_only=True))
    if final is not None:
        write_csv(out / "final.csv", FINAL_HEADER, [final_row(c) for c in final["comparisons"]])
    summary = {"runs": [r.summary() for r in runs], "notes": notes, "findings": findings,
               "baselines": [{"format": b.name, "run": b.run, "trial": b.trial.number} for b in baselines],
               "fidelity": fidelity_result, "figures": [f.name for f in figures],
               "final": None if final is None else final.get("summary")}
    atomic_write_json(out / "summary.json", summary)
    return summary


def _load(path: Path, notes: list[str]) -> SearchResult | None:
    """A search directory that exists, with its notes added to ``notes``; ``None`` when there is nothing to read."""
    result = load_search_dir(path)
    notes += result.notes
    return result if path.is_dir() else None


def _prepare_out_dir(out: Path) -> Path:
    if out.exists() and not out.is_dir():
        raise AutomqError(f"{out}: the report folder is an existing file; choose a folder path for --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AutomqError(f"{out}: cannot create the report folder ({exc}); choose a writable --out") from exc
    return out
