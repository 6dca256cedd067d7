"""Cost of fake quantization during training: quantized step time / float32 step time on CPU.

A MobileNetV2 (timm ``mobilenetv2_050``, 1 input channel, 10 classes) at 32x32 trains one SGD step
(forward + backward + update) on a batch of 64 with every Conv2d/Linear fake-quantized in one format for
weights and activations. All models are timed in the same run, round-robin, and each round's time is divided
by the same round's float32 time so that machine drift (other jobs, frequency scaling) cancels out. Several
thread counts can be measured one after the other (``--threads 2 1``): on a CPU shared with other jobs, the
single-thread run shows the cost of the arithmetic without the OpenMP barriers that a busy machine stretches.

    PYTHONPATH=. .venv/bin/python experiments/bench_formats.py            # writes experiments/results/
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import timm
import torch
from torch import nn

from automq.numerics.formats import get_format
from automq.io import atomic_write_json, atomic_write_text
from automq.numerics.quant import quantize_modules_
from provenance import command, header, machine

FORMATS = ("int8", "int4", "fp8_e4m3", "fp4_e2m1", "mxfp4_e2m1")
TARGETS = {"int": 1.5, "float": 1.5, "mx": 2.5}  # max allowed step-time ratio per format family
RESULTS = Path(__file__).parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenetv2_050", help="timm model name (built untrained)")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), help="formats to compare with fp32")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--threads", type=int, nargs="+", default=[2], help="torch threads, one run per value")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model (scale init, caches)")
    parser.add_argument("--rounds", type=int, default=20, help="round-robin rounds over all models")
    parser.add_argument("--steps", type=int, default=1, help="timed steps per model per round")
    parser.add_argument("--out", type=Path, default=RESULTS / "bench_formats", help="output path, no suffix")
    return parser.parse_args(argv)


class _Trainer:
    """One model, its optimizer and a fixed batch; ``step()`` is the timed unit."""

    def __init__(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.model = model.train()
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        self.batch = batch

    def step(self) -> None:
        images, labels = self.batch
        loss = nn.functional.cross_entropy(self.model(images), labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def time(self, steps: int) -> tuple[float, float]:
        """Mean wall-clock and process-CPU seconds per step over ``steps`` consecutive steps."""
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            self.step()
        return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def build_trainers(args: argparse.Namespace) -> dict[str, _Trainer]:
    """fp32 plus one fake-quantized copy per format, all from the same initial weights and batch."""
    torch.manual_seed(0)
    base = timm.create_model(args.model, pretrained=False, in_chans=1, num_classes=10)
    images = torch.randn(args.batch_size, 1, args.input_size, args.input_size)
    batch = (images, torch.randint(0, 10, (args.batch_size,)))
    trainers = {"fp32": _Trainer(base, batch)}
    for fmt in args.formats:
        model = copy.deepcopy(base)
        quantize_modules_(model, fmt, fmt)
        trainers[fmt] = _Trainer(model, batch)
    return trainers


def measure(trainers: dict[str, _Trainer], args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """Per-round wall and CPU seconds per step of every model, models interleaved within each round."""
    for trainer in trainers.values():
        for _ in range(args.warmup):
            trainer.step()
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in trainers}
    names = list(trainers)
    for round_ in range(args.rounds):
        shift = round_ % len(names)  # rotate the order so no model always runs right after another
        for name in names[shift:] + names[:shift]:
            wall, cpu = trainers[name].time(args.steps)
            times[name]["wall"].append(wall)
            times[name]["cpu"].append(cpu)
    return times


def _paired_ratio(times: list[float], base: list[float]) -> float:
    """Median over rounds of time / fp32 time in the same round (drift and bursts of load cancel)."""
    return statistics.median(t / b for t, b in zip(times, base, strict=True))


def summarise_run(times: dict[str, dict[str, list[float]]], threads: int, load: list[float]) -> dict:
    """Median step time and ratios to fp32 of every format in one run, with the format's target."""
    base = times["fp32"]
    rows = {}
    for name, t in times.items():
        row = {
            "step_ms": 1e3 * statistics.median(t["wall"]),
            "ratio": _paired_ratio(t["wall"], base["wall"]),
            "ratio_cpu": _paired_ratio(t["cpu"], base["cpu"]),
            "ratio_best": min(t["wall"]) / min(base["wall"]),
        }
        if name != "fp32":
            row["target"] = TARGETS[get_format(name).family]
            row["meets_target"] = row["ratio"] <= row["target"]
        rows[name] = row
    return {"threads": threads, "load_average_1min_start_end": load, "results": rows}


def markdown(summary: dict) -> str:
    setup = summary["setup"]
    lines = [
        "# Fake-quantization training-step cost (CPU)",
        "",
        *header(summary),
        "",
        f"`{setup['model']}`, batch {setup['batch_size']}, {setup['input_size']}x{setup['input_size']}, "
        f"torch {summary['torch']}, timm {summary['timm']}. "
        "Forward + backward + SGD step, weights and activations in the same format. `ratio` is the median "
        f"over {setup['rounds']} interleaved rounds of {setup['steps']} step(s) of (format time / fp32 time in "
        "the same round); `cpu` uses process CPU time instead of wall time; `best` divides the fastest steps.",
    ]
    for run in summary["runs"]:
        load = run["load_average_1min_start_end"]
        lines += [
            "",
            f"## {run['threads']} thread(s), 1-min load average {load[0]:.1f} at start, {load[1]:.1f} at end",
            "",
            "| format | step (ms) | ratio | ratio (cpu) | ratio (best) | target | met |",
            "|---|---:|---:|---:|---:|---:|:---:|",
        ]
        for fmt, row in run["results"].items():
            target = f"<= {row['target']}" if "target" in row else ""
            met = {True: "yes", False: "**no**", None: ""}[row.get("meets_target")]
            lines.append(
                f"| {fmt} | {row['step_ms']:.1f} | {row['ratio']:.2f} | {row['ratio_cpu']:.2f} "
                f"| {row['ratio_best']:.2f} | {target} | {met} |"
            )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    summary = {
        "command": command(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "machine": machine(),
        "setup": {k: v for k, v in vars(args).items() if k not in ("out", "formats", "threads")},
        "runs": [],
    }
    for threads in args.threads:
        torch.set_num_threads(threads)
        trainers = build_trainers(args)
        load_start = os.getloadavg()[0]
        run = summarise_run(measure(trainers, args), threads, [load_start, os.getloadavg()[0]])
        summary["runs"].append(run)
        for fmt, row in run["results"].items():
            print(f"{threads} thread(s) {fmt:>12} {row['step_ms']:8.1f} ms  x{row['ratio']:.2f}", flush=True)
    summary["wall_s"] = time.perf_counter() - started
    atomic_write_json(args.out.with_suffix(".json"), summary)
    atomic_write_text(args.out.with_suffix(".md"), markdown(summary))
    met = [row.get("meets_target", True) for run in summary["runs"] for row in run["results"].values()]
    return 0 if all(met) else 1


if __name__ == "__main__":
    sys.exit(main())
