"""How close the ``tune`` samplers get to the exact Pareto front of a space small enough to enumerate.

1. Train a short supernet for ``spaces/tiny_enum.yaml`` (576 candidates), unless ``--run`` already holds one.
2. Score every candidate with its one-shot estimator (``--eval-size`` validation images, ``search.calib_size``
   calibration images) and cache the table; the exhaustive front's hypervolume is the reference.
3. Run each sampler (nsga2, tpe, gp, random) for ``max(--checkpoints)`` trials with several seeds through the
   in-process path of the ``tune`` strategy, with the cached table as the evaluator (so the samplers cost
   nothing), and report the hypervolume of the front found after 25, 50 and 100 trials divided by the
   exhaustive front's hypervolume (same normalisation as every report: :mod:`automq.search.pareto`).

    python experiments/bench_search_quality.py [--run RUN_DIR] [--seeds 5] [--out experiments/results]

``--default-space SUPERNET_RUN`` benchmarks the real default space (``spaces/mbv2_fmnist.yaml``, far too large to
enumerate) instead, with the one-shot estimator of a trained supernet as the evaluator:

1. run each search of :data:`DEFAULT_SEARCHES` (``--searches``; in-process, one torch thread) for ``--evaluations``
   trials into ``--runs`` (LIMPQ and CLADO: :data:`SWEEP_LEVELS` BitOps levels of the largest architecture's
   formats; ``evolution-seeded`` starts from their assignments and runs them first), plus ``uniform`` and the
   searches of the demo's size (``search.trials``); a finished search folder is reused, so two invocations with
   different ``--searches`` can run side by side;
2. after the first 100, 300 and 1,000 trials of each: the hypervolume, the summed trial time, and the uniform
   budgets at which the search's best candidate (chosen on the search's own validation images) beats the best
   uniform format by more than 2 paired standard errors on those images;
3. the final measurement (:func:`automq.report.final.measure_final`) of every search's front on the test split,
   each search against tune NSGA-II with as many trials (head to head), and, for the searches repeated with other
   seeds (``--search-seeds 1 2 3``: folders ``<search>-seed<N>``), how many of the runs win each budget.

    python experiments/bench_search_quality.py --default-space /tmp/H_supernet --runs /tmp/H_bench \
        [--evaluations 1000] [--searches evolution tune-nsga2 ...] [--out experiments/results]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import re
import statistics
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import torch

from automq.space.candidate import Candidate
from automq.cost import CostModel
from automq.oneshot.evaluate import OneShotEstimator
from automq.report.comparison import analyse_runs, find_baselines
from automq.oneshot.paired import BLOCKS_KEY, Correctness
from automq.report.final import FineTune, budget_verdict, compare, measure_final, measured_outcomes, pairings
from automq.search.driver import run_search
from automq.io import atomic_write_json, atomic_write_text
from automq.search.refine import SEARCH_KEYS
from automq.search.results import (RUN_FILE, SearchResult, hypervolume_scales, load_trials, pareto_trials,
                                   space_objectives)
from automq.space.space import SearchSpace
from automq.strategies.tune import TuneStrategy
from automq.search.strategy import Budget
from automq.search.trial import Trial
from automq.oneshot.train import SUPERNET, train_supernet, training_summary, training_text
from provenance import command, header, machine, machine_text

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
    parser.add_argument("--default-space", metavar="SUPERNET_RUN",
                        help="benchmark the default space with this trained supernet (see the module docstring)")
    parser.add_argument("--runs", default="runs/bench_default", help="--default-space: folder of the searches")
    parser.add_argument("--space-file", default=DEFAULT_SPACE,
                        help="--default-space: the space searched (default: the default space; a narrower copy of the "
                             "supernet's space, e.g. fewer formats, is scored by the same supernet; a copy with "
                             "another split needs a supernet trained on it)")
    parser.add_argument("--evaluations", type=int, default=1000, help="--default-space: trials per search")
    parser.add_argument("--searches", nargs="+", choices=sorted(DEFAULT_SEARCHES), default=sorted(DEFAULT_SEARCHES),
                        help="--default-space: which searches to run (finished ones are reused)")
    parser.add_argument("--search-seeds", type=int, nargs="+", metavar="SEED",
                        help="--default-space: run every search of --searches but the sweeps once per seed (default: "
                             "the space's seed); a seed other than the space's goes to the folder <search>-seed<SEED>, "
                             "so repeated searches show how reliably a search finds what it found once")
    parser.add_argument("--no-demo", dest="demo", action="store_false",
                        help="--default-space: leave out the searches at the demo's size (search.trials)")
    parser.add_argument("--no-refine", dest="refine", action="store_false",
                        help="--default-space: skip the searches' whole-validation-split refinement (the test-split "
                             "measurement still happens; a finished, unrefined search is then marked finished)")
    parser.add_argument("--refine-finished", action="store_true",
                        help="--default-space: also refine the finished searches, again where an earlier refinement "
                             "ran (resumed: no trial is added, what the current refinement would re-score on the "
                             "whole validation split and has not is scored, nothing is scored twice)")
    parser.add_argument("--analyse", action="store_true",
                        help="--default-space: after running --searches, analyse every finished search")
    parser.add_argument("--finetune-images", type=int, default=0, metavar="N",
                        help="--default-space: the final measurement fine-tunes every candidate on N training images "
                             "first (automq final --finetune-images; default 0: none)")
    parser.add_argument("--finetune-epochs", type=int, default=1, help="--default-space: epochs of that fine-tune")
    parser.add_argument("--name", default="bench_search_quality_default",
                        help="--default-space: file name (no suffix) of the results in --out")
    parser.add_argument("--render", action="store_true",
                        help="--default-space: only write --name's Markdown again from its JSON in --out")
    parser.add_argument("--space", default="spaces/tiny_enum.yaml")
    parser.add_argument("--run", default="runs/bench_tiny_enum", help="supernet run folder (trained if empty)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-subset", type=int, default=10000)
    parser.add_argument("--eval-size", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--checkpoints", type=int, nargs="+", default=[25, 50, 100])
    parser.add_argument("--out", default="experiments/results")
    args = parser.parse_args()
    if args.finetune_images < 0 or args.finetune_epochs < 1:
        parser.error(f"--finetune-images must be >= 0 and --finetune-epochs >= 1, got {args.finetune_images} and "
                     f"{args.finetune_epochs}")

    torch.set_num_threads(1)
    if args.default_space and args.render:
        out = Path(args.out)
        result = json.loads((out / f"{args.name}.json").read_text())
        atomic_write_text(out / f"{args.name}.md", default_markdown(result))
        return
    if args.default_space:
        default_space_benchmark(args)
        return
    started = time.perf_counter()
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
    result = {"command": command(), "machine": machine(), "space": args.space, "candidates": len(all_trials),
              "run": str(run), "epochs": args.epochs,
              "train_subset": args.train_subset, "eval_size": args.eval_size,
              "enumeration_s": json.loads((run / "exhaustive_table.json").read_text())["seconds"],
              "exhaustive_front_size": len(front), "exhaustive_hypervolume": reference,
              "checkpoints": args.checkpoints, "seeds": args.seeds, "ratios": ratios, "summary": summarise(ratios),
              "front_recall": recalls, "front_recall_summary": summarise(recalls),
              "load_average": os.getloadavg(), "wall_s": time.perf_counter() - started}
    atomic_write_json(out / "bench_search_quality.json", result)
    atomic_write_text(out / "bench_search_quality.md", markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    checkpoints = result["checkpoints"]
    lines = [
        "# Search quality of the `tune` samplers against the exhaustive front", "", *header(result), "",
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


# ------------------------------------------------------------------------------------------------ default space
DEFAULT_SPACE = "spaces/mbv2_fmnist.yaml"
DEFAULT_SEARCHES = {  # label -> (strategy, options); every search runs in-process (no Ray overhead per trial)
    "evolution": ("evolution", {"workers": 0}),
    "tune-nsga2": ("tune", {"sampler": "nsga2", "workers": 0}),
    "tune-tpe": ("tune", {"sampler": "tpe", "workers": 0}),
    "random": ("random", {}),
    # the sensitivity strategies assign the formats of the largest architecture, one integer program per BitOps
    # level: the mixed candidates next to the uniform points that the samplers rarely visit (issue 17)
    "limpq": ("limpq", {}),
    "limpq-mx-error": ("limpq", {"mx_step": "error"}),  # the earlier MX indicator, for comparison (issue 20)
    "clado": ("clado", {"calib_images": 256, "batch_size": 256, "time_limit": 5}),
    # evolution seeded with their assignments (run after them)
    "evolution-seeded": ("evolution", {"workers": 0}),
}
SWEEP_SEARCHES = ("limpq", "limpq-mx-error", "clado")  # one candidate per level: SWEEP_LEVELS levels
SWEEP_LEVELS = 100
SEEDED = {"evolution-seeded": ("limpq", "clado")}  # search -> the searches whose candidates seed it
DEMO_SEARCHES = ("evolution", "tune-nsga2", "evolution-seeded")  # also run at the demo's size, search.trials
DEFAULT_CHECKPOINTS = (100, 300, 1000)
SEED_SUFFIX = "-seed"  # <search>-seed<N>[-demo]: the search repeated with seed N (--search-seeds)
SEARCH_FOLDER = re.compile(rf"^(?P<label>.+?)(?P<variant>(?:{SEED_SUFFIX}\d+)?(?:-demo)?)$")
HEAD_TO_HEAD_REFERENCE = "tune-nsga2"  # the sampler that issue 17's search has to beat with as many evaluations


def default_space_benchmark(args: argparse.Namespace) -> None:
    """Run the requested searches of the default space, then (with ``--analyse``) measure and write the results."""
    space, runs, out = SearchSpace.from_file(args.space_file), Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)  # before the hours of searching and measuring whose results go there
    folders = search_folders(space, runs, args.searches, args.search_seeds, args.evaluations, demo=args.demo)
    for folder, (strategy, options, trials, seed) in folders.items():
        finished = _finished(folder)
        if not finished or args.refine_finished:  # a finished search gets no trial more (a sweep retries no level)
            run_search(args.space_file, out=folder, supernet=args.default_space, strategy=strategy, options=options,
                       trials=len(load_trials(folder)) if finished else trials, seed=seed, progress=False,
                       resume=(folder / "trials.jsonl").exists(), refine=args.refine)
    if args.analyse:
        result = analyse_default(args, space, runs)
        atomic_write_json(out / f"{args.name}.json", result)
        atomic_write_text(out / f"{args.name}.md", default_markdown(result))
        print(default_markdown(result))


def search_folders(space: SearchSpace, runs: Path, searches: list[str], seeds: list[int] | None, evaluations: int, *,
                   demo: bool = True) -> dict[Path, tuple[str, dict, int | None, int]]:
    """The search folders of a benchmark in the order they run, each with (strategy, options, trials, seed): the
    uniform baselines, then each of ``searches`` (a seeding one before the search it seeds) per seed (default: the
    space's), with ``demo`` also at the demo's size (``search.trials``) where :data:`DEMO_SEARCHES` has it."""
    folders = {runs / "uniform": ("uniform", {}, None, space.seed)}
    for label, seed in itertools.product(with_seed_searches(searches), seeds or [space.seed]):
        if label in SWEEP_SEARCHES and seed != space.seed:
            continue  # a sweep solves one program per level: another seed would repeat it
        strategy, options = DEFAULT_SEARCHES[label]
        if label in SEEDED:
            options = {**options, "seed_from": [str(runs / seeder) for seeder in SEEDED[label]]}
        trials = SWEEP_LEVELS if label in SWEEP_SEARCHES else evaluations
        name = label if seed == space.seed else f"{label}{SEED_SUFFIX}{seed}"
        folders[runs / name] = (strategy, options, trials, seed)
        if label in DEMO_SEARCHES and demo:
            folders[runs / f"{name}-demo"] = (strategy, options, space.search.trials, seed)
    return folders


def with_seed_searches(labels: list[str]) -> list[str]:
    """``labels`` in the order they can run: the searches that seed another one (:data:`SEEDED`) before it."""
    ordered: list[str] = []
    for label in sorted(labels, key=lambda label: label in SEEDED):
        ordered += [seed for seed in SEEDED.get(label, ()) if seed not in ordered] + [label] * (label not in ordered)
    return ordered


def _finished(folder: Path) -> bool:
    return _run_record(folder).get("status") == "finished"


def _run_record(folder: Path) -> dict:
    run = folder / RUN_FILE
    return json.loads(run.read_text()) if run.is_file() else {}


def analyse_default(args: argparse.Namespace, space: SearchSpace, runs: Path) -> dict:
    """Per search: hypervolume, trial time and budgets beaten after each checkpoint, and the test-split results."""
    folders = sorted(f for f in runs.iterdir() if _finished(f) and not f.name.startswith("final"))
    # scores on the searches' own validation images
    estimator = OneShotEstimator.from_run(args.default_space, space=space)
    uniform = SearchResult(runs / "uniform", {"strategy": "uniform"}, as_searched(load_trials(runs / "uniform")))
    objectives, scales = space_objectives(space), hypervolume_scales(space)
    searches = {}
    for folder in folders:
        run = json.loads((folder / RUN_FILE).read_text())
        refined = load_trials(folder)
        trials = as_searched(refined)
        checkpoints = [n for n in DEFAULT_CHECKPOINTS if n < len(trials)] + [len(trials)]
        searches[folder.name] = {
            "strategy": run["strategy"], "options": run["options"], "trials": len(trials), "wall_s": run["wall_s"],
            "refine": run.get("refine"), "command": run["command"],
            "final_level_trials": sum(t.metrics.get(BLOCKS_KEY, 1) > 1 for t in refined),
            "checkpoints": [{"trials": n, "hypervolume": pareto_trials(trials[:n], objectives, scales)[1],
                             "trial_wall_s": sum(t.wall_s for t in trials[:n]),
                             **budgets_beaten(trials[:n], uniform, estimator)} for n in checkpoints],
        }
    start = time.perf_counter()
    finetune = FineTune(args.finetune_images, args.finetune_epochs) if args.finetune_images > 0 else None
    final_dir = runs / (f"final-finetune{args.finetune_images}x{args.finetune_epochs}" if finetune else "final")
    final = measure_final(folders, args.default_space, final_dir, finetune=finetune)
    for label, counts in final["summary"].items():
        searches[Path(final["searches"][label]).name]["final"] = counts
    trials = {name: search["trials"] for name, search in searches.items()}
    versus = head_to_head(final, measured_outcomes(final_dir, final), trials)
    return {"command": command(), "space": args.space_file, "supernet": args.default_space,
            "supernet_training": training_summary(args.default_space), "machine": machine(),
            "load_average": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "eval_size": estimator.val_images, "searches": searches, "final_wall_s": time.perf_counter() - start,
            "final": final, "head_to_head": versus, "seed_repeats": seed_repeats(final, trials)}


def head_to_head(final: dict, outcomes: dict[str, Correctness], trials: dict[str, int],
                 reference: str = HEAD_TO_HEAD_REFERENCE) -> list[dict]:
    """At each uniform budget, each search of :data:`DEMO_SEARCHES` against ``reference`` with as many trials (a
    ``-demo`` folder against the reference's ``-demo`` one; ``trials`` by folder name, and a pair whose counts
    differ is left out): both candidates chosen by their validation accuracy, before the test split is read, then
    paired on its images; a repeat with another seed meets the reference's repeat with that seed. Which search serves
    a user better, budget by budget; the comparisons with uniform precision cannot tell two searches that both beat
    it apart."""
    folder = folder_names(final)
    picks = {(folder[c["run"]], c["budget"]): c for c in final["comparisons"]}
    rows = []
    for (name, budget), pick in picks.items():
        base, variant = search_variant(name)
        other = reference + variant
        versus = picks.get((other, budget))
        if base not in DEMO_SEARCHES or base == reference or versus is None or None in (
                pick["searched_trial"], versus["searched_trial"]) or trials[name] != trials[other]:
            continue
        rows.append({"search": name, "reference": other, "trials": trials[name], "budget": budget,
                     "searched_id": pick["searched_id"], "reference_id": versus["searched_id"],
                     **compare(outcomes[pick["searched_id"]], outcomes[versus["searched_id"]])})
    return rows


def folder_names(final: dict) -> dict[str, str]:
    """The search folder's name of each search label of a final measurement."""
    return {label: Path(path).name for label, path in final["searches"].items()}


def search_variant(name: str) -> tuple[str, str]:
    """A search folder's name split into the search (a :data:`DEFAULT_SEARCHES` label) and its variant, the seed
    and size suffixes: ``evolution-seed2-demo`` -> (``evolution``, ``-seed2-demo``)."""
    match = SEARCH_FOLDER.match(name)
    return match["label"], match["variant"]


def seed_repeats(final: dict, trials: dict[str, int]) -> list[dict]:
    """Per search run with several seeds (``--search-seeds``) at one number of trials, at each uniform budget: each
    run's difference from the best uniform format on the test split and its verdict. How reliably a search finds
    what one run of it found; a single run cannot tell a search's merit from its luck."""
    folder = folder_names(final)
    groups: dict[tuple[str, int, float], list[dict]] = defaultdict(list)
    for c in final["comparisons"]:
        name = folder[c["run"]]
        groups[(search_variant(name)[0], trials[name], c["budget"])].append({**c, "folder": name})
    return [{"search": label, "trials": count, "budget": budget, "runs": [c["folder"] for c in runs],
             "differences": [c.get("difference") for c in runs], "ses": [c.get("se") for c in runs],
             "verdicts": [c["verdict"] for c in runs]}
            for (label, count, budget), runs in sorted(groups.items()) if len(runs) > 1]


def as_searched(trials: list[Trial]) -> list[Trial]:
    """The trials with the metrics their search saw (a refinement's whole-split values set aside)."""
    return [dataclasses.replace(t, metrics={**t.metrics, **{k: t.metrics[f"{k}_search"] for k in SEARCH_KEYS
                                                            if f"{k}_search" in t.metrics}}) for t in trials]


def budgets_beaten(trials: list[Trial], uniform: SearchResult, estimator: OneShotEstimator) -> dict:
    """At each uniform budget, whether the best of ``trials`` beats every uniform format there by more than 2 paired
    standard errors on the search's validation images, as the final measurement decides a budget (the candidate is
    chosen on those images, so this flatters a search)."""
    runs = analyse_runs([SearchResult(Path("search"), {"strategy": "search"}, trials), uniform], [])
    verdicts = []
    for pairing in pairings(runs, find_baselines([r for r in runs if r.is_uniform])):
        if pairing.searched is None:
            verdicts.append("none")
            continue
        differences = [estimator.paired_difference(pairing.searched.candidate, reference.trial.candidate)
                       for reference in pairing.references]
        verdicts.append(budget_verdict(differences))
    return {"budgets_beaten": verdicts.count("win"), "budgets_lost": verdicts.count("loss"),
            "budgets": len(verdicts)}


def supernet_scale(result: dict) -> str:
    """The supernet's training in words, in brackets (nothing for the records made before they kept it)."""
    return f" ({training_text(result['supernet_training'])})" if "supernet_training" in result else ""


def refinement_text(refine: dict[str, Any] | None, final_level: int | None = None) -> str:
    """How a search's front was refined: not at all, on the whole split, or also under several calibration blocks
    (for the whole front or for the contenders at each uniform reference's cost; ``final_level``: how many trials
    ended at that level, where known)."""
    if not refine:
        return "no"
    blocks, contenders = refine.get("calib_blocks", 1), refine.get("contenders", 0)
    if blocks == 1:
        return "yes"
    counted = "" if final_level is None else f" ({final_level} trials)"
    return f"yes, {blocks} blocks for " + (f"{contenders} per uniform cost" if contenders else "the front") + counted


def default_markdown(result: dict) -> str:
    """The committed summary of a default-space benchmark."""
    title = ("the default space" if result.get("space", DEFAULT_SPACE) == DEFAULT_SPACE else
             "a variant of the default space")  # a narrower menu, another split: the file's header says which
    lines = [f"# Search quality on {title} (`{result.get('space', DEFAULT_SPACE)}`)", "",
             f"`{result['command']}`", "",
             f"- supernet: {result['supernet']}{supernet_scale(result)}; machine: {machine_text(result['machine'])}; "
             f"{result['date']}",
             f"- every search in-process on one torch thread, scored by the one-shot estimator on the first "
             f"{result['eval_size']} validation images; `refined`: whether its front was then re-scored on the whole "
             "validation split (the final comparison picks each candidate by that validation accuracy); time: the "
             "summed trial times",
             "- wall time: the searches' summed trial times below; the final measurement "
             f"{result['final_wall_s']:.0f} s{measuring_time(result['final'])}",
             "", "## During the search (validation images)", "",
             "Hypervolume of the first n trials; budgets beaten: uniform budgets at which the search's best candidate "
             "leads every uniform format there by more than 2 paired SE on the search's own images (the candidate "
             "chosen on them, so this flatters every search alike).", "",
             "| search | trials | hypervolume | budgets beaten / lost / of | summed trial time [s] |",
             "|---|---:|---:|---|---:|"]
    for name, search in result["searches"].items():
        for c in search["checkpoints"]:
            lines.append(f"| {name} | {c['trials']} | {c['hypervolume']:.4f} | {c['budgets_beaten']} / "
                         f"{c['budgets_lost']} / {c['budgets']} | {c['trial_wall_s']:.0f} |")
    lines += ["", "## Final measurement (test split)", "", result["final"]["recipe"] + ".", "",
              "`last run`: the wall time of the search folder's last run (the search and its refinement; for a "
              "finished search refined again, that refinement alone).", "",
              "| search | trials | search time [s] | refined | last run [s] | wins | ties | losses | no candidate |",
              "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for name, search in result["searches"].items():
        f = search.get("final")
        if f:
            lines.append(f"| {name} | {search['trials']} | {search['checkpoints'][-1]['trial_wall_s']:.0f} | "
                         f"{refinement_text(search['refine'], search.get('final_level_trials'))} | "
                         f"{search['wall_s']:.0f} | {f['win']} | {f['tie']} | "
                         f"{f['loss']} | {f['none']} |")
    lines += ["", "Per budget (difference = searched - the binding uniform format on the same test images and "
              "calibration blocks, points, ± paired SE over both; a win needs a lead beyond 2 SE with its 95% t "
              "interval above zero over every uniform format at or below the budget, a loss is some uniform format "
              "ahead by as much, and the binding one is the loss, else the lead furthest from a win, else the "
              "narrowest win):",
              "", "| search | BitOps budget | binding uniform | uniform test % | searched BitOps | searched val % | "
              "searched test % | difference | verdict |", "|---|---:|---|---:|---:|---:|---:|---|---|"]
    for c in result["final"]["comparisons"]:
        if c["searched_trial"] is None:
            lines.append(f"| {c['run']} | {c['budget']:.4g} | {c['uniform']} | {100 * c['uniform_test_accuracy']:.2f}"
                         " | - | - | - | - | none |")
            continue
        lines.append(f"| {c['run']} | {c['budget']:.4g} | {c['uniform']} | {100 * c['uniform_test_accuracy']:.2f} | "
                     f"{c['searched_bitops']:.4g} | {100 * c['searched_val_accuracy']:.2f} | "
                     f"{100 * c['searched_test_accuracy']:.2f} | {points(c['difference'], c['se'])} | "
                     f"{c['verdict']} |")
    return "\n".join(lines + head_to_head_lines(result) + seed_repeat_lines(result)
                     + ceiling_lines(result["final"])) + "\n"


def points(difference: float, se: float) -> str:
    """A paired difference of accuracies in points with its standard error: ``+0.67 ± 0.21``."""
    return f"{100 * difference:+.2f} ± {100 * se:.2f}"


def section(title: str, text: str) -> list[str]:
    """The Markdown lines that open a section: its heading and the paragraph that says what it shows."""
    return ["", f"## {title}", "", text, ""]


def measuring_time(final: dict) -> str:
    """How long measuring the candidates took in all, when a stored measurement made this run shorter."""
    seconds = final.get("measure_s")
    if seconds is None:
        return ""
    return (f" in this run; measuring its {final['candidates_measured']} candidates took {seconds:.0f} s (summed over "
            "the runs that measured them)")


def head_to_head_lines(result: dict) -> list[str]:
    """The Markdown of :func:`head_to_head` (nothing for the records made before it)."""
    rows = result.get("head_to_head")
    if not rows:
        return []
    lines = section("Head to head (test split)",
                    "At each uniform budget, the search's candidate against the candidate of the search named, with as "
                    "many trials, both chosen by validation accuracy, paired on the same test images and calibration "
                    "blocks (points ± paired SE; a win or loss beyond 2 SE and its 95% t interval).")
    for name in dict.fromkeys(row["search"] for row in rows):
        mine = [row for row in rows if row["search"] == name]
        counts = Counter(row["verdict"] for row in mine)
        count = mine[0].get("trials", result["searches"][name]["trials"])  # the first records kept no count
        lines.append(f"- {name} against {mine[0]['reference']}, {count} trials each: "
                     f"{counts['win']} wins, {counts['tie']} ties, {counts['loss']} losses of {len(mine)} budgets")
    lines += ["", "| search | against | BitOps budget | difference | verdict |", "|---|---|---:|---|---|"]
    lines += [f"| {row['search']} | {row['reference']} | {row['budget']:.4g} | "
              f"{points(row['difference'], row['se'])} | {row['verdict']} |" for row in rows]
    return lines


def seed_repeat_lines(result: dict) -> list[str]:
    """The Markdown of :func:`seed_repeats` (nothing for the records without repeated searches)."""
    rows = result.get("seed_repeats")
    if not rows:
        return []
    lines = section("Repeated searches (test split)",
                    "Searches run again with other seeds (`--search-seeds`), each run measured as above: at each "
                    "uniform budget, how many runs win (beyond 2 paired SE and the 95% t interval), and each "
                    "run's difference (points ± paired SE, in the order of the runs named).")
    for (search, trials), group in itertools.groupby(rows, key=lambda row: (row["search"], row["trials"])):
        group = list(group)
        runs = group[0]["runs"]
        wins = [sum(row["verdicts"][i] == "win" for row in group) for i in range(len(runs))]
        every = sum(all(v == "win" for v in row["verdicts"]) for row in group)
        some = sum(any(v == "win" for v in row["verdicts"]) for row in group)
        losses = sum(row["verdicts"].count("loss") for row in group)
        lines.append(f"- {search}, {trials} trials, {len(runs)} runs ({', '.join(runs)}): budgets won per run "
                     f"{', '.join(map(str, wins))}; won by every run {every}, by at least one {some}, of "
                     f"{len(group)}; losses in all runs together {losses}")
    lines += ["", "| search | trials | BitOps budget | wins | ties | losses | differences per run |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        counts = Counter(row["verdicts"])
        differences = ", ".join("-" if d is None else points(d, se)
                                for d, se in zip(row["differences"], row["ses"]))
        lines.append(f"| {row['search']} | {row['trials']} | {row['budget']:.4g} | {counts['win']} | {counts['tie']} "
                     f"| {counts['loss']} | {differences} |")
    return lines


def ceiling_lines(final: dict) -> list[str]:
    """What any search could win here: the most accurate candidate measured on the test split, at any cost and from
    any search, and its paired comparisons with the binding uniform formats of its budgets. Where even it ties a
    uniform format, no measured candidate wins a budget where that format is at or below the budget."""
    best = max(final["candidates"], key=lambda c: c["test_accuracy"])
    versus = {(c["uniform"], c["uniform_trial"]): c for c in final["comparisons"]
              if c.get("searched_id") == best["candidate_id"]}
    lines = ["", "## Ceiling", "",
             f"The most accurate candidate measured on the test split, at any cost and from any search: "
             f"{100 * best['test_accuracy']:.2f}% ({best['run']}, {best['bitops']:.4g} BitOps)."]
    if "ceiling" in final:  # the records made before the final measurement paired it with the best uniform one
        c = final["ceiling"]
        lines.append(f"Against the most accurate uniform candidate measured, {c['uniform']} "
                     f"({100 * c['uniform_test_accuracy']:.2f}%, {c['uniform_bitops']:.4g} BitOps): "
                     f"{points(c['difference'], c['se'])} points, a {c['verdict']} (both picked by "
                     "their test accuracy: an optimistic bound on any budget's gain).")
    for (uniform, _), c in sorted(versus.items()):
        budgets = [f"{b['budget']:.4g}" for b in final["comparisons"] if b["uniform"] == uniform
                   and b["run"] == c["run"]]
        out_of_reach = c["verdict"] == "tie"
        lines.append(f"Against uniform {uniform} ({100 * c['uniform_test_accuracy']:.2f}%, binding at "
                     f"{', '.join(budgets)} BitOps): {points(c['difference'], c['se'])} points, "
                     f"a {c['verdict']}" + (": no measured candidate wins those budgets." if out_of_reach else "."))
    return lines


if __name__ == "__main__":
    main()
