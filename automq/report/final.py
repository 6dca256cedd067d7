"""The final measurement: the searches' winners and the uniform references scored once more, on the test split.

A search ranks candidates by the one-shot estimate on validation images, and picking the best of many noisy
estimates flatters the winner. :func:`measure_final` therefore measures, on the dataset's own *test* split (never
seen by training, search or refinement), the Pareto-optimal candidates of each search (accuracy against ``bitops``)
and every trial of the uniform-precision searches (``--strategy uniform``), each after the deployment recipe a user
applies (:data:`RECIPE`: extract the candidate from the supernet as a stand-alone model, recalibrate its batch norms
on training images, as ``automq export`` does; optionally, :class:`FineTune`, a short quantization-aware fine-tune
of every measured candidate alike, searched and uniform, on training images with the space's recipe).

For each uniform budget (the BitOps of a uniform format, :func:`~automq.report.comparison.uniform_budgets`) and each
search, the candidate compared is chosen *before* the test split is read: the search's most accurate candidate at or
below the budget by its validation accuracy, against the most accurate uniform baseline at or below it (also by
validation accuracy). Both are scored on the same test images, so their difference gets a paired standard error
(:func:`~automq.oneshot.paired.paired_difference`); a search *wins* a budget only when it leads by more than
:data:`MARGIN_SE` paired standard errors, *loses* when it trails by that much, and *ties* otherwise. The 95% interval
is the difference ± :data:`Z95` standard errors. The results go to ``final.json`` (:data:`FINAL_FILE`), which the
report shows beside the search-time estimates. Each candidate's per-image outcomes are appended to
``final_scores.jsonl`` (:data:`SCORES_FILE`) as soon as it is measured, keyed by the supernet, the recipe, the images
and automq's code, so a measurement that was stopped (fine-tuning makes it minutes per candidate) continues where it
stopped and no score outlives what it was measured with.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

import automq

from automq.data import DataSplits, fixed_batches, head
from automq.errors import DataError
from automq.io import append_jsonl, atomic_write_json, read_jsonl
from automq.model.supernet import Supernet, recalibrate_bn
from automq.oneshot.evaluate import CALIBRATION_THREADS, score_model, torch_threads
from automq.oneshot.paired import Correctness, Difference, paired_difference
from automq.oneshot.train import (EVAL_BATCH_SIZE, SUPERNET, deterministic, load_space_data, load_supernet,
                                  train_model)
from automq.report.comparison import (Baseline, RunAnalysis, analyse_runs, find_baselines, front_2d,
                                      uniform_budgets)
from automq.search.results import SPACE_FILE, load_search_dir
from automq.search.trial import Trial
from automq.space.candidate import Candidate
from automq.space.space import SearchSpace, TrainingSpec

__all__ = ["FINAL_FILE", "MARGIN_SE", "RECIPE", "SCORES_FILE", "Z95", "FineTune", "Pairing", "ceiling", "compare",
           "deploy", "load_final", "measure_final", "measured_outcomes", "pairings", "summarise", "verdict"]

FINAL_FILE = "final.json"
SCORES_FILE = "final_scores.jsonl"
MARGIN_SE = 2.0
"""Paired standard errors by which a searched candidate must lead (or trail) the uniform reference to win (lose)."""
Z95 = 1.959963984540054
"""The two-sided 95% quantile of the normal distribution (``scipy.stats.norm.ppf(0.975)``)."""
DEPLOY_CALIB_IMAGES = 512
DEPLOY_CALIB_BATCH = 128
"""BN recalibration of a deployed candidate: the first 512 training images in batches of 128, as ``automq export``."""
RECIPE = ("Supernet.extract(candidate) as a stand-alone timm model with its own quantizers, batch norms recalibrated "
          "on the first {calib} training images (batches of {batch}), as `automq export` does; {finetune}; "
          "scored on the first {test} images of the dataset's test split")
NO_FINETUNE = "no fine-tuning"
COST = "bitops"


# ------------------------------------------------------------------------------------------------ statistics
def verdict(difference: Difference, margin_se: float = MARGIN_SE) -> str:
    """``"win"`` when the difference exceeds ``margin_se`` paired standard errors, ``"loss"`` when it is below
    minus that, else ``"tie"`` (a zero difference with a zero error, two identical candidates, is a tie)."""
    if difference.value > margin_se * difference.se:
        return "win"
    if difference.value < -margin_se * difference.se:
        return "loss"
    return "tie"


def compare(searched: Correctness, reference: Correctness, margin_se: float = MARGIN_SE) -> dict[str, Any]:
    """``accuracy(searched) - accuracy(reference)`` on the same images: value, paired SE, 95% interval, verdict."""
    difference = paired_difference(searched, reference)
    half = Z95 * difference.se
    return {"difference": difference.value, "se": difference.se,
            "ci95": [difference.value - half, difference.value + half], "verdict": verdict(difference, margin_se)}


# ------------------------------------------------------------------------------------------------ what to compare
@dataclass(frozen=True)
class Pairing:
    """One budget of one search: its candidate chosen by validation accuracy, and the uniform reference there."""

    run: str
    budget: float
    budget_label: str
    searched: Trial | None  # None: the search found no candidate at or below the budget
    reference: Baseline


def pairings(runs: Sequence[RunAnalysis], baselines: Sequence[Baseline]) -> list[Pairing]:
    """For every non-uniform run and every uniform budget, the run's most accurate candidate (by validation accuracy)
    at or below the budget and the most accurate uniform baseline at or below it; budgets in increasing cost."""
    found = []
    for budget, label in sorted(uniform_budgets(baselines, COST)):
        reference = _most_accurate([b for b in baselines if _within(b.trial, budget)], key=lambda b: b.trial)
        for run in runs:
            if not run.is_uniform:
                front = front_2d(run.result.trials, COST)
                searched = _most_accurate([t for t in front if _within(t, budget)], key=lambda t: t)
                found.append(Pairing(run.label, budget, label, searched, reference))
    return found


def _within(trial: Trial, budget: float) -> bool:
    return trial.metrics[COST] <= budget * (1 + 1e-9)


def _most_accurate(items: Sequence[Any], *, key: Any) -> Any:
    """The item whose trial has the highest validation accuracy (the cheapest on a tie), or None."""
    return max(items, key=lambda item: (key(item).metrics["accuracy"], -key(item).metrics[COST]), default=None)


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
                  calib_images: int = DEPLOY_CALIB_IMAGES, margin_se: float = MARGIN_SE,
                  finetune: FineTune | None = None) -> dict[str, Any]:
    """Measure the fronts of ``search_dirs`` and their uniform baselines on the test split, compare them budget by
    budget, write ``out_dir/final.json`` atomically and return its content.

    ``supernet_dir`` is the training run the searches scored with; ``test_images`` limits the test images (default:
    all); ``finetune`` fine-tunes every candidate before it is scored. Candidates already in
    ``out_dir/final_scores.jsonl`` under the same supernet, recipe, images and code are not measured again. Raises
    :class:`~automq.errors.DataError` when the dataset has no test split or no search has a uniform baseline to
    compare with."""
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
    calibration = fixed_batches(data.train, calib_images, DEPLOY_CALIB_BATCH)
    supernet = load_supernet(supernet_dir, space)
    if finetune and finetune.images > len(data.train):
        raise DataError(f"--finetune-images {finetune.images} is out of range: the training split holds "
                        f"{len(data.train)} images")
    test_count = sum(len(labels) for _, labels in test)
    recipe = RECIPE.format(calib=min(calib_images, len(data.train)), batch=DEPLOY_CALIB_BATCH, test=test_count,
                           finetune=finetune.describe(space) if finetune else NO_FINETUNE)
    scores = Path(out_dir) / SCORES_FILE
    key = _scores_key(supernet_dir, recipe, [*test, *calibration, *fixed_batches(data.train, finetune.images,
                                                                                  EVAL_BATCH_SIZE)]
                      if finetune else [*test, *calibration])
    stored = _stored_scores(scores, key, test_count)
    reused = len(stored.keys() & candidates.keys())
    if reused:
        notes.append(f"{reused} of {len(candidates)} candidates were measured before with this code, supernet, data "
                     f"and recipe: their outcomes are taken from {scores}")
    for cid, candidate in candidates.items():
        if cid not in stored:
            begun = time.perf_counter()
            model = deploy(supernet, candidate, calibration, finetune=finetune, space=space, train=data.train)
            outcome = score_model(model, test).correctness
            stored[cid] = (outcome, time.perf_counter() - begun)
            append_jsonl(scores, {**key, "candidate_id": cid, "images": outcome.images, "bits": outcome.bits.hex(),
                                  "wall_s": stored[cid][1]})
    correct = {cid: outcome for cid, (outcome, _) in stored.items()}
    seconds = [stored[cid][1] for cid in candidates]
    result = {
        "recipe": recipe, "finetune": dataclasses.asdict(finetune) if finetune else None, "scores_key": key,
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


def ceiling(measured: Sequence[tuple[str, Trial]], baselines: Sequence[Baseline], correct: Mapping[str, Correctness],
            margin_se: float = MARGIN_SE) -> dict[str, Any]:
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


def measured_outcomes(out_dir: str | Path, final: Mapping[str, Any]) -> dict[str, Correctness]:
    """The per-image test outcomes behind ``final`` (the ``final.json`` of ``out_dir``), by candidate id: what a
    paired comparison of two searches' candidates needs. Raises :class:`~automq.errors.DataError` when the stored
    outcomes lack a candidate of ``final`` (the scores file is gone, or the supernet changed since)."""
    path = Path(out_dir) / SCORES_FILE
    stored = _stored_scores(path, final["scores_key"], final["test_images"])
    missing = sorted({c["candidate_id"] for c in final["candidates"]} - stored.keys())
    if missing:
        raise DataError(f"{path} lacks the outcomes of {len(missing)} candidates of {Path(out_dir) / FINAL_FILE} "
                        f"(e.g. {missing[0]}): run the final measurement again")
    return {cid: outcome for cid, (outcome, _) in stored.items()}


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


def _candidate_record(trial: Trial, run: str, correct: Correctness) -> dict[str, Any]:
    return {"run": run, "trial": trial.number, "candidate_id": trial.candidate.id, COST: trial.metrics[COST],
            "val_accuracy": trial.metrics["accuracy"], "search_accuracy": _search_accuracy(trial),
            "test_accuracy": correct.accuracy, "test_se": correct.se}


def _search_accuracy(trial: Trial) -> float:
    """The accuracy the search saw (before the refinement re-scored it on the whole validation split)."""
    return trial.metrics.get("accuracy_search", trial.metrics["accuracy"])


def _comparison_record(pairing: Pairing, correct: Mapping[str, Correctness], margin_se: float) -> dict[str, Any]:
    reference = pairing.reference.trial
    record: dict[str, Any] = {
        "run": pairing.run, "budget": pairing.budget, "budget_label": pairing.budget_label,
        "uniform": pairing.reference.name, "uniform_trial": reference.number, "uniform_run": pairing.reference.run,
        "uniform_test_accuracy": correct[reference.candidate.id].accuracy,
        "uniform_val_accuracy": reference.metrics["accuracy"],
    }
    searched = pairing.searched
    if searched is None:
        return {**record, "searched_trial": None, "verdict": "none"}
    score = correct[searched.candidate.id]
    return {**record, "searched_trial": searched.number, "searched_id": searched.candidate.id,
            "searched_bitops": searched.metrics[COST], "searched_test_accuracy": score.accuracy,
            "searched_val_accuracy": searched.metrics["accuracy"],
            "searched_search_accuracy": _search_accuracy(searched),
            **compare(score, correct[reference.candidate.id], margin_se)}


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
