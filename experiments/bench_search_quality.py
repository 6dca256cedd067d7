"""How close the ``tune`` samplers get to the exact Pareto front of a space small enough to enumerate.

1. Train a short supernet for ``spaces/tiny_enum.yaml`` (576 candidates), unless ``--run`` already holds one.
2. Score every candidate with its one-shot estimator (``--eval-size`` validation images, ``search.calib_size``
   calibration images) and cache the table; the exhaustive front's hypervolume is the reference.
3. Run each sampler (nsga2, tpe, gp, random) for ``max(--checkpoints)`` trials with several seeds through the
   in-process path of the ``tune`` strategy, with the cached table as the evaluator (so the samplers cost
   nothing), and report the hypervolume of the front found after 25, 50 and 100 trials divided by the
   exhaustive front's hypervolume (same normalisation as every report: :mod:`automq.search.pareto`).

    python experiments/bench_search_quality.py [--run RUN_DIR] [--seeds 5] [--out experiments/results]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time
from pathlib import Path

import torch

from automq.space.candidate import Candidate
from automq.cost import CostModel
from automq.oneshot.evaluate import OneShotEstimator
from automq.search.results import hypervolume_scales, pareto_trials, space_objectives
from automq.space.space import SearchSpace
from automq.strategies.tune import TuneStrategy
from automq.search.strategy import Budget
from automq.search.trial import Trial
from automq.oneshot.train import SUPERNET, train_supernet

SAMPLERS = ("nsga2", "tpe", "gp", "random")


def enumerate_candidates(space: SearchSpace) -> list[Candidate]:
    """Every candidate of the space, once (inactive decisions would otherwise repeat candidates)."""
    decisions = space.decisions()
    unique: dict[str, Candidate] = {}
    for values in itertools.product(*(d.choices for d in decisions)):
        candidate = space.candidate_from_choices(dict(zip((d.name for d in decisions), values)))
        unique.setdefault(candidate.id, candidate)
    if len(unique) != space.count():
        raise RuntimeError(f"enumerated {len(unique)} candidates, the space counts {space.count()}")
    return list(unique.values())


class TableEvaluator:
    """Looks up the cached one-shot estimate of a candidate: a free evaluator with the real numbers."""

    def __init__(self, space: SearchSpace, table: dict[str, dict[str, float]]) -> None:
        self.space, self.table = space, table
        self.cost_model = CostModel(space)

    def costs(self, candidate: Candidate) -> dict[str, float]:
        return self.cost_model.metrics(candidate)

    def __call__(self, candidate: Candidate) -> dict[str, float]:
        return dict(self.table[candidate.id])


def exhaustive_table(space: SearchSpace, run: Path, eval_size: int, cache: Path) -> dict[str, dict[str, float]]:
    if cache.is_file():
        return json.loads(cache.read_text())["table"]
    estimator = OneShotEstimator.from_run(run, space=space, val_images=eval_size)
    start = time.perf_counter()
    table = {c.id: estimator.estimate(c) for c in enumerate_candidates(space)}
    cache.write_text(json.dumps({"eval_size": eval_size, "seconds": time.perf_counter() - start, "table": table}))
    return table


def front_recall(trials: list[Trial], checkpoints: list[int], front: set[str]) -> list[float]:
    """Fraction of the exhaustive front's candidates among the first ``n`` trials, for each checkpoint."""
    return [len(front & {t.candidate.id for t in trials[:n]}) / len(front) for n in checkpoints]


def hypervolume_ratios(space: SearchSpace, trials: list[Trial], checkpoints: list[int],
                       reference: float) -> list[float]:
    objectives, scales = space_objectives(space), hypervolume_scales(space)
    return [pareto_trials(trials[:n], objectives, scales)[1] / reference for n in checkpoints]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--space", default="spaces/tiny_enum.yaml")
    parser.add_argument("--run", default="runs/bench_tiny_enum", help="supernet run folder (trained if empty)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-subset", type=int, default=10000)
    parser.add_argument("--eval-size", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[25, 50, 100])
    parser.add_argument("--out", default="experiments/results")
    args = parser.parse_args()

    torch.set_num_threads(1)
    space = SearchSpace.from_file(args.space)
    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (run / SUPERNET).is_file():
        train_supernet(space, run, epochs=args.epochs, train_subset=args.train_subset, progress=False)
    table = exhaustive_table(space, run, args.eval_size, run / "exhaustive_table.json")
    evaluator = TableEvaluator(space, table)
    all_trials = [Trial(n, c, evaluator(c)) for n, c in enumerate(enumerate_candidates(space))]
    front, reference = pareto_trials(all_trials, space_objectives(space), hypervolume_scales(space))

    front_ids = {t.candidate.id for t in front}
    ratios: dict[str, list[list[float]]] = {}
    recalls: dict[str, list[list[float]]] = {}
    for sampler, seed in itertools.product(SAMPLERS, range(args.seeds)):
        trials = TuneStrategy(sampler=sampler, workers=0).run(space, evaluator, Budget(max(args.checkpoints)),
                                                              seed=seed)
        ratios.setdefault(sampler, []).append(hypervolume_ratios(space, trials, args.checkpoints, reference))
        recalls.setdefault(sampler, []).append(front_recall(trials, args.checkpoints, front_ids))
        print(f"{sampler} seed {seed}: {ratios[sampler][-1]} front recall {recalls[sampler][-1]}", flush=True)

    def summarise(values: dict[str, list[list[float]]]) -> dict[str, list[dict[str, float]]]:
        return {s: [{"mean": statistics.mean(col), "std": statistics.pstdev(col), "min": min(col)}
                    for col in zip(*runs)] for s, runs in values.items()}
    result = {"space": args.space, "candidates": len(all_trials), "run": str(run), "epochs": args.epochs,
              "train_subset": args.train_subset, "eval_size": args.eval_size,
              "enumeration_s": json.loads((run / "exhaustive_table.json").read_text())["seconds"],
              "exhaustive_front_size": len(front), "exhaustive_hypervolume": reference,
              "checkpoints": args.checkpoints, "seeds": args.seeds, "ratios": ratios, "summary": summarise(ratios),
              "front_recall": recalls, "front_recall_summary": summarise(recalls),
              "load_average": os.getloadavg()}
    (out / "bench_search_quality.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "bench_search_quality.md").write_text(markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    checkpoints = result["checkpoints"]
    lines = [
        "# Search quality of the `tune` samplers against the exhaustive front", "",
        f"Space `{result['space']}` ({result['candidates']} candidates). Supernet trained for {result['epochs']} "
        f"epochs on {result['train_subset']} images; every candidate scored by the one-shot estimator on "
        f"{result['eval_size']} validation images ({result['enumeration_s']:.0f} s in all). Exhaustive front: "
        f"{result['exhaustive_front_size']} candidates, hypervolume {result['exhaustive_hypervolume']:.4f}. "
        f"Each entry: hypervolume found / exhaustive hypervolume, mean ± std (min) over {result['seeds']} seeds. "
        "A trial is one distinct candidate evaluated (a sampler's repeats are answered from the record).", "",
        "| sampler | " + " | ".join(f"{n} trials" for n in checkpoints) + " |",
        "|---|" + "---|" * len(checkpoints),
    ]
    lines += table(result["summary"])
    lines += ["", "Share of the exhaustive front's candidates found (mean ± std (min)); it separates the samplers "
              "more than the hypervolume, which the narrow accuracy range of the one-shot estimates compresses:", "",
              "| sampler | " + " | ".join(f"{n} trials" for n in checkpoints) + " |",
              "|---|" + "---|" * len(checkpoints)]
    lines += table(result["front_recall_summary"])
    return "\n".join(lines) + "\n"


def table(summary: dict[str, list[dict[str, float]]]) -> list[str]:
    return [f"| {sampler} | " + " | ".join(f"{c['mean']:.3f} ± {c['std']:.3f} ({c['min']:.3f})" for c in cols) + " |"
            for sampler, cols in summary.items()]


if __name__ == "__main__":
    main()
