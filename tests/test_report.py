import base64
import csv
import io
import json
import re
import shutil
import subprocess

import matplotlib.image
import numpy as np
import pytest

from automq.space.candidate import Candidate
from automq.report.comparison import uniform_format
from automq.cost import CostModel
from automq.errors import AutomqError
from automq.io import append_jsonl
from automq.search.pareto import Objective, hypervolume, loss_vectors, reference_point
from automq.report.final import Z95
from automq.report.report import FINAL_HEADER, architecture_grid, build_report, final_row, format_grid
from automq.search.results import SearchLog, hypervolume_scales
from automq.search.trial import Trial

from _spaces import DS_STAGE, IR_STAGE

SPACE_CHANGES = {
    "network": {"stages": [DS_STAGE, {**IR_STAGE, "expand_ratio": [3, 6]}], "width_mult": [0.75, 1.0]},
    "formats": {"weights": ["int4", "int8", "fp8_e4m3"], "activations": ["int8", "fp8_e4m3"]},
}
OBJECTIVES = [Objective("accuracy", "max"), Objective("bitops", "min")]
F64 = 1e-12  # rank statistics and hypervolumes of a few points in float64: relative error far below this
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SECTIONS = ["Key findings", "Pareto fronts", "Hypervolume", "Best accuracy within a BitOps budget",
            "Pareto-optimal candidates", "One-shot estimate vs stand-alone accuracy", "Search cost", "Runs"]
# 3 Pareto figures (BitOps, size, energy) + hypervolume curve + format heatmap + architecture heatmap + fidelity
EXPECTED_FIGURES = 7


@pytest.fixture(scope="module")
def space(tiny_space, tmp_path_factory):
    return tiny_space(SPACE_CHANGES, folder=tmp_path_factory.mktemp("space"))


def make_trials(space, strategy, n, seed, *, infeasible=(), failed=()):
    """Sampled candidates with their analytic costs and a random accuracy; some rejected or crashed."""
    rng = np.random.default_rng(seed)
    model = CostModel(space)
    trials = []
    for number in range(n):
        candidate = space.sample(rng)
        costs = model.metrics(candidate)
        accuracy = float(rng.uniform(0.5, 0.9))
        if number in failed:
            trials.append(Trial(number, candidate, {}, "failed", "RuntimeError: out of memory", strategy, 0.5))
        elif number in infeasible:
            trials.append(Trial(number, candidate, costs, "infeasible", "bitops > budget", strategy, 0.1))
        else:
            trials.append(Trial(number, candidate, {"accuracy": accuracy, "loss": 1 - accuracy, **costs},
                                "ok", None, strategy, 1.0))
    return trials


def uniform_trials(space):
    model = CostModel(space)
    out = []
    for number, (w_fmt, a_fmt, name, accuracy) in enumerate([("int8", "int8", "int8", 0.80),
                                                              ("int4", "int8", "w4a8", 0.70)]):
        candidate = space.uniform(w_fmt, a_fmt)
        out.append(Trial(number, candidate, {"accuracy": accuracy, **model.metrics(candidate)}, "ok", None,
                         "uniform", 2.0, info={"format": name}))
    return out


def write_search_dir(path, space, strategy, trials, *, run_json=True, pareto_json=True):
    """A search directory as automq.search.results lays it out, written by hand to test the format contract."""
    path.mkdir(parents=True)
    shutil.copyfile(space.path, path / "space.yaml")
    for trial in trials:
        append_jsonl(path / "trials.jsonl", trial.to_dict())
    if run_json:
        (path / "run.json").write_text(json.dumps({
            "strategy": strategy, "options": {"seed": 0}, "space": "tiny.yaml", "status": "finished",
            "command": f"automq search tiny.yaml --strategy {strategy} --out {path}", "wall_s": 12.5}))
    if pareto_json:
        (path / "pareto.json").write_text(json.dumps({
            "objectives": [{"metric": o.metric, "mode": o.mode} for o in space.objectives],
            "hypervolume_scales": hypervolume_scales(space),
            "reference_point": [1.0, 1.1], "hypervolume": 0.0, "trials": []}))
    return path


def ok_losses(trials, space):
    ok = [t for t in trials if t.status == "ok"]
    return ok, loss_vectors([t.metrics for t in ok], OBJECTIVES, hypervolume_scales(space))


def brute_force_front(losses):
    return [i for i in range(len(losses))
            if not any(np.all(losses[j] <= losses[i]) and np.any(losses[j] < losses[i]) for j in range(len(losses)))]


def staircase_hypervolume(losses, ref):
    """Exact 2-D hypervolume by a sweep over the first loss, independent of optuna's WFG."""
    points = sorted(tuple(p) for p in losses if p[0] < ref[0] and p[1] < ref[1])
    volume, lowest = 0.0, ref[1]
    for (a, b), following in zip(points, [p[0] for p in points[1:]] + [ref[0]]):
        lowest = min(lowest, b)
        volume += (following - a) * (ref[1] - lowest)
    return volume


@pytest.fixture(scope="module")
def runs(space):
    return {"random": make_trials(space, "random", 14, seed=1, infeasible={3}, failed={7}),
            "evolution": make_trials(space, "evolution", 10, seed=2),
            "uniform": uniform_trials(space)}


@pytest.fixture(scope="module")
def report(tmp_path_factory, space, runs):
    root = tmp_path_factory.mktemp("searches")
    dirs = [write_search_dir(root / name, space, name, trials) for name, trials in runs.items()]
    fidelity = {"candidates": [{"id": str(i), "oneshot_accuracy": o, "oneshot_loss": loss, "standalone_accuracy": s,
                                "bitops": b}
                               for i, (o, loss, s, b) in enumerate(zip([0.1, 0.2, 0.3, 0.4], [0.9, 0.8, 0.6, 0.7],
                                                                       [0.1, 0.3, 0.2, 0.4], [1e6, 2e6, 3e6, 4e6]))]}
    (dirs[1] / "fidelity.json").write_text(json.dumps(fidelity))
    out = root / "report"
    summary = build_report(dirs, out)
    return out, summary


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_report_writes_every_file(report):
    out, summary = report
    for name in ("report.html", "report.md", "trials.csv", "pareto.csv", "summary.json"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert sorted(summary["figures"]) == sorted(p.name for p in out.glob("*.png"))
    assert len(summary["figures"]) == EXPECTED_FIGURES
    assert summary["notes"] == []


def test_trials_csv_has_one_row_per_trial_with_its_metrics(report, runs):
    out, _ = report
    rows = read_csv(out / "trials.csv")
    expected = [(name, t) for name, trials in runs.items() for t in trials]
    assert len(rows) == len(expected) == 26
    assert list(rows[0])[:6] == ["run", "strategy", "trial", "status", "candidate_id", "accuracy"]
    for row, (name, trial) in zip(rows, expected):
        assert (row["run"], row["strategy"], int(row["trial"]), row["status"]) == (name, name, trial.number,
                                                                                   trial.status)
        assert Candidate.from_json(row["candidate"]).id == row["candidate_id"] == trial.candidate.id
        for metric in ("accuracy", "bitops", "size", "energy"):
            assert row[metric] == ("" if metric not in trial.metrics else str(trial.metrics[metric]))
        assert row["error"] == (trial.error or "")


def test_pareto_csv_equals_brute_force_front(report, runs, space):
    out, summary = report
    rows = read_csv(out / "pareto.csv")
    for name, trials in runs.items():
        ok, losses = ok_losses(trials, space)
        expected = {ok[i].number for i in brute_force_front(losses)}
        assert {int(r["trial"]) for r in rows if r["run"] == name} == expected
        assert next(r for r in summary["runs"] if r["run"] == name)["front_size"] == len(expected)


def test_summary_hypervolume_equals_pareto_hypervolume(report, runs, space):
    _, summary = report
    for name, trials in runs.items():
        entry = next(r for r in summary["runs"] if r["run"] == name)
        _, losses = ok_losses(trials, space)
        assert entry["hypervolume"] == pytest.approx(hypervolume(losses, reference_point(OBJECTIVES)), abs=1e-12)
        assert entry["hypervolume"] == pytest.approx(staircase_hypervolume(losses, (1.0, 1.1)), abs=1e-12)
        assert entry["reference_point"] == [1.0, 1.1]
        curve = entry["hypervolume_curve"]
        assert len(curve) == len(trials) and curve[-1] == pytest.approx(entry["hypervolume"], rel=F64)
        for k in range(len(trials)):
            _, first_k = ok_losses(trials[: k + 1], space)
            assert curve[k] == pytest.approx(staircase_hypervolume(first_k, (1.0, 1.1)), abs=1e-12)


def test_search_cost_counts(report):
    _, summary = report
    random = next(r for r in summary["runs"] if r["run"] == "random")
    assert random["counts"] == {"ok": 12, "infeasible": 1, "failed": 1}
    assert (random["trials"], random["supernet_evaluations"], random["wall_s"]) == (14, 12, 12.5)


def test_html_is_self_contained_with_valid_png_images(report):
    out, summary = report
    page = (out / "report.html").read_text()
    for heading in SECTIONS:
        assert f">{heading}</h2>" in page
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == page.count("<img") == EXPECTED_FIGURES
    for data in images:
        png = base64.b64decode(data, validate=True)
        assert png[:8] == PNG_SIGNATURE and len(png) > 5000
        # decoded in full: Pillow rejects a truncated PNG or a broken data stream, which Chromium draws in part
        assert matplotlib.image.imread(io.BytesIO(png), format="png").shape[2] == 4
    assert not re.search(r"https?://", page)
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert "(1, 1.1)" in page  # the hypervolume reference point is stated
    markdown = (out / "report.md").read_text()
    assert sorted(re.findall(r"\]\(([\w.]+\.png)\)", markdown)) == sorted(summary["figures"])


def test_a_space_file_shared_by_several_runs_is_shown_once(report, space):
    out, _ = report
    markdown = (out / "report.md").read_text()
    first_line = space.path.read_text().splitlines()[0]
    assert markdown.count(first_line) == 1
    assert markdown.count("): the same as run random's.") == 2  # evolution and uniform searched it too


def test_findings_compare_mixed_precision_with_uniform_baselines(report, runs):
    _, summary = report
    assert {b["format"] for b in summary["baselines"]} == {"int8", "w4a8"}
    int8, w4a8 = runs["uniform"][0], runs["uniform"][1]
    assert w4a8.metrics["bitops"] < int8.metrics["bitops"]

    def best_within(reference):
        mixed = [t for name in ("random", "evolution") for t in runs[name]
                 if t.status == "ok" and t.metrics["bitops"] <= reference.metrics["bitops"]
                 and len({(w, a) for _, w, a in t.candidate.formats}) > 1]
        return max(mixed, key=lambda t: t.metrics["accuracy"])

    best = best_within(int8)
    if best is best_within(w4a8):  # nothing searched between the two budgets: one finding says so
        line = next(f for f in summary["findings"] if "the best searched candidate is still" in f)
        assert "(best uniform 80.00%)" in line and f"trial #{best.number}" in line
    else:
        gain = 100 * (best.metrics["accuracy"] - int8.metrics["accuracy"])
        line = next(f for f in summary["findings"] if "uniform format: int8" in f)
        assert f"{gain:+.2f} points" in line and f"trial #{best.number}" in line
    hv = {r["run"]: r["hypervolume"] for r in summary["runs"]}
    assert summary["findings"][0].startswith(f"Highest hypervolume: {max(hv, key=hv.get)} with")


def mixed_trial(space, number, accuracy, above, at_most):
    """A mixed-precision candidate with ``above < bitops <= at_most``, scored ``accuracy`` on validation."""
    model = CostModel(space)
    candidate = next(c for c in map(space.sample, range(1000))
                     if above < model.metrics(c)["bitops"] <= at_most and len({(w, a) for _, w, a in c.formats}) > 1)
    return Trial(number, candidate, {"accuracy": accuracy, **model.metrics(candidate)}, "ok", None, "random", 1.0)


def comparison(uniform, searched, uniform_test, searched_test, se, verdict):
    """One ``final.json`` comparison record of the search "random", as ``automq final`` writes it."""
    difference = searched_test - uniform_test
    return {"run": "random", "budget": uniform.metrics["bitops"], "budget_label": f"uniform {uniform.info['format']}",
            "uniform": uniform.info["format"], "uniform_trial": uniform.number, "uniform_run": "uniform",
            "uniform_test_accuracy": uniform_test, "uniform_val_accuracy": uniform.metrics["accuracy"],
            "searched_trial": searched.number, "searched_id": searched.candidate.id,
            "searched_bitops": searched.metrics["bitops"], "searched_test_accuracy": searched_test,
            "searched_val_accuracy": searched.metrics["accuracy"], "searched_search_accuracy": searched.metrics[
                "accuracy"], "difference": difference, "se": se, "ci95": [difference - Z95 * se, difference + Z95 * se],
            "verdict": verdict}


@pytest.fixture(scope="module")
def disagreeing(space, tmp_path_factory):
    """Searches whose validation figures and final test-split verdicts disagree at both budgets: on validation the
    search leads uniform w4a8 (70%) by 5 points and trails int8 (80%) by 2; on the test split it ties w4a8 (+1 point,
    paired SE 0.6: under 2 SE) and beats int8 (+3 points, SE 1.0: over 2 SE)."""
    root = tmp_path_factory.mktemp("disagreeing")
    int8, w4a8 = uniform_trials(space)
    cheap = mixed_trial(space, 0, 0.75, 0.0, w4a8.metrics["bitops"])
    dear = mixed_trial(space, 1, 0.78, w4a8.metrics["bitops"], int8.metrics["bitops"])
    dirs = [write_search_dir(root / "uniform", space, "uniform", [int8, w4a8]),
            write_search_dir(root / "random", space, "random", [cheap, dear])]
    final = {"test_images": 1000, "margin_se": 2.0, "recipe": "by hand", "comparisons": [
        comparison(w4a8, cheap, 0.70, 0.71, 0.006, "tie"), comparison(int8, dear, 0.80, 0.83, 0.010, "win")]}
    return dirs, final, int8


def test_findings_without_a_final_measurement_say_they_are_what_the_search_saw(disagreeing, tmp_path):
    dirs, _, _ = disagreeing
    findings = build_report(dirs, tmp_path / "out")["findings"]
    assert any("reaches 75.00% (+5.00 points; random trial #0" in f for f in findings)
    assert findings[-1] == ("These accuracies are the validation estimates the search saw; they choose candidates but "
                            "decide no win: `automq final` measures wins on the test split with paired standard "
                            "errors.")


def test_findings_state_the_final_tables_verdicts_once_measured(disagreeing, tmp_path):
    dirs, final, int8 = disagreeing
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "final.json").write_text(json.dumps(final))
    findings = build_report(dirs, tmp_path / "out")["findings"]
    verdicts = (f"On the test split (1000 images), random: wins at 1 of 2 budgets, ties at 1, loses at 0 "
                f"(win at ≤ {int8.metrics['bitops']:.4g} BitOps (+3.00 ± 1.00 points)).")
    assert findings[2:] == [verdicts, "A win is a lead of more than 2 paired standard errors, with a 95% interval "
                            "above zero, over every uniform format at or below the budget (Final measurement); the "
                            "validation accuracies the search saw choose the candidates compared but decide no win."]
    page = (tmp_path / "out" / "report.md").read_text()
    assert f"- {verdicts}" in page and "- random: wins at 1 of 2 budgets, ties at 1, loses at 0" in page
    assert "+5.00 points" not in page  # the validation lead over w4a8 is no longer told as a finding


def test_findings_bound_the_gain_by_the_most_accurate_candidates_measured(disagreeing, tmp_path):
    dirs, final, int8 = disagreeing
    ceiling = {"run": "random", "trial": 1, "bitops": int8.metrics["bitops"], "test_accuracy": 0.83,
               "uniform": "int8", "uniform_run": "uniform", "uniform_trial": 0, "uniform_test_accuracy": 0.80,
               "difference": 0.03, "se": 0.01, "verdict": "win"}
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "final.json").write_text(json.dumps({**final, "ceiling": ceiling}))
    findings = build_report(dirs, tmp_path / "out")["findings"]
    assert findings[3] == (f"The most accurate candidate measured (random trial #1, 83.00% at "
                           f"{int8.metrics['bitops']:.4g} BitOps) against the most accurate uniform one (int8, "
                           "80.00%): +3.00 ± 1.00 points, a win. Both are picked by their test accuracy, so this "
                           "bounds from above what mixed precision gains over the best uniform format here.")
    itself = {**ceiling, "run": "uniform", "trial": 0, "uniform_run": "uniform", "uniform_trial": 0,
              "difference": 0.0, "se": 0.0, "verdict": "tie"}
    (tmp_path / "out" / "final.json").write_text(json.dumps({**final, "ceiling": itself}))
    assert build_report(dirs, tmp_path / "out")["findings"][3] == (
        "The most accurate candidate measured is uniform int8 (80.00%): no candidate measured is more accurate than "
        "the best uniform format, at any cost.")


def test_fidelity_rank_correlations_by_hand(report):
    out, summary = report
    # one swapped pair out of 6: tau = (5 - 1) / 6; squared rank differences 1 + 1: rho = 1 - 6 * 2 / (4 * 15)
    assert summary["fidelity"]["n"] == 4
    assert summary["fidelity"]["kendall_tau"] == pytest.approx(4 / 6, rel=F64)
    assert summary["fidelity"]["spearman_rho"] == pytest.approx(0.8, rel=F64)
    # ranked by loss (lower first) 1, 2, 4, 3 against 1, 3, 2, 4: pairs (2,3) and (3,4) swapped, tau = (4 - 2) / 6;
    # squared rank differences 0 + 1 + 4 + 1: rho = 1 - 6 * 6 / (4 * 15)
    assert summary["fidelity"]["loss_kendall_tau"] == pytest.approx(2 / 6, rel=F64)
    assert summary["fidelity"]["loss_spearman_rho"] == pytest.approx(0.4, rel=F64)
    assert "Ranked by one-shot loss instead (lower ranks higher): Kendall tau = 0.333, Spearman rho = 0.4." in (
        out / "report.md").read_text()


def test_fidelity_argument_skips_incomplete_entries(tmp_path, space):
    path = write_search_dir(tmp_path / "run", space, "random", make_trials(space, "random", 3, seed=5))
    (tmp_path / "f.json").write_text(json.dumps({"candidates": [
        {"id": "a", "oneshot_accuracy": 0.5, "standalone_accuracy": 0.6},
        {"id": "b", "oneshot_accuracy": 0.7, "standalone_accuracy": 0.65},
        {"id": "c", "oneshot_accuracy": 0.6}]}))
    summary = build_report([path], tmp_path / "out", fidelity=tmp_path / "f.json")
    assert summary["fidelity"]["n"] == 2 and summary["fidelity"]["kendall_tau"] == pytest.approx(1.0, rel=F64)
    assert "loss_kendall_tau" not in summary["fidelity"]  # no record has a loss
    assert any("1 of 3 candidates lack" in n for n in summary["notes"])


def test_heatmap_grids_align_candidates_of_different_depths(space):
    small, large = space.uniform("int4", "int8", arch="smallest"), space.uniform("fp8_e4m3", "int8")
    layers, weights, activations = format_grid([small, large])
    assert layers == space.layer_names()  # the max network, in network order
    present = set(space.layer_names(small))
    assert weights[0] == [("int4" if name in present else None) for name in layers]
    assert activations[0] == [("int8" if name in present else None) for name in layers]
    assert weights[1] == ["fp8_e4m3"] * len(layers)
    blocks, kernel, expand = architecture_grid([small, large])
    assert blocks == [(0, 0), (1, 0), (1, 1)]
    np.testing.assert_array_equal(kernel, [[3, 3, np.nan], [3, 5, 5]])
    np.testing.assert_array_equal(expand, [[1, 3, np.nan], [1, 6, 6]])


def test_uniform_format_names(space):
    assert uniform_format(Trial(0, space.uniform("int8", "int8"), {}), "random") == "int8"
    assert uniform_format(Trial(0, space.uniform("int4", "int8"), {}), "random") == "W int4 / A int8"
    assert uniform_format(Trial(0, space.uniform("int4", "int8"), {}, info={"format": "w4a8"}), "uniform") == "w4a8"
    mixed = Candidate.from_dict({**space.uniform("int8", "int8").to_dict(),
                                 "formats": [["conv_stem", "int4", "int8"], ["classifier", "int8", "int8"]]})
    assert uniform_format(Trial(0, mixed, {}), "random") is None


def _tear_last_line(path):
    with open(path / "trials.jsonl", "a") as handle:
        handle.write('{"number": 99, "candidate": {"width')


def _malformed_record(path):
    append_jsonl(path / "trials.jsonl", {"number": 99, "status": "ok"})


BAD_INPUTS = {
    # folder: (how to damage a good 6-trial directory, expected note, trials still read)
    "no_run_json": (lambda p: (p / "run.json").unlink(), "run.json is missing", 6),
    "torn_line": (_tear_last_line, "skipped 1 torn or malformed record", 6),
    "no_trials": (lambda p: (p / "trials.jsonl").unlink(), "holds no finished trial", 0),
    "broken_pareto": (lambda p: (p / "pareto.json").write_text("{"), "not readable as JSON", 6),
    "malformed_record": (_malformed_record, "skipped 1 torn or malformed record", 6),
    "gone": (lambda p: shutil.rmtree(p), "no such search directory", None),
    "only_failed": (lambda p: None, "none of its 6 trials is feasible", 6),
}


@pytest.fixture(scope="module")
def damaged(tmp_path_factory, space):
    """One report over a set of damaged search directories (one report keeps the test file fast)."""
    root = tmp_path_factory.mktemp("damaged")
    trials = make_trials(space, "random", 6, seed=3)
    for name, (modify, _, _) in BAD_INPUTS.items():
        failed = make_trials(space, "random", 6, seed=3, failed=set(range(6)))
        modify(write_search_dir(root / name, space, "random", failed if name == "only_failed" else trials))
    (root / "out").mkdir()
    (root / "out" / "fidelity.png").write_bytes(b"left by an earlier report")
    summary = build_report([root / name for name in BAD_INPUTS], root / "out", fidelity=root / "missing.json")
    return root / "out", summary, trials


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_gives_a_report_with_a_note(damaged, space, name):
    out, summary, trials = damaged
    _, note, n_read = BAD_INPUTS[name]
    assert any(name in n and note in n for n in summary["notes"]), summary["notes"]
    page = (out / "report.html").read_text()
    assert page.index("Notes on the input") < page.index("Key findings")
    runs = [r for r in summary["runs"] if r["path"].endswith(name)]
    if n_read is None:  # nothing usable: the run is left out, the report still lists the others
        assert runs == []
        return
    assert runs[0]["trials"] == n_read
    assert sum(row["run"] == runs[0]["run"] for row in read_csv(out / "trials.csv")) == n_read
    _, losses = ok_losses([] if name == "only_failed" else trials[:n_read], space)  # broken pareto.json:
    # the scales come from space.yaml instead, so the hypervolume is unchanged
    assert runs[0]["hypervolume"] == pytest.approx(staircase_hypervolume(losses, (1.0, 1.1)), rel=F64)


def test_missing_fidelity_file_and_only_failed_trials(damaged):
    out, summary, _ = damaged
    assert summary["fidelity"] is None and any("missing.json: no such file" in n for n in summary["notes"])
    only_failed = next(r for r in summary["runs"] if r["path"].endswith("only_failed"))
    assert only_failed["counts"]["failed"] == 6 and only_failed["front_size"] == 0
    assert not (out / "fidelity.png").exists()  # a figure of the earlier report in this folder is removed


def test_reads_what_the_search_log_writes_and_notes_an_unfinished_run(tiny_space, tmp_path):
    space = tiny_space(SPACE_CHANGES, folder=tmp_path)
    log = SearchLog(tmp_path / "run", space, strategy="random")
    for trial in make_trials(space, "random", 5, seed=6, failed={2}):
        log.append(trial)  # never finished: run.json keeps status "running"
    summary = build_report([tmp_path / "run"], tmp_path / "out")
    recorded = json.loads((tmp_path / "run" / "pareto.json").read_text())
    assert summary["runs"][0]["hypervolume"] == pytest.approx(recorded["hypervolume"], rel=F64)
    assert summary["runs"][0]["front_size"] == len(recorded["trials"])
    assert any("did not finish" in n for n in summary["notes"])
    assert "space file (" in (tmp_path / "out" / "report.html").read_text()


def test_report_folder_that_is_a_file_is_a_user_error(tmp_path):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(AutomqError, match="taken.*existing file"):
        build_report([], tmp_path / "taken")


# Appended to a copy of report.html: at the load event every image has loaded or failed, and a failed one has
# naturalWidth 0; the verdicts go into the DOM that `chromium --dump-dom` prints.
IMAGE_CHECK = """<script>
window.addEventListener("load", () => {
  const check = document.createElement("pre");
  check.id = "image-check";
  check.textContent = JSON.stringify([...document.images].map(img => img.complete && img.naturalWidth > 0));
  document.body.append(check);
});
</script>"""


@pytest.fixture(scope="module")
def chromium():
    """Headless Chromium's command line up to the page address (a fresh profile folder per call)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("chromium is not installed: `make test` installs Debian's chromium package (as root); "
                    "install it with `apt-get install chromium` and run the tests again")

    def command(profile, *options):
        return [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", *options]

    return command


def images_chromium_decodes(chromium, page, tmp_path):
    """For each <img> of the HTML file ``page``, in document order: whether headless Chromium decoded it."""
    checked = tmp_path / "checked.html"
    text = page.read_text()
    assert text.count("</body>") == 1
    checked.write_text(text.replace("</body>", IMAGE_CHECK + "</body>"))
    dom = subprocess.run([*chromium(tmp_path / "profile", "--dump-dom"), checked.as_uri()], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    verdicts = re.search(r'<pre id="image-check">(.*?)</pre>', dom)
    assert verdicts is not None, "the page never reached its load event"
    return json.loads(verdicts.group(1))


def test_report_renders_in_headless_chromium(report, chromium, tmp_path):
    out, _ = report
    assert images_chromium_decodes(chromium, out / "report.html", tmp_path) == [True] * EXPECTED_FIGURES
    shot = tmp_path / "page.png"
    subprocess.run([*chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,4000"),
                    (out / "report.html").as_uri()], check=True, capture_output=True, timeout=120)
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (4000, 1280)
    colours = np.unique((pixels.reshape(-1, 3) * 255).astype(np.uint8), axis=0)
    assert len(colours) > 200 and pixels.std() > 0.05  # text, tables and plots, not a blank or single-colour page


def test_the_chromium_check_finds_an_image_that_does_not_decode(report, chromium, tmp_path):
    out, _ = report
    page = (out / "report.html").read_text()
    images = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    not_an_image = base64.b64encode(PNG_SIGNATURE + bytes(200)).decode("ascii")  # a PNG signature, then zeros
    corrupted = tmp_path / "corrupted.html"
    corrupted.write_text(page.replace(images[2], not_an_image, 1))
    assert images_chromium_decodes(chromium, corrupted, tmp_path) == [True, True, False] + [True] * 4


def test_a_final_row_shows_the_binding_uniform_format_and_how_many_it_beats() -> None:
    wins = [{"verdict": "win"}] * 3
    c = {"run": "evo", "budget": 7.947e7, "uniform": "W int8 / A int4", "uniform_trial": 4,
         "uniform_test_accuracy": 0.8851, "searched_trial": 12, "searched_bitops": 7.9e7,
         "searched_val_accuracy": 0.8901, "searched_search_accuracy": 0.8915, "searched_test_accuracy": 0.8888,
         "difference": 0.00365, "se": 0.0013,
         "ci95": [0.001052, 0.006248], "verdict": "tie", "references": wins + [{"verdict": "tie"}]}
    row = final_row(c)
    assert len(row) == len(FINAL_HEADER) and FINAL_HEADER[2] == "uniform (binding)"
    assert row == ["evo", "7.947e+07", "W int8 / A int4 (#4)", "88.51", "#12", "7.9e+07", "89.01 (89.15)", "88.88",
                   "+0.36 ± 0.13", "[+0.11, +0.62]", "3 of 4", "tie"]
    # a final.json from before every uniform format was compared says nothing of the others
    assert final_row({k: v for k, v in c.items() if k != "references"})[-2] == "-"
