"""The search-quality benchmark's pure parts (experiments/bench_search_quality.py), on hand-built records: the
ceiling names the most accurate candidate measured at any cost and says which budgets even it cannot win, the
searches that seed another run before it, a budget beaten during the search only against every uniform format
there, a record names its supernet's training where it kept it, and the results folder exists before any search
runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from automq.oneshot.paired import Correctness, Difference
from automq.search.results import SearchResult
from automq.search.trial import Trial

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))  # the scripts import their siblings
from bench_search_quality import (budgets_beaten, ceiling_lines, default_space_benchmark,  # noqa: E402
                                  head_to_head, head_to_head_lines, refinement_text, search_folders,
                                  search_variant, seed_repeat_lines, seed_repeats, supernet_scale,
                                  with_seed_searches)


def comparison(run: str, budget: float, uniform: str, searched_id: str | None, difference: float, se: float,
               verdict: str) -> dict:
    trial, accuracy = {"int2/int4": (1, 0.85), "int4/int8": (2, 0.888)}[uniform]
    return {"run": run, "budget": budget, "uniform": uniform, "uniform_trial": trial,
            "uniform_test_accuracy": accuracy, "searched_id": searched_id,
            "difference": difference, "se": se, "verdict": verdict}


FINAL = {
    "candidates": [
        {"run": "evo", "candidate_id": "a", "bitops": 3.0e7, "test_accuracy": 0.862},
        {"run": "evo", "candidate_id": "b", "bitops": 1.3e8, "test_accuracy": 0.8888},  # the most accurate
        {"run": "uniform", "candidate_id": "u", "bitops": 1.0e8, "test_accuracy": 0.888},
    ],
    "comparisons": [
        comparison("evo", 4e7, "int2/int4", "a", 0.012, 0.003, "win"),
        comparison("evo", 1e8, "int4/int8", "u", 0.0, 0.0, "tie"),
        comparison("evo", 1.5e8, "int4/int8", "b", 0.0008, 0.0014, "tie"),
        comparison("nsga", 1.5e8, "int4/int8", "u", 0.0, 0.0, "tie"),
    ],
}


def test_the_ceiling_is_the_most_accurate_candidate_and_the_budgets_it_ties() -> None:
    assert ceiling_lines(FINAL) == [
        "", "## Ceiling", "",
        "The most accurate candidate measured on the test split, at any cost and from any search: 88.88% (evo, "
        "1.3e+08 BitOps).",
        "Against uniform int4/int8 (88.80%, binding at 1e+08, 1.5e+08 BitOps): +0.08 ± 0.14 points, "
        "a tie: no measured candidate wins those budgets."]


def test_a_ceiling_that_beats_the_uniform_format_claims_nothing_out_of_reach() -> None:
    won = {**FINAL, "comparisons": [{**c, "difference": 0.01, "verdict": "win"} if c["searched_id"] == "b" else c
                                     for c in FINAL["comparisons"]]}
    assert ceiling_lines(won)[-1].endswith("+1.00 ± 0.14 points, a win.")


def test_the_ceiling_states_its_pairing_with_the_most_accurate_uniform_candidate_where_the_record_has_it() -> None:
    paired = {**FINAL, "ceiling": {"uniform": "int8/int8", "uniform_test_accuracy": 0.8891, "uniform_bitops": 1.5e8,
                                   "difference": 0.0004, "se": 0.0011, "verdict": "tie"}}
    assert ceiling_lines(paired)[4] == (
        "Against the most accurate uniform candidate measured, int8/int8 (88.91%, 1.5e+08 BitOps): +0.04 ± 0.11 "
        "points, a tie (both picked by their test accuracy: an optimistic bound on any budget's gain).")
    assert ceiling_lines(paired)[5:] == ceiling_lines(FINAL)[4:]  # the comparisons at the budgets follow


def test_seeding_searches_run_before_the_search_they_seed() -> None:
    assert with_seed_searches(["evolution-seeded", "tune-nsga2"]) == ["tune-nsga2", "limpq", "clado",
                                                                      "evolution-seeded"]
    assert with_seed_searches(["clado", "evolution-seeded"]) == ["clado", "limpq", "evolution-seeded"]


def test_the_folders_are_the_uniform_baselines_then_each_search_per_seed_with_or_without_the_demo_size(
        tiny_space) -> None:
    space, runs = tiny_space({"search": {"trials": 40}}, seed=5), Path("runs")
    folders = search_folders(space, runs, ["evolution", "limpq"], [5, 7], 1000)
    assert {f.name: (plan[0], plan[2], plan[3]) for f, plan in folders.items()} == {
        "uniform": ("uniform", None, 5), "evolution": ("evolution", 1000, 5), "evolution-demo": ("evolution", 40, 5),
        "limpq": ("limpq", 100, 5), "evolution-seed7": ("evolution", 1000, 7),
        "evolution-seed7-demo": ("evolution", 40, 7)}  # a sweep (LIMPQ) runs once, at the space's seed
    lean = search_folders(space, runs, ["evolution", "limpq"], [5, 7], 1000, demo=False)
    assert [f.name for f in lean] == ["uniform", "evolution", "evolution-seed7", "limpq"]  # a search's seeds together


def test_the_results_folder_is_made_before_anything_runs(tmp_path: Path, tiny_space) -> None:
    """An analysis can take an hour: a results folder that does not exist yet must not lose it at the last step."""
    space = tiny_space(folder=tmp_path)
    runs, out = tmp_path / "runs", tmp_path / "results" / "new"
    (runs / "uniform").mkdir(parents=True)
    (runs / "uniform" / "run.json").write_text(json.dumps({"status": "finished"}))  # nothing left to search
    default_space_benchmark(argparse.Namespace(
        space_file=str(space.source), runs=str(runs), out=str(out), searches=[], search_seeds=None, evaluations=10,
        demo=False, refine_finished=False, refine=True, analyse=False))
    assert out.is_dir()


def test_the_supernet_is_named_with_its_training_where_the_record_kept_it() -> None:
    training = {"epochs": 16, "train_images": 40000, "num_random": 3, "smallest": False, "training_wall_s": 2700.0,
                "val_acc_largest": 0.912, "val_acc_smallest": 0.867}
    assert supernet_scale({"supernet_training": training}) == (
        " (16 epochs on 40000 train images, the largest + 3 random candidates per step, 45 min; val accuracy largest "
        "0.912, smallest 0.867)")
    assert supernet_scale({}) == ""  # the records made before it was kept


def outcomes(right: int, images: int = 10) -> Correctness:
    """The first ``right`` of ``images`` images classified right."""
    return Correctness.from_bools(np.arange(images) < right)


def pick(run: str, budget: float, searched_id: str | None) -> dict:
    return {"run": run, "budget": budget, "searched_trial": None if searched_id is None else 0,
            "searched_id": searched_id}


def test_head_to_head_pairs_each_search_with_the_reference_of_its_size_at_each_budget() -> None:
    final = {"searches": {"evolution (evolution)": "runs/b/evolution", "evolution (evolution-demo)": "runs/b/"
                          "evolution-demo", "tune-nsga2 (tune-nsga2)": "runs/b/tune-nsga2",
                          "tune-nsga2 (tune-nsga2-demo)": "runs/b/tune-nsga2-demo", "clado": "runs/b/clado"},
             "comparisons": [pick("evolution (evolution)", 1.0, "e1"), pick("tune-nsga2 (tune-nsga2)", 1.0, "t1"),
                             pick("evolution (evolution-demo)", 1.0, "d1"),
                             pick("tune-nsga2 (tune-nsga2-demo)", 1.0, "td1"), pick("clado", 1.0, "c1"),
                             pick("evolution (evolution)", 2.0, "e2"), pick("tune-nsga2 (tune-nsga2)", 2.0, None)]}
    # 10 images: e1 right on the first 9, t1 on the first 4 (5 images right only in e1); d1 = td1
    scores = {"e1": outcomes(9), "t1": outcomes(4), "d1": outcomes(6), "td1": outcomes(6), "c1": outcomes(1),
              "e2": outcomes(9)}
    trials = {"evolution": 1000, "tune-nsga2": 1000, "evolution-demo": 100, "tune-nsga2-demo": 100, "clado": 90}
    rows = head_to_head(final, scores, trials)
    # clado is not one of the searches run at two sizes; at budget 2.0 the reference has no candidate
    assert [(r["search"], r["reference"], r["budget"]) for r in rows] == [
        ("evolution", "tune-nsga2", 1.0), ("evolution-demo", "tune-nsga2-demo", 1.0)]
    # d = 1 on 5 of 10 images: mean 0.5, mean of d^2 0.5, SE sqrt((0.5 - 0.25) / 10)
    assert abs(rows[0]["difference"] - 0.5) < 1e-12 and abs(rows[0]["se"] - 0.25 ** 0.5 / 10 ** 0.5) < 1e-12
    assert rows[0]["verdict"] == "win" and rows[1]["difference"] == 0.0 and rows[1]["verdict"] == "tie"
    # searches with different numbers of trials are not compared
    assert [r["search"] for r in head_to_head(final, scores, {**trials, "tune-nsga2": 999})] == ["evolution-demo"]
    lines = "\n".join(head_to_head_lines({"head_to_head": rows, "searches": {"evolution": {"trials": 1000},
                                                                             "evolution-demo": {"trials": 100}}}))
    assert "- evolution against tune-nsga2, 1000 trials each: 1 wins, 0 ties, 0 losses of 1 budgets" in lines
    assert "| evolution | tune-nsga2 | 1 | +50.00 ± 15.81 | win |" in lines


def test_a_search_folder_splits_into_its_search_and_its_seed_and_size() -> None:
    assert search_variant("evolution") == ("evolution", "")
    assert search_variant("evolution-seed2-demo") == ("evolution", "-seed2-demo")
    assert search_variant("tune-nsga2-seed13") == ("tune-nsga2", "-seed13")
    # a search whose name starts like a seed suffix is not split there
    assert search_variant("evolution-seeded-demo") == ("evolution-seeded", "-demo")
    assert search_variant("evolution-seeded") == ("evolution-seeded", "")


def test_a_repeated_search_meets_the_reference_repeated_with_the_same_seed() -> None:
    final = {"searches": {f"{s} ({s}{v})": f"runs/b/{s}{v}" for s in ("evolution", "tune-nsga2")
                          for v in ("", "-seed1")},
             "comparisons": [pick("evolution (evolution)", 1.0, "e0"), pick("evolution (evolution-seed1)", 1.0, "e1"),
                             pick("tune-nsga2 (tune-nsga2)", 1.0, "t0"),
                             pick("tune-nsga2 (tune-nsga2-seed1)", 1.0, "t1")]}
    scores = {"e0": outcomes(9), "e1": outcomes(5), "t0": outcomes(4), "t1": outcomes(5)}
    trials = {name: 1000 for name in ("evolution", "evolution-seed1", "tune-nsga2", "tune-nsga2-seed1")}
    rows = head_to_head(final, scores, trials)
    assert [(r["search"], r["reference"], r["difference"]) for r in rows] == [
        ("evolution", "tune-nsga2", 0.5), ("evolution-seed1", "tune-nsga2-seed1", 0.0)]


def verdict_of(run: str, budget: float, difference: float | None, verdict: str) -> dict:
    if difference is None:
        return {"run": run, "budget": budget, "searched_trial": None, "verdict": "none"}
    return {"run": run, "budget": budget, "searched_trial": 0, "difference": difference, "se": 0.002,
            "verdict": verdict}


def test_repeated_searches_count_the_runs_that_win_each_budget() -> None:
    names = ["evolution", "evolution-seed1", "evolution-seed2", "evolution-demo", "tune-nsga2"]
    final = {"searches": {name: f"runs/b/{name}" for name in names},
             "comparisons": [verdict_of("evolution", 1.0, 0.012, "win"), verdict_of("evolution-seed1", 1.0, 0.010,
                                                                                  "win"),
                             verdict_of("evolution-seed2", 1.0, 0.011, "win"), verdict_of("evolution-demo", 1.0, 0.02,
                                                                                        "win"),
                             verdict_of("tune-nsga2", 1.0, 0.02, "win"),
                             verdict_of("evolution", 2.0, 0.006, "win"), verdict_of("evolution-seed1", 2.0, None, ""),
                             verdict_of("evolution-seed2", 2.0, -0.005, "loss")]}
    trials = {"evolution": 1000, "evolution-seed1": 1000, "evolution-seed2": 1000, "evolution-demo": 100,
              "tune-nsga2": 1000}
    rows = seed_repeats(final, trials)
    # one group (the demo-size run and tune-nsga2 ran once each), one row per budget, the runs in order
    assert [(r["search"], r["trials"], r["budget"], r["verdicts"]) for r in rows] == [
        ("evolution", 1000, 1.0, ["win", "win", "win"]), ("evolution", 1000, 2.0, ["win", "none", "loss"])]
    assert rows[1]["runs"] == ["evolution", "evolution-seed1", "evolution-seed2"]
    lines = seed_repeat_lines({"seed_repeats": rows})
    assert ("- evolution, 1000 trials, 3 runs (evolution, evolution-seed1, evolution-seed2): budgets won per run 2, 1, "
            "1; won by every run 1, by at least one 2, of 2; losses in all runs together 1") in lines
    assert "| evolution | 1000 | 2 | 1 | 0 | 1 | +0.60 ± 0.20, -, -0.50 ± 0.20 |" in lines
    assert seed_repeat_lines({}) == []  # the records without repeated searches


class HandSetEstimator:
    """Paired differences set by hand for (searched, uniform) candidate ids: what budgets_beaten reads."""

    def __init__(self, differences: dict[tuple[str, str], Difference]) -> None:
        self.differences = differences

    def paired_difference(self, a, b) -> Difference:
        return self.differences[a.id, b.id]


def test_a_budget_is_beaten_during_the_search_only_against_every_uniform_format_there(tiny_space) -> None:
    space = tiny_space()
    w4a8, w4fp8 = space.uniform("int4", "int8"), space.uniform("int4", "fp8_e4m3")
    rng = np.random.default_rng(3)
    mixed = next(c for c in iter(lambda: space.sample(rng), None) if len({(w, a) for _, w, a in c.formats}) > 1)
    uniform = SearchResult(Path("u"), {"strategy": "uniform"}, [
        Trial(0, w4a8, {"accuracy": 0.80, "bitops": 100}, info={"format": "W int4 / A int8"}),
        Trial(1, w4fp8, {"accuracy": 0.78, "bitops": 200}, info={"format": "W int4 / A fp8_e4m3"})])
    searched = [Trial(0, mixed, {"accuracy": 0.82, "bitops": 90})]
    # a win over int4/int8 (validation's choice at both budgets); over int4/fp8 a tie: 0.003 < 2 x 0.002
    estimator = HandSetEstimator({(mixed.id, w4a8.id): Difference(0.02, 0.005),
                                  (mixed.id, w4fp8.id): Difference(0.003, 0.002)})
    assert budgets_beaten(searched, uniform, estimator) == {"budgets_beaten": 1, "budgets_lost": 0, "budgets": 2}
    estimator.differences[mixed.id, w4fp8.id] = Difference(-0.01, 0.002)
    assert budgets_beaten(searched, uniform, estimator) == {"budgets_beaten": 1, "budgets_lost": 1, "budgets": 2}


def test_the_refinement_is_named_with_its_calibration_blocks_and_contenders() -> None:
    assert refinement_text(None) == "no"
    assert refinement_text({"images": 10000}) == "yes"  # a record older than calibration blocks
    assert refinement_text({"calib_blocks": 4, "contenders": 0}) == "yes, 4 blocks for the front"
    assert refinement_text({"calib_blocks": 4, "contenders": 1}) == "yes, 4 blocks for 1 per uniform cost"
    counted = refinement_text({"calib_blocks": 4, "contenders": 1}, 43)
    assert counted == "yes, 4 blocks for 1 per uniform cost (43 trials)"
