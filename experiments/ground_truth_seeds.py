"""Every candidate of a finished fidelity study trained again with another seed (issue 16), so that the ground
truth's noise ceiling is measured over all of its candidates and neighbour pairs instead of the few the study
re-ran, and the estimate is also judged against the two seeds' mean, a steadier ground truth.

The study's own recipe does the training (its scale, init, learning rate and, for ``init float``, the same float
network: ``--parent``, whose record must be the study's). Candidates the study already trained with that seed keep
their score. Each finished training is appended to ``<work>/trainings.jsonl`` at once, so a stopped run continues
where it stopped; the figures are written when every candidate has its re-run. A result already under ``--out`` for
the same study and seed lends its re-runs too, so its figures can be judged again without training (or ``--parent``).

    PYTHONPATH=. .venv/bin/python experiments/ground_truth_seeds.py --jobs 2 \\
        --study experiments/results/oneshot_fidelity_formats.json --parent runs/fidelity_formats/float_parent.pt
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from automq.io import append_jsonl, read_jsonl
from fidelity_stats import (column, fmt_ci, load_study, neighbour_resolution, pair_agreement, paired_difference,
                            ratio_to_ceiling, search_figures)
from oneshot_fidelity import PARENT, SEARCH_KEYS, Scale, StandaloneTrainer, partner_indices, run_jobs, search_row
from provenance import command, judge_and_write, machine, machine_text

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, required=True, help="a finished fidelity study's JSON")
    parser.add_argument("--seed", type=int, default=1, help="the seed of the re-runs (the study's is 0)")
    parser.add_argument("--parent", type=Path, help=f"init float: the study's float network ({PARENT}.pt, with its "
                        f"{PARENT}.json beside it)")
    parser.add_argument("--jobs", type=int, default=1, help="training processes (one torch thread each)")
    parser.add_argument("--data", help="dataset root (default: the space's)")
    parser.add_argument("--work", type=Path, help="where the trainings are kept (default runs/<study>_seed<seed>)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def checked_parent(study: dict[str, Any], parent: Path | None) -> Path | None:
    """The float network to fine-tune from: required for an ``init float`` study, and refused unless its record is
    the one the study kept (another network would be another ground truth)."""
    if study["init"] != "float":
        return None
    if parent is None:
        raise SystemExit("the study fine-tunes from a float network: give it with --parent (its float_parent.pt)")
    record = parent.with_suffix(".json")
    if not parent.is_file() or not record.is_file():
        raise SystemExit(f"--parent {parent}: needs the network and its record {record} beside it")
    if json.loads(record.read_text()) != study.get("float_parent"):
        raise SystemExit(f"--parent {parent}: another float network than the study's (its record {record} differs)")
    return parent


def rerun_accuracies(args: argparse.Namespace, study: dict[str, Any], work: Path,
                     earlier: dict[str, Any] | None) -> list[float]:
    """The ``args.seed`` accuracy of every candidate: the study's where it ran that seed, else kept in
    ``work/trainings.jsonl`` by an earlier run or in ``earlier`` (:func:`earlier_result`), else trained now."""
    rows = study["candidates"]
    log = work / "trainings.jsonl"
    kept = dict(zip(earlier["candidate_ids"], earlier["rerun_accuracies"])) if earlier else {}
    kept |= {r["id"]: r["accuracy"] for r in read_jsonl(log) if r["seed"] == args.seed} if log.exists() else {}
    kept |= {r["id"]: r["seed_accuracies"][args.seed] for r in rows if len(r.get("seed_accuracies", [])) > args.seed}
    todo = [r for r in rows if r["id"] not in kept]
    if not todo:
        return [kept[r["id"]] for r in rows]
    scale = Scale(**study["scale"])
    trainer = StandaloneTrainer(study["space"], args.data, scale, study["init"], study["supernet"], threads=1,
                                parent=checked_parent(study, args.parent))
    for done, (row, record) in enumerate(run_jobs(trainer, [(r["candidate"], args.seed) for r in todo], todo,
                                                  args.jobs, None), start=1):
        append_jsonl(log, {"id": row["id"], "seed": args.seed, **record})
        kept[row["id"]] = record["accuracy"]
        print(f"[{done}/{len(todo)}] {row['label']:>10} bitops={row['bitops']:.3e} seed 0 "
              f"{row['standalone_accuracy']:.4f}, seed {args.seed} {record['accuracy']:.4f}", flush=True)
    return [kept[r["id"]] for r in rows]


def earlier_result(args: argparse.Namespace, rows: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """This script's result for the same study and seed under ``args.out``, with ``candidate_ids``, so that a
    committed result can be judged again on another machine without its work folder; None when there is none, or
    when it was judged on other candidates (its ids, or for a result older than them the study's own runs of that
    seed, differ)."""
    path = args.out / f"{args.study.stem}_seed{args.seed}.json"
    if not path.is_file():
        return None
    earlier = json.loads(path.read_text())
    ids = [r["id"] for r in rows]
    earlier.setdefault("candidate_ids", ids)
    accuracies = dict(zip(earlier["candidate_ids"], earlier.get("rerun_accuracies", [])))
    same = (earlier.get("study"), earlier.get("seed")) == (str(args.study), args.seed) and list(accuracies) == ids \
        and all(accuracies[r["id"]] == r["seed_accuracies"][args.seed] for r in rows
                if len(r.get("seed_accuracies", [])) > args.seed)
    return earlier if same else None


def judge(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    study = load_study(args.study)
    if study.get("status") != "complete":
        raise SystemExit(f"{args.study}: the study is not finished (status {study.get('status')!r}); resume it first")
    work = args.work or Path("runs") / f"{args.study.stem}_seed{args.seed}"
    work.mkdir(parents=True, exist_ok=True)
    rows = study["candidates"]
    earlier = earlier_result(args, rows)
    first, again = column(rows, "standalone_accuracy"), rerun_accuracies(args, study, work, earlier)
    difference = np.subtract(again, first)
    mean = list((np.asarray(first) + np.asarray(again)) / 2)
    cost, pairs = column(rows, "bitops"), partner_indices(rows)
    estimates = {"one-shot estimate": column(rows, "oneshot_accuracy"), "BitOps alone": cost}
    resolution = neighbour_resolution(first, again, pairs)
    resolved = [pairs[k] for k in resolution.get("resolved", [])]
    run = {"command": command(), "machine": machine()}
    result: dict[str, Any] = {
        **run, "study": str(args.study), "seed": args.seed,
        "n_candidates": len(rows), "neighbour_pairs": len(pairs), "candidate_ids": [r["id"] for r in rows],
        "rerun_accuracies": again,
        "noise_ceiling": search_figures(again, first, cost, pairs),
        "against_seed_0": {name: search_figures(x, first, cost, pairs) for name, x in estimates.items()},
        "ratio_to_ceiling": {name: ratio_to_ceiling(x, again, first, cost, pairs) for name, x in estimates.items()},
        "against_mean": {name: search_figures(x, mean, cost, pairs) for name, x in estimates.items()},
        "oneshot_minus_bitops_against_mean": paired_difference(estimates["one-shot estimate"], cost, mean, cost,
                                                                pairs),
        "neighbour_resolution": resolution,
        "resolved_pairs_agreement": {name: pair_agreement(x, mean, resolved) for name, x in estimates.items()},
        "rerun_shift": float(difference.mean()), "seed_difference_std": float(difference.std(ddof=1)),
        "wall_s": time.perf_counter() - start, "work": str(work)}
    if earlier:  # judged again from an earlier result: its trainings' command, machine and time stay the record's
        result |= {key: earlier[key] for key in ("command", "machine", "wall_s", "work")}
        result["judged_again"] = {**run, "wall_s": time.perf_counter() - start}
    return result


def markdown(result: dict[str, Any]) -> str:
    seed = result["seed"]
    rows, ratios, mean = ([search_row(name, figures) for name, figures in result[key].items()]
                          for key in ("against_seed_0", "ratio_to_ceiling", "against_mean"))
    header = ["| ranking by | Kendall tau [95% CI] | tau within ±15% BitOps | neighbour pairs ordered right |",
              "|---|---|---|---|"]
    return "\n".join([
        "# The ground truth trained again: its noise ceiling over every candidate", "",
        f"- command: `{result['command']}`",
        f"- machine: {machine_text(result['machine'])}; wall time {result['wall_s'] / 60:.1f} min (trainings kept "
        f"in `{result['work']}` by earlier runs not included)",
        *([f"- judged again from that run's result, without training: `{again['command']}` "
           f"({again['wall_s'] / 60:.1f} min)"] if (again := result.get("judged_again")) else []),
        f"- study: `{result['study']}`, {result['n_candidates']} candidates, {result['neighbour_pairs']} neighbour "
        f"pairs; every candidate trained again with seed {seed} by the study's recipe (the study's own seed-{seed} "
        "runs kept)",
        f"- seed {seed} minus seed 0: mean {result['rerun_shift']:+.4f}, standard deviation "
        f"{result['seed_difference_std']:.4f}", "",
        f"The noise ceiling (seed {seed} against seed 0), and each estimate against seed 0 as the study judged it:", "",
        *header,
        search_row("the ground truth re-run (noise ceiling)", result["noise_ceiling"]),
        *rows, "",
        "Each figure over the ceiling's (the ratio the issue asks for; intervals from the same resamples of both):", "",
        *header, *ratios, "",
        f"Against the mean of seeds 0 and {seed} (a steadier ground truth):", "", *header, *mean, "",
        "One-shot minus BitOps against that mean (paired; a result only where the interval excludes 0): "
        + ", ".join(f"{k} {fmt_ci(result['oneshot_minus_bitops_against_mean'], k)}" for k in SEARCH_KEYS) + ".",
        *resolution_lines(result),
    ]) + "\n"


def resolution_lines(result: dict[str, Any]) -> list[str]:
    """What the two runs say about the neighbour pairs: how large their true differences are against one run's
    noise, how many runs a ground truth would need to order a typical pair, and each estimate on the pairs the
    two runs' mean already orders."""
    r = result["neighbour_resolution"]
    if not r:
        return []
    seeds = r["seeds_for_typical_pair"]
    agreement = result["resolved_pairs_agreement"]
    return ["", "## Can this ground truth order the neighbour pairs?", "",
            f"- one run's difference within a neighbour pair is off by {r['difference_noise_sd']:.4f} (SD, from the "
            f"two runs' disagreement over the {r['pairs']} pairs); the true differences, the spread of the two "
            f"runs' mean beyond that noise, are {r['true_difference_rms']:.4f} (root mean square)",
            "- a typical pair lies 2 standard errors from 0 only with "
            + (f"{seeds} runs of each candidate averaged" if seeds else "no number of runs: the noise explains "
               "all of the spread"),
            f"- {len(r['resolved'])} of {r['pairs']} pairs have a two-run mean difference beyond 2 standard errors "
            f"({2 * r['mean_difference_se']:.4f})"
            + (": ordered right by " + ", ".join(f"{name} {value:.3f}" for name, value in agreement.items())
               if r["resolved"] else "")]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    return judge_and_write(args, judge, markdown, f"{args.study.stem}_seed{args.seed}")


if __name__ == "__main__":
    main()
