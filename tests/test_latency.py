"""Latency tables measured with ONNX Runtime (automq/latency.py) on a tiny space: every layer configuration a
candidate can have is in the table (checked against all candidates, enumerated by brute force), simulated formats
share the path they run on, the metadata says where and how it was measured, and a space whose objective is
latency searches with the table. No assertion depends on how fast anything ran."""

from __future__ import annotations

import dataclasses

import itertools
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import yaml

from automq.cli import main
from automq.cost import LATENCY_OVERHEAD_KEY, CostModel, latency_key
from automq.latency import (Timing, build_latency_table, identity_graph, layer_configurations, layer_graph,
                            measure_onnx)
from automq.model.arch import layer_specs
from automq.search.results import load_trials
from automq.space.space import SearchSpace

from _spaces import SpaceFactory, tiny_space_data

# int8 everywhere but the depthwise convs of the elastic stage, whose menus mix native ONNX formats (int8, fp8)
# with ones ONNX Runtime has no type for (int2, mxfp4_e2m1 weights; fp4_e2m1 activations, no integer either).
FORMATS = {"formats": {"weights": ["int8"], "activations": ["int8"], "overrides": [
    {"layers": r"blocks\.1\.\d\.conv_dw", "weights": ["int8", "int2", "mxfp4_e2m1"],
     "activations": ["int8", "fp8_e4m3", "fp4_e2m1"]}]}}
QUICK = Timing(threads=1, warmup=1, runs=3)
NO_ONNX_TYPE = ["fp4_e2m1", "int2", "mxfp4_e2m1"]  # by hand: not int8/int4/fp8_e4m3/fp8_e5m2, not fp32


def every_candidate(space: SearchSpace) -> dict[str, object]:
    """Brute force: every combination of every decision's choices, deduplicated (inactive blocks' choices)."""
    decisions = space.decisions()
    found = {}
    for values in itertools.product(*(d.choices for d in decisions)):
        candidate = space.candidate_from_choices({d.name: v for d, v in zip(decisions, values)})
        found[candidate.id] = candidate
    return found


@pytest.fixture(scope="module")
def space(tiny_space: SpaceFactory) -> SearchSpace:
    return tiny_space(FORMATS)


@pytest.fixture(scope="module")
def table(space: SearchSpace) -> dict:
    return build_latency_table(space, QUICK, progress=False)


def test_the_table_has_exactly_the_keys_of_every_layer_of_every_candidate(space, table) -> None:
    candidates = every_candidate(space)
    # 2 widths x (4 one-block + 16 two-block ir stages) x 3x3 formats per elastic depthwise conv
    assert len(candidates) == 2 * (4 * 9 + 16 * 81)
    asked = {latency_key(spec) for c in candidates.values() for spec in layer_specs(space, c)}
    assert {key for key in table if not key.startswith("_") and key != LATENCY_OVERHEAD_KEY} == asked
    model = CostModel(space, latency_table={k: v for k, v in table.items() if not k.startswith("_")})
    for candidate in candidates.values():
        assert model.costs(candidate)["latency_ms"] > 0  # raises SpaceError for a missing key


def test_entries_are_medians_and_the_metadata_names_machine_runtime_and_threads(space, table) -> None:
    import onnxruntime

    entries = [v for k, v in table.items() if not k.startswith("_")]
    assert table[LATENCY_OVERHEAD_KEY] > 0 and all(v >= 0 for v in entries) and sum(entries) > 0
    assert table["_runtime"].startswith(f"onnxruntime {onnxruntime.__version__}")
    assert table["_threads"] == 1 and table["_runs"] == 3 and table["_warmup"] == 1
    assert "cores" in table["_machine"] and table["_space"] == "tiny"
    assert table["_simulated_formats"] == NO_ONNX_TYPE


def test_simulated_formats_share_the_measurement_of_the_path_they_run_on(space, table) -> None:
    """int2 and MX weights both run as float weights, with fp4 activations on their own simulated path: one
    measurement each."""
    dw = next(s for s in layer_specs(space, space.largest()) if s.name == "blocks.1.0.conv_dw")
    key = latency_key(dataclasses.replace(dw, out_fmt=None)).rsplit("/", 2)[0]
    assert table[f"{key}/int2/int8"] == table[f"{key}/mxfp4_e2m1/int8"]
    assert table[f"{key}/int2/fp4_e2m1"] == table[f"{key}/mxfp4_e2m1/fp4_e2m1"]
    distinct = {k for k in table if not k.startswith("_") and k != LATENCY_OVERHEAD_KEY}
    assert table["_configurations"] == len(distinct)
    assert table["_measured"] < len(distinct)


@pytest.fixture
def recorded_feeds(monkeypatch) -> dict:
    """Every input that ``InferenceSession.run`` is fed, as bytes, listed per session (graph name, shape, bytes)."""
    feeds: dict = defaultdict(list)
    run = onnxruntime.InferenceSession.run

    def recording_run(session, output_names, input_feed, *args, **kwargs):
        (values,) = input_feed.values()
        feeds[session].append((session.get_modelmeta().graph_name, values.shape, values.tobytes()))
        return run(session, output_names, input_feed, *args, **kwargs)

    monkeypatch.setattr(onnxruntime.InferenceSession, "run", recording_run)
    return feeds


def optimized_ops(proto: onnx.ModelProto, folder: Path) -> list[str]:
    """The ops of the graph ONNX Runtime runs for ``proto`` on this machine (what its optimisations made of it)."""
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.optimized_model_filepath = str(folder / "optimized.onnx")
    onnxruntime.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]


def test_an_int8_layer_that_feeds_an_int8_layer_is_timed_as_the_integer_conv_it_runs_as(space, table,
                                                                                        tmp_path) -> None:
    """In the exported model an int8 conv whose output goes straight into an int8 input quantizer runs as ONNX
    Runtime's QLinearConv (test_onnx_export); its one-layer model must run so too, under a key of its own, and
    the same layer without that consumer in float (DequantizeLinear + Conv)."""
    configs = {latency_key(c.spec): c for c in layer_configurations(space)}
    # the expansion conv before the depthwise conv whose inputs may be int8, fp8 or fp4
    expand = next(s for s in layer_specs(space, space.largest()) if s.name == "blocks.1.0.conv_pw")
    integer, plain = (configs[latency_key(dataclasses.replace(expand, out_fmt=out))] for out in ("int8", "fp8_e4m3"))
    assert latency_key(integer.spec) == latency_key(plain.spec) + "/int8-out" and integer.relu6
    assert optimized_ops(layer_graph(integer)[0], tmp_path).count("QLinearConv") == 1
    assert "QLinearConv" not in optimized_ops(layer_graph(plain)[0], tmp_path)
    assert {latency_key(integer.spec), latency_key(plain.spec)} <= set(table)


def test_every_run_of_a_layer_is_fed_an_input_of_its_own(space, recorded_feeds) -> None:
    """Issue 19: ONNX Runtime converts to and from FP8 with a branch per value, which the CPU's branch predictor
    learns when one small input repeats, so FP8 layers timed on a repeated input ran up to 3.7x faster than in the
    whole model. Each layer's session must see warmup + runs different inputs, each a batch of one image."""
    table = build_latency_table(space, QUICK, progress=False)
    layers = {session: runs for session, runs in recorded_feeds.items() if runs[0][0] != "identity"}
    assert len(layers) == table["_measured"]
    for runs in layers.values():
        assert len(runs) == QUICK.warmup + QUICK.runs
        assert len({values for _, _, values in runs}) == len(runs)
        assert all(shape[0] == 1 for _, shape, _ in runs)


def test_the_whole_model_is_timed_on_a_different_image_each_run(tmp_path, recorded_feeds) -> None:
    path = tmp_path / "identity.onnx"
    onnx.save(identity_graph((1, 1, 4, 4)), path)
    images = np.arange(2 * 16, dtype=np.float32).reshape(2, 1, 4, 4)
    measure_onnx(path, QUICK, images)
    measure_onnx(path, QUICK)
    given, noise = recorded_feeds.values()
    assert [values for _, _, values in given] == [images[i % 2][None].tobytes() for i in range(4)]
    assert len({values for _, _, values in noise}) == 4 and all(shape == (1, 1, 4, 4) for _, shape, _ in noise)


def test_a_latency_objective_searches_with_a_table_the_command_built(tmp_path, capsys) -> None:
    data = tiny_space_data(FORMATS, dataset={"val_size": 64},
                           training={"epochs": 1, "batch_size": 32, "num_random": 1, "train_size": 64},
                           search={"eval_size": 64, "calib_size": 32},
                           objectives=[{"metric": "accuracy"}, {"metric": "latency", "mode": "min"}],
                           latency_table=str(tmp_path / "latency.json"))  # absolute: the run folder copies the space
    space_file = tmp_path / "tiny.yaml"
    # the space cannot name its table before the table exists: measure it from the same space without latency
    without_latency = {**data, "latency_table": None, "objectives": [{"metric": "accuracy"}]}
    assert main(["latency-table", str(_write(space_file, without_latency)), "--out", str(tmp_path / "latency.json"),
                 "--runs", "3", "--warmup", "1"]) == 0
    built = json.loads((tmp_path / "latency.json").read_text())
    total, measured = built["_configurations"], built["_measured"]
    # the progress bar: lines rewritten in place on stderr, ending with every configuration done
    err = capsys.readouterr().err
    assert re.search(rf"\r\[#{{30}}\] {total}/{total} configurations, {measured} measured, \d+ s\n$", err), err
    assert err.count("\r") >= 2  # rewritten in place, not one line per layer
    _write(space_file, data)
    run, out = tmp_path / "run", tmp_path / "search"
    assert main(["train-supernet", str(space_file), "--out", str(run)]) == 0
    assert main(["search", str(space_file), "--supernet", str(run), "--strategy", "tune", "--sampler", "random",
                 "--workers", "0", "--trials", "3", "--out", str(out)]) == 0
    table = json.loads((tmp_path / "latency.json").read_text())
    space = SearchSpace.from_file(space_file)
    trials = load_trials(out)
    assert len(trials) == 3
    for trial in trials:
        layers = [table[latency_key(spec)] for spec in layer_specs(space, trial.candidate)]
        expected = table[LATENCY_OVERHEAD_KEY] + sum(layers)
        tolerance = torch.finfo(torch.float64).eps * (len(layers) + 1) * expected
        assert abs(trial.metrics["latency"] - expected) <= tolerance


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump({k: v for k, v in data.items() if v is not None}), encoding="utf-8")
    return path


@pytest.mark.parametrize("argv, message", [
    (["latency-table", "{space}", "--out", "{tmp}/missing/table.json"], "folder"),
    (["latency-table", "{tmp}/no_such_space.yaml", "--out", "{tmp}/table.json"], "no_such_space.yaml"),
    (["latency-table", "{space}", "--out", "{tmp}/table.json", "--threads", "0"], "--threads must be at least 1"),
    (["export", "{tmp}/run", "largest", "--out", "{tmp}/m.pt", "--measure"], "--measure times the ONNX model"),
])
def test_bad_input_is_one_error_line(argv, message, tiny_space, tmp_path, capsys) -> None:
    space_file = Path(tiny_space(FORMATS, folder=tmp_path).source)
    argv = [arg.format(space=space_file, tmp=tmp_path) for arg in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("automq: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "table.json").exists()
