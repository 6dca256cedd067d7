"""Does choosing each budget's candidate by a calibration-averaged validation accuracy win more budgets?

The candidate compared at each uniform budget is the search's most accurate front candidate at or below it by its
refined validation accuracy, which the estimator measures with the batch norms recalibrated on the first 512
training images; a deployed candidate's accuracy moves with those images by an SD of 0.1-0.2 points
(``calibration_noise_16ep.md``), as much as the contenders at a budget differ. This study chooses again: at each
budget, the ``--contenders`` most accurate front candidates of each search at or below it (by that validation
accuracy) and as many uniform baselines are scored on the whole validation split under ``--blocks`` other
calibration blocks, after those the final measurement calibrates on (so the choice and the measurement share no
calibration image), and the best mean over the blocks is the pick, on both sides. Both picks are then compared on the
test split with the final measurement's own outcomes (its calibration blocks, paired SE over images and blocks):
budgets won per run under the usual choice and under the calibrated one, and the two picks head to head where they
differ. Validation scores are kept in ``--cache`` as they are made, so a stopped run continues.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python experiments/calibrated_choice.py \\
        --final runs/bench16/final --supernet runs/sn16 \\
        --runs evolution evolution-seed1 evolution-seed2 evolution-seed3 --name calibrated_choice_16ep
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from automq.data import fixed_batches
from automq.io import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl
from automq.oneshot.evaluate import score_model
from automq.oneshot.train import EVAL_BATCH_SIZE, load_space_data, load_supernet
from automq.report.comparison import analyse_runs, find_baselines, front_2d
from automq.oneshot.paired import block_difference
from automq.report.final import (FINAL_FILE, binding, calibration_batches, compare, deploy, load_final,
                                 measured_outcomes, within_budget)
from bench_search_quality import points
from automq.search.results import SPACE_FILE, load_search_dir
from automq.search.trial import Trial
from automq.space.space import SearchSpace
from provenance import command, header, machine

COST = "bitops"


def contenders(trials: Sequence[Trial], budget: float, count: int) -> list[Trial]:
    """The ``count`` most accurate of ``trials`` at or below ``budget`` by validation accuracy (the cheaper first
    on a tie), most accurate first: the first is the usual choice."""
    within = [t for t in trials if within_budget(t, budget)]
    return sorted(within, key=lambda t: (-t.metrics["accuracy"], t.metrics[COST]))[:count]


def calibrated_pick(candidates: Sequence[Trial], accuracies: dict[str, list[float]]) -> Trial:
    """The candidate of the highest mean validation accuracy over the choice blocks (on a tie, the usual order)."""
    return max(candidates, key=lambda t: (statistics.fmean(accuracies[t.candidate.id]),
                                          -candidates.index(t)))


def choice_firsts(final: dict, blocks: int) -> list[int]:
    """The first training image of each choice block: blocks of the final measurement's size right after its own."""
    calibration = final["calibration"]
    start = calibration["first"] + calibration["blocks"] * calibration["images"]
    return [start + block * calibration["images"] for block in range(blocks)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--final", required=True, help="folder of an `automq final` measurement over blocks")
    parser.add_argument("--supernet", required=True, help="the supernet run that measurement deployed from")
    parser.add_argument("--runs", nargs="+", required=True, help="search folder names whose choices to redo")
    parser.add_argument("--contenders", type=int, default=5, help="candidates per side and budget scored again")
    parser.add_argument("--blocks", type=int, default=4, help="calibration blocks of the choice")
    parser.add_argument("--cache", default=None, help="validation scores (default: FINAL/calibrated_choice.jsonl)")
    parser.add_argument("--name", default="calibrated_choice")
    parser.add_argument("--out", default="experiments/results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    final = load_final(args.final, [])
    if final is None or "calibration" not in final:
        parser.error(f"{Path(args.final) / FINAL_FILE}: no final measurement over calibration blocks")
    notes: list[str] = []
    runs = analyse_runs([load_search_dir(path) for path in final["searches"].values()], notes)
    found = [b for b in find_baselines([r for r in runs if r.is_uniform]) if COST in b.trial.metrics]
    baselines, names = [b.trial for b in found], {b.trial.candidate.id: b.name for b in found}
    chosen = [c for c in final["comparisons"] if c["searched_trial"] is not None
              and Path(final["searches"][c["run"]]).name in args.runs]
    fronts = {run.label: front_2d(run.result.trials, COST) for run in runs if not run.is_uniform}
    sides = {(c["run"], c["budget"]): (contenders(fronts[c["run"]], c["budget"], args.contenders),
                                       contenders(baselines, c["budget"], args.contenders)) for c in chosen}
    firsts = choice_firsts(final, args.blocks)
    candidates = {t.candidate.id: t.candidate for pair in sides.values() for side in pair for t in side}
    accuracies, made = validation_accuracies(args, candidates, firsts, final["calibration"]["images"])
    outcomes = measured_outcomes(args.final, final)
    rows = [comparison_row(final, c, *sides[(c["run"], c["budget"])], accuracies, outcomes) for c in chosen]
    for row in rows:
        row["every_uniform"] = against_every_uniform(outcomes[row["calibrated"]["searched_id"]], [
            b for b in baselines if within_budget(b, row["budget"])], outcomes)
        for side in ("calibrated", "every_uniform"):
            row[side]["uniform"] = names[row[side]["uniform_id"]]
    result = {"command": command(), "machine": machine(), "final": args.final, "supernet": args.supernet,
              "runs": args.runs, "contenders": args.contenders, "choice_blocks": firsts,
              "block_images": final["calibration"]["images"], "final_recipe": final["recipe"],
              "candidates_scored": len(candidates), "scores_made": made, "rows": rows,
              "wall_s": time.perf_counter() - start}
    out = Path(args.out)
    atomic_write_json(out / f"{args.name}.json", result)
    atomic_write_text(out / f"{args.name}.md", markdown(result))
    print(markdown(result))


def validation_accuracies(args: argparse.Namespace, candidates: dict[str, Any], firsts: list[int],
                          size: int) -> tuple[dict[str, list[float]], int]:
    """Each candidate's accuracy on the whole validation split under each choice block (``size`` images from each of
    ``firsts``), from the cache or measured (and appended to it), and how many were measured in this run (the
    others' time was spent by an earlier one)."""
    cache = Path(args.cache or Path(args.final) / "calibrated_choice.jsonl")
    stored = {(r["candidate_id"], r["first"]): r["accuracy"] for r in read_jsonl(cache)
              if isinstance(r, dict) and r.get("supernet") == str(args.supernet)}
    space = SearchSpace.from_file(Path(args.supernet) / SPACE_FILE)
    data = load_space_data(space)
    val = fixed_batches(data.val, len(data.val), EVAL_BATCH_SIZE)
    supernet = load_supernet(args.supernet, space)
    made = 0
    for first in firsts:
        calibration = calibration_batches(data.train, first, size)
        for cid, candidate in candidates.items():
            if (cid, first) not in stored:
                stored[(cid, first)] = score_model(deploy(supernet, candidate, calibration), val).correctness.accuracy
                made += 1
                append_jsonl(cache, {"supernet": str(args.supernet), "candidate_id": cid, "first": first,
                                     "accuracy": stored[(cid, first)]})
        print(f"choice block at image {first}: done", flush=True)
    return {cid: [stored[(cid, first)] for first in firsts] for cid in candidates}, made


def comparison_row(final: dict, usual: dict, searched: list[Trial], uniform: list[Trial],
                   accuracies: dict[str, list[float]], outcomes: dict) -> dict:
    """One budget of one search: the usual picks' verdict (the final measurement's) and the calibrated picks', and
    the calibrated search pick against the usual one on the test split."""
    pick, reference = calibrated_pick(searched, accuracies), calibrated_pick(uniform, accuracies)
    mine = outcomes[pick.candidate.id]
    row = {"run": Path(final["searches"][usual["run"]]).name, "budget": usual["budget"],
           "usual": {"searched_id": usual["searched_id"], "uniform": usual["uniform"], "difference":
                     usual["difference"], "se": usual["se"], "verdict": usual["verdict"]},
           "calibrated": {"searched_id": pick.candidate.id, "searched_trial": pick.number,
                          "uniform_id": reference.candidate.id,
                          **compare(mine, outcomes[reference.candidate.id])},
           "contenders": [{"id": t.candidate.id, "val": t.metrics["accuracy"], COST: t.metrics[COST],
                           "choice_val": statistics.fmean(accuracies[t.candidate.id])} for t in searched]}
    if pick.candidate.id != usual["searched_id"]:
        row["versus_usual"] = compare(mine, outcomes[usual["searched_id"]])
    return row


def against_every_uniform(mine: Any, uniform: Sequence[Trial], outcomes: dict) -> dict:
    """The calibrated pick judged as ``automq final`` judges a budget: against every uniform format at or below it
    (each candidate once), the binding comparison's figures and its verdict."""
    ids = list(dict.fromkeys(t.candidate.id for t in uniform))
    index = binding([block_difference(mine, outcomes[cid]) for cid in ids])
    return {"uniform_id": ids[index], **compare(mine, outcomes[ids[index]])}


def markdown(result: dict) -> str:
    """The committed summary."""
    rows = result["rows"]
    lines = ["# Choosing each budget's candidate by a calibration-averaged validation accuracy", "", *header(result),
             f"- final measurement: `{result['final']}` ({result['final_recipe']})",
             f"- choice: at each budget the {result['contenders']} most accurate front candidates (by the refined "
             "validation accuracy) and as many uniform baselines, each scored on the whole validation split under "
             f"{len(result['choice_blocks'])} calibration blocks of {result['block_images']} training images starting "
             f"at images {', '.join(map(str, result['choice_blocks']))} (after the final measurement's), the best "
             f"mean picked on both sides; {result['candidates_scored']} candidates scored, "
             f"{result['scores_made']} of their {result['candidates_scored'] * len(result['choice_blocks'])} "
             "validation scores in this run (the others from the cache, made by earlier runs: the wall time counts "
             "this run only)", ""]
    for run in dict.fromkeys(row["run"] for row in rows):
        mine = [row for row in rows if row["run"] == run]
        usual = [row["usual"]["verdict"] for row in mine]
        calibrated = [row["calibrated"]["verdict"] for row in mine]
        every = [row["every_uniform"]["verdict"] for row in mine]
        changed = [row for row in mine if "versus_usual" in row]
        versus = [row["versus_usual"]["verdict"] for row in changed]
        lines.append(f"- {run}: usual choice {usual.count('win')} wins / {usual.count('loss')} losses, calibrated "
                     f"choice {calibrated.count('win')} wins / {calibrated.count('loss')} losses of {len(mine)} "
                     f"budgets; the search's pick changed at {len(changed)}, where the new pick against the old one "
                     f"wins {versus.count('win')}, ties {versus.count('tie')}, loses {versus.count('loss')}; the "
                     "calibrated pick against every uniform format at or below each budget (the final measurement's "
                     f"rule): {every.count('win')} wins, {every.count('tie')} ties, {every.count('loss')} losses")
    lines += ["", "Points on the test split (± paired SE over the test images and the final measurement's calibration "
              "blocks; a win beyond 2 SE with its 95% t interval above zero).", "",
              "| search | BitOps budget | usual: uniform | usual: difference | calibrated: uniform | calibrated: "
              "difference | new pick - usual pick | calibrated pick: binding uniform of all | difference |",
              "|---|---:|---|---|---|---|---|---|---|"]
    for row in rows:
        usual, calibrated, every = row["usual"], row["calibrated"], row["every_uniform"]
        versus = row.get("versus_usual")
        lines.append(f"| {row['run']} | {row['budget']:.4g} | {usual['uniform']} | {verdict_points(usual)} | "
                     f"{calibrated['uniform']} | {verdict_points(calibrated)} | "
                     f"{verdict_points(versus) if versus else 'same pick'} | "
                     f"{every['uniform']} | {verdict_points(every)} |")
    return "\n".join(lines) + "\n"


def verdict_points(comparison: dict) -> str:
    """A comparison's difference in points ± SE, with its verdict."""
    return f"{points(comparison['difference'], comparison['se'])} ({comparison['verdict']})"


if __name__ == "__main__":
    main()
