"""Which supernet training recipe makes the one-shot estimate rank candidates best (not a test).

Trains the fidelity study's supernet (``spaces/mbv2_fmnist.yaml``, 8 epochs on 20k images) once per recipe and
scores the study's candidates one-shot exactly as ``oneshot_fidelity.py`` does (BN recalibrated on the same 512
images, 5,000 validation images, 1 thread), then ranks those scores against the stand-alone accuracies of
finished fidelity studies. Each study fine-tuned its ground truth from its own supernet, so every recipe is judged
against ground truths that were not fine-tuned from its weights as well. Recipes are the space's training options
(which candidates each step trains) plus two prototypes that the product does not ship, patched in here:

- OFA kernel transformation matrices (Cai et al., ICLR 2020): a depthwise conv's 3x3 kernel is the centre of its
  5x5 kernel times a learned 9x9 matrix (identity at the start), instead of the bare centre;
- per-format BN affine parameters ("switchable" BN, Yu et al.; Jin et al., AdaBits): every BN keeps one gain and
  bias per weight format of the conv before it, so a format's scale shift is not averaged with the others';

and one ablation: without in-place distillation (every candidate fits the labels, as the largest does).

Results go to ``experiments/results/supernet_recipes.{json,md}``. Run folders under ``--work`` are reused (a
finished one is scored as it is, a stopped one resumes), so recipes can be trained by two processes at once
(``--train-only --recipes ...``) and scored by a last run.

    .venv/bin/python experiments/supernet_recipes.py --train-only --recipes random_4 format_bn
    .venv/bin/python experiments/supernet_recipes.py
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from automq.model import elastic, supernet as supernet_module
from automq.oneshot import train as train_module
from automq.space.candidate import Candidate
from automq.data import DataSplits
from automq.oneshot.evaluate import OneShotEstimator
from automq.io import atomic_write_json, atomic_write_text
from automq.space.space import SearchSpace
from automq.oneshot.train import SUPERNET, load_space_data, load_supernet, train_supernet, training_summary, training_text
from fidelity_stats import fmt_ci, load_study, rank_figures

RESULTS = Path(__file__).resolve().parent / "results"
STUDIES = [RESULTS / "oneshot_fidelity_medium_supernet8ep.json",
           RESULTS / "oneshot_fidelity_medium_supernet8ep_nosmallest.json",
           RESULTS / "oneshot_fidelity_long_supernet8ep_nosmallest.json",
           RESULTS / "oneshot_fidelity_medium_supernet8ep40k.json"]
DEFAULT = "default"
# key (run folder and --recipes name): what it trains each step, as the space's training options, and a prototype
RECIPES: dict[str, dict[str, Any]] = {
    "old_default": {"label": "largest + smallest + 2 random (the old default)",
                    "training": {"smallest": True, "num_random": 2}},
    "smallest_3": {"label": "largest + smallest + 3 random", "training": {"smallest": True, "num_random": 3}},
    DEFAULT: {"label": "largest + 3 random (the default)", "training": {"smallest": False, "num_random": 3}},
    "random_4": {"label": "largest + 4 random", "training": {"smallest": False, "num_random": 4}},
    "kernel_transforms": {"label": "default + OFA kernel transforms (prototype)",
                          "training": {"smallest": False, "num_random": 3}, "prototype": "kernel"},
    "format_bn": {"label": "default + per-format BN affine (prototype)",
                  "training": {"smallest": False, "num_random": 3}, "prototype": "format_bn"},
    "uniform_1": {"label": "largest + 2 random + 1 random architecture in one format throughout (LIMPQ's uniform "
                           "bit-widths)", "training": {"smallest": False, "num_random": 2, "uniform": 1}},
    "no_distill": {"label": "default without in-place distillation (every candidate learns from the labels)",
                   "training": {"smallest": False, "num_random": 3}, "prototype": "no_distill"},
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--space", default="spaces/mbv2_fmnist.yaml")
    parser.add_argument("--studies", nargs="+", type=Path, default=STUDIES,
                        help="finished fidelity studies of the space whose stand-alone scores are the ground truths")
    parser.add_argument("--work", type=Path, default=Path("runs/supernet_recipes"))
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--train-images", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--train-only", action="store_true", help="train the recipes' supernets, score nothing")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


# --- prototypes ----------------------------------------------------------------------------------------------------

def _kernel_weight_of(original: Any) -> Any:
    def weight_of(self: elastic.ElasticQuantConv2d, spec: Any) -> Tensor:
        weight = original(self, spec)
        transforms = getattr(self, "kernel_transforms", None)
        k = spec.kernel_size
        if transforms is None or str(k) not in transforms:
            return weight
        return (weight.reshape(weight.shape[0], k * k) @ transforms[str(k)]).reshape(weight.shape)
    return weight_of


def _add_kernel_transforms(supernet: supernet_module.Supernet) -> None:
    for layer in supernet.quant_layers().values():
        if isinstance(layer, nn.Conv2d) and layer.groups > 1 and layer.kernel_size[0] > 3:
            layer.kernel_transforms = nn.ParameterDict({"3": nn.Parameter(torch.eye(9))})


def _format_bn_affine(self: elastic.ElasticBatchNormAct2d) -> tuple[Tensor, Tensor]:
    if not hasattr(self, "conv_before"):
        return self.weight, self.bias
    fmt = self.conv_before[0].w_fmt
    return self.format_weight[fmt], self.format_bias[fmt]


def _add_format_bn(supernet: supernet_module.Supernet) -> None:
    pairs = [(supernet.conv_stem, supernet.bn1), (supernet.conv_head, supernet.bn2)]
    for block in supernet.modules():
        if isinstance(block, elastic.ElasticInvertedResidual):
            pairs += [(block.conv_pw, block.bn1), (block.conv_dw, block.bn2), (block.conv_pwl, block.bn3)]
        elif isinstance(block, elastic.ElasticDepthwiseSeparable):
            pairs += [(block.conv_dw, block.bn1), (block.conv_pw, block.bn2)]
    for conv, bn in pairs:
        if len(conv.w_quant.formats) > 1:
            bn.format_weight = nn.ParameterDict({f: nn.Parameter(torch.ones(bn.num_features))
                                                 for f in conv.w_quant.formats})
            bn.format_bias = nn.ParameterDict({f: nn.Parameter(torch.zeros(bn.num_features))
                                               for f in conv.w_quant.formats})
            object.__setattr__(bn, "conv_before", (conv,))  # a tuple, so not a registered submodule


def _labels_only_step(supernet: supernet_module.Supernet, images: Tensor, labels: Tensor,
                      candidates: Sequence[Any]) -> list[float]:
    """A training step in which every candidate fits the labels (no teacher): the ablation of in-place
    distillation."""
    losses = []
    for candidate in candidates:
        supernet.set_active(candidate)
        loss = F.cross_entropy(supernet(images), labels)
        loss.backward()
        losses.append(loss.item())
    return losses


@contextmanager
def prototype(name: str | None) -> Iterator[None]:
    """Patch the supernet classes (or, for ``no_distill``, the training step) with a prototype for the duration of
    the block (training and scoring)."""
    if name is None:
        yield
        return
    if name == "no_distill":
        original_step, train_module.sandwich_step = train_module.sandwich_step, _labels_only_step
        try:
            yield
        finally:
            train_module.sandwich_step = original_step
        return
    saved = [(supernet_module.Supernet, "__init__", supernet_module.Supernet.__init__)]
    add = {"kernel": _add_kernel_transforms, "format_bn": _add_format_bn}[name]
    original_init = supernet_module.Supernet.__init__

    def init(self: supernet_module.Supernet, space: SearchSpace) -> None:
        original_init(self, space)
        add(self)

    supernet_module.Supernet.__init__ = init
    if name == "kernel":
        saved.append((elastic.ElasticQuantConv2d, "weight_of", elastic.ElasticQuantConv2d.weight_of))
        elastic.ElasticQuantConv2d.weight_of = _kernel_weight_of(elastic.ElasticQuantConv2d.weight_of)
    else:
        saved.append((elastic.ElasticBatchNormAct2d, "gain_and_bias", elastic.ElasticBatchNormAct2d.gain_and_bias))
        elastic.ElasticBatchNormAct2d.gain_and_bias = _format_bn_affine
    try:
        yield
    finally:
        for cls, attr, value in saved:
            setattr(cls, attr, value)


# --- training and scoring ------------------------------------------------------------------------------------------

def recipe_space(space: SearchSpace, name: str) -> SearchSpace:
    return dataclasses.replace(space, training=dataclasses.replace(space.training, **RECIPES[name]["training"]))


def folder_of(args: argparse.Namespace, name: str) -> Path:
    return args.work / name


def train(args: argparse.Namespace, space: SearchSpace, name: str) -> None:
    folder = folder_of(args, name)
    if (folder / SUPERNET).exists():
        return
    print(f"[supernet_recipes] training {RECIPES[name]['label']} into {folder}", flush=True)
    with prototype(RECIPES[name].get("prototype")):
        train_supernet(recipe_space(space, name), folder, epochs=args.epochs, train_subset=args.train_images,
                       resume=(folder / "checkpoint.pt").exists(), progress=False)


def probes(space: SearchSpace) -> dict[str, Candidate]:
    """Corners and edges of the space: the largest architecture with one kind of decision at its minimum, and the
    smallest one, in int8 and in the fewest-bit formats. A supernet that serves only the candidates it trains every
    step scores the mixed ones below both corners."""
    def largest_but(kind: str | None = None) -> Candidate:
        return space.build(lambda name, k, choices: min(choices) if k == kind else max(choices))

    archs = {"largest arch": largest_but(), "largest arch with 3x3 kernels": largest_but("kernel_size"),
             "largest arch with expansion 3": largest_but("expand_ratio"), "smallest arch": space.smallest()}
    found = {f"{label}, int8": space.uniform("int8", "int8", arch, clamp=True) for label, arch in archs.items()}
    found |= {f"{label}, int2/int4": space.uniform("int2", "int4", archs[label], clamp=True)
              for label in ("largest arch", "smallest arch")}
    return found


def score(args: argparse.Namespace, space: SearchSpace, data: DataSplits, name: str,
          candidates: list[Candidate]) -> list[float]:
    """One-shot accuracy of each candidate with the fidelity study's estimator settings."""
    with prototype(RECIPES[name].get("prototype")):
        supernet = load_supernet(folder_of(args, name), recipe_space(space, name))
        estimator = OneShotEstimator(space, supernet, data, calib_images=512, val_images=5000, threads=args.threads,
                                     finetune_images=0)
        return [estimator.estimate(c)["accuracy"] for c in candidates]


def evaluate(args: argparse.Namespace, space: SearchSpace, start: float) -> dict[str, Any]:
    studies = {path.name: load_study(path) for path in args.studies}
    first = next(iter(studies.values()))["candidates"]
    ids = [r["id"] for r in first]
    for path, study in studies.items():
        if [r["id"] for r in study["candidates"]] != ids:
            raise SystemExit(f"{path}: scores other candidates than {args.studies[0]}; give studies of one sample")
    candidates = [Candidate.from_dict(r["candidate"]) for r in first]
    random_only = [i for i, r in enumerate(first) if r["label"] == "random"]
    probe = probes(space)
    data = load_space_data(space, train_subset=args.train_images)
    scores, probe_scores = {}, {}
    for name in args.recipes:
        values = score(args, space, data, name, [*candidates, *probe.values()])
        scores[name], probe_scores[name] = values[: len(candidates)], dict(zip(probe, values[len(candidates):]))
    baseline = scores.get(DEFAULT)
    rows = []
    for name, values in scores.items():
        figures = {}
        for study_name, study in studies.items():
            truth = [r["standalone_accuracy"] for r in study["candidates"]]
            figures[study_name] = {
                "all": rank_figures(values, truth, baseline),
                "random_only": rank_figures(*([v[i] for i in random_only] for v in (values, truth)),
                                            None if baseline is None else [baseline[i] for i in random_only])}
        rows.append({"recipe": name, **RECIPES[name], "supernet": training_summary(folder_of(args, name)),
                     "figures": figures, "probes": probe_scores[name],
                     "random_mean": sum(values[i] for i in random_only) / len(random_only)})
        print(f"{RECIPES[name]['label']}: "
              + ", ".join(f"{s}: tau {f['all']['kendall_tau']:.3f}" for s, f in figures.items()),
              flush=True)
    return {"command": shlex.join([sys.executable, *sys.argv]), "space": args.space, "epochs": args.epochs,
            "train_images": args.train_images, "threads": args.threads, "load_end": os.getloadavg()[0],
            "wall_s": time.perf_counter() - start, "studies": [str(p) for p in args.studies], "ids": ids,
            "recipes": rows, "scores": scores}


def markdown(result: dict[str, Any]) -> str:
    studies = [Path(p).name for p in result["studies"]]
    lines = ["# Supernet training recipes: one-shot ranking against stand-alone ground truths", "",
             f"`{result['command']}`", "",
             f"- space `{result['space']}`; every supernet {result['epochs']} epochs on {result['train_images']} "
             f"train images (run folders under `runs/supernet_recipes`); one-shot = the fidelity study's estimator "
             f"(BN recalibrated on 512 train images, 5,000 val images, {result['threads']} thread)",
             f"- scoring wall time {result['wall_s'] / 60:.1f} min (training not included: see each supernet)",
             "- ground truths (each fine-tuned 2 epochs from its own study's supernet): "
             + "; ".join(f"GT{i} = `{s}`" for i, s in enumerate(studies, 1)),
             f"- gain: Kendall tau minus that of `{RECIPES[DEFAULT]['label']}` on the same bootstrap resample "
             "(paired, 2000 resamples)",
             "", "| recipe | " + " | ".join(f"tau all [95% CI] / gain vs default, GT{i}" for i in range(1, len(studies) + 1))
             + " | mean tau all | " + " | ".join(f"tau random only, GT{i}" for i in range(1, len(studies) + 1)) + " |",
             "|---|" + "---:|" * (2 * len(studies) + 1)]
    for row in result["recipes"]:
        cells = []
        for s in studies:
            f = row["figures"][s]["all"]
            gain = f.get("tau_gain_ci95")
            cells.append(fmt_ci(f, "kendall_tau") + ("" if gain is None else
                         f" / {f['tau_gain_over_baseline']:+.3f} [{gain[0]:+.2f}, {gain[1]:+.2f}]"))
        cells.append(f"{np.mean([row['figures'][s]['all']['kendall_tau'] for s in studies]):.3f}")
        cells += [fmt_ci(row["figures"][s]["random_only"], "kendall_tau") for s in studies]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    lines += ["", "Supernets:", ""] + [f"- {row['label']}: {training_text(row['supernet'])}" for row in result["recipes"]]
    lines += ["", "A gain whose interval holds 0 is not measurable with these 24 candidates.", "",
              "## One-shot accuracy of corners and edges of the space", "",
              "The mean over the study's 20 random samples, and probes: the largest architecture with one kind of "
              "decision at its minimum, and the smallest, each in uniform formats (clamped to each layer's menu).", "",
              "| recipe | random samples (mean) | " + " | ".join(result["recipes"][0]["probes"]) + " |",
              "|---|---:|" + "---:|" * len(result["recipes"][0]["probes"])]
    lines += [f"| {row['label']} | {row['random_mean']:.4f} | " + " | ".join(f"{v:.4f}" for v in row["probes"].values())
              + " |" for row in result["recipes"]]
    lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    space = SearchSpace.from_file(args.space)
    for name in args.recipes:
        train(args, space, name)
    if args.train_only:
        return
    result = evaluate(args, space, start)
    atomic_write_json(args.out / "supernet_recipes.json", result)
    atomic_write_text(args.out / "supernet_recipes.md", markdown(result))


if __name__ == "__main__":
    main()
