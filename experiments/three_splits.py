"""Do validation and test disagree about near-equal candidates by chance, or because the two splits differ?

``split_vs_calibration_16ep.md`` found the 10,000-image validation split (held out of Fashion-MNIST's training file)
ranking fp4_e2m1 weights level with int4 where the test split (the dataset's own test file) ranks them below. A third
sample tells the two causes apart: the *holdout*, the training-split images the supernet never trained on (the
16-epoch supernet trained on a class-balanced 40,000 of the 50,000) and no deployment calibrated on. It comes from
the same file as validation, so if it sides with test the disagreement was validation's sampling noise (and a larger
validation split helps); if it sides with validation, the test file differs (and no validation split predicts it).

Every comparison the final measurement made for the chosen searches (the search's candidate at each budget against
every uniform format at or below it; each pair once, never a uniform pick against itself) is scored again on all
three splits under the final measurement's own calibration blocks; the test outcomes must reproduce the stored
ones. Whether two splits disagree beyond their images' sampling is a permutation test: the two splits' images pooled
and split again at random, which keeps the comparisons' correlation (they share candidates).

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python experiments/three_splits.py \\
        --final runs/bench16/final --supernet runs/sn16 --runs "evolution (evolution)" --name three_splits_16ep
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Subset

from automq.data import balanced_subset, fixed_batches
from automq.io import atomic_write_json, atomic_write_text
from automq.oneshot.evaluate import score_model
from automq.oneshot.paired import BlockCorrectness, Correctness, Difference, block_difference, crossed_mean
from automq.oneshot.train import EVAL_BATCH_SIZE, load_space_data, load_supernet
from automq.report.final import FINAL_FILE, calibration_batches, deploy, measured_outcomes, verdict
from automq.search.results import SPACE_FILE
from automq.space.space import SearchSpace
from bench_search_quality import points
from provenance import command, header, machine
from validation_gate import final_against_every_uniform, final_trials

SPLITS = ("val", "holdout", "test")


def trained_positions(labels: np.ndarray, seed: int, train_size: int) -> np.ndarray:
    """Positions in the training split of the ``train_size`` images a supernet trained on: the class-balanced subset
    :func:`~automq.data.load_dataset` keeps, drawn from the same seeded stream (checked by :func:`check_trained`)."""
    return balanced_subset(labels, train_size, np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[1]))


def pooled(*parts: tuple[BlockCorrectness, BlockCorrectness]) -> Difference:
    """The difference on several splits' images at once (validation and holdout: a validation split twice as
    large), with the crossed standard error over images and blocks."""
    table = np.concatenate([a.table() - b.table() for a, b in parts], axis=0)
    return crossed_mean(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--final", required=True, help="folder of an `automq final` measurement")
    parser.add_argument("--supernet", required=True, help="the supernet run the final measurement deployed from")
    parser.add_argument("--runs", nargs="+", required=True, help="the final measurement's search labels to replay")
    parser.add_argument("--name", default="three_splits")
    parser.add_argument("--out", default="experiments/results")
    parser.add_argument("--outcomes", help="file keeping every candidate's per-image outcomes (default: "
                        "<final>/three_splits_outcomes.npz): a second analysis reads them instead of deploying again")
    parser.add_argument("--permutations", type=int, default=2000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    final = final_against_every_uniform(parser, args.final)
    trained = json.loads((Path(args.supernet) / "run.json").read_text())["config"]["training"]["train_size"]
    space = SearchSpace.from_file(Path(args.supernet) / SPACE_FILE)
    data = load_space_data(space, with_test=True)
    calibration = final["calibration"]
    skip = calibration["first"] + calibration["blocks"] * calibration["images"]
    labels = data.train.tensors[1].numpy()
    seen = trained_positions(labels, space.seed, trained)
    check_trained(space, data.train.tensors[0], seen)
    holdout = np.setdiff1d(np.arange(skip, len(labels)), seen)
    blocks = [calibration_batches(data.train, calibration["first"] + k * calibration["images"],
                                  calibration["images"]) for k in range(calibration["blocks"])]
    images = {"val": data.val, "holdout": Subset(data.train, holdout.tolist()), "test": data.test}
    batches = {split: fixed_batches(images[split], len(images[split]), EVAL_BATCH_SIZE) for split in SPLITS}
    trials = final_trials(final)
    # each pair once (a candidate compared at several budgets, at its lowest), never a candidate with itself (0 ± 0)
    unique: dict[tuple[str, str], tuple[dict, dict]] = {}
    for c in final["comparisons"]:
        if c["run"] in args.runs and c["searched_trial"] is not None:
            for r in c["references"]:
                unique.setdefault((c["searched_id"], trials[(r["uniform_run"], r["uniform_trial"])].id), (c, r))
    comparisons = [pair for (mine, theirs), pair in unique.items() if mine != theirs]
    if not comparisons:
        parser.error(f"no comparison of {args.runs} in {Path(args.final) / FINAL_FILE}: "
                     f"its runs are {sorted(final['searches'])}")
    wanted = {**{c["searched_id"]: trials[(c["run"], c["searched_trial"])] for c, _ in comparisons},
              **{trials[(r["uniform_run"], r["uniform_trial"])].id: trials[(r["uniform_run"], r["uniform_trial"])]
                 for _, r in comparisons}}
    cache = Path(args.outcomes or Path(args.final) / "three_splits_outcomes.npz")
    scored = read_outcomes(cache)
    reused = set(wanted) <= set(scored)
    if not reused:
        supernet = load_supernet(args.supernet, space)
        scored = {cid: score(supernet, candidate, blocks, batches) for cid, candidate in wanted.items()}
        write_outcomes(cache, scored)
    stored = measured_outcomes(args.final, final)
    for cid, outcome in scored.items():
        if outcome["test"] != stored[cid]:
            raise SystemExit(f"candidate {cid}: its test outcomes differ from {args.final}'s: another supernet?")
    rows = [row(c, r, scored, trials) for c, r in comparisons]
    pairs = [(scored[c["searched_id"]], scored[trials[(r["uniform_run"], r["uniform_trial"])].id])
             for c, r in comparisons]
    result = {"command": command(), "machine": machine(), "supernet": args.supernet, "final": args.final,
              "runs": args.runs, "images": {split: len(images[split]) for split in SPLITS},
              "trained_images": trained, "candidates": len(wanted), "rows": rows, "permutations": args.permutations,
              "outcomes": str(cache), "outcomes_reused": reused,
              "summary": summary(rows, pairs, np.random.default_rng(0), args.permutations),
              "wall_s": time.perf_counter() - start}
    out = Path(args.out)
    atomic_write_json(out / f"{args.name}.json", result)
    atomic_write_text(out / f"{args.name}.md", markdown(result))
    print(markdown(result))


def check_trained(space: SearchSpace, train: torch.Tensor, trained: np.ndarray) -> None:
    """Refuse a holdout that could overlap the supernet's training images: the training subset, loaded the way
    training loaded it, must be exactly the images at ``trained`` (a changed subset rule would show here)."""
    training = load_space_data(space, train_subset=len(trained)).train.tensors[0]
    if not torch.equal(training, train[torch.from_numpy(trained)]):
        raise SystemExit("the supernet's training images are not the ones this study leaves out: has the subset "
                         "rule of automq.data changed?")


def score(supernet, candidate, blocks, batches) -> dict[str, BlockCorrectness]:
    """One candidate deployed under each calibration block and scored on every split."""
    outcomes: dict[str, list] = {split: [] for split in SPLITS}
    for calibration in blocks:
        model = deploy(supernet, candidate, calibration)
        for split in SPLITS:
            outcomes[split].append(score_model(model, batches[split]).correctness)
    return {split: BlockCorrectness(tuple(outcomes[split])) for split in SPLITS}


def row(comparison: dict, reference: dict, scored: dict, trials: dict) -> dict:
    """One comparison on every split (difference, crossed SE, verdict), and on validation and holdout pooled."""
    mine = scored[comparison["searched_id"]]
    theirs = scored[trials[(reference["uniform_run"], reference["uniform_trial"])].id]
    by_split = {}
    for split in SPLITS:
        crossed = block_difference(mine[split], theirs[split])
        by_split[split] = {"difference": crossed.value, "se": crossed.se, "verdict": verdict(crossed)}
    both = pooled((mine["val"], theirs["val"]), (mine["holdout"], theirs["holdout"]))
    return {"run": comparison["run"], "budget_label": comparison["budget_label"], "budget": comparison["budget"],
            "searched_trial": comparison["searched_trial"], "uniform": reference["uniform"], **by_split,
            "val+holdout": {"difference": both.value, "se": both.se, "verdict": verdict(both)}}


NEAR = 0.005  # comparisons validation puts within half a point: what a search must resolve


def summary(rows: list[dict], pairs: list[tuple[dict, dict]], rng: np.random.Generator, permutations: int) -> dict:
    """Per pair of splits, over all comparisons and over the near ones (:data:`NEAR` on validation): the mean and
    the root mean square of the disagreement between the two splits' differences, each with a permutation p-value
    (the two splits' images pooled and split again at random, :func:`permutation_test`), and the share of comparisons
    whose sign agrees; then how often validation's verdict, and validation and holdout's together, is test's."""
    found: dict = {}
    near = [i for i, r in enumerate(rows) if abs(r["val"]["difference"]) <= NEAR]
    for a, b in itertools.combinations(SPLITS, 2):
        per_image = [np.stack([image_differences(mine[split], theirs[split]) for mine, theirs in pairs])
                     for split in (a, b)]
        for subset, which in (("all", range(len(rows))), ("near", near)):
            chosen = list(which)
            if not chosen:
                continue
            test = permutation_test(per_image[0][chosen], per_image[1][chosen], rng, permutations)
            signs = [np.sign(rows[i][a]["difference"]) == np.sign(rows[i][b]["difference"]) for i in chosen]
            found[f"{a}-{b} {subset}"] = {**test, "comparisons": len(chosen), "same_sign": float(np.mean(signs))}
    test_verdicts = np.array([r["test"]["verdict"] for r in rows])
    for chooser in ("val", "val+holdout"):
        agree = np.array([r[chooser]["verdict"] for r in rows]) == test_verdicts
        found[f"{chooser} verdict = test verdict"] = float(np.mean(agree))
    return found


def image_differences(a: BlockCorrectness, b: BlockCorrectness) -> np.ndarray:
    """Per image, ``a``'s outcome minus ``b``'s averaged over the calibration blocks."""
    return (a.table() - b.table()).mean(axis=1, dtype=np.float64)


def permutation_test(first: np.ndarray, second: np.ndarray, rng: np.random.Generator, permutations: int) -> dict:
    """Do two splits' differences (rows: comparisons, columns: images) disagree by more than their images' sampling?

    The statistics are the mean and the root mean square over the comparisons of (mean over the first split's images
    - mean over the second's). Under the null that the images of both splits are draws from one distribution, they
    are exchangeable, so re-splitting the pooled images at random (same sizes) gives the null distribution, with the
    comparisons' correlation (they share candidates) kept. p-values count the re-splits at least as extreme, plus one.
    """
    pooled_images = np.concatenate([first, second], axis=1)
    size = first.shape[1]

    def statistics(columns: np.ndarray) -> tuple[float, float]:
        weights = np.full(pooled_images.shape[1], -1.0 / (pooled_images.shape[1] - size))
        weights[columns[:size]] = 1.0 / size  # the mean over the first part minus the mean over the rest
        gap = pooled_images @ weights
        return float(gap.mean()), float(np.sqrt(np.mean(gap ** 2)))

    mean, rms = statistics(np.arange(pooled_images.shape[1]))
    null = np.array([statistics(rng.permutation(pooled_images.shape[1])) for _ in range(permutations)])
    slack = 1e-9  # rounding of the weighted sums: far below one image's weight, so ties count as extreme
    return {"mean": mean, "rms": rms, "null_rms_median": float(np.median(null[:, 1])),
            "p_mean": float((1 + np.sum(np.abs(null[:, 0]) >= abs(mean) - slack)) / (permutations + 1)),
            "p_rms": float((1 + np.sum(null[:, 1] >= rms - slack)) / (permutations + 1))}


def read_outcomes(path: Path) -> dict[str, dict[str, BlockCorrectness]]:
    """The outcomes :func:`write_outcomes` kept (none when the file is missing)."""
    if not path.is_file():
        return {}
    with np.load(path) as stored:
        found: dict[str, dict[str, BlockCorrectness]] = {}
        for key in stored.files:
            cid, split = key.split("/")
            table = stored[key].astype(bool)
            found.setdefault(cid, {})[split] = BlockCorrectness(tuple(Correctness.from_bools(column)
                                                                      for column in table.T))
        return found


def write_outcomes(path: Path, scored: dict[str, dict[str, BlockCorrectness]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npz")
    np.savez_compressed(partial, **{f"{cid}/{split}": outcome.table() for cid, by_split in scored.items()
                                    for split, outcome in by_split.items()})
    partial.replace(path)


def markdown(result: dict) -> str:
    s = result["summary"]
    lines = ["# Validation, an unseen holdout of the training file, and test", "", *header(result),
             f"- the final measurement `{result['final']}` replayed for {', '.join(result['runs'])}: "
             f"{len(result['rows'])} comparisons of {result['candidates']} candidates, each deployed from "
             f"`{result['supernet']}` under the final measurement's calibration blocks (test outcomes identical to "
             "the stored ones)" + (f"; the outcomes read from `{result['outcomes']}`, which an earlier run of this "
                                   "command wrote (the wall time above is the analysis alone)"
                                   if result.get("outcomes_reused") else ""),
             f"- splits: validation {result['images']['val']} images, holdout {result['images']['holdout']} (training-"
             f"split images outside the {result['trained_images']} the supernet trained on and outside every "
             f"calibration block), test {result['images']['test']}; differences in points ± crossed SE",
             "- disagreement of two splits a − b: over the comparisons, the difference on a minus the difference on b, "
             f"in points; p-values from {result['permutations']} random re-splits of the two splits' pooled images "
             "(the null: both are samples of one distribution); near: the comparisons validation puts within "
             f"{100 * NEAR:.1f} points", "",
             "| splits a − b | comparisons | mean disagreement | RMS disagreement | same sign |",
             "|---|---|---:|---:|---:|"]
    for key in (f"{a}-{b} {subset}" for a, b in itertools.combinations(SPLITS, 2) for subset in ("all", "near")):
        if key in s:
            p = s[key]
            pair, subset = key.split(" ")
            lines.append(f"| {pair.replace('-', ' − ')} | {subset} ({p['comparisons']}) | {100 * p['mean']:+.2f} "
                         f"(p {p['p_mean']:.3f}) | {100 * p['rms']:.2f} (p {p['p_rms']:.3f}; by chance "
                         f"{100 * p['null_rms_median']:.2f}) | {p['same_sign']:.0%} |")
    lines += ["", f"Verdict on validation = verdict on test in {s['val verdict = test verdict']:.0%} of the "
              "comparisons; on validation + holdout (twice the images) in "
              f"{s['val+holdout verdict = test verdict']:.0%}.",
              "", "| budget | search's trial − uniform | validation | holdout | test | validation + holdout |",
              "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        cells = [f"{points(r[k]['difference'], r[k]['se'])} {r[k]['verdict']}" for k in (*SPLITS, "val+holdout")]
        lines.append(f"| {r['budget']:.4g} | #{r['searched_trial']} − {r['uniform']} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
