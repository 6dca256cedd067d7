"""Supernet recipes judged by what a search needs (issue 16, item 3): each supernet's one-shot ranking of a finished
fidelity study's candidates against that study's stand-alone ground truth.

For every ``--supernet NAME=FOLDER`` it scores the study's candidates one-shot with the study's estimator settings
(its validation and calibration images, one thread; the study's own supernet reuses the scores the study kept),
and reports Kendall tau over all candidates, tau among candidates within 15% BitOps of each other and the share of
neighbour pairs ordered right, each with its bootstrap interval and its ratio to the study's measured noise
ceiling, and each recipe's paired difference from the first one given and from BitOps alone (the same resampled
candidates). ``--rerun`` (the study's ground truth trained again, ``ground_truth_seeds.py``) adds each recipe's
figures over that all-candidate noise ceiling and against the two seeds' mean, a steadier ground truth, and the
re-run's own paired difference from BitOps alone: what an estimator as good as the ground truth itself could show.
Several ``--study`` of one recipe (a second sample of candidates made with ``oneshot_fidelity.py --seed 1 --exclude
FIRST``; each study fine-tunes its float network, its own or a copy of another's) are judged each against its own
ground truth and pooled (:func:`~fidelity_stats.pooled_figures`). ``--supernet NAME=FOLDER,FOLDER`` judges the mean
of several supernets' one-shot accuracies, e.g. one recipe trained with other seeds: whether the variation between
trainings is what limits an estimate. A folder named after one of ``supernet_recipes.py``'s prototype recipes
(``format_bn``, ``kernel_transforms``: that script names its run folders after the recipes) is scored with the
prototype patched in, as that script scores it.

    PYTHONPATH=. .venv/bin/python experiments/recipe_study.py \\
        --study experiments/results/oneshot_fidelity_study.json \\
        --supernet default=runs/fidelity/supernet --supernet uniform_1=runs/recipes/uniform_1
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from automq.oneshot.evaluate import OneShotEstimator
from automq.oneshot.train import load_space_data, load_supernet, training_summary, training_text
from automq.space.candidate import Candidate
from automq.space.space import SearchSpace
from fidelity_stats import (column, fmt_ci, load_study, paired_difference, pooled_figures, ratio_to_ceiling,
                            search_figures)
from oneshot_fidelity import SEARCH_KEYS, partner_indices, search_row
from provenance import command, judge_and_write, machine, machine_text
from supernet_recipes import RECIPES, prototype

RESULTS = Path(__file__).resolve().parent / "results"
NAME = "supernet_recipes_study"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", type=Path, action="append", required=True,
                        help="a finished fidelity study's JSON; repeat to judge on several studies of one recipe "
                        "(the same space, scale and init; each against its own ground truth, then pooled), e.g. a "
                        "second sample of candidates made with oneshot_fidelity.py --exclude")
    parser.add_argument("--supernet", action="append", required=True, metavar="NAME=FOLDER[,FOLDER...]",
                        help="a supernet run folder to judge (repeat; the first is the baseline of the differences); "
                        "several folders, e.g. trainings of one recipe with other seeds, judge the mean of their "
                        "one-shot accuracies (each folder is scored once however many entries name it)")
    parser.add_argument("--rerun", type=Path, help="the study's ground truth trained again with another seed "
                        "(a ground_truth_seeds.py result JSON)")
    parser.add_argument("--data", help="dataset root (default: the space's)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--name", default=NAME, help=f"the outputs' file stem (default {NAME}), e.g. to keep the "
                        "judgement against another study beside it")
    return parser.parse_args(argv)


RECIPE = ("space", "init", "val_size")
RECIPE_SCALE = ("train_images", "epochs", "val_images", "calib_images", "lr", "parent_epochs", "parent_images")
"""What studies judged together must share: the recipe of their ground truths and one-shot scores (each study its
own float network, its own number of candidates and re-runs)."""


def load_studies(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """The finished studies at ``paths``, refused in one line unless they share one :data:`RECIPE` and no
    candidate (a second sample is made with ``oneshot_fidelity.py --exclude``)."""
    studies = []
    for path in paths:
        study = load_study(path)
        if study.get("status") != "complete":
            raise SystemExit(f"{path}: the study is not finished (status {study.get('status')!r}); resume it first")
        studies.append(study)
    ids: set[str] = set()
    for path, study in zip(paths, studies):
        differing = [key for key in RECIPE if study.get(key) != studies[0].get(key)]
        differing += [f"scale.{key}" for key in RECIPE_SCALE
                      if study["scale"].get(key) != studies[0]["scale"].get(key)]
        if differing:
            raise SystemExit(f"{path}: another recipe than {paths[0]} ({', '.join(differing)} differ); judge it on "
                             "its own")
        if repeated := ids & {r["id"] for r in study["candidates"]}:
            raise SystemExit(f"{path}: shares {len(repeated)} candidates with an earlier --study; make it with "
                             "oneshot_fidelity.py --exclude")
        ids |= {r["id"] for r in study["candidates"]}
    return studies


def supernet_spec(spec: str) -> tuple[str, list[str]]:
    """``NAME=FOLDER[,FOLDER...]`` as its name and folders, refused in one line when either is missing."""
    name, _, folders = spec.partition("=")
    if not name or not all(folders.split(",")):
        raise SystemExit(f"--supernet {spec!r}: give NAME=FOLDER, or NAME=FOLDER,FOLDER for the mean of several")
    return name, folders.split(",")


def scored_entries(args: argparse.Namespace, studies: Sequence[dict[str, Any]], space: SearchSpace,
                   data: Any) -> list[tuple[str, list[str], list[list[float]]]]:
    """Each ``--supernet`` entry's name, folders and one-shot scores of every study's candidates: the mean over its
    folders of each candidate's accuracy. Every entry is parsed before any scoring, so a malformed one costs no
    time, and each folder is scored once however many entries name it."""
    entries = [supernet_spec(spec) for spec in args.supernet]
    by_folder = {key: [oneshot_scores(study, Path(folder), space, data) for study in studies]
                 for key, folder in {str(Path(f).resolve()): f for _, folders in entries for f in folders}.items()}

    def mean(folders: list[str]) -> list[list[float]]:
        scores = [by_folder[str(Path(folder).resolve())] for folder in folders]
        return scores[0] if len(scores) == 1 else [[float(x) for x in np.mean(per_study, axis=0)]
                                                   for per_study in zip(*scores)]

    return [(name, folders, mean(folders)) for name, folders in entries]


def oneshot_scores(study: dict[str, Any], folder: Path, space: SearchSpace, data: Any) -> list[float]:
    """The study's candidates scored one-shot by the supernet in ``folder`` with the study's estimator settings;
    the study's own supernet gives back the scores the study kept (it computed them the same way)."""
    rows = study["candidates"]
    if folder.resolve() == Path(study["supernet"]).resolve():
        return column(rows, "oneshot_accuracy")
    scale = study["scale"]
    with prototype(prototype_of(folder)):
        estimator = OneShotEstimator(space, load_supernet(folder, space), data, calib_images=scale["calib_images"],
                                     val_images=scale["val_images"], threads=1, finetune_images=0)
        return [estimator.estimate(Candidate.from_dict(r["candidate"]))["accuracy"] for r in rows]


def prototype_of(folder: Path) -> str | None:
    """The prototype a ``supernet_recipes.py`` run folder was trained with (the folder bears its recipe's name);
    ``None`` for any other supernet."""
    return RECIPES.get(folder.name, {}).get("prototype")


def judge(args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    studies = load_studies(args.study)
    if args.rerun is not None and len(studies) > 1:
        raise SystemExit("--rerun re-trains one study's candidates: give it with a single --study")
    space = SearchSpace.from_file(studies[0]["space"])
    # the study's training subset: the calibration images are drawn from it
    data = load_space_data(space, root=args.data, train_subset=studies[0]["scale"]["train_images"])
    judged = judge_one(args, studies[0], space, data) if len(studies) == 1 else judge_pooled(args, studies, space,
                                                                                              data)
    return {"command": command(), "study": ", ".join(map(str, args.study)), "machine": machine(), **judged,
            "wall_s": time.perf_counter() - start}


def judge_one(args: argparse.Namespace, study: dict[str, Any], space: SearchSpace, data: Any) -> dict[str, Any]:
    """Every supernet against one study's ground truth (with ``--rerun``, also against its re-run)."""
    rows = study["candidates"]
    truth, cost, pairs = column(rows, "standalone_accuracy"), column(rows, "bitops"), partner_indices(rows)
    ceiling = study["search_fidelity"]["noise_ceiling"]
    rerun = rerun_accuracies(args.rerun, args.study[0], len(rows))
    recipes, baseline = [], None
    for name, folders, (scores,) in scored_entries(args, [study], space, data):
        figures = search_figures(scores, truth, cost, pairs)
        for key in SEARCH_KEYS:
            figures[f"{key}_to_ceiling"] = figures[key] / ceiling[key] if ceiling.get(key, 0) > 0 else None
        recipe = {**recipe_record(name, folders), "figures": figures, "scores": scores,
                  "minus_bitops": paired_difference(scores, cost, truth, cost, pairs)}
        if rerun is not None:
            mean = list((np.asarray(truth) + rerun) / 2)
            recipe.update(ratio_to_ceiling=ratio_to_ceiling(scores, rerun, truth, cost, pairs),
                          against_mean=search_figures(scores, mean, cost, pairs),
                          minus_bitops_against_mean=paired_difference(scores, cost, mean, cost, pairs))
        if baseline is not None:
            recipe["minus_baseline"] = paired_difference(scores, baseline, truth, cost, pairs)
        baseline = scores if baseline is None else baseline
        recipes.append(recipe)
        print(f"{name}: " + ", ".join(f"{key} {figures[key]:.3f}" for key in SEARCH_KEYS), flush=True)
    return {"n_candidates": len(rows), "noise_ceiling": ceiling, "recipes": recipes,
            **({} if rerun is None else {"rerun": str(args.rerun),
                                         "rerun_ceiling": search_figures(rerun, truth, cost, pairs),
                                         "rerun_minus_bitops": paired_difference(rerun, cost, truth, cost, pairs)}),
            "bitops_alone": study["search_fidelity"]["bitops"]}


def judge_pooled(args: argparse.Namespace, studies: list[dict[str, Any]], space: SearchSpace,
                 data: Any) -> dict[str, Any]:
    """Every supernet against each study's own ground truth, and pooled over the studies
    (:func:`~fidelity_stats.pooled_figures`: no candidate compared with one of another ground truth)."""
    parts = [(column(s["candidates"], "standalone_accuracy"), column(s["candidates"], "bitops"),
              partner_indices(s["candidates"])) for s in studies]
    costs = [cost for _, cost, _ in parts]

    def pooled(scores: list[list[float]], baseline: list[list[float]] | None = None) -> dict[str, Any]:
        return pooled_figures([(x, None if baseline is None else baseline[k], *parts[k])
                               for k, x in enumerate(scores)])

    recipes, first = [], None
    for name, folders, scores in scored_entries(args, studies, space, data):
        recipe = {**recipe_record(name, folders), "scores": scores, "figures": pooled(scores),
                  "minus_bitops": pooled(scores, costs),
                  "by_study": [{"figures": search_figures(x, *part), "minus_bitops": paired_difference(x, part[1],
                                                                                                     *part)}
                               for x, part in zip(scores, parts)]}
        if first is not None:
            recipe["minus_baseline"] = pooled(scores, first)
        first = scores if first is None else first
        recipes.append(recipe)
        print(f"{name} pooled: " + ", ".join(f"{key} {recipe['figures'][key]:.3f}" for key in SEARCH_KEYS))
    return {"n_candidates": sum(len(truth) for truth, _, _ in parts), "recipes": recipes,
            "studies": [{"study": str(path), "n_candidates": len(study["candidates"]),
                         "float_parent": study.get("float_parent"), "machine": study.get("machine"),
                         "noise_ceiling": study["search_fidelity"]["noise_ceiling"],
                         "bitops_alone": study["search_fidelity"]["bitops"]}
                        for path, study in zip(args.study, studies)],
            "bitops_alone": pooled(costs)}


def recipe_record(name: str, folders: Sequence[str]) -> dict[str, Any]:
    """What names a judged supernet: its name, folder, prototype and training record; for the mean of several,
    each one's under ``members``."""
    members = [{"supernet": folder, "prototype": prototype_of(Path(folder)), "training": training_summary(folder)}
               for folder in folders]
    if len(members) == 1:
        return {"name": name, **members[0]}
    return {"name": name, "supernet": ",".join(folders), "prototype": None, "members": members}


def rerun_accuracies(path: Path | None, study: Path, candidates: int) -> np.ndarray | None:
    """The ``candidates`` of ``study`` trained again (``ground_truth_seeds.py``'s result at ``path``), in the
    study's order."""
    if path is None:
        return None
    rerun = json.loads(path.read_text())
    if Path(rerun["study"]).resolve() != study.resolve() or len(rerun["rerun_accuracies"]) != candidates:
        raise SystemExit(f"{path}: the re-run of another study ({rerun['study']}), not of {study}")
    return np.asarray(rerun["rerun_accuracies"], float)


HEADER = ["| supernet | Kendall tau | tau within ±15% BitOps | neighbour pairs ordered right |", "|---|---|---|---|"]


def markdown(result: dict[str, Any]) -> str:
    return pooled_markdown(result) if "studies" in result else study_markdown(result)


def pooled_markdown(result: dict[str, Any]) -> str:
    recipes, studies = result["recipes"], result["studies"]
    lines = [
        "# Supernet recipes judged on several samples of candidates", "",
        f"- command: `{result['command']}`",
        f"- machine: {machine_text(result['machine'])}; wall time {result['wall_s'] / 60:.1f} min (one-shot scoring)",
        f"- ground truths: {len(studies)} studies of one recipe, {result['n_candidates']} candidates in all; each "
        "candidate is compared only with candidates of its own study (each study fine-tunes its float network). "
        "Pooled: each figure is the studies' figures weighted by their comparisons (candidate pairs, similar-cost "
        "pairs, neighbour pairs), its 95% interval from resampling every study on its own.", "",
        *[f"  - study {k + 1}: `{s['study']}`, {s['n_candidates']} candidates{float_text(s, studies[:k])}"
          for k, s in enumerate(studies)], "",
        "Pooled over the studies:", "", *HEADER,
        *[search_row(r["name"], r["figures"]) for r in recipes],
        search_row("BitOps alone", result["bitops_alone"]), "",
        "Paired differences from BitOps alone (the baseline any estimator must beat), pooled and in each study:", "",
        *HEADER, *[search_row(f"{r['name']}, pooled", r["minus_bitops"]) for r in recipes],
        *[search_row(f"{r['name']}, study {k + 1}", part["minus_bitops"])
          for r in recipes for k, part in enumerate(r["by_study"])],
    ]
    if len(recipes) > 1:
        lines += ["", f"Paired differences from `{recipes[0]['name']}`, pooled:", "", *HEADER,
                  *[search_row(r["name"], r["minus_baseline"]) for r in recipes[1:]]]
    lines += ["", "Each study on its own:", "", *HEADER,
              *[search_row(f"{r['name']}, study {k + 1}", part["figures"])
                for r in recipes for k, part in enumerate(r["by_study"])],
              *[search_row(f"BitOps alone, study {k + 1}", s["bitops_alone"]) for k, s in enumerate(studies)],
              *[f"| the ground truth re-run, study {k + 1} ({s['noise_ceiling'].get('candidates')} re-run "
                "candidates) | " + " | ".join(f"{s['noise_ceiling'][key]:.3f}" for key in SEARCH_KEYS)
                + " |" for k, s in enumerate(studies) if s["noise_ceiling"]]]
    lines += ["", "Supernets:", "", *supernet_lines(recipes)]
    return "\n".join(lines) + "\n"


def float_text(study: dict[str, Any], earlier: Sequence[dict[str, Any]]) -> str:
    """Where a study's ground truth starts; a float network whose training record equals an ``earlier`` study's
    (its losses to the last digit) is named as that one, so studies that share a network can be told apart from
    studies that each trained their own."""
    parent = study.get("float_parent")
    machine_line = f" (machine: {machine_text(study['machine'])})" if study.get("machine") else ""
    if not parent:
        return machine_line
    shared = [k + 1 for k, other in enumerate(earlier) if other.get("float_parent") == parent]
    same = f", the same network as study {shared[0]}'s (an identical training record)" if shared else ""
    return f", fine-tuned from a float network of {parent['accuracy']:.4f} val accuracy{same}{machine_line}"


def supernet_lines(recipes: list[dict[str, Any]]) -> list[str]:
    def text(r: dict[str, Any]) -> str:
        return f"(`{r['supernet']}`{prototype_text(r)}): {training_text(r['training'])}"

    return [f"- {r['name']}: the mean of the one-shot accuracies of " + "; and of ".join(map(text, r["members"]))
            if "members" in r else f"- {r['name']} {text(r)}" for r in recipes]


def study_markdown(result: dict[str, Any]) -> str:
    base = result["recipes"][0]["name"]
    lines = [
        "# Supernet recipes judged by what a search needs", "",
        f"- command: `{result['command']}`",
        f"- machine: {machine_text(result['machine'])}; wall time "
        f"{result['wall_s'] / 60:.1f} min (one-shot scoring; the supernets' training times are below)",
        f"- ground truth: the {result['n_candidates']} stand-alone candidates of `{result['study']}`; the one-shot "
        "settings are that study's. Ratio: the figure over the ground truth's measured noise ceiling.", "",
        "| supernet | Kendall tau [95% CI] | tau within ±15% BitOps | neighbour pairs ordered right |",
        "|---|---|---|---|",
    ]
    for recipe in result["recipes"]:
        f = recipe["figures"]
        cells = [fmt_ci(f, key) + (f" (ratio {f[f'{key}_to_ceiling']:.2f})" if f[f"{key}_to_ceiling"] else "")
                 for key in SEARCH_KEYS]
        lines.append(f"| {recipe['name']} | " + " | ".join(cells) + " |")
    lines.append(search_row("BitOps alone", result["bitops_alone"]))
    lines.append(f"| the ground truth re-run (noise ceiling, its {result['noise_ceiling'].get('candidates')} re-run "
                 "candidates) | "
                 + " | ".join(f"{result['noise_ceiling'][k]:.3f}" for k in SEARCH_KEYS) + " |")
    if len(result["recipes"]) > 1:
        lines += ["", f"Paired differences from `{base}` (the same resampled candidates and neighbour pairs; a "
                  "difference is a result only where its interval excludes 0):", "", *HEADER]
        lines += [search_row(r["name"], r["minus_baseline"]) for r in result["recipes"][1:]]
    lines += ["", "Paired differences from BitOps alone (the baseline any estimator must beat):", "", *HEADER]
    lines += [search_row(r["name"], r["minus_bitops"]) for r in result["recipes"]]
    if "rerun" in result:
        lines += ["", f"With the ground truth trained again (`{result['rerun']}`): each figure over that noise "
                  "ceiling (intervals from the same resamples of both), then against the two seeds' mean and minus "
                  "BitOps alone against it:", "", *HEADER,
                  search_row("the ground truth re-run (noise ceiling)", result["rerun_ceiling"]),
                  search_row("the ground truth re-run minus BitOps alone (what any estimator could show)",
                             result["rerun_minus_bitops"])]
        lines += [search_row(f"{r['name']} over the ceiling", r["ratio_to_ceiling"]) for r in result["recipes"]]
        lines += [search_row(f"{r['name']} against the mean", r["against_mean"]) for r in result["recipes"]]
        lines += [search_row(f"{r['name']} minus BitOps, against the mean", r["minus_bitops_against_mean"])
                  for r in result["recipes"]]
    lines += ["", "Supernets:", "", *supernet_lines(result["recipes"])]
    return "\n".join(lines) + "\n"


def prototype_text(recipe: dict[str, Any]) -> str:
    name = recipe.get("prototype")
    return f", trained and scored with the `{name}` prototype of `supernet_recipes.py`" if name else ""


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    return judge_and_write(args, judge, markdown, args.name)


if __name__ == "__main__":
    main()
