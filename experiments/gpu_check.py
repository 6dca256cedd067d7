"""GPU check (issue 18): what a single-GPU machine does with automq, measured in one run of a few minutes.

    PYTHONPATH=. python3 experiments/gpu_check.py --data DIR [--out experiments/results/gpu_check.json]

``DIR`` holds the Fashion-MNIST IDX files (``train-images-idx3-ubyte.gz``, ...). The machine it is written for has
Python 3.12, torch, timm, numpy, scipy and pyyaml but neither Ray nor Optuna and no network, and automq is not
installed (hence ``PYTHONPATH=.``). In order, it

0. imports every module of the package that needs neither Ray nor Optuna (read from the modules' top-level imports,
   so the check itself imports neither), so that a problem with the newer Python shows up first;
1. fake-quantizes the same weights and activations in every format on the device and on the CPU: bit for bit equal;
2. trains the default space's supernet (the largest candidate plus ``num_random`` sampled ones per step, in-place
   distillation, as ``automq train-supernet``) for a fixed time on the device, then the same loop on the CPU, and
   reports images per second of each after warm-up steps;
3. counts one-shot estimates per minute on the device (and of one single-threaded CPU estimator, what one search
   worker runs), using the supernet of step 2 or ``--supernet``;
4. estimates a few fixed candidates on the device and on the CPU from the same weights: their accuracies agree
   within the estimates' binomial standard error, and the images classified differently are counted.

It prints one JSON summary (``ok`` is steps 0, 1 and 4 passing) and exits 1 when something failed. ``--device cpu``
runs the same script with the CPU as the device (what the tests do, with ``--quick`` on a tiny space).
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib
import json
import platform
import sys
import time
import traceback
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPACE = ROOT / "spaces" / "mbv2_fmnist.yaml"
OPTIONAL = ("ray", "optuna")  # what the GPU machine lacks
PACKAGE_FOLDERS = {"automq": ROOT / "automq", "automq.strategies": ROOT / "strategies"}
FIXED_CANDIDATES = 5  # step 4: the largest, the smallest and seeded random ones


class Timing:
    """How long each step runs and how many warm-up steps it discards; ``--quick`` shrinks them for tests."""

    def __init__(self, quick: bool) -> None:
        scale = 0.02 if quick else 1.0
        self.train_s = {"device": 30 * scale, "cpu": 60 * scale}
        self.estimate_s = {"device": 60 * scale, "cpu": 30 * scale}
        self.train_warmup = {"device": 1 if quick else 5, "cpu": 1}
        self.fixed_candidates = 2 if quick else FIXED_CANDIDATES


# ------------------------------------------------------------------------------------------------ 0. imports
def package_modules() -> dict[str, Path]:
    """Every module of the package by its import name: ``automq/`` and the plugin folder ``strategies/``."""
    modules = {}
    for package, folder in PACKAGE_FOLDERS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            modules[".".join((package, *parts))] = path
    return modules


def import_time_imports(path: Path, modules: set[str]) -> set[str]:
    """What importing ``path`` imports: package modules and top-level external names, from the statements that
    run at import time (function bodies and ``if TYPE_CHECKING:`` blocks do not)."""
    found: set[str] = set()

    def visit(statements: Iterable[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found.update(name for alias in node.names if (name := f"{node.module}.{alias.name}") in modules)
            elif isinstance(node, ast.If) and not _is_type_checking(node.test):
                visit(node.body)
                visit(node.orelse)
            elif isinstance(node, (ast.Try, ast.With, ast.ClassDef)):
                visit(node.body)
                visit(getattr(node, "orelse", ()))
                visit(getattr(node, "finalbody", ()))
                for handler in getattr(node, "handlers", ()):
                    visit(handler.body)

    visit(ast.parse(path.read_text(encoding="utf-8")).body)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def optional_needs(modules: dict[str, Path]) -> dict[str, set[str]]:
    """For each module, which of :data:`OPTIONAL` importing it pulls in, through the package modules it imports
    and their parent packages (whose ``__init__`` runs first)."""
    names = set(modules)
    direct = {name: import_time_imports(path, names) for name, path in modules.items()}
    for name in names:  # a submodule's import runs its parent packages first
        parts = name.split(".")
        direct[name] |= {".".join(parts[:i]) for i in range(1, len(parts))} & names
    needs = {name: {imp.split(".")[0] for imp in imports} & set(OPTIONAL) for name, imports in direct.items()}
    changed = True
    while changed:  # spread the needs along the import edges until nothing grows (the graph may have circles)
        changed = False
        for name, imports in direct.items():
            grown = needs[name].union(*(needs[dep] for dep in imports & names))
            changed |= grown != needs[name]
            needs[name] = grown
    return needs


def import_package() -> dict[str, Any]:
    """Import every module that needs neither Ray nor Optuna; list those that do, and every failure with its error."""
    needs = optional_needs(package_modules())
    failed = {}
    importable = sorted(name for name, need in needs.items() if not need)
    for name in importable:
        try:
            importlib.import_module(name)
        except Exception as exc:  # any import failure is what this step reports
            failed[name] = f"{type(exc).__name__}: {exc}"
    return {"imported": len(importable) - len(failed), "failed": failed,
            "need_ray_or_optuna": sorted(name for name, need in needs.items() if need)}


# ------------------------------------------------------------------------------------------------ 1. formats
def format_inputs() -> dict[str, tuple[torch.Tensor, int | None]]:
    """A conv weight (rows spanning 2^-8..2^8, per-channel scales) and an activation (one scale), about a million
    values each, so rounding boundaries and saturation are hit many times."""
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(128, 96, 3, 3, generator=gen) * torch.exp2(torch.linspace(-8, 8, 128)).view(-1, 1, 1, 1)
    activation = torch.randn(16, 96, 24, 24, generator=gen) * 4.0
    return {"weight": (weight, 0), "activation": (activation, None)}


def compare_formats(device: torch.device) -> dict[str, Any]:
    """Fake quantization of every format on ``device`` against the CPU: the formats that differ, and where."""
    from automq.numerics.formats import format_names, get_format

    differ = {}
    for name in format_names():
        fmt = get_format(name)
        for role, (x, axis) in format_inputs().items():
            scale = fmt.init_scale(x, axis=axis) if fmt.learnable_scale else None
            on_cpu = fmt.quantize(x, scale, axis=axis)
            on_device = fmt.quantize(x.to(device), None if scale is None else scale.to(device), axis=axis).cpu()
            mismatches = int((on_device != on_cpu).sum())
            if mismatches or on_device.dtype != on_cpu.dtype:
                differ[f"{name}/{role}"] = mismatches
    return {"formats": len(format_names()), "differ": differ}


# ------------------------------------------------------------------------------------------------ 2. training
def training_throughput(space: Any, data: Any, device: torch.device, seconds: float, warmup: int) -> dict[str, Any]:
    """Images per second of one-shot supernet training on ``device``, timed over ``seconds`` after ``warmup``
    steps; returns the trained supernet too (``supernet``), for the estimator steps."""
    from automq.oneshot.train import SupernetTrainer, deterministic, endless_batches, run_epoch, sandwich_step

    spec = space.training
    timer: dict[str, float] = {"steps": 0, "seconds": 0.0}
    with deterministic():  # as `automq train-supernet` runs
        trainer = SupernetTrainer(space, data, spec, seed=space.seed, device=device)
        rng, largest = np.random.default_rng(space.seed), space.largest()

        def step(images: torch.Tensor, labels: torch.Tensor) -> list[float]:
            sampled = [space.sample(rng) for _ in range(spec.num_random)]
            return sandwich_step(trainer.supernet, images, labels, [largest, *sampled])

        batches = endless_batches(trainer.data.train, spec.batch_size, space.seed)
        run_epoch(trainer.supernet, _timed(batches, seconds, warmup, device, timer), step, trainer.optimizer,
                  trainer.scheduler, epoch=0)
    images = timer["steps"] * min(spec.batch_size, len(trainer.data.train))
    return {"images_per_s": images / timer["seconds"] if timer["seconds"] else None, "timed_steps": timer["steps"],
            "timed_s": round(timer["seconds"], 2), "warmup_steps": warmup, "batch_size": spec.batch_size,
            "candidates_per_step": 1 + spec.num_random, "torch_threads": torch.get_num_threads(),
            "supernet": trainer.supernet}


def _timed(batches: Iterator[Any], seconds: float, warmup: int, device: torch.device,
           timer: dict[str, float]) -> Iterator[Any]:
    """``batches`` until ``seconds`` have passed after the first ``warmup`` steps; ``timer`` gets the steps done
    after the warm-up and their time (each step has finished when the next batch is asked for)."""
    start = None
    for step, batch in enumerate(batches):
        _synchronize(device)
        now = time.perf_counter()
        if step == warmup:
            start = now
        if start is not None:
            timer.update(steps=step - warmup, seconds=now - start)
            if now - start >= seconds and step > warmup:
                return
        yield batch


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------ 3. and 4. estimates
def estimates_per_minute(estimator: Any, space: Any, seconds: float) -> dict[str, Any]:
    """One-shot estimates per minute of seeded random candidates over ``seconds``, after one warm-up estimate."""
    rng = np.random.default_rng(1)
    estimator.estimate(space.sample(rng))
    count, start = 0, time.perf_counter()
    while count == 0 or time.perf_counter() - start < seconds:
        estimator.estimate(space.sample(rng))
        _synchronize(estimator.device)
        count += 1
    elapsed = time.perf_counter() - start
    return {"candidates_per_minute": 60 * count / elapsed, "candidates": count, "timed_s": round(elapsed, 2),
            "val_images": estimator.val_images, "calib_images": sum(len(labels) for _, labels in estimator.calib),
            "threads": estimator.threads}


def fixed_agreement(on_device: Any, on_cpu: Any, space: Any, count: int) -> list[dict[str, Any]]:
    """The same candidates estimated from the same weights on the device and the CPU: accuracies, their standard
    error, and the images whose classification differs (float32 on both; summation orders may differ)."""
    rng = np.random.default_rng(2)
    candidates = [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(count - 2))]
    rows = []
    for candidate in candidates:
        device_score, cpu_score = on_device.estimate(candidate), on_cpu.estimate(candidate)
        device_bits, cpu_bits = on_device.correctness(candidate).bools(), on_cpu.correctness(candidate).bools()
        se = max(device_score["accuracy_se"], cpu_score["accuracy_se"])
        difference = device_score["accuracy"] - cpu_score["accuracy"]
        rows.append({"candidate_id": candidate.id, "accuracy_device": device_score["accuracy"],
                     "accuracy_cpu": cpu_score["accuracy"], "accuracy_se": se, "difference": difference,
                     "loss_device": device_score["loss"], "loss_cpu": cpu_score["loss"],
                     "images_classified_differently": int((device_bits != cpu_bits).sum()),
                     "agree": abs(difference) <= se})
    return rows


# ------------------------------------------------------------------------------------------------ the run
def run_check(args: argparse.Namespace) -> dict[str, Any]:
    """Steps 0 to 4; the summary as one JSON-ready dict."""
    start = time.perf_counter()
    summary: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                               "machine": platform.platform()}
    summary["imports"] = import_package()
    from automq.device import resolve_device
    from automq.oneshot.evaluate import OneShotEstimator
    from automq.oneshot.train import load_space_data, load_supernet
    from automq.space.space import SearchSpace

    device, timing = resolve_device(args.device), Timing(args.quick)
    summary["device"] = str(device)
    summary["device_name"] = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    summary["formats"] = compare_formats(device)
    space = SearchSpace.from_file(args.space)
    data = load_space_data(space, root=args.data, train_subset=space.training.train_size)
    summary["space"] = space.name
    training = {}
    for name, where in (("device", device), ("cpu", torch.device("cpu"))):
        training[name] = training_throughput(space, data, where, timing.train_s[name], timing.train_warmup[name])
    supernet = training["device"].pop("supernet")
    training["cpu"].pop("supernet")
    if training["cpu"]["images_per_s"] and training["device"]["images_per_s"]:
        training["speedup"] = training["device"]["images_per_s"] / training["cpu"]["images_per_s"]
    summary["training"] = training
    if args.supernet:
        supernet = load_supernet(args.supernet, space, device=device)
    summary["supernet"] = args.supernet or "the supernet of step 2 (trained for the device's timed seconds)"
    on_device = OneShotEstimator(space, supernet, data, cache=False)
    on_cpu = OneShotEstimator(space, copy.deepcopy(supernet).cpu(), data, cache=False)
    summary["estimator"] = {"device": estimates_per_minute(on_device, space, timing.estimate_s["device"]),
                            "cpu": estimates_per_minute(on_cpu, space, timing.estimate_s["cpu"])}
    summary["agreement"] = fixed_agreement(on_device, on_cpu, space, timing.fixed_candidates)
    summary["ok"] = (not summary["imports"]["failed"] and not summary["formats"]["differ"]
                     and all(row["agree"] for row in summary["agreement"]))
    summary["wall_s"] = round(time.perf_counter() - start, 1)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="the Fashion-MNIST folder (default: the space's dataset.root)")
    parser.add_argument("--device", default="auto", help="auto (default), cuda, cuda:N or cpu")
    parser.add_argument("--space", default=str(DEFAULT_SPACE), help="space file (default: spaces/mbv2_fmnist.yaml)")
    parser.add_argument("--supernet", help="a trained supernet run folder for steps 3 and 4 (default: step 2's)")
    parser.add_argument("--quick", action="store_true", help="fractions of a second per timing (tests)")
    parser.add_argument("--out", help="also write the summary to this JSON file")
    args = parser.parse_args(argv)
    try:
        summary = run_check(args)
    except Exception:  # a crash on the GPU machine is a result too: report it in the same JSON form
        summary = {"ok": False, "error": traceback.format_exc()}
    text = json.dumps(summary, indent=2, default=str)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
