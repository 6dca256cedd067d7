"""experiments/recipe_study.py on a tiny fidelity study: a supernet rescored the study's way gives back exactly the
one-shot scores the study kept (the oracle), so its paired difference from the study's own is 0 on every resample."""

from __future__ import annotations

import json
import shutil
import sys
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from automq.model.supernet import Supernet
from automq.oneshot.train import SUPERNET
from automq.space.space import SearchSpace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))  # the scripts import their siblings
import oneshot_fidelity  # noqa: E402
import recipe_study  # noqa: E402
import supernet_recipes  # noqa: E402

TOLERANCE = 64 * np.finfo(np.float64).eps  # a correlation is a quotient of short float64 sums of values <= 1
SPACE_CHANGES = {
    "dataset": {"val_size": 200},
    "training": {"epochs": 1, "batch_size": 32, "lr": 0.05, "train_size": 512, "num_random": 1},
    "search": {"eval_size": 60, "calib_size": 32},
}


@pytest.fixture(scope="module")
def tiny_study(tiny_space, tmp_path_factory) -> tuple[dict, Path, SearchSpace]:
    """One tiny fidelity study (its supernet trained and every candidate trained alone) that the tests only read:
    ``(the study, its JSON file, its space)``. Shared because each costs tens of seconds of the CI's 20 minutes."""
    folder = tmp_path_factory.mktemp("tiny_study")
    space = tiny_space(SPACE_CHANGES, folder=folder)
    study = oneshot_fidelity.main(["--scale", "tiny", "--space", str(space.path), "--out", str(folder / "study")])
    return study, folder / "study" / "oneshot_fidelity_tiny.json", space


def test_a_copy_of_the_study_supernet_rescored_matches_the_kept_scores(tiny_study, tmp_path) -> None:
    study, study_file, _ = tiny_study
    copy = tmp_path / "copy"
    shutil.copytree(study["supernet"], copy)
    # a re-run that repeats the ground truth exactly: a perfect ceiling, and the two seeds' mean is the ground truth
    rerun = tmp_path / "rerun.json"
    rerun.write_text(json.dumps({"study": str(study_file),
                                 "rerun_accuracies": [r["standalone_accuracy"] for r in study["candidates"]]}))
    result = recipe_study.main(["--study", str(study_file), "--rerun", str(rerun),
                                "--supernet", f"study={study['supernet']}", "--supernet", f"copy={copy}",
                                "--out", str(tmp_path / "out"), "--name", "judged"])
    kept = [r["oneshot_accuracy"] for r in study["candidates"]]
    own, rescored = result["recipes"]
    assert own["scores"] == kept and rescored["scores"] == kept
    difference = rescored["minus_baseline"]
    by_study = study["search_fidelity"]["oneshot_minus_bitops"]  # the study's own paired difference from BitOps
    ceiling = _self_agreement(study["candidates"])
    for key in recipe_study.SEARCH_KEYS:
        assert difference[key] == 0.0 and difference.get(f"{key}_ci95", [0.0, 0.0]) == [0.0, 0.0]
        assert own["minus_bitops"][key] == by_study[key]
        assert result["rerun_ceiling"][key] == pytest.approx(ceiling[key], rel=1e-12)
        assert own["ratio_to_ceiling"][key] == pytest.approx(own["figures"][key] / ceiling[key], rel=1e-12)
        assert own["against_mean"][key] == pytest.approx(own["figures"][key], rel=1e-12)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["judged.json", "judged.md"]
    text = (tmp_path / "out" / "judged.md").read_text()
    assert "command" in text and "machine" in text and "wall time" in text and "| copy |" in text


def _self_agreement(rows: list[dict]) -> dict[str, float]:
    """The search figures of a ground truth against an exact copy of itself, counted by hand: tau-b 1; among
    similar-cost pairs (tau-a) the share of pairs it does not tie; a neighbour pair it ties counts one half."""
    truth, cost = [r["standalone_accuracy"] for r in rows], [r["bitops"] for r in rows]
    index = {r["id"]: k for k, r in enumerate(rows)}
    neighbours = [(index[r["neighbour_of"]], index[r["id"]]) for r in rows if r.get("neighbour_of") in index]
    similar = [(i, j) for i, j in combinations(range(len(rows)), 2) if max(cost[i], cost[j]) <= 1.15 * min(cost[i],
                                                                                                            cost[j])]
    return {"kendall_tau": 1.0, "kendall_tau_local": float(np.mean([truth[i] != truth[j] for i, j in similar])),
            "neighbour_agreement": float(np.mean([1.0 if truth[i] != truth[j] else 0.5 for i, j in neighbours]))}


def _with_format_bn(source: Path, target: Path, space: SearchSpace, *, shift_format: str | None = None) -> None:
    """``source``'s supernet as the ``format_bn`` prototype would save it, every format's BN affine a copy of the
    shared one (plus 0.5 on the biases of ``shift_format``'s): with copies it must score exactly as ``source``."""
    shutil.copytree(source, target)
    state = torch.load(target / SUPERNET, weights_only=True)
    shared = state["state_dict"]
    with supernet_recipes.prototype("format_bn"):
        keys = Supernet(space).state_dict().keys() - shared.keys()
    assert keys, "the prototype adds per-format affine parameters"
    for key in keys:  # <bn>.format_<weight|bias>.<format>
        bn, kind, fmt = key.rsplit(".", 2)
        shift = 0.5 if kind == "format_bias" and fmt == shift_format else 0.0
        shared[key] = shared[f"{bn}.{kind.removeprefix('format_')}"] + shift
    torch.save(state, target / SUPERNET)


def test_a_format_bn_supernet_is_scored_with_its_prototype(tiny_study, tmp_path) -> None:
    study, study_file, _ = tiny_study
    trained = SearchSpace.from_file(Path(study["supernet"]) / "space.yaml")
    _with_format_bn(Path(study["supernet"]), tmp_path / "copies" / "format_bn", trained)
    _with_format_bn(Path(study["supernet"]), tmp_path / "shifted" / "format_bn", trained, shift_format="int4")
    result = recipe_study.main(["--study", str(study_file),
                                "--supernet", f"study={study['supernet']}",
                                "--supernet", f"copies={tmp_path / 'copies' / 'format_bn'}",
                                "--supernet", f"shifted={tmp_path / 'shifted' / 'format_bn'}",
                                "--supernet", f"mean={study['supernet']},{tmp_path / 'shifted' / 'format_bn'}",
                                "--out", str(tmp_path / "out"), "--name", "judged"])
    own, copies, shifted, mean = result["recipes"]
    assert copies["prototype"] == "format_bn" and own["prototype"] is None
    assert copies["scores"] == own["scores"]
    # the study scores uniform int4: the scoring uses the per-format affine, not the shared one
    assert shifted["scores"] != own["scores"]
    # two supernets together: each candidate's two accuracies (multiples of 1/val images) averaged by hand
    assert mean["scores"] == pytest.approx([(a + b) / 2 for a, b in zip(own["scores"], shifted["scores"])],
                                           abs=np.finfo(np.float64).eps)
    assert [m["prototype"] for m in mean["members"]] == [None, "format_bn"]
    text = (tmp_path / "out" / "judged.md").read_text()
    assert "`format_bn` prototype" in text and "- mean: the mean of the one-shot accuracies of" in text
    with pytest.raises(SystemExit, match="give NAME=FOLDER"):
        recipe_study.main(["--study", str(study_file),
                           "--supernet", f"broken={study['supernet']},", "--out", str(tmp_path / "out")])


def test_a_second_sample_is_judged_together_with_the_first(tiny_study, tmp_path) -> None:
    """A study made with another --seed and --exclude holds new candidates only; judged together, each figure is
    the two studies' own figures (scipy's Kendall tau within each) weighted by their candidate pairs, no candidate
    compared with one of the other study; another recipe, shared candidates and --rerun of two are refused."""
    first, first_file, space = tiny_study
    second = oneshot_fidelity.main(["--scale", "tiny", "--space", str(space.path), "--out", str(tmp_path / "second"),
                                    "--seed", "1", "--supernet", first["supernet"], "--exclude", str(first_file)])
    second_file = tmp_path / "second" / "oneshot_fidelity_tiny.json"
    assert second["excluded"] == [str(first_file)] and second["candidates"]
    assert not {r["id"] for r in first["candidates"]} & {r["id"] for r in second["candidates"]}
    assert not {"smallest", "uniform int8"} & {r["label"] for r in second["candidates"]}  # the first has them
    assert "another sample of candidates (--seed 1)" in (tmp_path / "second" / "oneshot_fidelity_tiny.md").read_text()
    judged = ["--supernet", f"study={first['supernet']}", "--out", str(tmp_path / "out"), "--name", "both"]
    result = recipe_study.main(["--study", str(first_file), "--study", str(second_file), *judged])
    studies = (first["candidates"], second["candidates"])
    assert result["n_candidates"] == sum(map(len, studies))
    recipe = result["recipes"][0]
    assert recipe["scores"] == [[r["oneshot_accuracy"] for r in rows] for rows in studies]  # the kept scores

    def by_scipy(score: str) -> float:
        taus = [stats.kendalltau([r[score] for r in rows], [r["standalone_accuracy"] for r in rows]).statistic
                for rows in studies]
        pairs = [len(rows) * (len(rows) - 1) / 2 for rows in studies]
        return float(np.dot(taus, pairs) / sum(pairs))

    assert recipe["figures"]["kendall_tau"] == pytest.approx(by_scipy("oneshot_accuracy"), abs=TOLERANCE)
    assert result["bitops_alone"]["kendall_tau"] == pytest.approx(by_scipy("bitops"), abs=TOLERANCE)
    difference = by_scipy("oneshot_accuracy") - by_scipy("bitops")
    assert recipe["minus_bitops"]["kendall_tau"] == pytest.approx(difference, abs=2 * TOLERANCE)
    low, high = recipe["minus_bitops"]["kendall_tau_ci95"]
    assert low <= high and "study 2" in (tmp_path / "out" / "both.md").read_text()
    with pytest.raises(SystemExit, match="cannot read a fidelity study JSON"):
        recipe_study.main(["--study", str(first_file), "--study", str(tmp_path / "missing.json"), *judged])
    with pytest.raises(SystemExit, match="shares .* candidates"):
        recipe_study.main(["--study", str(first_file), "--study", str(first_file), *judged])
    with pytest.raises(SystemExit, match="single --study"):
        recipe_study.main(["--study", str(first_file), "--study", str(second_file), "--rerun", str(first_file),
                           *judged])
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**second, "scale": {**second["scale"], "epochs": 9}}))
    with pytest.raises(SystemExit, match="another recipe .*scale.epochs"):
        recipe_study.main(["--study", str(first_file), "--study", str(other), *judged])


def test_studies_that_share_a_float_network_are_named_so() -> None:
    """A study whose float network's training record equals an earlier study's is said to share it; a network
    trained again (another loss) is not, nor is a study without one."""
    trained = {"accuracy": 0.8974, "loss": 0.3836264295578222, "seed": 0}
    again = {**trained, "loss": 0.3836264295578223}
    first, copy, retrained = ({"float_parent": parent} for parent in (trained, dict(trained), again))
    assert "the same network as study 1's" in recipe_study.float_text(copy, [first])
    assert "the same network as study 2's" in recipe_study.float_text(copy, [retrained, first])
    assert "same network" not in recipe_study.float_text(retrained, [first])
    assert recipe_study.float_text({}, [first]) == ""
