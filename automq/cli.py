"""The ``automq`` command line.

Each subcommand is a small function that parses nothing itself: ``argparse`` hands it the namespace, and it
calls the library. Heavy modules (torch, ray) are imported inside the commands so ``automq --help`` is instant.
User errors (:class:`automq.errors.AutomqError`) print one clear message and exit with status 2.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import yaml

from automq.errors import AutomqError, RayClusterError

if TYPE_CHECKING:
    from automq.space.candidate import Candidate
    from automq.space.space import SearchSpace

Command = Callable[[argparse.Namespace], int | None]
SEARCH_SHORTCUTS = ("sampler", "workers", "address", "gpus_per_trial")  # `search --workers ...`: tune / evolution


class _OptionLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that also reads ``3e7`` and ``1.5e-3`` as floats.

    PyYAML follows YAML 1.1, whose floats need a dot and a signed exponent, so ``levels=[3e7,6e7]`` would reach
    the strategy as strings; YAML 1.2 (and Python) read them as numbers, which is what a user typing a budget
    means. Quoting (``'3e7'``) still gives a string.
    """


_OptionLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _cmd_formats(args: argparse.Namespace) -> None:
    from automq.numerics.formats import format_table

    rows = format_table()
    header = ("name", "family", "bits", "bits/elem", "max", "min>0", "note")
    table = [header] + [
        (
            r["name"],
            r["family"],
            str(r["bits"]),
            f"{r['bits_per_element']:g}",
            f"{r['max']:g}",
            f"{r['min_positive']:g}",
            r.get("note", ""),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])


def _read_space(path: str) -> SearchSpace:
    """A user's space file, validated in full: its structure, then whether any candidate meets its budgets."""
    from automq.cost import check_budgets
    from automq.space.space import SearchSpace

    space = SearchSpace.from_file(path)
    check_budgets(space)
    return space


def _cmd_space_validate(args: argparse.Namespace) -> None:
    space = _read_space(args.file)
    print(f"{args.file}: valid search space '{space.name}'")


def _cmd_space_info(args: argparse.Namespace) -> None:
    from automq.cost import cost_range

    space = _read_space(args.file)
    count = space.count()
    print(f"space:       {space.name} ({args.file})")
    print(f"dataset:     {space.dataset.name}, {space.dataset.input_size}x{space.dataset.input_size}")
    print(f"candidates:  {count} (log10 = {math.log10(count):.2f})")
    print(f"decisions:   {len(space.decisions())}")
    print("objectives:  " + ", ".join(f"{o.metric} ({o.mode})" for o in space.objectives))
    if space.budgets:
        print("budgets:     " + ", ".join(f"{k} <= {v:g}" for k, v in space.budgets.items()))
    print("cost range (smallest .. largest candidate):")
    for metric, (low, high) in cost_range(space).items():
        print(f"  {metric:<15} {low:>14.6g} .. {high:<14.6g}")


def _device(args: argparse.Namespace) -> Any:
    """The torch device of ``--device``, resolved before any work so a missing GPU is the first thing reported."""
    from automq.device import resolve_device

    return resolve_device(args.device)


def _cmd_train(args: argparse.Namespace) -> None:
    device = _device(args)
    space = _read_space(args.space)
    init = None
    if args.init_float is not None:
        from automq.oneshot.train import load_float_network

        init = load_float_network(args.init_float, space)
    options = dict(epochs=args.epochs, resume=args.resume, train_subset=args.subset, data_root=args.data,
                   seed=args.seed, device=device, lr=args.lr, init=init)
    if args.workers is None:  # one process, no Ray
        from automq.oneshot.train import train_supernet

        if args.address is not None:
            raise RayClusterError("--address joins a Ray cluster for --workers N; give --workers too")

        path = train_supernet(space, args.out, **options)
    else:
        from automq.oneshot.distributed import train_supernet_on_workers

        path = train_supernet_on_workers(space, args.out, workers=args.workers, address=args.address, **options)
    print(f"supernet written to {path}")


def _cmd_train_float(args: argparse.Namespace) -> None:
    from automq.oneshot.evaluate import train_float

    device = _device(args)
    path = train_float(_read_space(args.space), args.out, epochs=args.epochs, train_subset=args.subset,
                       data_root=args.data, seed=args.seed, device=device)
    print(f"float network written to {path}")


def _load_candidate(text: str, space: SearchSpace) -> Candidate:
    """A candidate from ``largest``/``smallest``, a JSON file, inline JSON, or ``SEARCH_DIR:TRIAL_NUMBER``."""
    from pathlib import Path

    from automq.errors import CandidateError
    from automq.search.results import load_trials
    from automq.space.candidate import Candidate

    if text in ("largest", "smallest"):
        return getattr(space, text)()
    if text.lstrip().startswith("{"):  # inline JSON; checked before any path, as a long one is no valid file name
        return Candidate.from_json(text)
    directory, _, number = text.rpartition(":")
    if directory and number.isdigit() and Path(directory).is_dir():
        matches = [t.candidate for t in load_trials(directory) if t.number == int(number)]
        if not matches:
            raise CandidateError(f"{directory}: no trial number {number} in its trials.jsonl")
        return matches[0]
    if not Path(text).is_file():
        raise CandidateError(f"candidate {text!r}: no such file; give largest, smallest, a candidate JSON file, "
                             "inline JSON, or SEARCH_DIR:N for trial N of a search folder")
    return Candidate.from_json(Path(text).read_text())


def _cmd_estimate(args: argparse.Namespace) -> None:
    import json

    from automq.oneshot.evaluate import OneShotEstimator

    if args.finetune_images is not None and args.finetune_images < 0:
        raise AutomqError(f"--finetune-images must be at least 0 (0: one-shot only), got {args.finetune_images}")
    estimator = OneShotEstimator.from_run(args.supernet, data_root=args.data, finetune_images=args.finetune_images,
                                          device=_device(args))
    for text in args.candidate:
        candidate = _load_candidate(text, estimator.space)
        print(json.dumps({"candidate_id": candidate.id, **estimator.estimate(candidate)}), flush=True)


def _cmd_export(args: argparse.Namespace) -> None:
    from automq.model.supernet import recalibrate_bn, save_model
    from automq.oneshot.train import load_space_data, load_supernet
    from automq.space.space import SearchSpace

    if args.measure and not args.onnx:
        raise AutomqError("--measure times the ONNX model: give --onnx PATH too")
    device = _device(args)
    space = SearchSpace.from_file(f"{args.supernet}/space.yaml")
    candidate = _load_candidate(args.candidate, space)
    space.validate_candidate(candidate)
    supernet = load_supernet(args.supernet, space, device=device)
    model = supernet.extract(candidate)
    if args.calib_images:
        from automq.data import fixed_batches

        data = load_space_data(space, root=args.data)
        recalibrate_bn(model, fixed_batches(data.train, args.calib_images, 128, device=device))
    model.cpu()  # the exported model is a CPU artefact, whatever device recalibrated it
    save_model(args.out, model.eval(), candidate, space)
    print(f"timm model of candidate {candidate.id} written to {args.out}")
    if args.onnx:
        _export_onnx(args, space, model, candidate)


def _export_onnx(args: argparse.Namespace, space: SearchSpace, model: Any, candidate: Candidate) -> None:
    """Write the ONNX model of ``export --onnx`` once ONNX Runtime matches PyTorch on the test split."""
    from automq.data import make_loader
    from automq.model.onnx_export import OPSET, export_onnx
    from automq.oneshot.train import load_space_data

    data = load_space_data(space, root=args.data, with_test=True)
    split, images = ("test", data.test) if data.test is not None else ("validation", data.val)
    check = export_onnx(model, candidate, args.onnx, make_loader(images, 256, shuffle=False))
    print(f"ONNX model (opset {OPSET}, QuantizeLinear/DequantizeLinear) written to {args.onnx}; on the "
          f"{check.images} {split} images ONNX Runtime top-1 {check.onnx_accuracy:.2%}, PyTorch "
          f"{check.torch_accuracy:.2%}, same class on {check.top1_agreement:.2%}, logits of the graph as written "
          f"within float32 rounding on {check.within_tolerance:.2%}")
    integer, convs = check.integer_convs
    if check.integer_top1_agreement is not None:
        print(f"every conv runs in float: with integer convs the top-1 class agreed on only "
              f"{check.integer_top1_agreement:.2%} of the images (their requantization rounds on its own)")
    else:
        print(f"{integer} of {convs} convs run on ONNX Runtime's integer kernels (int8 layers that feed another int8 "
              "layer directly); the others dequantize and run in float")
    if check.simulated_formats:
        print(f"simulated in ONNX (float values on the format's grid, no integer kernels): "
              f"{', '.join(check.simulated_formats)}")
    if args.measure:
        from automq.latency import Timing, measure_onnx

        timing = Timing(threads=args.threads)
        print(f"end-to-end latency in ONNX Runtime ({timing.threads} thread(s), batch 1, median of {timing.runs} "
              f"runs after {timing.warmup}): {measure_onnx(args.onnx, timing):.3f} ms")


def _cmd_latency_table(args: argparse.Namespace) -> None:
    from automq.latency import Timing, write_latency_table

    timing = Timing(threads=args.threads, warmup=args.warmup, runs=args.runs)  # checked before the space is read
    space = _read_space(args.space)
    table = write_latency_table(space, args.out, timing)
    print(f"latency table of {table['_configurations']} layer configurations ({table['_measured']} measured, "
          f"{table['_wall_time_s']} s) written to {args.out}; set latency_table: {args.out} in the space file to "
          "search with the latency metric")


def parse_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` of ``--option`` as ``(KEY, value)``, the value read as YAML: ``steps=200`` gives an int,
    ``levels=[3e7,6e7]`` a list of floats, ``sampler=tpe`` a string, ``metric=null`` None."""
    key, equals, value = text.partition("=")
    key = key.strip()
    if not equals or not key.isidentifier():
        raise AutomqError(f"--option {text!r}: expected KEY=VALUE, KEY a keyword argument of the strategy "
                          "(e.g. --option steps=200)")
    try:
        return key, yaml.load(value, Loader=_OptionLoader)  # safe: _OptionLoader is a SafeLoader
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise AutomqError(f"--option {key}: {value!r} is not a YAML value ({problem}); quote it to pass a "
                          "string") from None


def _search_options(args: argparse.Namespace) -> dict[str, Any]:
    """The strategy's keyword arguments: each ``--option``, and the shortcuts (``--workers``, ...) that were given.

    Options a strategy does not take are reported by :func:`automq.search.driver.run_search`, which creates it.
    """
    from automq.search.strategy import strategy_names, strategy_options

    shortcuts = {name: getattr(args, name) for name in SEARCH_SHORTCUTS if getattr(args, name) is not None}
    try:
        taken = strategy_options(args.strategy)
    except KeyError as exc:
        raise AutomqError(exc.args[0]) from None
    refused = sorted(shortcuts.keys() - taken)
    if refused:
        owners = [name for name in strategy_names() if refused[0] in strategy_options(name)]
        elsewhere = f" but of {', '.join(owners)} (--strategy {owners[0]})" if owners else ""
        raise AutomqError(f"--{refused[0].replace('_', '-')} is not an option of the '{args.strategy}' strategy"
                          f"{elsewhere}; give {args.strategy}'s options with --option KEY=VALUE")
    options: dict[str, Any] = {}
    for key, value in [*map(parse_option, args.options or ()), *shortcuts.items()]:
        if key in options:
            raise AutomqError(f"--option {key}: the strategy option '{key}' is given twice; give it once")
        options[key] = value
    return options


def _cmd_search(args: argparse.Namespace) -> None:
    from automq.search.driver import run_search

    device = _device(args)
    log = run_search(args.space, out=args.out, supernet=args.supernet, strategy=args.strategy, trials=args.trials,
                     seed=args.seed, resume=args.resume, options=_search_options(args), data_root=args.data,
                     device=device)
    print(f"{len(log.trials)} trials in {args.out}/trials.jsonl; Pareto set in {args.out}/pareto.json")


def _cmd_demo(args: argparse.Namespace) -> None:
    """Train the supernet (or resume it), search with the evolution strategy (Ray Tune), add the uniform baselines,
    measure the front and the baselines on the test split, report. Evolution is the default search: it never did worse
    than tune NSGA-II with as many evaluations, and with 1,000 it beat it at 2 of 8 budgets on one of two supernets
    (``experiments/results/bench_search_quality_default_{16ep,8ep_refined}.md``, head to head)."""
    from pathlib import Path

    from automq.oneshot.train import train_supernet
    from automq.report.final import measure_final
    from automq.report.report import build_report
    from automq.search.driver import run_search

    space = _read_space(args.space)
    out = Path(args.out)
    supernet = out / "supernet"
    if not (supernet / "supernet.pt").is_file():
        print(f"[1/4] training the one-shot supernet into {supernet}")
        train_supernet(space, supernet, resume=(supernet / "checkpoint.pt").is_file(), data_root=args.data)
    searches = [("evolution", {"workers": args.workers}), ("uniform", {})]
    for step, (strategy, options) in enumerate(searches, start=2):
        folder = out / f"search-{strategy}"
        print(f"[{step}/4] {strategy} search into {folder}")
        run_search(space, out=folder, supernet=supernet, strategy=strategy, options=options, data_root=args.data,
                   trials=args.trials if strategy != "uniform" else None, resume=(folder / "trials.jsonl").exists())
    folders = [out / f"search-{name}" for name, _ in searches]
    print(f"[4/4] final measurement on the test split and report into {out / 'report'}")
    final = measure_final(folders, supernet, out / "report", data_root=args.data)
    _print_final(final)
    build_report(folders, out / "report")
    print(f"done: open {out / 'report' / 'report.html'}")


def _cmd_report(args: argparse.Namespace) -> None:
    from automq.report.report import build_report

    summary = build_report(args.search_dirs, args.out, fidelity=args.fidelity)
    for note in summary.get("notes", []):
        print(f"note: {note}")
    print(f"report written to {args.out}/report.html (and report.md, trials.csv, pareto.csv)")


def _print_final(final: dict[str, Any]) -> None:
    """One line per search: at how many uniform budgets it beats every uniform format there on the test split (after
    the measurement's notes)."""
    for note in final["notes"]:
        print(f"note: {note}")
    for run, counts in final["summary"].items():
        print(f"{run}: beats every uniform format at or below the budget at {counts['win']} of {counts['budgets']} "
              f"budgets on "
              f"{final['test_images']} test images (ties {counts['tie']}, losses {counts['loss']})")


def _cmd_final(args: argparse.Namespace) -> None:
    from automq.report.final import CALIB_BLOCKS, FINAL_FILE, FineTune, measure_final
    from automq.report.report import build_report

    if args.finetune_images < 0:
        raise AutomqError(f"--finetune-images must be at least 0 (0: no fine-tuning), got {args.finetune_images}")
    if not args.finetune_images and (args.finetune_epochs, args.finetune_lr) != (None, None):
        raise AutomqError("--finetune-epochs and --finetune-lr set a fine-tune: give its images with "
                          "--finetune-images N too")
    epochs = 1 if args.finetune_epochs is None else args.finetune_epochs
    finetune = FineTune(args.finetune_images, epochs, lr=args.finetune_lr) if args.finetune_images else None
    final = measure_final(args.search_dirs, args.supernet, args.out, data_root=args.data,
                          test_images=args.test_images, calib_images=args.calib_images,
                          calib_blocks=CALIB_BLOCKS if args.calib_blocks is None else args.calib_blocks,
                          finetune=finetune)
    _print_final(final)
    build_report(args.search_dirs, args.out)
    print(f"final measurement written to {args.out}/{FINAL_FILE}; report in {args.out}/report.html")


def _add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", metavar="DEVICE",
                        help="auto (default: the GPU when there is one), cpu, cuda or cuda:N; formats compute in "
                             "float32 on every device")


def _add_training_options(parser: argparse.ArgumentParser, out_help: str) -> None:
    """The space, output folder and recipe overrides that both training commands take."""
    parser.add_argument("space", help="search-space file (spaces/*.yaml)")
    parser.add_argument("--out", required=True, help=out_help)
    parser.add_argument("--epochs", type=int, help="override the space's training.epochs")
    parser.add_argument("--subset", type=int, help="train on this many (class-balanced) training images")
    parser.add_argument("--data", help="dataset folder (overrides dataset.root)")
    parser.add_argument("--seed", type=int, help="override the space's seed")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for tests and for the README's CLI reference)."""
    parser = argparse.ArgumentParser(
        prog="automq",
        description="Joint architecture and per-layer numeric-format search for vision models.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    formats = sub.add_parser("formats", help="list the numeric formats with bits, range and cost")
    formats.set_defaults(func=_cmd_formats)

    space = sub.add_parser("space", help="check or describe a search-space file")
    space_sub = space.add_subparsers(dest="space_command", required=True, metavar="ACTION")
    validate = space_sub.add_parser("validate", help="parse and validate a space file")
    validate.add_argument("file")
    validate.set_defaults(func=_cmd_space_validate)
    info = space_sub.add_parser("info", help="number of candidates and the cost range of a space")
    info.add_argument("file")
    info.set_defaults(func=_cmd_space_info)

    train = sub.add_parser("train-supernet", help="one-shot quantization-aware training of the supernet")
    _add_training_options(train, "run folder: checkpoints, metrics.jsonl, supernet.pt")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--lr", type=float, help="override the space's training.lr")
    train.add_argument("--init-float", metavar="FLOAT_RUN", help="start from the float network of the space's "
                       "largest architecture that `automq train-float` wrote (its folder or float.pt) instead of a "
                       "random initialisation; pair it with a fine-tuning --lr such as 0.01")
    train.add_argument("--workers", type=int, help="data-parallel Ray Train workers (default: one process, "
                       "no Ray); each trains its shard of every batch, the gradients are averaged")
    train.add_argument("--address", help="with --workers: Ray cluster to join: auto, HOST:PORT or ray://HOST:PORT "
                       "(default: a private local Ray)")
    _add_device_option(train)
    train.set_defaults(func=_cmd_train)

    float_net = sub.add_parser("train-float", help="train the space's largest architecture in float, the start of "
                               "train-supernet --init-float")
    _add_training_options(float_net, "folder for float.pt, float.json and a copy of the space")
    _add_device_option(float_net)
    float_net.set_defaults(func=_cmd_train_float)

    candidate_help = ("largest, smallest, a candidate JSON file, inline JSON, or SEARCH_DIR:N for trial N of a "
                      "search")
    estimate = sub.add_parser("estimate", help="one-shot accuracy and costs of candidates")
    estimate.add_argument("supernet", help="a train-supernet run folder")
    estimate.add_argument("candidate", nargs="+", help=candidate_help)
    estimate.add_argument("--data", help="dataset folder (overrides dataset.root)")
    estimate.add_argument("--finetune-images", type=int, metavar="N",
                          help="fine-tune each candidate from the supernet's weights on N training images (one "
                               "epoch) before scoring it: accuracy is then the fine-tuned one, oneshot_accuracy the "
                               "plain estimate (default: the space's search.finetune_images)")
    _add_device_option(estimate)
    estimate.set_defaults(func=_cmd_estimate)

    export = sub.add_parser("export", help="export a candidate as a standalone timm model file")
    export.add_argument("supernet", help="a train-supernet run folder")
    export.add_argument("candidate", help=candidate_help)
    export.add_argument("--out", required=True, help="model file to write (.pt, loads with weights_only=True)")
    export.add_argument("--calib-images", type=int, default=512,
                        help="recalibrate BN on this many training images (0: keep the supernet's statistics)")
    export.add_argument("--data", help="dataset folder (overrides dataset.root)")
    export.add_argument("--onnx", metavar="PATH",
                        help="also write an ONNX model with QuantizeLinear/DequantizeLinear, checked against "
                             "PyTorch with ONNX Runtime on the test split")
    export.add_argument("--measure", action="store_true",
                        help="with --onnx: also time the ONNX model end to end in ONNX Runtime (batch 1)")
    export.add_argument("--threads", type=int, default=1, help="with --measure: ONNX Runtime intra-op threads")
    _add_device_option(export)
    export.set_defaults(func=_cmd_export)

    latency = sub.add_parser("latency-table", help="measure every layer configuration of a space in ONNX Runtime "
                                                   "on this machine (the latency metric's table)")
    latency.add_argument("space", help="search-space file (spaces/*.yaml)")
    latency.add_argument("--out", required=True, help="latency table to write (JSON)")
    latency.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    latency.add_argument("--warmup", type=int, default=20, help="runs discarded before timing (default 20)")
    latency.add_argument("--runs", type=int, default=100, help="timed runs; the median is kept (default 100)")
    latency.set_defaults(func=_cmd_latency_table)

    search = sub.add_parser("search", help="search a space with a strategy over the one-shot supernet")
    search.add_argument("space", help="search-space file (spaces/*.yaml)")
    search.add_argument("--supernet", required=True, help="a train-supernet run folder")
    search.add_argument("--strategy", default="evolution",
                        help="registered strategy name (default: evolution, the evolutionary search around the front; "
                             "tune for Optuna's samplers)")
    search.add_argument("--option", dest="options", action="append", metavar="KEY=VALUE",
                        help="a keyword argument of the strategy's constructor, VALUE read as YAML "
                             "(e.g. steps=200, levels=[3e7,6e7]); repeat for several")
    search.add_argument("--sampler", choices=["nsga2", "nsga3", "tpe", "gp", "random"],
                        help="tune only: the Optuna sampler (default: nsga2)")
    search.add_argument("--trials", type=int, help="number of trials (default: the space's search.trials)")
    search.add_argument("--workers", type=int, help="tune and evolution: parallel Ray workers (0: in-process, no Ray)")
    search.add_argument("--address", help="tune and evolution: Ray cluster to join: auto, HOST:PORT or ray://HOST:PORT")
    search.add_argument("--gpus-per-trial", type=float, metavar="FRACTION",
                        help="tune only: GPUs each Ray Tune trial asks for (0.25: four estimators share "
                             "one GPU; default 0: CPU trials)")
    search.add_argument("--seed", type=int, help="override the space's seed")
    search.add_argument("--resume", action="store_true", help="continue the search in --out")
    search.add_argument("--data", help="dataset folder (overrides dataset.root)")
    search.add_argument("--out", required=True, help="search folder: trials.jsonl, pareto.json, run.json")
    _add_device_option(search)
    search.set_defaults(func=_cmd_search)

    demo = sub.add_parser("demo", help="train, search and report on a space end to end (what make demo runs)")
    demo.add_argument("space", nargs="?", default="spaces/mbv2_fmnist.yaml")
    demo.add_argument("--out", default="runs/demo", help="folder for the supernet, searches and report")
    demo.add_argument("--trials", type=int, help="trials of the evolution search (default: the space's search.trials)")
    demo.add_argument("--workers", type=int, help="parallel Ray workers (default: the evolution strategy's)")
    demo.add_argument("--data", help="dataset folder (overrides dataset.root)")
    demo.set_defaults(func=_cmd_demo)

    report = sub.add_parser("report", help="Pareto report (HTML, Markdown, CSV) of one or more search folders")
    report.add_argument("search_dirs", nargs="+", metavar="SEARCH_DIR")
    report.add_argument("--out", required=True, help="report folder")
    report.add_argument("--fidelity", help="fidelity JSON (one-shot vs stand-alone accuracy) to include")
    report.set_defaults(func=_cmd_report)

    final = sub.add_parser("final", help="measure the searches' fronts and the uniform baselines on the test "
                                         "split, paired by budget, and write the report with them")
    final.add_argument("search_dirs", nargs="+", metavar="SEARCH_DIR",
                       help="search folders; at least one holds uniform-precision trials (--strategy uniform)")
    final.add_argument("--supernet", required=True, help="the train-supernet run folder the searches scored with")
    final.add_argument("--out", required=True, help="report folder: final.json, then the report that shows it")
    final.add_argument("--test-images", type=int, metavar="N", help="score on the first N test images (default: all)")
    final.add_argument("--data", help="dataset folder (overrides dataset.root)")
    final.add_argument("--calib-images", type=int, metavar="N",
                       help="recalibrate every candidate's batch norms on blocks of N training images (default 512, "
                            "as automq export; fewer where the training split is too small); more images, less noise "
                            "(experiments/calibration_noise.py)")
    final.add_argument("--calib-blocks", type=int, metavar="K",
                       help="deploy every candidate K times, each on another block of training images after those "
                            "the searches calibrated on, and average: the standard errors count the calibration too "
                            "(default 4; each block costs one deployment of every candidate)")
    final.add_argument("--finetune-images", type=int, default=0, metavar="N",
                       help="fine-tune every measured candidate alike (QAT in its formats, the space's optimiser) on "
                            "the first N training images before scoring it (default 0: no fine-tuning); a stopped "
                            "measurement continues where it stopped")
    final.add_argument("--finetune-epochs", type=int, metavar="E", help="epochs of that fine-tune (default 1)")
    final.add_argument("--finetune-lr", type=float, metavar="LR",
                       help="its peak learning rate, decayed by a cosine without warm-up (default: the space's "
                            "training.lr)")
    final.set_defaults(func=_cmd_final)
    return parser


class _StderrHandler(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is when a record is emitted (it may be replaced later)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def show_info_logs() -> None:
    """Print the INFO records of automq's loggers on stderr: what a measurement and each solve cost (LIMPQ's
    indicator training, CLADO's loss evaluations, every ILP/IQP's solve time), which a user of a sweep wants to
    see as it runs. Idempotent; other libraries' loggers are left as they are."""
    logger = logging.getLogger("automq")
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``automq`` console command."""
    args = build_parser().parse_args(argv)
    show_info_logs()
    try:
        return int(args.func(args) or 0)
    except AutomqError as exc:
        print(f"automq: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("automq: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
