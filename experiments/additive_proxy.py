"""An additive sensitivity proxy as the estimate of format assignments (issue 16), judged against a finished format
study's ground truth beside that study's one-shot estimate and BitOps alone.

The proxy scores a candidate by the sum of its layers' one-shot loss changes, each measured with that layer alone
in the candidate's formats and every other layer at the top of its menus (the diagonal of CLADO's ``G``, the
additive model that HAWQ's, LIMPQ's and CLADO-diag's allocations assume): one measurement per ``(layer, w_fmt,
a_fmt)`` option, then any number of candidates for free. Its appeal for search is resolution: a candidate's score
is not one noisy accuracy of its own but a sum of effects measured on the same images, so two neighbours differ
by exactly the difference of one layer's measured effects. What it gives up is every interaction between layers.

Measured on ``--blocks`` disjoint blocks of ``--calib-images`` training images each (the first after the
study's own calibration images): the blocks' agreement is the proxy's own noise, their mean is the proxy judged.

    PYTHONPATH=. .venv/bin/python experiments/additive_proxy.py \\
        --study experiments/results/oneshot_fidelity_formats.json
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from automq.data import fixed_batches
from automq.model.supernet import Supernet
from automq.oneshot.train import load_space_data, load_supernet
from automq.space.candidate import Candidate
from automq.space.space import SearchSpace
from automq.strategies._assign import FormatProblem
from automq.strategies.clado import measure_sensitivities
from fidelity_stats import column, correlations, load_study, local_tau, paired_difference, search_figures
from oneshot_fidelity import SEARCH_KEYS, partner_indices, search_row
from provenance import command, judge_and_write, machine, machine_text

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "additive_proxy_formats"
BATCH = 256


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, required=True, help="a finished format study's JSON (one architecture)")
    parser.add_argument("--supernet", type=Path, help="the supernet run folder (default: the study's)")
    parser.add_argument("--calib-images", type=int, default=1024, help="training images per measurement block")
    parser.add_argument("--blocks", type=int, default=2, help="disjoint blocks measured (their mean is judged)")
    parser.add_argument("--data", help="dataset root (default: the space's)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default=NAME, help=f"the outputs' file stem (default {NAME})")
    return parser.parse_args(argv)


def the_architecture(candidates: Sequence[Candidate]) -> Candidate:
    """The one architecture all of a format study's candidates share (the proxy prices formats of one network)."""
    archs = {(c.width_mult, c.blocks) for c in candidates}
    if len(archs) != 1:
        raise SystemExit(f"the study's candidates have {len(archs)} architectures; the additive proxy prices the "
                         "formats of one (run it on a format study: oneshot_fidelity.py --scale formats)")
    return candidates[0]


def predicted_loss_changes(supernet: Supernet, space: SearchSpace, candidates: Sequence[Candidate],
                           batches: Sequence[tuple[Tensor, Tensor]]) -> tuple[list[float], dict[str, Any]]:
    """Each candidate's sum of single-layer loss changes on ``batches`` (0 for the all-top-precision candidate),
    and what the measurement cost."""
    formats = FormatProblem.build(space, the_architecture(candidates), options="joint")
    problem = formats.problem
    sensitivities = measure_sensitivities(supernet, formats, batches, pairs=False)
    changes = []
    for candidate in candidates:
        chosen = candidate.layer_formats()
        choice = [options.index(chosen[layer]) for layer, options in zip(problem.layers, problem.options)]
        changes.append(float(sensitivities.single[problem.flat(choice)].sum()))
    return changes, sensitivities.summary()


def judge(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    study = load_study(args.study)
    space = SearchSpace.from_file(study["space"])
    rows = study["candidates"]
    candidates = [Candidate.from_dict(r["candidate"]) for r in rows]
    first = study["scale"]["calib_images"]  # the estimator's calibration images come first: measure after them
    data = load_space_data(space, root=args.data, train_subset=max(study["scale"]["train_images"],
                                                                   first + args.blocks * args.calib_images))
    supernet = load_supernet(args.supernet or study["supernet"], space)
    blocks = []
    for b in range(args.blocks):
        begin = first + b * args.calib_images
        batches = fixed_batches(data.train, begin + args.calib_images, BATCH, start=begin)
        changes, cost = predicted_loss_changes(supernet, space, candidates, batches)
        blocks.append({"images": [begin, begin + args.calib_images], "loss_changes": changes, **cost})
        print(f"block {b}: {cost['loss_evaluations']} loss evaluations in {cost['measure_s']:.0f} s", flush=True)
    truth, cost, pairs = column(rows, "standalone_accuracy"), column(rows, "bitops"), partner_indices(rows)
    proxy = list(-np.mean([b["loss_changes"] for b in blocks], axis=0))  # a smaller loss change ranks higher
    estimates = {"additive proxy": proxy, "one-shot estimate": column(rows, "oneshot_accuracy"),
                 "BitOps alone": [float(c) for c in cost]}
    figures = {name: search_figures(x, truth, cost, pairs) for name, x in estimates.items()}
    ceiling = study["search_fidelity"]["noise_ceiling"]
    return {"command": command(), "study": str(args.study), "supernet": str(args.supernet or study["supernet"]),
            "machine": machine(), "n_candidates": len(rows), "calib_images": args.calib_images, "blocks": blocks,
            "figures": figures, "noise_ceiling": ceiling, "proxy": proxy,
            "proxy_minus": {name: paired_difference(proxy, estimates[name], truth, cost, pairs)
                            for name in ("one-shot estimate", "BitOps alone")},
            "block_agreement": block_agreement(blocks, cost) if len(blocks) > 1 else None,
            "wall_s": time.perf_counter() - start}


def block_agreement(blocks: Sequence[dict[str, Any]], cost: Sequence[float]) -> dict[str, float]:
    """How far the proxy agrees with itself measured on other images (the first two blocks): its own noise."""
    x, y = (-np.asarray(b["loss_changes"]) for b in blocks[:2])
    return {"kendall_tau": correlations(x, y)["kendall_tau"], "kendall_tau_local": local_tau(x, y, cost)}


def markdown(result: dict[str, Any]) -> str:
    blocks = result["blocks"]
    seconds = sum(b["measure_s"] for b in blocks)
    lines = [
        "# An additive sensitivity proxy against the format ground truth", "",
        f"- command: `{result['command']}`",
        f"- machine: {machine_text(result['machine'])}; wall time {result['wall_s'] / 60:.1f} min",
        f"- ground truth: the {result['n_candidates']} stand-alone candidates of `{result['study']}`; supernet "
        f"`{result['supernet']}`",
        f"- proxy: minus the sum of the candidate's single-layer loss changes (each layer alone in its formats, the "
        f"rest at the top of their menus), {blocks[0]['loss_evaluations']} loss evaluations on each of "
        f"{len(blocks)} disjoint blocks of {result['calib_images']} training images "
        f"({', '.join(f'{b0}-{b1}' for b0, b1 in (b['images'] for b in blocks))}), {seconds:.0f} s in all; "
        "judged: the mean of the blocks", "",
        "| estimate | Kendall tau [95% CI] | tau within ±15% BitOps | neighbour pairs ordered right |",
        "|---|---|---|---|",
    ]
    lines += [search_row(name, f) for name, f in result["figures"].items()]
    lines.append("| the ground truth re-run (noise ceiling) | "
                 + " | ".join(f"{result['noise_ceiling'][k]:.3f}" for k in SEARCH_KEYS) + " |")
    lines += ["", "The proxy minus each other estimate (paired bootstrap over the same resampled candidates and "
              "neighbour pairs; a difference is a result only where its interval excludes 0):", "",
              "| proxy minus | Kendall tau | tau within ±15% BitOps | neighbour pairs ordered right |",
              "|---|---|---|---|"]
    lines += [search_row(name, d) for name, d in result["proxy_minus"].items()]
    agreement = result["block_agreement"]
    if agreement:
        lines += ["", f"The proxy against itself on the other block: tau {agreement['kendall_tau']:.3f}, within "
                  f"±15% BitOps {agreement['kendall_tau_local']:.3f}."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    return judge_and_write(args, judge, markdown, args.name)


if __name__ == "__main__":
    main()
