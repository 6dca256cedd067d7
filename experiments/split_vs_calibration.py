"""Is validation's ranking of near-equal uniform formats a matter of the calibration block or of the split?

``validation_gate_16ep.md`` found that validation ranks fp4_e2m1 weights at or above int4 weights where the test
split ranks them below. This study deploys pairs of uniform formats of equal BitOps from the supernet, each
recalibrated on the same blocks of 512 training images (the estimator's first block and the final measurement's
four), and scores each deployment on the whole validation and the whole test split: where the two splits disagree
under the *same* calibration, the disagreement is the splits', not the calibration's.

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python experiments/split_vs_calibration.py \\
        --supernet runs/sn16 --uniform runs/bench16/uniform --name split_vs_calibration_16ep
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from automq.data import fixed_batches
from automq.io import atomic_write_json, atomic_write_text
from automq.oneshot.evaluate import score_model
from automq.oneshot.paired import paired_difference
from automq.oneshot.train import EVAL_BATCH_SIZE, load_space_data, load_supernet
from automq.report.comparison import uniform_format
from automq.report.final import calibration_batches, deploy
from automq.search.results import SPACE_FILE, load_search_dir
from automq.space.space import SearchSpace
from bench_search_quality import points
from provenance import command, header, machine

PAIRS = (("fp4_e2m1/int4", "int4/int4"), ("fp4_e2m1/int8", "int4/int8"))
BLOCK_FIRSTS = (0, 512, 1024, 1536, 2048)  # the estimator's calibration block, then the final measurement's four
BLOCK_IMAGES = 512


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--supernet", required=True)
    parser.add_argument("--uniform", required=True, help="the uniform search folder whose candidates to deploy")
    parser.add_argument("--name", default="split_vs_calibration")
    parser.add_argument("--out", default="experiments/results")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    space = SearchSpace.from_file(Path(args.supernet) / SPACE_FILE)
    data = load_space_data(space, with_test=True)
    supernet = load_supernet(args.supernet, space)
    named = {uniform_format(t, "uniform"): t.candidate for t in load_search_dir(args.uniform).trials}
    splits = {"val": fixed_batches(data.val, len(data.val), EVAL_BATCH_SIZE),
              "test": fixed_batches(data.test, len(data.test), EVAL_BATCH_SIZE)}
    rows = []
    for first in BLOCK_FIRSTS:
        calibration = calibration_batches(data.train, first, BLOCK_IMAGES)
        deployed = {name: deploy(supernet, named[name], calibration) for pair in PAIRS for name in pair}
        scored = {name: {split: score_model(model, batches).correctness for split, batches in splits.items()}
                  for name, model in deployed.items()}
        for a, b in PAIRS:
            rows.append({"pair": f"{a} - {b}", "first": first, **{
                split: dict(zip(("difference", "se"), paired_difference(scored[a][split], scored[b][split])[:2]))
                for split in splits}})
    result = {"command": command(), "machine": machine(), "supernet": args.supernet, "rows": rows,
              "images": {split: len(getattr(data, split)) for split in splits}, "wall_s": time.perf_counter() - start}
    out = Path(args.out)
    atomic_write_json(out / f"{args.name}.json", result)
    atomic_write_text(out / f"{args.name}.md", markdown(result))
    print(markdown(result))


def markdown(result: dict) -> str:
    lines = ["# Validation against test under the same calibration", "", *header(result),
             f"- each format deployed from `{result['supernet']}`, batch norms recalibrated on {BLOCK_IMAGES} training "
             "images starting at the block's first image, scored on the whole validation split "
             f"({result['images']['val']} images) and the whole test split ({result['images']['test']}); points ± "
             "paired SE over the images", "",
             "| pair | calibration block (first image) | validation | test |", "|---|---:|---|---|"]
    lines += [f"| {r['pair']} | {r['first']} | {points(r['val']['difference'], r['val']['se'])} | "
              f"{points(r['test']['difference'], r['test']['se'])} |" for r in result["rows"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
