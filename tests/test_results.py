import json

import numpy as np
import pytest

from automq.cost import CostModel
from automq.search.results import RUN_FILE, SearchLog, load_search_dir, load_trials
from automq.search.trial import Trial


@pytest.fixture(scope="module")
def space(tiny_space):
    return tiny_space()


def trials_for(space, n, seed=0):
    rng = np.random.default_rng(seed)
    model = CostModel(space)
    out = []
    for number in range(n):
        candidate = space.sample(rng)
        out.append(Trial(number, candidate, {"accuracy": float(rng.uniform(0.5, 0.9)), **model.metrics(candidate)}))
    return out


def union_area(corners, reference):
    """Area of the union of the boxes ``[x, ref_x] x [y, ref_y]``, brute force: cut the plane at every corner
    coordinate and add up the grid cells that some box covers."""
    xs = sorted({x for x, _ in corners} | {reference[0]})
    ys = sorted({y for _, y in corners} | {reference[1]})
    return sum((x1 - x0) * (y1 - y0)
               for x0, x1 in zip(xs, xs[1:]) for y0, y1 in zip(ys, ys[1:])
               if any(x <= x0 and y <= y0 for x, y in corners))


def test_log_writes_trials_and_a_pareto_file_that_matches_brute_force(space, tmp_path):
    log = SearchLog(tmp_path, space, strategy="random")
    trials = trials_for(space, 12)
    for trial in trials:
        log.append(trial)
    log.finish()
    assert [t.number for t in load_trials(tmp_path)] == list(range(12))
    pareto = json.loads((tmp_path / "pareto.json").read_text())
    front_ids = {t["number"] for t in pareto["trials"]}
    dominated = {
        a.number
        for a in trials
        for b in trials
        if b.metrics["accuracy"] >= a.metrics["accuracy"] and b.metrics["bitops"] <= a.metrics["bitops"]
        and (b.metrics["accuracy"] > a.metrics["accuracy"] or b.metrics["bitops"] < a.metrics["bitops"])
    }
    assert front_ids == {t.number for t in trials} - dominated
    # losses 1 - accuracy and BitOps / the largest candidate's BitOps, reference point (1, 1.1)
    largest = CostModel(space).metrics(space.largest())["bitops"]
    corners = [(1 - t.metrics["accuracy"], t.metrics["bitops"] / largest) for t in trials]
    # float64 sums of at most len(trials)^2 cell areas, one product each
    tolerance = 2 * len(trials) ** 2 * np.finfo(np.float64).eps
    assert pareto["hypervolume"] == pytest.approx(union_area(corners, (1.0, 1.1)), rel=tolerance)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["status"] == "finished" and run["trials"] == {"ok": 12, "infeasible": 0, "failed": 0}


def test_existing_trials_need_resume(space, tmp_path):
    log = SearchLog(tmp_path, space, strategy="random")
    for trial in trials_for(space, 3):
        log.append(trial)
    with pytest.raises(FileExistsError, match="--resume"):
        SearchLog(tmp_path, space, strategy="random")
    resumed = SearchLog(tmp_path, space, strategy="random", resume=True)
    assert len(resumed.trials) == 3 and resumed.run_info["resumed_with_trials"] == 3


def test_a_resumed_log_keeps_the_earlier_refinement_record_and_nothing_else(space, tmp_path):
    log = SearchLog(tmp_path, space, strategy="random")
    log.run_info.update(refine={"probes": [0, 5], "rescored": 7}, label="earlier")
    log.finish()
    resumed = SearchLog(tmp_path, space, strategy="tune", resume=True)
    assert resumed.run_info["refine"] == {"probes": [0, 5], "rescored": 7}
    assert resumed.run_info["strategy"] == "tune" and "label" not in resumed.run_info
    (tmp_path / RUN_FILE).write_text("{torn")
    assert "refine" not in SearchLog(tmp_path, space, strategy="tune", resume=True).run_info


def test_torn_and_malformed_records_are_skipped_with_a_note(space, tmp_path):
    log = SearchLog(tmp_path, space, strategy="random")
    for trial in trials_for(space, 4):
        log.append(trial)
    with open(tmp_path / "trials.jsonl", "a") as handle:
        handle.write(json.dumps({"number": 9}) + "\n")
        handle.write('{"number": 10, "candid')  # a crash in the middle of a write
    result = load_search_dir(tmp_path)
    assert len(result.trials) == 4
    assert any("skipped 2 torn or malformed" in note for note in result.notes)
    assert any("did not finish" in note for note in result.notes)


def test_missing_directory_is_a_note_not_a_crash(tmp_path):
    result = load_search_dir(tmp_path / "nope")
    assert result.trials == [] and "no such search directory" in result.notes[0]
