"""The fidelity study of issue 16 (experiments/oneshot_fidelity.py) at its tiny scale on the tests' synthetic space:
the JSON holds the headline figures, the neighbour pairs differ in exactly one decision, the headline figures are
the statistics of the rows it wrote (recomputed here with scipy and by counting), the noise ceiling is that of the
seed re-runs, and --resume neither trains nor scores a finished candidate again; the format-only study fine-tunes one
float network trained apart."""

from __future__ import annotations

import json
import math
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from automq.io import safe_torch_load
from automq.oneshot.evaluate import train_standalone
from automq.oneshot.train import load_space_data
from automq.space.candidate import Candidate
from _spaces import FORMATS_ONLY

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))  # the scripts import their siblings
from oneshot_fidelity import (  # noqa: E402
    changed_decisions,
    decision_kind,
    main,
    neighbour_pairs,
    search_fidelity,
)

TOLERANCE = 64 * np.finfo(np.float64).eps  # a correlation is a quotient of short float64 sums of values <= 1
SPACE_CHANGES = {
    "dataset": {"val_size": 200},
    "training": {"epochs": 1, "batch_size": 32, "lr": 0.05, "train_size": 512, "num_random": 1},
    "search": {"eval_size": 60, "calib_size": 32},
}
HEADLINE = ("kendall_tau", "kendall_tau_local", "neighbour_agreement", "noise_ceiling_tau", "n_candidates")


def test_neighbour_pairs_differ_in_exactly_one_decision_of_each_kind(tiny_space) -> None:
    space = tiny_space({"network": {"stages": [{"type": "ds", "channels": 8, "stride": 1, "depth": [1],
                                                "kernel_size": [3]},
                                               {"type": "ir", "channels": 16, "stride": 2, "depth": [1, 2, 3],
                                                "kernel_size": [3, 5], "expand_ratio": [2, 3]}]}})
    rng = np.random.default_rng(3)
    deep = [c for c in (space.sample(rng) for _ in range(200)) if c.depths[1] == 3][:8]
    pairs = neighbour_pairs(space, deep, seed=0)
    assert len(pairs) == 8
    assert [decision_kind(name) for _, _, name in pairs] == ["w_fmt", "a_fmt", "kernel_size", "depth"] * 2
    for base, partner, name in pairs:
        assert changed_decisions(space, base, partner) == [name]
        space.validate_candidate(partner)
        only_base = set(space.choices_of(base)) - set(space.choices_of(partner))
        if decision_kind(name) == "depth":  # 3 -> 2 blocks: the third block's decisions, and only those, go
            assert partner.depths[1] == 2 and only_base and all(n.startswith("blocks.1.2.") for n in only_base)
        else:  # the same active decisions, one value changed
            assert not only_base and partner.depths == base.depths


def constructed_rows(seed_accuracies: list[list[float]]) -> list[dict]:
    """Four candidates: B a neighbour of A (similar cost), D of C; one-shot order B < A < C < D."""
    names, cost, oneshot = "ABCD", [100.0, 105.0, 300.0, 310.0], [0.5, 0.4, 0.6, 0.7]
    return [{"id": n, "label": "random", "bitops": c, "oneshot_accuracy": o, "standalone_accuracy": seeds[0],
             "seed_accuracies": seeds, **({"neighbour_of": names[k - 1]} if k % 2 else {})}
            for k, (n, c, o, seeds) in enumerate(zip(names, cost, oneshot, seed_accuracies))]


def test_search_fidelity_ratios_to_the_measured_ceiling_by_hand() -> None:
    # the seeds of tests/test_fidelity_stats.py::test_measured_noise_ceiling_by_hand: ceiling tau 5/9, local 1/3,
    # neighbour agreement 2/3. Seed 0 orders B < C < A < D: the one-shot order B < A < C < D swaps only A-C
    # (tau (5 - 1) / 6 = 2/3, ratio 6/5) and orders both similar-cost pairs, which are the neighbour pairs, right
    # (local tau 1, ratio 3; agreement 1, ratio 3/2). BitOps orders A < B < C < D: A-B and A-C wrong (tau 1/3,
    # ratio 3/5), local pairs (A, B) wrong and (C, D) right (0, ratio 0), neighbours 1/2 (ratio 3/4).
    rows = constructed_rows([[0.80, 0.82, 0.81], [0.70, 0.69, 0.72], [0.75, 0.78, 0.83], [0.90, 0.88, 0.82]])
    result = search_fidelity(rows, resamples=20)
    expected = {"oneshot": (2 / 3, 1.0, 1.0, 6 / 5, 3.0, 1.5), "bitops": (1 / 3, 0.0, 0.5, 3 / 5, 0.0, 0.75)}
    for who, values in expected.items():
        figures = result[who]
        keys = ("kendall_tau", "kendall_tau_local", "neighbour_agreement")
        got = [figures[k] for k in keys] + [figures[f"{k}_to_ceiling"] for k in keys]
        assert got == pytest.approx(values, abs=4 * TOLERANCE)
    # a ground truth whose re-run reverses it (tau -1) has no ceiling to divide by
    reversed_rows = constructed_rows([[0.80, 0.2], [0.70, 0.3], [0.75, 0.25], [0.90, 0.1]])
    assert "kendall_tau_to_ceiling" not in search_fidelity(reversed_rows, resamples=20)["oneshot"]


@pytest.fixture(scope="module")
def tiny_study(tiny_space, tmp_path_factory) -> tuple[dict, Path, list[str]]:
    folder = tmp_path_factory.mktemp("fidelity")
    space = tiny_space(SPACE_CHANGES, folder=folder)
    argv = ["--scale", "tiny", "--space", str(space.path), "--out", str(folder / "out")]
    main(argv)
    return json.loads((folder / "out" / "oneshot_fidelity_tiny.json").read_text()), folder, argv


def test_tiny_study_writes_the_headline_figures_and_real_neighbour_pairs(tiny_study, tiny_space) -> None:
    result, folder, _ = tiny_study
    assert all(key in result for key in HEADLINE) and result["status"] == "complete"
    rows = result["candidates"]
    assert result["n_candidates"] == len(rows) and all(r["standalone_accuracy"] is not None for r in rows)
    assert result["init"] == "scratch"
    space = tiny_space(SPACE_CHANGES)
    by_id = {r["id"]: r for r in rows}
    partners = [r for r in rows if r.get("neighbour_of")]
    assert len(partners) == 3
    for row in partners:
        base, partner = (Candidate.from_dict(by_id[i]["candidate"]) for i in (row["neighbour_of"], row["id"]))
        assert changed_decisions(space, base, partner) == [row["changed"]]
    assert (folder / "out" / "oneshot_fidelity_tiny.md").read_text().count("neighbour pairs ordered right") == 1


def test_tiny_study_figures_are_the_statistics_of_its_rows(tiny_study) -> None:
    result, _, _ = tiny_study
    rows = result["candidates"]
    oneshot = np.array([r["oneshot_accuracy"] for r in rows])
    truth = np.array([r["standalone_accuracy"] for r in rows])
    cost = np.array([r["bitops"] for r in rows])
    assert result["kendall_tau"] == pytest.approx(stats.kendalltau(oneshot, truth).statistic, abs=TOLERANCE)
    index = {r["id"]: k for k, r in enumerate(rows)}
    pairs = [(index[r["neighbour_of"]], index[r["id"]]) for r in rows if r.get("neighbour_of")]
    # counted directly: +1 when both scores order the pair alike, -1 when opposite, 0 when either ties
    signs = [np.sign(oneshot[i] - oneshot[j]) * np.sign(truth[i] - truth[j]) for i, j in pairs]
    assert result["neighbour_agreement"] == pytest.approx(np.mean([(s + 1) / 2 for s in signs]), abs=TOLERANCE)
    local = [np.sign(oneshot[i] - oneshot[j]) * np.sign(truth[i] - truth[j])
             for i, j in combinations(range(len(rows)), 2) if max(cost[i], cost[j]) <= 1.15 * min(cost[i], cost[j])]
    expected_local = float(np.mean(local)) if local else math.nan
    assert result["kendall_tau_local"] == pytest.approx(expected_local, abs=TOLERANCE, nan_ok=True)
    # the ceiling: seed 0 against seed 1 of the re-run candidates (the tiny scale has two seeds: one seed pair)
    repeated = [r for r in rows if len(r.get("seed_accuracies", [])) > 1]
    assert len(repeated) == 4 and all(r["seed_accuracies"][0] == r["standalone_accuracy"] for r in repeated)
    first, second = zip(*(r["seed_accuracies"] for r in repeated))
    assert math.isfinite(result["noise_ceiling_tau"])  # the tiny recipe learns: the seeds' accuracies differ
    assert result["noise_ceiling_tau"] == pytest.approx(stats.kendalltau(first, second).statistic, abs=TOLERANCE)
    bitops = result["search_fidelity"]["bitops"]
    assert bitops["kendall_tau"] == pytest.approx(stats.kendalltau(cost, truth).statistic, abs=TOLERANCE)


def test_tiny_study_resumes_without_training_or_scoring_again(tiny_study, monkeypatch) -> None:
    result, folder, argv = tiny_study
    import oneshot_fidelity

    def no_training(*args, **kwargs):
        raise AssertionError("a finished candidate was trained again")

    def no_estimate(*args, **kwargs):
        raise AssertionError("a resumed study scored a candidate one-shot again instead of keeping its score")

    monkeypatch.setattr(oneshot_fidelity, "train_standalone", no_training)
    monkeypatch.setattr(oneshot_fidelity.OneShotEstimator, "estimate", no_estimate)
    again = main([*argv, "--resume"])
    assert [r["standalone_accuracy"] for r in again["candidates"]] == \
        [r["standalone_accuracy"] for r in result["candidates"]]


def test_interrupted_study_resumed_on_two_worker_processes_trains_the_same(tiny_study, tmp_path) -> None:
    """A study stopped mid-way (two candidates untrained, one re-run candidate with only its seed 1 done) and resumed
    with ``--jobs 2`` trains just what is missing, in spawned worker processes of one thread each, and gets the
    sequential run's accuracies exactly (seeded training on one thread is deterministic)."""
    result, folder, argv = tiny_study
    stopped = json.loads((folder / "out" / "oneshot_fidelity_tiny.json").read_text())
    rows = stopped["candidates"]
    repeated = next(r for r in rows if len(r.get("seed_accuracies", [])) > 1)
    single = [r for r in rows if "seed_accuracies" not in r][:2]
    for row in [repeated, *single]:
        row["standalone_accuracy"] = None
        row.pop("trainings", None)
    repeated["seed_results"] = {"1": {"accuracy": repeated.pop("seed_accuracies")[1]}}
    out = tmp_path / "out"
    out.mkdir()
    stopped["supernet"] = str(folder / "out" / "supernet")  # the first run's, by a path that names the same folder
    (out / "oneshot_fidelity_tiny.json").write_text(json.dumps({**stopped, "status": "running"}))
    again = main([*argv[:-1], str(out), "--supernet", stopped["supernet"], "--resume", "--jobs", "2"])
    assert again["status"] == "complete"
    assert [r["standalone_accuracy"] for r in again["candidates"]] == \
        [r["standalone_accuracy"] for r in result["candidates"]]
    resumed_repeated = next(r for r in again["candidates"] if r["id"] == repeated["id"])
    original = next(r for r in result["candidates"] if r["id"] == repeated["id"])
    assert resumed_repeated["seed_accuracies"] == original["seed_accuracies"]
    # seed 1 of the re-run candidate was kept, not trained again; its seed 0 and the two single ones were trained
    by_id = {r["id"]: r for r in again["candidates"]}
    assert by_id[repeated["id"]]["trainings"][1] == repeated["seed_results"]["1"]
    fresh = [by_id[repeated["id"]]["trainings"][0], *(by_id[r["id"]]["trainings"][0] for r in single)]
    assert all(t["threads"] == 1 and t["wall_s"] > 0 for t in fresh)




def test_format_study_fine_tunes_one_float_network_and_refuses_an_elastic_architecture(tiny_space, tmp_path) -> None:
    """``init float`` on a format-only space: the float network is trained once into the output folder and its
    record kept with the study; every neighbour pair differs in one layer's format; every stand-alone score is a
    fine-tune of that network (retrained here by hand: the same accuracy); a space that also decides the
    architecture is refused with one line, before any training."""
    space = tiny_space(SPACE_CHANGES, FORMATS_ONLY, folder=tmp_path)
    out = tmp_path / "out"
    result = main(["--scale", "tiny_formats", "--space", str(space.path), "--out", str(out)])
    assert result["status"] == "complete" and result["init"] == "float"
    parent = result["float_parent"]
    assert (out / "float_parent.pt").exists() and json.loads((out / "float_parent.json").read_text()) == parent
    assert (parent["epochs"], parent["train_subset"], parent["formats"]) == (3, 256, "fp32")
    partners = [r for r in result["candidates"] if r.get("neighbour_of")]
    assert len(partners) == 3 and all(decision_kind(r["changed"]) in ("w_fmt", "a_fmt") for r in partners)
    row = result["candidates"][0]
    data = load_space_data(space, train_subset=256)
    by_hand = train_standalone(space, Candidate.from_dict(row["candidate"]), data, epochs=2, seed=0, init="float",
                               parent=safe_torch_load(out / "float_parent.pt"), lr=0.01, val_images=200)
    assert by_hand["accuracy"] == row["standalone_accuracy"]
    assert "float network (init `float`)" in (out / "oneshot_fidelity_tiny_formats.md").read_text()
    (out / "float_parent.pt").unlink()  # a float network trained again is another starting point: not resumed
    (out / "float_parent.json").unlink()
    with pytest.raises(SystemExit, match="these differ: float network"):
        main(["--scale", "tiny_formats", "--space", str(space.path), "--out", str(out), "--resume"])
    (tmp_path / "elastic").mkdir()
    elastic = tiny_space(SPACE_CHANGES, folder=tmp_path / "elastic")
    with pytest.raises(SystemExit, match="architecture is fixed.*decides depth, expand_ratio, kernel_size"):
        main(["--scale", "tiny_formats", "--space", str(elastic.path), "--out", str(tmp_path / "refused")])
    assert not (tmp_path / "refused" / "float_parent.pt").exists()


def test_estimator_variants_against_a_finished_study(tiny_study) -> None:
    """``--reuse-standalone``: the study's own settings give back the scores it kept (else it refuses), each
    variant's tau is scipy's of the scores it wrote against the kept ground truth, BitOps is ranked too, and the md
    says the command (the process's) and the machine."""
    result, folder, argv = tiny_study
    out = folder / "variants"
    study_json = folder / "out" / "oneshot_fidelity_tiny.json"
    space = argv[argv.index("--space") + 1]
    judged = main(["--space", space, "--supernet", result["supernet"], "--reuse-standalone", str(study_json),
                   "--variants", "fine-tune 512 images (4 steps)", "--out", str(out)])
    scores = judged["scores"]
    assert scores["the study's (baseline)"] == [r["oneshot_accuracy"] for r in result["candidates"]]
    assert scores["standalone"] == [r["standalone_accuracy"] for r in result["candidates"]]
    for row in judged["variants"]:
        expected = stats.kendalltau(scores[row["variant"]], scores["standalone"]).statistic
        assert row["kendall_tau"] == pytest.approx(expected, abs=TOLERANCE, nan_ok=True)
    assert [r["variant"] for r in judged["variants"]][-1] == "BitOps alone (no network evaluated)"
    text = (out / "oneshot_fidelity_tiny_variants.md").read_text()
    assert text.splitlines()[2].startswith("`") and "- machine: " in text  # the command line, then the machine
