"""experiments/recipe_study.py on a tiny fidelity study: a supernet rescored the study's way gives back exactly the
one-shot scores the study kept (the oracle), so its paired difference from the study's own is 0 on every resample."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from automq.model.supernet import Supernet
from automq.oneshot.train import SUPERNET
from automq.space.space import SearchSpace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))  # the scripts import their siblings
import oneshot_fidelity  # noqa: E402
import recipe_study  # noqa: E402
import supernet_recipes  # noqa: E402

SPACE_CHANGES = {
    "dataset": {"val_size": 200},
    "training": {"epochs": 1, "batch_size": 32, "lr": 0.05, "train_size": 512, "num_random": 1},
    "search": {"eval_size": 60, "calib_size": 32},
}


def test_a_copy_of_the_study_supernet_rescored_matches_the_kept_scores(tiny_space, tmp_path) -> None:
    space = tiny_space(SPACE_CHANGES, folder=tmp_path)
    study = oneshot_fidelity.main(["--scale", "tiny", "--space", str(space.path), "--out", str(tmp_path / "study")])
    copy = tmp_path / "copy"
    shutil.copytree(study["supernet"], copy)
    study_file = tmp_path / "study" / "oneshot_fidelity_tiny.json"
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
    for key in recipe_study.SEARCH_KEYS:
        assert difference[key] == 0.0 and difference.get(f"{key}_ci95", [0.0, 0.0]) == [0.0, 0.0]
        assert own["minus_bitops"][key] == by_study[key]
        # a tau of a ranking with itself is 1 up to the rounding of its float sums
        assert result["rerun_ceiling"][key] == pytest.approx(1.0, rel=1e-12)
        assert own["ratio_to_ceiling"][key] == pytest.approx(own["figures"][key], rel=1e-12)
        assert own["against_mean"][key] == pytest.approx(own["figures"][key], rel=1e-12)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["judged.json", "judged.md"]
    text = (tmp_path / "out" / "judged.md").read_text()
    assert "command" in text and "machine" in text and "wall time" in text and "| copy |" in text


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


def test_a_format_bn_supernet_is_scored_with_its_prototype(tiny_space, tmp_path) -> None:
    space = tiny_space(SPACE_CHANGES, folder=tmp_path)
    study = oneshot_fidelity.main(["--scale", "tiny", "--space", str(space.path), "--out", str(tmp_path / "study")])
    trained = SearchSpace.from_file(Path(study["supernet"]) / "space.yaml")
    _with_format_bn(Path(study["supernet"]), tmp_path / "copies" / "format_bn", trained)
    _with_format_bn(Path(study["supernet"]), tmp_path / "shifted" / "format_bn", trained, shift_format="int4")
    result = recipe_study.main(["--study", str(tmp_path / "study" / "oneshot_fidelity_tiny.json"),
                                "--supernet", f"study={study['supernet']}",
                                "--supernet", f"copies={tmp_path / 'copies' / 'format_bn'}",
                                "--supernet", f"shifted={tmp_path / 'shifted' / 'format_bn'}",
                                "--out", str(tmp_path / "out"), "--name", "judged"])
    own, copies, shifted = result["recipes"]
    assert copies["prototype"] == "format_bn" and own["prototype"] is None
    assert copies["scores"] == own["scores"]
    # the study scores uniform int4: the scoring uses the per-format affine, not the shared one
    assert shifted["scores"] != own["scores"]
    assert "`format_bn` prototype" in (tmp_path / "out" / "judged.md").read_text()
