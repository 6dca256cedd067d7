"""Refining a finished search: the accuracies that decide its front, re-scored on the whole validation split.

A search scores each candidate on the first ``search.eval_size`` validation images (2,000 on the default space: a
binomial standard error of 0.8 points, more than most steps between neighbouring candidates). When it ends,
:func:`refine_front` re-scores, on every validation image, the trials that could be on the front: the
Pareto-optimal ones and each one that no front trial beats by more than ``margin_se`` paired standard errors
(:func:`~automq.oneshot.paired.paired_difference`, on the search's images) while being no worse in every other
objective; then any trial that the re-scored values leave on the front unrefined, until the whole front was
measured on the whole split. Only the front reaches a user, so this is where the estimate's resolution is spent.
The search's uniform-precision references (:meth:`~automq.space.space.SearchSpace.uniform_references`, which
``tune`` and ``evolution`` evaluate first) are always scored on the whole split: they are what a user deploys
without a search, so a searched candidate replaces one only by what the whole split shows. Shifted from a lucky or
unlucky 2,000-image score instead, a reference could leave the front to a candidate that the split ranks below it
(on the 8-epoch benchmark, seeded evolution's pick at uniform fp4's BitOps: 0.85 points worse on the test split).

The candidates near the front are raced first (successive halving on images): each is scored on an intermediate
number of images (``race_fraction`` of the split, 5,000 of 10,000 by default, a continuation of its search-time
score), and only those that the front of these scores does not beat by more than ``margin_se`` paired standard
errors go on to the whole split. A trial dropped by the race keeps its intermediate score, so the front can still
take it back.

All accuracies of a refined search are on one scale, the whole split's. The first images of the (seeded, shuffled)
split are one random sample of it, and every candidate is scored on that same sample, so its luck is shared: on a
trained supernet the first 2,000 were easier than all 10,000, by 0.45 to 1.14 points on average over random trials
of five searches (``experiments/results/refine_shift_bias.md``). Compared with refined trials, a trial scored on
them only looked better, entered the front, was refined, and the next one did the same (a refinement of 1,000 trials
chased them for over 40 minutes). Being common to the candidates, that difficulty is measured (a paired,
control-variates estimate) on ``probes`` trials spread evenly over the order in which the search made them
(:func:`shift_probes`), which are scored on the whole split for it (and so count as refined): for each number of
images ``r`` that a trial not refined was scored on (the search's, the race's), the shift is the probes' mean
accuracy on the split's first ``r`` images (the start of their per-image outcomes) less their accuracy on all of it.
Not the refined trials: those were chosen for scoring high on the first images, partly by luck on them, and on the
1,000-trial searches of the 8-epoch benchmark their shift was 0.3 points larger than that of random others
(``experiments/results/refine_shift_bias.md``). A trial not refined records ``accuracy`` = its measured accuracy
less the shift, and ``accuracy_shift`` = the shift: ``accuracy + accuracy_shift`` is what was measured on
``accuracy_images`` images. The shifts are recorded, as fractions like the accuracies, in
``run_info["refine"]["shift"]`` keyed by ``r``, and the probes' trial numbers under ``"probes"``. The shift is one
number per ``r``, but it depends on the candidate: the first images favour weak candidates more, by 0.33 points of
shift per point of accuracy on the 8-epoch benchmark (``experiments/results/shift_by_accuracy.md``), so a strong
trial that is not re-scored is under-rated by up to about a point against the probes' mean; the uniform
references are re-scored for that reason. A shift predicted from a trial's search-time score (a line fitted on the
probes) was measured and does no better there (``shift_by_accuracy.md``: the score's own noise hides the
dependence), and the shift of the trials agreeing with it on the most search images does only a little better
(``prefix_noise.md``: as good as 20% more images), so the shift stays one number per ``r``.

A search scores every candidate with its batch norms recalibrated on one block of ``search.calib_size`` training
images, and a deployed candidate's accuracy moves with those images by an SD of 0.1-0.2 points
(``experiments/results/calibration_noise_16ep.md``), as much as the contenders at a budget differ: on the
20,000-image validation space the search's pick at 5.234e7 BitOps led uniform int4 under the search's block and lost
to it under four others (``split_vs_calibration_val20k_16ep.md``). With ``search.calib_blocks`` K above 1 the
final level is the whole split under each of K blocks (the estimator's ``blocks``): the race's survivors are scored
on the whole split under the search's block alone, and only the front, the references and the probes under all K,
their outcomes averaged (``accuracy_calib_blocks`` = K; ``accuracy_se`` counts the blocks as sampled). Each level
below it, (images, blocks), has its own shift, the probes' mean accuracy there less theirs at the final level, keyed
``"<images>"`` for one block and ``"<images>x<blocks>"`` for several; a search refined again with another K is
shifted anew, on new probes. A 1,000-trial search's front holds 30-45 trials that the K blocks re-order, each
re-ordering bringing another to the final level: refining that way took longer than the search
(``bench_search_quality_val20k_16ep_calib4.md``). With ``search.calib_contenders`` N above 0 only the N most
accurate front trials no costlier than each uniform reference (:func:`contenders`: what a user picks from instead of
that format) reach the final level, again until they all did; the rest of the front stays on the whole split under
the search's block, shifted onto the final scale.

A refined trial keeps its search-time values as ``accuracy_search``, ``accuracy_se_search`` and ``loss_search``,
a shifted one its search-time accuracy as ``accuracy_search``; ``accuracy_images`` says how many images
``accuracy`` was measured on. ``trials.jsonl`` and ``pareto.json`` are rewritten atomically. A resumed search is
not refined twice: a trial already scored on the whole split is not scored again, one an earlier refinement
raced is not raced again, and the shifts it recorded stand unless a trial scored on fewer images carries none (a
trial the resumed search added): then they are measured again, on new probes. Its record goes on too: the probes
that measured the shifts, and the trials raced and re-scored, counted over every refinement of the search.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from automq.io import atomic_write_text
from automq.oneshot.paired import BLOCKS_KEY, BlockCorrectness, Correctness, binomial_se, paired_difference
from automq.search.pareto import Objective, loss_vectors, pareto_mask
from automq.search.results import TRIALS_FILE, SearchLog, pareto_trials
from automq.search.trial import Trial

if TYPE_CHECKING:
    from automq.space.candidate import Candidate

__all__ = ["MARGIN_SE", "MAX_NEAR_FRONT", "RACE_FRACTION", "SHIFT_PROBES", "Refiner", "contenders", "near_front",
           "nearest_to_front", "race", "race_images", "refine_front", "shift_probes"]

MARGIN_SE = 2.0
"""Paired standard errors by which a front trial must beat another for the other not to be re-scored."""
MAX_NEAR_FRONT = 64
"""Most trials besides the front that are considered near it (and so re-scored): the nearest to it by binomial
errors first. An evolution search of 1,000 trials keeps nearly all of them within two paired standard errors of its
dense front; deciding that alone took a validation pass per trial, and re-scoring them ran for over 40 minutes on 2
CPU cores without ending. The front itself is still refined in full (see :func:`refine_front`)."""
RACE_FRACTION = 0.5
"""Share of the validation split on which the candidates near the front are raced before the whole split."""
SHIFT_PROBES = 16
"""Trials scored on the whole split to measure the shift of the others (see the module docstring): the standard
error of the mean shift of 16 random trials was 0.08-0.11 points on the 8-epoch benchmark's searches."""
Level = tuple[int, int]  # an accuracy's resolution: (validation images, calibration blocks)
SEARCH_KEYS = ("accuracy", "accuracy_se", "loss")
"""Metrics re-scored by a refinement; the search-time values are kept under ``<key>_search``."""


@runtime_checkable
class Refiner(Protocol):
    """What a refinement needs of an evaluator (:class:`~automq.oneshot.evaluate.OneShotEstimator` has it)."""

    val_images: int  # images of a search-time score
    max_images: int  # images of the whole validation split
    calib_blocks: int  # calibration blocks a front trial's final score averages over

    def estimate(self, candidate: Candidate, *, images: int | None = None, blocks: int = 1) -> dict[str, float]: ...

    def correctness(self, candidate: Candidate, *, images: int | None = None) -> Correctness: ...

    def block_correctness(self, candidate: Candidate, *, images: int | None = None, blocks: int | None = None
                          ) -> BlockCorrectness: ...


def refine_front(log: SearchLog, estimator: Refiner, *, margin_se: float = MARGIN_SE,
                 race_fraction: float | None = RACE_FRACTION, max_near_front: int = MAX_NEAR_FRONT,
                 probes: int = SHIFT_PROBES, contenders: int | None = None) -> list[Trial]:
    """Re-score the trials of ``log`` that could be on its front on all ``estimator.max_images`` images, shift the
    others' accuracies onto that scale, record the refinement in ``log.run_info["refine"]`` and rewrite the search
    directory; returns the re-scored trials.

    ``race_fraction``: race the candidates near the front on this share of the split first (:func:`race`);
    ``None`` takes all of them to the whole split. ``max_near_front``: besides the front, at most this many of
    the trials near it, the nearest first (:func:`nearest_to_front`). ``probes``: how many trials measure the
    shift (:func:`shift_probes`; 0: no shift). The search's uniform-precision references among its trials are
    always re-scored, without a race. ``contenders`` (default: the space's ``search.calib_contenders``): with
    several calibration blocks, only this many front trials at each reference's cost reach the final level
    (:func:`contenders`), the rest of the front the whole split under the search's block; 0: the whole front.
    Nothing happens when accuracy is not an objective or the search already scored on the whole split under every
    calibration block (``estimator.calib_blocks`` 1)."""
    whole_split = estimator.val_images >= estimator.max_images
    if "accuracy" not in (o.metric for o in log.objectives) or (whole_split and estimator.calib_blocks == 1):
        return []
    feasible = [t for t in log.trials if t.feasible]
    # the cap first: deciding "near" takes per-image outcomes, a validation pass per trial the binomial errors leave
    nearest = nearest_to_front(feasible, log.objectives, estimator.val_images, max_near_front)
    chosen = near_front(nearest, log.objectives, estimator, margin_se=margin_se)
    pending = _unrefined(chosen + _front(log, feasible), estimator)
    recorded = _recorded_shifts(log, estimator)
    # shifts to measure (a first refinement, a resumed search's new trials): on probes chosen before anything moves
    # a search that scored every image leaves only the block shift to measure: on trials it never scored again
    pool, below = (([t for t in feasible if "accuracy_search" not in t.metrics], estimator.max_images + 1)
                   if whole_split else (feasible, estimator.max_images))
    probing = shift_probes(pool, below, probes) if recorded is None else []
    raced, images = 0, race_images(estimator, race_fraction)
    if images:
        # a trial an earlier refinement raced (a resumed search) lost that race: like the others the race drops, it
        # goes on only if the front takes it
        pending = [t for t in pending if t.metrics.get("accuracy_images", 0) < images]
        raced, pending = len(pending), race(pending, log.objectives, estimator, images, margin_se=margin_se)
    references = _references(log, feasible)
    refined = []
    if estimator.calib_blocks > 1:  # the race's survivors on the whole split under the search's calibration alone
        refined = [t for t in pending if t.metrics.get("accuracy_images", 0) < estimator.max_images]
        for trial in refined:
            _rescore(trial, estimator, estimator.max_images)
        pending = []
    pending, partial = _unrefined(pending + probing + references, estimator), []
    shifts = recorded
    count = log.space.search.calib_contenders if contenders is None else contenders
    # the first images are easier than the whole split for every candidate alike: on their raw scores the trials not
    # refined would overtake the refined ones for that alone and be refined one after another. Shifted onto the
    # final scale, they reach the front only by more, and the front is refined until it was all measured on that
    # scale (or, with contenders, on the whole split and, where a user picks it, at the final level). Trials that
    # carry no shift yet are shifted even with nothing else to re-score
    while pending or partial or shifts is None or _unshifted(log.trials, estimator):
        for trial in partial:
            _rescore(trial, estimator, estimator.max_images)
        for trial in pending:
            _rescore(trial, estimator, estimator.max_images, estimator.calib_blocks)
        done = {t.number for t in refined}
        refined += [t for t in partial + pending if t.number not in done]
        shifts = _shift_to_final_scale(log, estimator, probing, shifts)
        pending, partial = _still_to_score(log, feasible, references, estimator, count)
    earlier = log.run_info.get("refine", {})  # a resumed search's: its counts go on, its probes made the shifts
    log.run_info["refine"] = {"nearest": len(nearest), "near_front": len(chosen),
                              "raced": earlier.get("raced", 0) + raced, "race_images": images,
                              "references": len(references), "rescored": earlier.get("rescored", 0) + len(refined),
                              "images": estimator.max_images, "calib_blocks": estimator.calib_blocks,
                              "contenders": count, "margin_se": margin_se,
                              "shift": {_level_key(level): shift for level, shift in sorted(shifts.items())},
                              "probes": [t.number for t in probing] if probing else earlier.get("probes", [])}
    if refined or recorded is None:
        lines = "".join(json.dumps(t.to_dict()) + "\n" for t in log.trials)
        atomic_write_text(log.dir / TRIALS_FILE, lines)
        log.write_pareto()
    return refined


def contenders(front: Sequence[Trial], references: Sequence[Trial], objectives: Sequence[Objective], count: int
               ) -> list[Trial]:
    """Of the ``front``, the ``count`` most accurate that are no worse than each of the ``references`` in every
    objective but accuracy (the cheaper first among equals): the candidates a user picks from instead of a uniform
    format at its cost, in the ``front``'s order."""
    if not front or not references:
        return []
    losses = loss_vectors([t.metrics for t in [*front, *references]], objectives)
    accuracy, others = _accuracy_and_others(objectives)
    chosen: set[int] = set()
    for reference in losses[len(front):]:
        within = [i for i in range(len(front)) if np.all(losses[i, others] <= reference[others])]
        chosen.update(sorted(within, key=lambda i: (losses[i, accuracy], *losses[i, others]))[:count])
    return [t for i, t in enumerate(front) if i in chosen]


def race_images(estimator: Refiner, fraction: float | None) -> int | None:
    """The images of the race: ``fraction`` of the split, or ``None`` when that is no more than a search-time
    score or no fewer than the whole split (nothing to race)."""
    if fraction is None:
        return None
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"race_fraction must lie strictly between 0 and 1 (None: no race), got {fraction}")
    images = round(fraction * estimator.max_images)
    return images if estimator.val_images < images < estimator.max_images else None


def race(trials: Sequence[Trial], objectives: Sequence[Objective], estimator: Refiner, images: int, *,
         margin_se: float = MARGIN_SE) -> list[Trial]:
    """Score ``trials`` on the first ``images`` validation images (recorded in their metrics) and return those
    that the front of these scores does not beat by more than ``margin_se`` paired standard errors."""
    for trial in trials:
        _rescore(trial, estimator, images)

    def correctness(trial: Trial) -> Correctness:
        return estimator.correctness(trial.candidate, images=images)

    return _not_beaten(trials, [t.metrics for t in trials], objectives, correctness, images, margin_se)


def near_front(trials: Sequence[Trial], objectives: Sequence[Objective], estimator: Refiner, *,
               margin_se: float = MARGIN_SE) -> list[Trial]:
    """The ``trials`` on their search-time front, and those no front trial beats in accuracy by more than
    ``margin_se`` paired standard errors while being no worse in every other objective.

    Per-image correctness is asked of ``estimator`` only where the binomial errors cannot decide: the paired
    error never exceeds the sum of the two binomial errors, so a gap beyond ``margin_se`` times that sum is
    decided without scoring anything."""

    def correctness(trial: Trial) -> Correctness:
        return estimator.correctness(trial.candidate)

    metrics = [_search_metrics(t) for t in trials]
    return _not_beaten(trials, metrics, objectives, correctness, estimator.val_images, margin_se)


def nearest_to_front(trials: Sequence[Trial], objectives: Sequence[Objective], images: int, count: int
                     ) -> list[Trial]:
    """The ``trials`` on their front, and of the others the ``count`` whose search-time accuracy lies the fewest
    binomial standard errors below a front trial that is no worse in every other objective."""
    if not trials:
        return []
    metrics = [_search_metrics(t) for t in trials]
    on_front, covering = _front_and_covering(metrics, objectives)

    def distance(i: int) -> float:
        own = metrics[i]["accuracy"]
        gaps = [(metrics[f]["accuracy"] - own) / (binomial_se(metrics[f]["accuracy"], images)
                                                 + binomial_se(own, images) + 1e-12) for f in covering(i)]
        return min(gaps, default=0.0)

    rest = sorted((i for i in range(len(trials)) if not on_front[i]), key=distance)
    keep = set(np.flatnonzero(on_front).tolist()) | set(rest[:count])
    return [t for i, t in enumerate(trials) if i in keep]


def _not_beaten(trials: Sequence[Trial], metrics: Sequence[dict[str, Any]], objectives: Sequence[Objective],
                correctness: Callable[[Trial], Correctness], images: int, margin_se: float) -> list[Trial]:
    """The ``trials`` on the front of ``metrics`` (their accuracies measured on ``images`` images), and those no
    front trial beats in accuracy by more than ``margin_se`` paired standard errors while being no worse in
    every other objective."""
    if not trials:
        return []
    on_front, covering = _front_and_covering(metrics, objectives)

    def binomial(i: int) -> float:
        return binomial_se(metrics[i]["accuracy"], images)

    def beaten(i: int) -> bool:
        for f in covering(i):
            if metrics[f]["accuracy"] - metrics[i]["accuracy"] > margin_se * (binomial(f) + binomial(i)):
                return True
            difference = paired_difference(correctness(trials[f]), correctness(trials[i]))
            if difference.value > margin_se * difference.se:
                return True
        return False

    return [t for i, t in enumerate(trials) if on_front[i] or not beaten(i)]


def _front_and_covering(metrics: Sequence[dict[str, Any]], objectives: Sequence[Objective]
                        ) -> tuple[np.ndarray, Callable[[int], list[int]]]:
    """Which rows of ``metrics`` are on their front, and for a row the front rows no worse than it in every
    objective but accuracy (the ones that can beat it)."""
    losses = loss_vectors(metrics, objectives)
    _, others = _accuracy_and_others(objectives)
    on_front = pareto_mask(losses)
    front = np.flatnonzero(on_front)

    def covering(i: int) -> list[int]:
        return [int(f) for f in front if np.all(losses[f, others] <= losses[i, others])]

    return on_front, covering


def _accuracy_and_others(objectives: Sequence[Objective]) -> tuple[int, list[int]]:
    """The column of accuracy in the loss vectors of ``objectives``, and the columns of the others (the costs)."""
    accuracy = [o.metric for o in objectives].index("accuracy")
    return accuracy, [j for j in range(len(objectives)) if j != accuracy]


def _rescore(trial: Trial, estimator: Refiner, images: int, blocks: int = 1) -> None:
    """Replace ``trial``'s accuracy and loss by their score on ``images`` images (averaged over ``blocks``
    calibration blocks), keeping the search-time ones."""
    searched = {f"{key}_search": value for key, value in _search_metrics(trial).items() if key in SEARCH_KEYS}
    # a new measurement: no shift, and the number of blocks only where there are several
    unshifted = {key: value for key, value in trial.metrics.items() if key not in ("accuracy_shift", BLOCKS_KEY)}
    trial.metrics = {**unshifted, **estimator.estimate(trial.candidate, images=images, blocks=blocks), **searched}


def shift_probes(trials: Sequence[Trial], max_images: int, count: int) -> list[Trial]:
    """``count`` of the ``trials`` scored on fewer than ``max_images`` images, spread evenly over their order (the
    first and the last among them included): chosen by when the search made them, not by how they scored."""
    lower = _scored_on_fewer(trials, max_images)
    if not lower or count < 1:
        return []
    return [lower[int(i)] for i in np.unique(np.round(np.linspace(0, len(lower) - 1, min(count, len(lower)))))]


def _shift_to_final_scale(log: SearchLog, estimator: Refiner, probing: Sequence[Trial],
                          shifts: dict[Level, float] | None) -> dict[Level, float]:
    """Put the accuracies of the trials of ``log`` not scored at the final level (the whole split under every
    calibration block) onto its scale; returns the shifts by level. ``shifts`` ``None``: measure them on
    ``probing`` and shift every such trial anew; else only the trials that carry no shift are shifted, by the
    levels of ``shifts`` or, for a level it lacks, by one measured on the probes that made them (``probing`` or
    the earlier refinement's)."""
    lower = _below_final(log.trials, estimator)
    targets = lower if shifts is None else [t for t in lower if "accuracy_shift" not in t.metrics]
    levels = {_level(t) for t in targets}
    if shifts is None or not levels <= shifts.keys():
        numbers = set(log.run_info.get("refine", {}).get("probes", []))
        probes = probing if shifts is None or probing else [t for t in log.trials if t.number in numbers]
        shifts = {**(shifts or {}), **_measure_shifts(estimator, probes, levels)}
    for trial in targets:
        measured = trial.metrics["accuracy"] + trial.metrics.get("accuracy_shift", 0.0)
        searched = {} if "accuracy_search" in trial.metrics else {"accuracy_search": measured}  # never re-scored
        shift = shifts[_level(trial)]
        trial.metrics = {**trial.metrics, **searched, "accuracy": measured - shift, "accuracy_shift": shift}
    return shifts


def _measure_shifts(estimator: Refiner, probes: Sequence[Trial], levels: set[Level]) -> dict[Level, float]:
    """The shift of each level ``(images, blocks)``: the ``probes``' mean accuracy on the first ``images`` images
    under the first ``blocks`` calibration blocks less their accuracy at the final level (no probes: 0)."""
    final = [estimator.block_correctness(t.candidate, images=estimator.max_images, blocks=estimator.calib_blocks)
             for t in probes]

    def shift(images: int, blocks: int) -> float:
        return float(np.mean([np.mean([b.bools()[:images].mean() for b in f.blocks[:blocks]]) - f.accuracy
                              for f in final]))

    return {level: shift(*level) if final else 0.0 for level in levels}


def _recorded_shifts(log: SearchLog, estimator: Refiner) -> dict[Level, float] | None:
    """The shifts that an earlier refinement to the same final level left on the trials of ``log``, or ``None`` when
    a trial scored on fewer images than the whole split carries none (or two of a level disagree): those are not on
    the final scale yet. Trials on the whole split under fewer blocks than the final level (the survivors of the race
    that did not reach the front) are shifted later when they carry none (:func:`_shift_to_final_scale`)."""
    if log.run_info.get("refine", {}).get("calib_blocks", 1) != estimator.calib_blocks:
        return None  # shifts onto another final scale
    shifts: dict[Level, float] = {}
    for trial in _below_final(log.trials, estimator):
        shift = trial.metrics.get("accuracy_shift")
        if shift is None and trial.metrics["accuracy_images"] >= estimator.max_images:
            continue
        if shift is None or shifts.setdefault(_level(trial), shift) != shift:
            return None
    return shifts


def _unshifted(trials: Sequence[Trial], estimator: Refiner) -> bool:
    """Whether a trial below the final level carries no shift (is not on the final scale)."""
    return any("accuracy_shift" not in t.metrics for t in _below_final(trials, estimator))


def _level(trial: Trial) -> Level:
    """The resolution of ``trial``'s accuracy: (validation images, calibration blocks)."""
    return int(trial.metrics["accuracy_images"]), int(trial.metrics.get(BLOCKS_KEY, 1))


def _level_key(level: Level) -> str:
    """A level as ``run_info["refine"]["shift"]`` keys it: the images, and ``x<blocks>`` for several blocks."""
    images, blocks = level
    return str(images) if blocks == 1 else f"{images}x{blocks}"


def _below_final(trials: Sequence[Trial], estimator: Refiner) -> list[Trial]:
    """The ``trials`` whose accuracy was measured at a known level below the final one."""
    return [t for t in trials if "accuracy" in t.metrics and "accuracy_images" in t.metrics
            and not _at_final(t, estimator)]


def _at_final(trial: Trial, estimator: Refiner) -> bool:
    """Whether ``trial`` was scored on the whole split under every calibration block of the final level."""
    return (trial.metrics.get("accuracy_images", 0) >= estimator.max_images
            and trial.metrics.get(BLOCKS_KEY, 1) >= estimator.calib_blocks)


def _scored_on_fewer(trials: Sequence[Trial], max_images: int) -> list[Trial]:
    """The ``trials`` whose accuracy was measured on a known number of images, fewer than the whole split's."""
    return [t for t in trials if "accuracy" in t.metrics and t.metrics.get("accuracy_images", max_images) < max_images]


def _references(log: SearchLog, trials: Sequence[Trial]) -> list[Trial]:
    """The ``trials`` of the space's uniform-precision references (what a user deploys without a search)."""
    ids = {c.id for c in log.space.uniform_references()}
    return [t for t in trials if t.candidate.id in ids]


def _front(log: SearchLog, trials: list[Trial]) -> list[Trial]:
    return pareto_trials(trials, log.objectives, log.scales)[0]


def _still_to_score(log: SearchLog, feasible: list[Trial], references: Sequence[Trial], estimator: Refiner,
                    count: int) -> tuple[list[Trial], list[Trial]]:
    """The front trials still to be scored at the final level, and those still to be scored on the whole split under
    the search's calibration alone: with several blocks and ``count`` above 0 the final level is for the
    :func:`contenders` at the references' costs, the whole split for the rest of the front."""
    front = _front(log, feasible)
    if estimator.calib_blocks == 1 or count == 0:
        return _unrefined(front, estimator), []
    final = _unrefined(contenders(front, references, log.objectives, count), estimator)
    numbers = {t.number for t in final}
    return final, [t for t in front if t.metrics.get("accuracy_images", 0) < estimator.max_images
                   and t.number not in numbers]


def _unrefined(trials: Sequence[Trial], estimator: Refiner) -> list[Trial]:
    """``trials`` without repeats and without those already scored at the final level, in order."""
    unique = {t.number: t for t in trials}.values()
    return [t for t in unique if not _at_final(t, estimator)]


def _search_metrics(trial: Trial) -> dict[str, Any]:
    """A trial's metrics as the search scored them (before any refinement)."""
    restored = {key: trial.metrics[f"{key}_search"] for key in SEARCH_KEYS if f"{key}_search" in trial.metrics}
    return {**trial.metrics, **restored}
