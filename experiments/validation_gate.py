"""Does shipping a searched candidate only where validation separates it from every uniform format avoid the losses?

Judged against every uniform format at or below each budget (``automq final``), the 16-epoch benchmark's searches
lose upper budgets: the most accurate of hundreds of noisy validation estimates is flattered more than a uniform
format's (``bench_search_quality_default_16ep_every_uniform.md``). This study replays the final measurement with a
gated choice: at each budget the search's pick is shipped only when, on the whole validation split (the refined
estimate's images and calibration), it leads every uniform format at or below the budget by more than 2 paired
standard errors with its 95% interval above zero (the final measurement's win rule, on validation); otherwise the
uniform format validation ranks first there is shipped. Both choices are then judged with the final measurement's
own test outcomes (its calibration blocks, every uniform format, the binding comparison): no candidate is deployed
again on test, so the gate is compared on the same images and blocks as the usual choice.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python experiments/validation_gate.py \\
        --final runs/bench16/final --supernet runs/sn16 --name validation_gate_16ep
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from automq.oneshot.evaluate import OneShotEstimator
from automq.oneshot.paired import BlockCorrectness, Correctness, block_difference, paired_difference
from automq.report.final import FINAL_FILE, binding, budget_verdict, load_final, measured_outcomes, verdict
from automq.search.results import SPACE_FILE, load_search_dir
from automq.io import atomic_write_json, atomic_write_text
from automq.space.space import SearchSpace
from bench_search_quality import points
from provenance import command, header, machine


def passes_gate(searched: Correctness, uniform: Sequence[Correctness]) -> bool:
    """Whether the searched candidate wins against every uniform format on validation (the final rule's win)."""
    differences = [paired_difference(searched, u) for u in uniform]
    return budget_verdict(differences) == "win"


def judged(shipped: str, references: Sequence[str], outcomes: Mapping[str, BlockCorrectness]) -> dict:
    """The shipped candidate against every uniform reference on test: the binding comparison and the verdict."""
    differences = [block_difference(outcomes[shipped], outcomes[r]) for r in references]
    index = binding(differences)
    decisive = differences[index]
    return {"difference": decisive.value, "se": decisive.se, "verdict": verdict(decisive), "uniform": references[index]}


def final_against_every_uniform(parser: argparse.ArgumentParser, folder: str) -> dict:
    """The ``final.json`` of ``folder``; a usage error where there is none that judged each budget against every
    uniform format (one written before that rule)."""
    final = load_final(folder, [])
    if final is None or not all("references" in c for c in final["comparisons"]):
        parser.error(f"{Path(folder) / FINAL_FILE}: no final measurement against every uniform format")
    return final


def final_trials(final: dict) -> dict:
    """Every trial's candidate of the searches a final measurement measured, by (search label, trial number)."""
    return {(label, t.number): t.candidate for label, path in final["searches"].items()
            for t in load_search_dir(path).trials}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--final", required=True, help="folder of an `automq final` measurement")
    parser.add_argument("--supernet", required=True, help="the supernet run the searches scored with")
    parser.add_argument("--name", default="validation_gate")
    parser.add_argument("--out", default="experiments/results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    final = final_against_every_uniform(parser, args.final)
    trials = final_trials(final)
    space = SearchSpace.from_file(Path(args.supernet) / SPACE_FILE)
    # every validation image, as the refinement that chose the candidates scored them
    estimator = OneShotEstimator.from_run(args.supernet, space=space, val_images=10**9)
    outcomes = measured_outcomes(args.final, final)
    rows = []
    for c in final["comparisons"]:
        if c["searched_trial"] is None:
            continue
        references = [trials[(r["uniform_run"], r["uniform_trial"])] for r in c["references"]]
        searched = trials[(c["run"], c["searched_trial"])]
        mine = estimator.correctness(searched)
        if abs(mine.accuracy - c["searched_val_accuracy"]) > 0.5 / mine.images:
            raise SystemExit(f"{c['run']} trial #{c['searched_trial']}: validation accuracy {mine.accuracy} is not "
                             f"the refined {c['searched_val_accuracy']}: another supernet or validation split?")
        gate = passes_gate(mine, [estimator.correctness(u) for u in references])
        shipped = searched if gate else references[0]  # the uniform format validation ranks first
        ids = [u.id for u in references]
        names = dict(zip(ids, (r["uniform"] for r in c["references"])))
        gated = judged(shipped.id, ids, outcomes)
        rows.append({"run": c["run"], "budget": c["budget"], "usual": c["verdict"], "usual_difference":
                     c["difference"], "usual_se": c["se"], "usual_uniform": c["uniform"], "gate": gate,
                     "shipped": "searched" if gate else names[shipped.id], "gated_difference": gated["difference"],
                     "gated_se": gated["se"], "gated_verdict": gated["verdict"],
                     "gated_uniform": names[gated["uniform"]]})
        print(f"{c['run']} {c['budget']:.4g}: gate {'passed' if gate else 'closed'}", flush=True)
    result = {"command": command(), "machine": machine(), "final": args.final, "supernet": args.supernet,
              "val_images": estimator.val_images, "rows": rows, "wall_s": time.perf_counter() - start}
    out = Path(args.out)
    atomic_write_json(out / f"{args.name}.json", result)
    atomic_write_text(out / f"{args.name}.md", markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    """The committed summary."""
    rows = result["rows"]
    lines = ["# Shipping a searched candidate only where validation separates it from every uniform format", "",
             *header(result), f"- final measurement: `{result['final']}`; gate on the first {result['val_images']} "
             "validation images (the refined estimate's), a win over every uniform format at or below the budget "
             "by > 2 paired SE with its 95% interval above zero; closed: the uniform format validation ranks first "
             "is shipped", ""]
    for run in dict.fromkeys(row["run"] for row in rows):
        mine = [row for row in rows if row["run"] == run]
        usual, gated = Counter(r["usual"] for r in mine), Counter(r["gated_verdict"] for r in mine)
        lines.append(f"- {run}: usual choice {usual['win']} wins / {usual['tie']} ties / {usual['loss']} losses, "
                     f"gated {gated['win']} / {gated['tie']} / {gated['loss']} of {len(mine)} budgets (gate passed "
                     f"at {sum(r['gate'] for r in mine)})")
    lines += ["", "Test split, against every uniform format at or below the budget (the binding one shown; points "
              "± paired SE over the test images and calibration blocks).", "",
              "| search | BitOps budget | usual: binding uniform | usual | shipped under the gate | gated: binding "
              "uniform | gated |", "|---|---:|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['budget']:.4g} | {r['usual_uniform']} | "
                     f"{points(r['usual_difference'], r['usual_se'])} ({r['usual']}) | {r['shipped']} | "
                     f"{r['gated_uniform']} | {points(r['gated_difference'], r['gated_se'])} ({r['gated_verdict']}) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
