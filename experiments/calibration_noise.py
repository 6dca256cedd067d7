"""How much a deployed candidate's test accuracy depends on *which* training images recalibrate its batch norms.

The searches' estimator, ``automq export`` and, until this study, the final measurement (``automq final``)
recalibrate a candidate's batch norms on the first 512 training images; that final measurement's paired standard
errors counted the sampling of the test images only. This study deploys chosen candidates of a final measurement
again with other, disjoint blocks of the training split as calibration images (``--sizes`` images each, ``--draws``
blocks per size; block 0 of 512 images is the searches' own calibration), scores each on the whole test split, and
reports per candidate the spread of its test accuracy over the blocks, and per comparison (searched candidate against
its uniform reference, both calibrated on the same block) the spread of the paired difference and how many blocks
call it a win: the noise a single-block measurement's intervals leave out, and what a larger calibration set does to
it. It is why ``automq final`` now averages over calibration blocks after the searches' images and counts their
spread in its standard errors.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python experiments/calibration_noise.py \\
        --final runs/bench16/final/final.json --supernet runs/sn16 --budgets 3.877e7 7.502e7 \\
        --runs evolution evolution-seed1 evolution-seed2 evolution-seed3 --name calibration_noise_16ep
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

from automq.data import fixed_batches
from automq.io import atomic_write_json, atomic_write_text
from automq.oneshot.evaluate import score_model
from automq.oneshot.paired import Correctness, paired_difference
from automq.oneshot.train import EVAL_BATCH_SIZE, load_space_data, load_supernet
from automq.report.final import DEPLOY_CALIB_BATCH, MARGIN_SE, calibration_batches, deploy, verdict
from automq.search.results import SPACE_FILE, load_trials
from automq.space.candidate import Candidate
from automq.space.space import SearchSpace
from provenance import command, header, machine


def chosen_comparisons(final: dict, budgets: list[float], runs: list[str]) -> list[dict]:
    """The comparisons of ``final`` at ``budgets`` (to 4 significant digits, as the reports print them) whose search
    folder is one of ``runs`` and that have a searched candidate."""
    wanted = {f"{b:.4g}" for b in budgets}
    return [c for c in final["comparisons"] if f"{c['budget']:.4g}" in wanted and c["searched_trial"] is not None
            and Path(final["searches"][c["run"]]).name in runs]


def trials_of(final: dict, comparisons: list[dict]) -> dict[tuple[str, int], Candidate]:
    """Every searched candidate and uniform reference of ``comparisons``, by (search label, trial number), read
    from their search folders."""
    wanted: dict[str, set[int]] = {}
    for c in comparisons:
        wanted.setdefault(c["run"], set()).add(c["searched_trial"])
        wanted.setdefault(c["uniform_run"], set()).add(c["uniform_trial"])
    return {(label, t.number): t.candidate for label, numbers in wanted.items()
            for t in load_trials(final["searches"][label]) if t.number in numbers}


def calibration_block(train: Any, size: int, block: int) -> list[Any]:
    """The ``block``-th run of ``size`` consecutive training images (the split is already a seeded permutation) in
    the final measurement's calibration batches; block 0 is the images the searches calibrate on."""
    return calibration_batches(train, block * size, size)


def copied_block(train: Any, size: int) -> list[Any]:
    """Block 0 again, the same image values gathered image by image through a ``Subset`` (a copy in other memory)."""
    return fixed_batches(Subset(train, np.arange(size)), size, DEPLOY_CALIB_BATCH)


def spread(values: list[float]) -> dict[str, float]:
    """Mean, standard deviation (n - 1) and range of ``values``, in points."""
    points = [100 * v for v in values]
    return {"mean": statistics.fmean(points), "sd": statistics.stdev(points), "min": min(points), "max": max(points)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--final", required=True, help="final.json of an `automq final` measurement")
    parser.add_argument("--supernet", required=True, help="the supernet run that measurement deployed from")
    parser.add_argument("--budgets", type=float, nargs="+", required=True, help="BitOps budgets of its comparisons")
    parser.add_argument("--runs", nargs="+", required=True, help="search folder names whose comparisons to redo")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 4096], help="calibration images per block")
    parser.add_argument("--draws", type=int, nargs="+", default=[8, 4], help="blocks per size (disjoint)")
    parser.add_argument("--name", default="calibration_noise")
    parser.add_argument("--out", default="experiments/results")
    args = parser.parse_args()
    if len(args.sizes) != len(args.draws) or min(args.draws) < 2:
        parser.error("give one --draws count (at least 2) per --sizes entry")
    torch.set_num_threads(1)
    start = time.perf_counter()
    final = json.loads(Path(args.final).read_text())
    comparisons = chosen_comparisons(final, args.budgets, args.runs)
    trials = trials_of(final, comparisons)
    candidates = {candidate.id: candidate for candidate in trials.values()}
    space = SearchSpace.from_file(Path(args.supernet) / SPACE_FILE)
    data = load_space_data(space, with_test=True)  # the final measurement's splits
    if max(s * d for s, d in zip(args.sizes, args.draws)) > len(data.train):
        parser.error(f"--sizes x --draws needs more than the {len(data.train)} training images")
    test = fixed_batches(data.test, len(data.test), EVAL_BATCH_SIZE)
    supernet = load_supernet(args.supernet, space)
    outcomes: dict[int, dict[str, list[Correctness]]] = {}
    for size, draws in zip(args.sizes, args.draws):
        outcomes[size] = {cid: [] for cid in candidates}
        for block in range(draws):
            calibration = calibration_block(data.train, size, block)
            for cid, candidate in candidates.items():
                outcomes[size][cid].append(score_model(deploy(supernet, candidate, calibration), test).correctness)
            print(f"{size} images, block {block}: done", flush=True)
    copied = copied_block(data.train, args.sizes[0])
    if not all(torch.equal(a[0], b[0]) for a, b in zip(copied, calibration_block(data.train, args.sizes[0], 0))):
        raise SystemExit("the copied calibration block differs from block 0: nothing to compare")
    layout = {cid: score_model(deploy(supernet, candidate, copied), test).correctness.accuracy
              - outcomes[args.sizes[0]][cid][0].accuracy for cid, candidate in candidates.items()}
    result = {"command": command(), "machine": machine(), "final": args.final, "supernet": args.supernet,
              "test_images": len(data.test), "sizes": args.sizes, "draws": args.draws,
              "candidates": candidate_rows(final, candidates, outcomes, layout),
              "comparisons": comparison_rows(final, comparisons, trials, outcomes),
              "wall_s": time.perf_counter() - start}
    out = Path(args.out)
    atomic_write_json(out / f"{args.name}.json", result)
    atomic_write_text(out / f"{args.name}.md", markdown(result))
    print(markdown(result))


def candidate_rows(final: dict, candidates: dict[str, Candidate], outcomes: dict[int, dict[str, list[Correctness]]],
                   layout: dict[str, float]) -> list[dict]:
    """Per candidate: its test accuracy in the final measurement, the binomial SE of one accuracy on the test
    images, its spread over the calibration blocks, and how far block 0's copy moves it (``layout``)."""
    recorded = {c["candidate_id"]: c["test_accuracy"] for c in final["candidates"]}
    rows = []
    for cid in candidates:
        first = next(iter(outcomes.values()))[cid][0]
        rows.append({"candidate_id": cid, "final_test_accuracy": recorded.get(cid),
                     "image_se": 100 * first.se,
                     "block0": 100 * first.accuracy, "block0_copied_shift": 100 * layout[cid],
                     **{f"calib{size}": spread([o.accuracy for o in outcomes[size][cid]]) for size in outcomes}})
    return rows


def comparison_rows(final: dict, comparisons: list[dict], trials: dict[tuple[str, int], Candidate],
                    outcomes: dict[int, dict[str, list[Correctness]]]) -> list[dict]:
    """Per comparison: the paired difference (searched - uniform, both on the same calibration block) per block."""
    rows = []
    for c in comparisons:
        searched = trials[(c["run"], c["searched_trial"])].id
        reference = trials[(c["uniform_run"], c["uniform_trial"])].id
        row = {"run": Path(final["searches"][c["run"]]).name, "budget": c["budget"], "uniform": c["uniform"],
               "searched_id": searched, "final_difference": 100 * c["difference"], "final_se": 100 * c["se"]}
        for size in outcomes:
            differences = [paired_difference(s, u) for s, u in zip(outcomes[size][searched], outcomes[size][reference])]
            verdicts = [verdict(d, MARGIN_SE) for d in differences]
            row[f"calib{size}"] = {**spread([d.value for d in differences]),
                                   "mean_se": 100 * statistics.fmean(d.se for d in differences),
                                   "wins": verdicts.count("win"), "losses": verdicts.count("loss")}
        rows.append(row)
    return rows


def markdown(result: dict) -> str:
    """The committed summary."""
    sizes = result["sizes"]
    lines = ["# Calibration noise of the final measurement", "", *header(result),
             f"- final measurement: `{result['final']}` (supernet `{result['supernet']}`); test split: "
             f"{result['test_images']} images; calibration blocks: "
             + ", ".join(f"{d} of {s} images" for s, d in zip(sizes, result["draws"])), "",
             "Each candidate deployed as the final measurement does (extract, recalibrate batch norms, score the whole "
             "test split), once per disjoint block of training images; block 0 of 512 is the searches' own "
             "calibration (and a single-block final measurement's: then its accuracy here equals the final test %). "
             "`copied`: block 0 again, the same image "
             "values copied image by image into other memory before the batches are formed (a different memory "
             "layout, nothing else): how far that alone moves the accuracy. Points; SD over blocks, against the test "
             "images' binomial SE of one accuracy.", "",
             "| candidate | final test % | block 0 | copied | image SE | "
             + " | ".join(f"{s}: mean | {s}: SD | {s}: range" for s in sizes) + " |",
             "|---|---:|---:|---:|---:|" + "---:|---:|---|" * len(sizes)]
    for row in result["candidates"]:
        final = "-" if row["final_test_accuracy"] is None else f"{100 * row['final_test_accuracy']:.2f}"
        lines.append(f"| {row['candidate_id']} | {final} | {row['block0']:.2f} | {row['block0_copied_shift']:+.2f} | "
                     f"{row['image_se']:.2f} | " + " | ".join(
            f"{row[f'calib{s}']['mean']:.2f} | {row[f'calib{s}']['sd']:.2f} | {row[f'calib{s}']['min']:.2f}-"
            f"{row[f'calib{s}']['max']:.2f}" for s in sizes) + " |")
    lines += ["", "Paired differences, searched - best uniform format, both calibrated on the same block (points): "
              "the final measurement's figure and SE, then per size the mean and SD over blocks, the mean "
              "paired SE (test images only) and the blocks whose difference is a win (beyond 2 SE) or a loss.", "",
              "| search | budget | uniform | final difference | " + " | ".join(
                  f"{s}: mean ± SD | {s}: image SE | {s}: wins / losses" for s in sizes) + " |",
              "|---|---:|---|---|" + "---|---:|---|" * len(sizes)]
    for row in result["comparisons"]:
        lines.append(f"| {row['run']} | {row['budget']:.4g} | {row['uniform']} | {row['final_difference']:+.2f} ± "
                     f"{row['final_se']:.2f} | " + " | ".join(
                         f"{row[f'calib{s}']['mean']:+.2f} ± {row[f'calib{s}']['sd']:.2f} | "
                         f"{row[f'calib{s}']['mean_se']:.2f} | {row[f'calib{s}']['wins']} / "
                         f"{row[f'calib{s}']['losses']} of {d}" for s, d in zip(sizes, result["draws"])) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
