"""The final measurement: the searches' winners and the uniform references scored once more, on the test split.

A search ranks candidates by the one-shot estimate on validation images, and picking the best of many noisy
estimates flatters the winner. :func:`measure_final` therefore measures, on the dataset's own *test* split (never
seen by training, search or refinement), the Pareto-optimal candidates of each search (accuracy against ``bitops``)
and every trial of the uniform-precision searches (``--strategy uniform``), each after the deployment recipe a user
applies (:data:`RECIPE`: extract the candidate from the supernet as a stand-alone model, recalibrate its batch norms
on training images; optionally, :class:`FineTune`, a short quantization-aware fine-tune of every measured candidate
alike, searched and uniform, on training images with the space's recipe).

Which training images recalibrate the batch norms moves a deployed candidate's test accuracy by an SD of 0.08-0.24
points over blocks of 512 images (``experiments/results/calibration_noise_16ep.md``), and the searches' estimator
calibrates on the first ``search.calib_size`` training images, so a search also selects candidates whose
calibration there happens to suit them. Each candidate is therefore deployed once per calibration block
(:data:`CALIB_BLOCKS` disjoint blocks of :data:`DEPLOY_CALIB_IMAGES` training images, all after the images any of
the searches calibrated on) and its test accuracy is the mean over the blocks; the standard errors count both the
test images and the blocks (:func:`~automq.oneshot.paired.crossed_mean`), so a win is a property of the candidate,
not of its calibration.

For each uniform budget (the BitOps of a uniform format, :func:`~automq.report.comparison.uniform_budgets`) and each
search, the candidate compared is chosen *before* the test split is read: the search's most accurate candidate at or
below the budget by its validation accuracy. It is compared with *every* uniform format at or below the budget, each
scored on the same test images under the same calibration blocks, so each difference gets a paired standard error
(:func:`~automq.oneshot.paired.block_difference`). A user's question is "does it beat every uniform format I could
ship at this budget?", and validation cannot pick the best of near-equal uniform formats reliably (at one budget of the
16-epoch benchmark it picked one that tests 0.27 ± 0.13 points below another, ``calibrated_choice_16ep.md``), so a
search *wins* a budget only when it leads each of them by more than :data:`MARGIN_SE` paired standard errors with a
95% interval (Student's t with the error's degrees of freedom, which few blocks make small) above zero (an
intersection-union test: a false win is no more likely than in one comparison, so no multiplicity correction is due).
It *loses* when some uniform format there leads it by that much (a union of tests: among several near-equal uniform
formats a false loss is likelier than in one comparison, an error against the search, never for it), and *ties*
otherwise; the comparison reported is the binding one (:func:`binding`). The results go to ``final.json`` (:data:`FINAL_FILE`), which the
report shows beside the search-time estimates. Each candidate's per-image outcomes are appended to
``final_scores.jsonl`` (:data:`SCORES_FILE`) as soon as it is measured, keyed by the supernet, the recipe, the images
and automq's code, so a measurement that was stopped (fine-tuning makes it minutes per candidate) continues where it
stopped and no score outlives what it was measured with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from scipy.stats import t as student_t
from torch.utils.data import Dataset

import automq

from automq.data import DataSplits, fixed_batches, head
from automq.errors import DataError
from automq.io import append_jsonl, atomic_write_json, read_jsonl
from automq.model.supernet import Supernet, recalibrate_bn
from automq.oneshot.evaluate import CALIBRATION_THREADS, score_model, torch_threads
from automq.oneshot.paired import BlockCorrectness, Correctness, Difference, as_blocks, block_difference
from automq.oneshot.train import (EVAL_BATCH_SIZE, SUPERNET, deterministic, load_space_data, load_supernet,
                                  train_model)
from automq.report.comparison import (Baseline, RunAnalysis, analyse_runs, find_baselines, front_2d,
                                      uniform_budgets)
from automq.search.results import SPACE_FILE, load_search_dir, read_run
from automq.search.trial import Trial
from automq.space.candidate import Candidate
from automq.space.space import SearchSpace, TrainingSpec

__all__ = ["CALIB_BLOCKS", "DEPLOY_CALIB_IMAGES", "FINAL_FILE", "MARGIN_SE", "RECIPE", "SCORES_FILE", "Z95",
           "FineTune", "Pairing", "binding", "calibration_batches", "calibration_skip", "ceiling", "compare", "deploy",
           "interval_quantile", "load_final", "measure_final", "measured_outcomes", "pairings", "summarise", "verdict",
           "within_budget"]

FINAL_FILE = "final.json"
SCORES_FILE = "final_scores.jsonl"
MARGIN_SE = 2.0
"""Paired standard errors by which a searched candidate must lead (or trail) the uniform reference to win (lose)."""
Z95 = 1.959963984540054
"""The two-sided 95% quantile of the normal distribution (``scipy.stats.norm.ppf(0.975)``)."""
DEPLOY_CALIB_IMAGES = 512
DEPLOY_CALIB_BATCH = 128
"""BN recalibration of a deployed candidate: 512 training images in batches of 128, as ``automq export``."""
CALIB_BLOCKS = 4
"""Calibration blocks per candidate: four halve the calibration's share of the error at four times the cost of one."""
RECIPE = ("Supernet.extract(candidate) as a stand-alone timm model with its own quantizers, batch norms recalibrated "
          "on {calibration} (batches of {batch}); {finetune}; scored on the first {test} images of the dataset's "
          "test split")
BLOCKS = ("each of {blocks} disjoint blocks of {size} training images (images {first} to {last}, after the first "
          "{skip} that the searches' estimates calibrated on), the accuracy averaged over the blocks")
BLOCK = "training images {first} to {last}"
NO_FINETUNE = "no fine-tuning"
COST = "bitops"


# ------------------------------------------------------------------------------------------------ statistics
def interval_quantile(df: float) -> float:
    """The two-sided 95% quantile of Student's t with ``df`` degrees of freedom (:data:`Z95` for infinitely many)."""
    return Z95 if math.isinf(df) else float(student_t.ppf(0.975, df))


def verdict(difference: Difference, margin_se: float = MARGIN_SE) -> str:
    """``"win"`` when the difference exceeds ``margin_se`` paired standard errors and its 95% interval lies above
    zero, ``"loss"`` when it is below minus that, else ``"tie"`` (a zero difference with a zero error, two
    identical candidates, is a tie). With an error of many degrees of freedom the interval is the weaker condition;
    with few (few calibration blocks carrying it) it is the stronger one."""
    threshold = _threshold(difference, margin_se)
    if difference.value > threshold:
        return "win"
    if difference.value < -threshold:
        return "loss"
    return "tie"


def _threshold(difference: Difference, margin_se: float) -> float:
    """How far the difference must lie from zero to decide: ``margin_se`` errors or the 95% interval's half-width."""
    return max(margin_se, interval_quantile(difference.df)) * difference.se


VERDICT_RANK = {"loss": 0, "tie": 1, "win": 2}


def binding(differences: Sequence[Difference], margin_se: float = MARGIN_SE) -> int:
    """The index of the comparison that decides a budget among a candidate's ``differences`` from each uniform
    format there: the worst verdict (a loss before a tie before a win) and, among equal verdicts, the lead that falls
    furthest short of (or passes least beyond) its win threshold. Its verdict is the budget's: a win only when every
    comparison is one, a loss when any is."""
    if not differences:
        raise ValueError("a budget needs at least one comparison to decide it")
    return min(range(len(differences)), key=lambda i: (VERDICT_RANK[verdict(differences[i], margin_se)],
                                                       differences[i].value - _threshold(differences[i], margin_se)))


def budget_verdict(differences: Sequence[Difference], margin_se: float = MARGIN_SE) -> str:
    """A budget's verdict from a candidate's ``differences`` from each uniform format there: the :func:`binding`
    comparison's (``"win"`` only when every comparison is one, ``"loss"`` when any is)."""
    return verdict(differences[binding(differences, margin_se)], margin_se)


def compare(searched: BlockCorrectness | Correctness, reference: BlockCorrectness | Correctness,
            margin_se: float = MARGIN_SE) -> dict[str, Any]:
    """``accuracy(searched) - accuracy(reference)`` on the same images under the same calibration blocks: value,
    paired SE and its degrees of freedom, 95% interval, verdict, and the difference under each block."""
    difference = block_difference(searched, reference)
    half = interval_quantile(difference.df) * difference.se
    by_block = [a - b for a, b in zip(as_blocks(searched).accuracies, as_blocks(reference).accuracies)]
    return {"difference": difference.value, "se": difference.se,
            "df": None if math.isinf(difference.df) else difference.df,
            "ci95": [difference.value - half, difference.value + half], "verdict": verdict(difference, margin_se),
            "difference_blocks": by_block}


# ------------------------------------------------------------------------------------------------ what to compare
@dataclass(frozen=True)
class Pairing:
    """One budget of one search: its candidate chosen by validation accuracy, and every uniform format there."""

    run: str
    budget: float
    budget_label: str
    searched: Trial | None  # None: the search found no candidate at or below the budget
    references: tuple[Baseline, ...]  # the most accurate by validation accuracy first


def pairings(runs: Sequence[RunAnalysis], baselines: Sequence[Baseline]) -> list[Pairing]:
    """For every non-uniform run and every uniform budget, the run's most accurate candidate (by validation accuracy)
    at or below the budget and every uniform baseline at or below it (each candidate once, the most accurate by
    validation accuracy first, the cheaper first among equals); budgets in increasing cost."""
    found = []
    for budget, label in sorted(uniform_budgets(baselines, COST)):
        references = tuple(_by_accuracy({b.trial.candidate.id: b for b in reversed(baselines)
                                         if within_budget(b.trial, budget)}.values(), key=lambda b: b.trial))
        for run in runs:
            if not run.is_uniform:
                front = front_2d(run.result.trials, COST)
                searched = next(iter(_by_accuracy([t for t in front if within_budget(t, budget)], key=lambda t: t)),
                                None)
                found.append(Pairing(run.label, budget, label, searched, references))
    return found


def within_budget(trial: Trial, budget: float) -> bool:
    """Whether ``trial`` costs no more than ``budget`` BitOps (up to float rounding of the budget itself)."""
    return trial.metrics[COST] <= budget * (1 + 1e-9)


def _by_accuracy(items: Iterable[Any], *, key: Any) -> list[Any]:
    """The items by their trial's validation accuracy, highest first, the cheaper first among equals."""
    return sorted(items, key=lambda item: (-key(item).metrics["accuracy"], key(item).metrics[COST]))


# ------------------------------------------------------------------------------------------------ measuring
@dataclass(frozen=True)
class FineTune:
    """A short quantization-aware fine-tune of each deployed candidate: ``epochs`` over the first ``images``
    training images with the space's optimiser (SGD, its momentum, weight decay and batch size) at ``lr`` (default:
    the space's), a cosine schedule without warm-up (the weights are trained already), shuffled by ``seed``. Every
    candidate measured, searched or uniform, gets the same one, so a comparison stays paired; it shows whether a
    win survives the training a user would give the model before shipping it."""

    images: int
    epochs: int = 1
    seed: int = 0
    lr: float | None = None

    def __post_init__(self) -> None:
        if self.images < 1 or self.epochs < 1 or (self.lr is not None and not self.lr > 0):
            raise DataError(f"a fine-tune needs at least one image, one epoch and a learning rate above 0, got "
                            f"--finetune-images {self.images}, --finetune-epochs {self.epochs}, --finetune-lr "
                            f"{self.lr} (--finetune-images 0, the default, measures without one)")

    def spec(self, space: SearchSpace) -> TrainingSpec:
        """The training recipe of the fine-tune: the space's, with these epochs and learning rate, no warm-up."""
        return dataclasses.replace(space.training, epochs=self.epochs, warmup_epochs=0,
                                   lr=space.training.lr if self.lr is None else self.lr)

    def describe(self, space: SearchSpace) -> str:
        spec = self.spec(space)
        return (f"then fine-tuned in its formats for {self.epochs} epoch(s) on the first {self.images} training "
                f"images (SGD lr {spec.lr:g}, momentum {spec.momentum:g}, weight decay {spec.weight_decay:g}, batch "
                f"{spec.batch_size}, cosine schedule without warm-up, seed {self.seed}, {CALIBRATION_THREADS} torch "
                "thread)")


def deploy(supernet: Supernet, candidate: Candidate, calibration: Sequence[Any], *,
           finetune: FineTune | None = None, space: SearchSpace | None = None, train: Dataset | None = None) -> Any:
    """The deployed model of ``candidate``: extracted from ``supernet``, its batch norms recalibrated on
    ``calibration`` batches and, with ``finetune``, fine-tuned on ``train`` (the training images, on the supernet's
    device) with ``space``'s recipe. Everything runs on :data:`CALIBRATION_THREADS` threads so the result does not
    depend on the caller's thread count, and the caller's random state is left as it was."""
    with deterministic(), torch_threads(CALIBRATION_THREADS), torch.random.fork_rng(devices=[]):
        model = supernet.extract(candidate)
        recalibrate_bn(model, calibration)
        if finetune is not None:
            if space is None or train is None:
                raise ValueError("a fine-tuned deployment needs the space (its recipe) and the training images")
            torch.manual_seed(finetune.seed)
            train_model(model, head(train, finetune.images), finetune.spec(space), seed=finetune.seed)
    return model.eval()


def measure_final(search_dirs: Sequence[str | Path], supernet_dir: str | Path, out_dir: str | Path, *,
                  data_root: str | Path | None = None, test_images: int | None = None,
                  calib_images: int | None = None, calib_blocks: int = CALIB_BLOCKS,
                  margin_se: float = MARGIN_SE, finetune: FineTune | None = None) -> dict[str, Any]:
    """Measure the fronts of ``search_dirs`` and their uniform baselines on the test split, compare them budget by
    budget, write ``out_dir/final.json`` atomically and return its content.

    ``supernet_dir`` is the training run the searches scored with; ``test_images`` limits the test images (default:
    all); every candidate is deployed ``calib_blocks`` times, recalibrated on another block of ``calib_images``
    training images each time (default: :data:`DEPLOY_CALIB_IMAGES`, fewer where the training split is too small
    for that, with a note; :func:`calibration_skip` says where the blocks begin); ``finetune`` fine-tunes every
    candidate before it is scored. Candidates already in ``out_dir/final_scores.jsonl`` under the same supernet,
    recipe, images and code are not measured again (per block: more blocks later reuse the earlier ones). Raises
    :class:`~automq.errors.DataError` when the dataset has no test split, the training split is too small for the
    blocks or no search has a uniform baseline to compare with."""
    start = time.time()
    notes: list[str] = []
    runs = analyse_runs([load_search_dir(d) for d in search_dirs], notes)
    # references come from uniform searches only: a search that happens to pick one format everywhere competes
    baselines = [b for b in find_baselines([r for r in runs if r.is_uniform]) if COST in b.trial.metrics]
    if not baselines:
        raise DataError(f"no uniform-precision search with {COST} among {', '.join(map(str, search_dirs))}: run "
                        "`automq search --strategy uniform` with the same supernet and pass its folder too")
    chosen = pairings(runs, baselines)
    measured = _measured_trials(runs, baselines)
    # each distinct candidate once (searches often find the same one)
    candidates = {t.candidate.id: t.candidate for _, t in measured}
    space = SearchSpace.from_file(Path(supernet_dir) / SPACE_FILE)
    data = load_space_data(space, root=data_root, with_test=True)
    test = _test_batches(data, test_images)
    test_count = sum(len(labels) for _, labels in test)
    if calib_blocks > 1 and test_count < 2:
        raise DataError(f"a standard error over calibration blocks needs at least 2 test images, got {test_count}: "
                        "give --test-images 2 or more, or --calib-blocks 1")
    skip = calibration_skip(search_dirs, space)
    calib_images = _block_size(len(data.train), skip, calib_blocks, calib_images, notes)
    blocks = _calibration_blocks(data.train, skip, calib_images, calib_blocks)
    supernet = load_supernet(supernet_dir, space)
    if finetune and finetune.images > len(data.train):
        raise DataError(f"--finetune-images {finetune.images} is out of range: the training split holds "
                        f"{len(data.train)} images")
    tuned = finetune.describe(space) if finetune else NO_FINETUNE
    recipe = _recipe(BLOCKS.format(blocks=calib_blocks, size=calib_images, first=skip,
                                   last=skip + calib_blocks * calib_images - 1, skip=skip), test_count, tuned)
    tuning = fixed_batches(data.train, finetune.images, EVAL_BATCH_SIZE) if finetune else []
    scores = Path(out_dir) / SCORES_FILE
    # one key per block: a measurement with more blocks reuses the outcomes of the blocks it shares with an earlier one
    keys = [_scores_key(supernet_dir, _recipe(BLOCK.format(first=first, last=first + calib_images - 1), test_count,
                                              tuned), [*test, *calibration, *tuning]) for first, calibration in blocks]
    stored = [_stored_scores(scores, key, test_count) for key in keys]
    reused = sum(cid in block for cid in candidates for block in stored)
    if reused:
        notes.append(f"{reused} of {len(candidates) * len(stored)} deployments (candidates x calibration blocks) were "
                     f"measured before with this code, supernet, data and recipe: their outcomes are taken from "
                     f"{scores}")
    for cid, candidate in candidates.items():
        for key, block, (_, calibration) in zip(keys, stored, blocks):
            if cid not in block:
                begun = time.perf_counter()
                model = deploy(supernet, candidate, calibration, finetune=finetune, space=space, train=data.train)
                outcome = score_model(model, test).correctness
                block[cid] = (outcome, time.perf_counter() - begun)
                append_jsonl(scores, {**key, "candidate_id": cid, "images": outcome.images,
                                      "bits": outcome.bits.hex(), "wall_s": block[cid][1]})
    correct = {cid: BlockCorrectness(tuple(block[cid][0] for block in stored)) for cid in candidates}
    seconds = [block[cid][1] for cid in candidates for block in stored]
    result = {
        "recipe": recipe, "finetune": dataclasses.asdict(finetune) if finetune else None, "scores_keys": keys,
        "calibration": {"images": calib_images, "blocks": calib_blocks, "first": skip, "batch": DEPLOY_CALIB_BATCH},
        "supernet": str(supernet_dir), "searches": {run.label: str(run.result.path) for run in runs},
        "test_images": test_count,
        "margin_se": margin_se, "notes": notes,
        "candidates": [_candidate_record(t, run, correct[t.candidate.id]) for run, t in measured],
        "comparisons": [_comparison_record(p, correct, margin_se) for p in chosen],
        "ceiling": ceiling(measured, baselines, correct, margin_se),
        "wall_s": time.time() - start,
        # what measuring every candidate took, over all the runs that measured them (None: a record lacks its time)
        "measure_s": None if None in seconds else sum(seconds), "candidates_measured": len(candidates),
    }
    result["summary"] = summarise(result["comparisons"])
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(out_dir) / FINAL_FILE, result)
    return result


def _recipe(calibration: str, test_images: int, finetune: str) -> str:
    return RECIPE.format(calibration=calibration, batch=DEPLOY_CALIB_BATCH, test=test_images, finetune=finetune)


def calibration_skip(search_dirs: Sequence[str | Path], space: SearchSpace) -> int:
    """How many of the first training images the searches' estimates recalibrated batch norms on: the largest
    ``search.calib_size`` times its calibration blocks of ``space`` (the supernet's) and of each search folder (its
    own space file, with the blocks its refinement averaged over where more: a search resumed with another space file
    keeps its first one). The final measurement's calibration blocks begin after them, so that no search selected on
    the calibration it is judged with. A search folder's damaged space file is an error, not a note: without it the
    blocks could overlap that search's calibration."""
    skips = [space.search.calib_size * space.search.calib_blocks]
    for folder in map(Path, search_dirs):
        own = SearchSpace.from_file(folder / SPACE_FILE) if (folder / SPACE_FILE).is_file() else space
        refined = read_run(folder).get("refine", {}).get("calib_blocks", 1)
        skips.append(own.search.calib_size * max(own.search.calib_blocks, refined))
    return max(skips)


def _block_size(train_images: int, skip: int, blocks: int, asked: int | None, notes: list[str]) -> int:
    """The calibration images per block: ``asked``, else :data:`DEPLOY_CALIB_IMAGES` or, on a training split too
    small for that many blocks of it after the searches' images, as many as fit (said in ``notes``)."""
    if asked is not None:
        return asked
    fits = (train_images - skip) // max(blocks, 1)
    if fits < 1 <= blocks:
        raise DataError(f"the training split holds {train_images} images, {skip} of them the searches' calibration: "
                        f"too few for {blocks} calibration blocks after them; give fewer --calib-blocks")
    if 1 <= fits < DEPLOY_CALIB_IMAGES:
        notes.append(f"the training split holds {train_images} images, {skip} of them the searches' calibration: "
                     f"each of the {blocks} calibration blocks has {fits} images instead of {DEPLOY_CALIB_IMAGES}")
        return fits
    return DEPLOY_CALIB_IMAGES


def _calibration_blocks(train: Dataset, skip: int, images: int, blocks: int) -> list[tuple[int, list[Any]]]:
    """``blocks`` disjoint runs of ``images`` consecutive training images after the first ``skip`` (the split is a
    seeded permutation, so each is a random sample), each with its first image's index, in calibration batches."""
    if images < 1 or blocks < 1:
        raise DataError(f"--calib-images and --calib-blocks must be at least 1, got {images} and {blocks}")
    if skip + images * blocks > len(train):
        raise DataError(f"--calib-blocks {blocks} of --calib-images {images} need {images * blocks} training images "
                        f"after the first {skip} the searches calibrated on, but the training split holds "
                        f"{len(train)}: give fewer or smaller blocks")
    firsts = [skip + block * images for block in range(blocks)]
    return [(first, calibration_batches(train, first, images)) for first in firsts]


def calibration_batches(train: Dataset, first: int, images: int) -> list[Any]:
    """Training images ``first`` to ``first + images - 1`` in the deployment's calibration batches."""
    return fixed_batches(train, first + images, DEPLOY_CALIB_BATCH, start=first)


def ceiling(measured: Sequence[tuple[str, Trial]], baselines: Sequence[Baseline],
            correct: Mapping[str, BlockCorrectness | Correctness], margin_se: float = MARGIN_SE) -> dict[str, Any]:
    """The most accurate of the ``measured`` (run label, trial) pairs on the test split against the most accurate
    uniform baseline there, paired. Both are picked by their test accuracy, so this is an optimistic bound on what
    any budget could gain over uniform precision: where even it ties, no measured candidate wins a budget whose
    best uniform format is about as accurate."""
    run, best = max(measured, key=lambda pair: correct[pair[1].candidate.id].accuracy)
    uniform = max(baselines, key=lambda b: correct[b.trial.candidate.id].accuracy)
    best_score, uniform_score = correct[best.candidate.id], correct[uniform.trial.candidate.id]
    return {"run": run, "trial": best.number, "candidate_id": best.candidate.id, COST: best.metrics[COST],
            "test_accuracy": best_score.accuracy, "uniform": uniform.name, "uniform_run": uniform.run,
            "uniform_trial": uniform.trial.number, f"uniform_{COST}": uniform.trial.metrics[COST],
            "uniform_test_accuracy": uniform_score.accuracy, **compare(best_score, uniform_score, margin_se)}


def measured_outcomes(out_dir: str | Path, final: Mapping[str, Any]) -> dict[str, BlockCorrectness]:
    """The per-image test outcomes behind ``final`` (the ``final.json`` of ``out_dir``) under each calibration block,
    by candidate id: what a paired comparison of two searches' candidates needs. Raises
    :class:`~automq.errors.DataError` when the stored outcomes lack a candidate of ``final`` (the scores file is
    gone, or the supernet changed since)."""
    path = Path(out_dir) / SCORES_FILE
    keys = final.get("scores_keys") or ([final["scores_key"]] if "scores_key" in final else [])
    if not keys:
        raise DataError(f"{Path(out_dir) / FINAL_FILE} records no scores key: run the final measurement again")
    # a final.json written before the calibration blocks has one key: one block
    stored = [_stored_scores(path, key, final["test_images"]) for key in keys]
    wanted = {c["candidate_id"] for c in final["candidates"]}
    missing = sorted(wanted - set.intersection(*(set(block) for block in stored)))
    if missing:
        raise DataError(f"{path} lacks the outcomes of {len(missing)} candidates of {Path(out_dir) / FINAL_FILE} "
                        f"(e.g. {missing[0]}): run the final measurement again")
    return {cid: BlockCorrectness(tuple(block[cid][0] for block in stored)) for cid in wanted}


def _scores_key(supernet_dir: str | Path, recipe: str, batches: Sequence[Any]) -> dict[str, str]:
    """What a stored score is valid for: the supernet's weights, the deployment recipe, the images and labels it
    read (``batches``) and the code of automq that computed it, so no edit of any of them reuses a stale score."""
    return {"supernet": _file_digest(Path(supernet_dir) / SUPERNET), "recipe": recipe,
            "data": _tensors_digest(batches), "code": _code_digest()}


def _file_digest(path: Path) -> str:
    """SHA-256 of a file: which trained supernet a stored score came from (its path may be reused)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tensors_digest(batches: Sequence[Any]) -> str:
    digest = hashlib.sha256()
    for images, labels in batches:
        digest.update(images.detach().cpu().contiguous().numpy().tobytes())
        digest.update(labels.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _code_digest() -> str:
    """SHA-256 of the source files of the automq package (what deploys and scores a candidate), in a fixed order."""
    digest = hashlib.sha256()
    root = Path(automq.__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _outcome(record: Any, images: int) -> tuple[Correctness, float | None] | None:
    """A stored record's outcomes on ``images`` test images and its seconds, or None for a damaged record."""
    if not isinstance(record, dict):
        return None
    bits, count, seconds = record.get("bits"), record.get("images"), record.get("wall_s")
    if not isinstance(bits, str) or count != images or not (seconds is None or isinstance(seconds, (int, float))):
        return None
    try:
        packed = bytes.fromhex(bits)
    except ValueError:
        return None
    return (Correctness(packed, images), seconds) if len(packed) == -(-images // 8) else None


def _stored_scores(path: Path, key: Mapping[str, str],
                   images: int) -> dict[str, tuple[Correctness, float | None]]:
    """The per-image outcomes already measured under ``key`` on ``images`` test images, by candidate id, with the
    seconds each took (None where the record lacks them); a damaged record is skipped (measured again)."""
    stored = {}
    for record in read_jsonl(path):
        if isinstance(record, dict) and all(record.get(k) == v for k, v in key.items()):
            outcome = _outcome(record, images)
            if outcome is not None and isinstance(record.get("candidate_id"), str):
                stored[record["candidate_id"]] = outcome
    return stored


def _test_batches(data: DataSplits, images: int | None) -> list[Any]:
    if data.test is None or len(data.test) == 0:
        raise DataError(f"dataset {data.name!r} has no test split to measure on: give an ImageFolder ROOT/test "
                        "folder, or use a dataset with its own test set")
    if images is not None and not 1 <= images <= len(data.test):
        raise DataError(f"--test-images {images} is out of range: the test split holds {len(data.test)} images")
    return fixed_batches(data.test, images or len(data.test), EVAL_BATCH_SIZE)


def _measured_trials(runs: Sequence[RunAnalysis], baselines: Sequence[Baseline]) -> list[tuple[str, Trial]]:
    """The (run label, trial) pairs measured: each non-uniform run's front, then every uniform baseline."""
    fronts = [(run.label, t) for run in runs if not run.is_uniform for t in front_2d(run.result.trials, COST)]
    return fronts + [(b.run, b.trial) for b in baselines]


def _candidate_record(trial: Trial, run: str, correct: BlockCorrectness) -> dict[str, Any]:
    return {"run": run, "trial": trial.number, "candidate_id": trial.candidate.id, COST: trial.metrics[COST],
            "val_accuracy": trial.metrics["accuracy"], "search_accuracy": _search_accuracy(trial),
            "test_accuracy": correct.accuracy, "test_se": correct.se, "test_accuracy_blocks": correct.accuracies}


def _search_accuracy(trial: Trial) -> float:
    """The accuracy the search saw (before the refinement re-scored it on the whole validation split)."""
    return trial.metrics.get("accuracy_search", trial.metrics["accuracy"])


def _comparison_record(pairing: Pairing, correct: Mapping[str, BlockCorrectness],
                       margin_se: float) -> dict[str, Any]:
    """One budget of one search: its candidate against every uniform format there (``references``), the binding
    comparison's fields at the top (for a budget without a candidate, the uniform format most accurate on test)."""
    references = [_reference_record(b, correct) for b in pairing.references]
    record: dict[str, Any] = {"run": pairing.run, "budget": pairing.budget, "budget_label": pairing.budget_label,
                              "validation_uniform": pairing.references[0].name}
    searched = pairing.searched
    if searched is None:
        top = max(references, key=lambda r: r["uniform_test_accuracy"])
        return {**record, **top, "searched_trial": None, "verdict": "none", "references": references}
    score = correct[searched.candidate.id]
    against = [correct[b.trial.candidate.id] for b in pairing.references]
    for reference, uniform in zip(references, against):
        reference.update(compare(score, uniform, margin_se))
    decisive = binding([block_difference(score, uniform) for uniform in against], margin_se)
    return {**record, "searched_trial": searched.number, "searched_id": searched.candidate.id,
            "searched_bitops": searched.metrics[COST], "searched_test_accuracy": score.accuracy,
            "searched_val_accuracy": searched.metrics["accuracy"],
            "searched_search_accuracy": _search_accuracy(searched), **references[decisive],
            "references": references}


def _reference_record(baseline: Baseline, correct: Mapping[str, BlockCorrectness]) -> dict[str, Any]:
    trial = baseline.trial
    return {"uniform": baseline.name, "uniform_trial": trial.number, "uniform_run": baseline.run,
            "uniform_bitops": trial.metrics[COST], "uniform_test_accuracy": correct[trial.candidate.id].accuracy,
            "uniform_val_accuracy": trial.metrics["accuracy"]}


def summarise(comparisons: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, int]]:
    """Per run, how many budgets it won, tied and lost (and where it had no candidate)."""
    summary: dict[str, dict[str, int]] = {}
    for c in comparisons:
        counts = summary.setdefault(c["run"], {"win": 0, "tie": 0, "loss": 0, "none": 0, "budgets": 0})
        counts[c["verdict"]] += 1
        counts["budgets"] += 1
    return summary


def load_final(folder: str | Path, notes: list[str]) -> dict[str, Any] | None:
    """The ``final.json`` of a report folder, or ``None`` when there is none; an unreadable one becomes a note."""
    path = Path(folder) / FINAL_FILE
    try:
        final = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        notes.append(f"{path}: not readable as JSON ({exc}); the final measurement is not shown")
        return None
    if not isinstance(final, dict) or not isinstance(final.get("comparisons"), list):
        notes.append(f"{path}: no \"comparisons\" list; the final measurement is not shown")
        return None
    return final
