"""experiments/ground_truth_seeds.py on a tiny format study: the study's own seed-1 runs are kept, the others are
trained as train_standalone trains them by hand (the oracle) and kept for a second run, which trains nothing; the
ceiling is scipy's tau of the two seeds; a float network other than the study's is refused."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from scipy import stats

from automq.io import read_jsonl, safe_torch_load
from automq.oneshot.evaluate import train_standalone
from automq.oneshot.train import load_space_data
from automq.space.candidate import Candidate
from _spaces import FORMATS_ONLY

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))  # the scripts import their siblings
import ground_truth_seeds  # noqa: E402
import oneshot_fidelity  # noqa: E402

SPACE_CHANGES = {
    "dataset": {"val_size": 200},
    "training": {"epochs": 1, "batch_size": 32, "lr": 0.05, "train_size": 512, "num_random": 1},
    "search": {"eval_size": 60, "calib_size": 32},
}


def test_every_candidate_is_trained_again_once(tiny_space, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the default --work is relative: runs/<study>_seed1
    space = tiny_space(SPACE_CHANGES, FORMATS_ONLY, folder=tmp_path)
    out = tmp_path / "study"
    study = oneshot_fidelity.main(["--scale", "tiny_formats", "--space", str(space.path), "--out", str(out)])
    study_json = out / "oneshot_fidelity_tiny_formats.json"
    argv = ["--study", str(study_json), "--parent", str(out / "float_parent.pt"), "--out", str(tmp_path / "res")]
    result = ground_truth_seeds.main(argv)
    rows = study["candidates"]
    again = result["rerun_accuracies"]
    repeated = [k for k, r in enumerate(rows) if "seed_accuracies" in r]
    assert repeated and all(again[k] == rows[k]["seed_accuracies"][1] for k in repeated)
    log = tmp_path / "runs" / "oneshot_fidelity_tiny_formats_seed1" / "trainings.jsonl"
    trained = list(read_jsonl(log))
    assert len(trained) == len(rows) - len(repeated) and {t["seed"] for t in trained} == {1}
    k = next(k for k, r in enumerate(rows) if "seed_accuracies" not in r)
    data = load_space_data(space, train_subset=256)
    by_hand = train_standalone(space, Candidate.from_dict(rows[k]["candidate"]), data, epochs=2, seed=1,
                               init="float", parent=safe_torch_load(out / "float_parent.pt"), lr=0.01, val_images=200)
    assert again[k] == by_hand["accuracy"]
    first = [r["standalone_accuracy"] for r in rows]
    assert result["noise_ceiling"]["kendall_tau"] == pytest.approx(stats.kendalltau(again, first).statistic,
                                                                    abs=1e-12)
    ids = [r["id"] for r in rows]
    pairs = [(ids.index(r["neighbour_of"]), k) for k, r in enumerate(rows) if r.get("neighbour_of")]
    runs_apart = [(again[j] - again[i]) - (first[j] - first[i]) for i, j in pairs]  # one pair's two differences
    assert len(pairs) == result["neighbour_resolution"]["pairs"] >= 2
    assert result["neighbour_resolution"]["difference_noise_sd"] == pytest.approx(
        stats.tstd(runs_apart) / 2**0.5, abs=1e-12)
    kept = tmp_path / "res" / "oneshot_fidelity_tiny_formats_seed1.json"
    kept.unlink()
    resumed = ground_truth_seeds.main(argv)
    assert resumed["rerun_accuracies"] == again  # resumed from the log: nothing trained again
    assert len(list(read_jsonl(log))) == len(trained)
    shutil.rmtree(log.parent)  # on another machine: the committed result lends its re-runs, no --parent needed
    judged = ground_truth_seeds.main(argv[:2] + argv[4:])
    assert judged["rerun_accuracies"] == again and not log.exists()
    assert judged["wall_s"] == resumed["wall_s"] and "judged_again" not in resumed  # the trainings' record stays
    assert judged["judged_again"]["wall_s"] > 0 and "judged again from that run's result" in kept.with_suffix(
        ".md").read_text()
    doctored = json.loads(kept.read_text())
    doctored["candidate_ids"][0] = "another"
    kept.write_text(json.dumps(doctored))
    assert ground_truth_seeds.earlier_result(ground_truth_seeds.parse_args(argv), rows) is None
    text = (tmp_path / "res" / "oneshot_fidelity_tiny_formats_seed1.md").read_text()
    assert "- command: `" in text and "- machine: " in text and "noise ceiling" in text
    assert "Can this ground truth order the neighbour pairs?" in text

    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(out / "float_parent.pt", other / "float_parent.pt")
    record = json.loads((out / "float_parent.json").read_text())
    (other / "float_parent.json").write_text(json.dumps({**record, "wall_s": record["wall_s"] + 1}))
    with pytest.raises(SystemExit, match="another float network"):
        ground_truth_seeds.main([*argv[:2], "--parent", str(other / "float_parent.pt"), "--work", str(tmp_path / "w2")])
