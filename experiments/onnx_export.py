"""ONNX export of candidates of a trained supernet: ONNX Runtime against PyTorch on the whole test split.

For each candidate (uniform int8, int4 weights, FP8, and one sampled mixed candidate) the model is extracted and
BN-recalibrated as ``automq export`` does it, exported with QuantizeLinear/DequantizeLinear
(:func:`automq.model.onnx_export.export_onnx`, which runs the check), and the ops that ONNX Runtime's optimised
graph runs are counted (how many convs run on integer kernels, QLinearConv).

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python experiments/onnx_export.py runs/fidelity/supernet
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from automq.data import fixed_batches, make_loader
from automq.io import atomic_write_json, atomic_write_text
from automq.model.onnx_export import export_onnx, optimized_graph
from automq.model.supernet import recalibrate_bn
from automq.oneshot.train import load_space_data, load_supernet, training_summary, training_text
from automq.space.space import SearchSpace
from provenance import machine, machine_text

RESULTS = Path(__file__).parent / "results"
CALIB_IMAGES = 512  # as `automq export` recalibrates BN


def candidates(space: SearchSpace, seed: int) -> dict[str, object]:
    """The candidates measured: uniform int8, int4 weights, FP8 (nearest allowed format where a layer's menu lacks
    it), all on the largest architecture, and one candidate sampled from the space."""
    return {
        "int8": space.uniform("int8", "int8"),
        "int4 weights, int8 activations": space.uniform("int4", "int8", clamp=True),
        "fp8_e4m3": space.uniform("fp8_e4m3", "fp8_e4m3", clamp=True),
        f"sampled (seed {seed})": space.sample(np.random.default_rng(seed)),
    }


def optimized_ops(path: Path) -> dict[str, int]:
    """Op counts of the graph ONNX Runtime actually runs (default optimisation level, CPU)."""
    return dict(Counter(node.op_type for node in optimized_graph(path).graph.node).most_common())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("supernet", type=Path, help="a train-supernet run folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled candidate")
    parser.add_argument("--out", type=Path, default=RESULTS / "onnx_export", help="output path, no suffix")
    args = parser.parse_args(argv)
    space = SearchSpace.from_file(args.supernet / "space.yaml")
    supernet = load_supernet(args.supernet, space)
    data = load_space_data(space, with_test=True)
    calibration = fixed_batches(data.train, CALIB_IMAGES, 128)
    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for label, candidate in candidates(space, args.seed).items():
            model = supernet.extract(candidate)
            recalibrate_bn(model, calibration)
            path = Path(folder) / f"{candidate.id}.onnx"
            start = time.perf_counter()
            check = export_onnx(model.eval(), candidate, path, make_loader(data.test, 256, shuffle=False))
            seconds = time.perf_counter() - start
            formats = Counter(f"{w}/{a}" for _, w, a in candidate.formats)
            rows.append({"label": label, "candidate": candidate.id, "formats (w/a: layers)": dict(formats),
                         **check.to_dict(), "export_and_check_s": round(seconds, 1),
                         "onnx_bytes": path.stat().st_size, "ort_optimized_ops": optimized_ops(path)})
            print(label, rows[-1], flush=True)
    meta = {
        "command": shlex.join([sys.executable, *sys.argv]),
        "machine": machine(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__},
        "supernet": str(args.supernet),
        "supernet_training": json.loads((args.supernet / "run.json").read_text())["config"]["training"],
        "supernet_text": training_text(training_summary(args.supernet)),
        "wall_s": round(time.perf_counter() - started, 1),
        "test_images": len(data.test),
    }
    atomic_write_json(args.out.with_suffix(".json"), {**meta, "rows": rows})
    atomic_write_text(args.out.with_suffix(".md"), markdown(meta, rows))


def markdown(meta: dict, rows: list[dict]) -> str:
    lines = [
        "# ONNX export: ONNX Runtime vs PyTorch on the test split", "",
        f"Command: `{meta['command']}`  ",
        f"Machine: {machine_text(meta['machine'])}, OMP_NUM_THREADS={meta['omp_num_threads']}; {meta['time']}; "
        f"{meta['versions']}  ",
        f"Supernet: {meta['supernet']} ({meta['supernet_text']}); {meta['test_images']} test images; wall time "
        f"{meta['wall_s']} s", "",
        "Each candidate is extracted, BN-recalibrated on 512 training images and exported as `automq export --onnx` "
        "does it, on every test image: the exact graph (every quantizer giving the project's codes, every conv in "
        "float) must match PyTorch's logits within the float32 tolerance (column 'logits within fp32 tolerance'), "
        "and the graph written, with integer convs where ONNX Runtime fuses them, gives ORT's top-1 and the "
        "agreement. 'integer convs': QLinearConv in ONNX Runtime's optimised graph of the written model, of all "
        "convs.", "",
        "| candidate | PyTorch top-1 | ORT top-1 | ORT - PyTorch (points) | top-1 agreement | logits within fp32 "
        "tolerance | max abs logit diff | simulated | integer convs | export+check s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        integer, convs = row["integer_convs"]
        fallback = "" if row["integer_top1_agreement"] is None else \
            f" (with them top-1 agreed on {row['integer_top1_agreement']:.2%}: written with float convs)"
        lines.append(
            f"| {row['label']} ({row['candidate']}) | {row['torch_accuracy']:.2%} | {row['onnx_accuracy']:.2%} | "
            f"{100 * (row['onnx_accuracy'] - row['torch_accuracy']):+.2f} | "
            f"{row['top1_agreement']:.2%} | {row['within_tolerance']:.2%} | {row['max_abs_diff']:.3g} | "
            f"{', '.join(row['simulated_formats']) or '-'} | {integer} / {convs}{fallback} | "
            f"{row['export_and_check_s']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
