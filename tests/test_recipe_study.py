"""experiments/recipe_study.py on a tiny fidelity study: a supernet rescored the study's way gives back exactly the
one-shot scores the study kept (the oracle), so its paired difference from the study's own is 0 on every resample."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))  # the scripts import their siblings
import oneshot_fidelity  # noqa: E402
import recipe_study  # noqa: E402

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
    result = recipe_study.main(["--study", str(tmp_path / "study" / "oneshot_fidelity_tiny.json"),
                                "--supernet", f"study={study['supernet']}", "--supernet", f"copy={copy}",
                                "--out", str(tmp_path / "out"), "--name", "judged"])
    kept = [r["oneshot_accuracy"] for r in study["candidates"]]
    own, rescored = result["recipes"]
    assert own["scores"] == kept and rescored["scores"] == kept
    difference = rescored["minus_baseline"]
    for key in recipe_study.SEARCH_KEYS:
        assert difference[key] == 0.0 and difference.get(f"{key}_ci95", [0.0, 0.0]) == [0.0, 0.0]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["judged.json", "judged.md"]
    text = (tmp_path / "out" / "judged.md").read_text()
    assert "command" in text and "machine" in text and "wall time" in text and "| copy |" in text
