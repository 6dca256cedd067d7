"""``make demo`` on a fresh clone, timed, and its record written from the files the demo leaves.

What a new user does: clone the repository and run ``make demo``. This script clones the current commit into a
fresh folder, runs ``make setup data`` there (the virtual environment and packages: timed on its own, since a
machine with a warm pip cache is faster), then ``make demo`` (the supernet, the evolution search with its refinement,
the uniform baselines, the test-split measurement and the report), and writes ``demo_run.md``/``.json`` from what
the demo wrote: the supernet's training record, each search's ``run.json`` and the report's ``final.json``. A
finished clone is deleted (it holds a virtual environment of several GB) unless ``--keep``; a failed one is kept
with its logs.

    .venv/bin/python experiments/demo_run.py [--clone /tmp/demo-clone] [--out experiments/results/demo_run]

With ``--record RUN`` it clones and runs nothing: it writes the same record for a demo folder whose steps were run
one by one (a stronger space's, whose supernet takes too long to train again in one sitting), with each step's
command from its run record and ``--note`` saying what else shared the machine.

    .venv/bin/python experiments/demo_run.py --record runs/strong --out experiments/results/strong_space_run \
        --note "..."
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from automq.io import atomic_write_json, atomic_write_text
from automq.oneshot.train import training_summary, training_text
from provenance import command, header, machine

ROOT = Path(__file__).resolve().parents[1]
RUN = "runs/demo"  # the Makefile's RUN


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clone", type=Path, help="where to clone (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the clone afterwards")
    parser.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "demo_run",
                        help="output path, no suffix")
    parser.add_argument("--record", type=Path, help="only write the record of this finished demo folder")
    parser.add_argument("--note", default="", help="with --record: what else ran on the machine meanwhile")
    args = parser.parse_args()
    if args.record:
        return _write(recorded(args.record, args.note), args.out)
    clone = args.clone or Path(tempfile.mkdtemp(prefix="automq-demo-")) / "automq"
    started, finished = time.perf_counter(), False
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        load_before = os.getloadavg()
        setup_s = _timed(["make", "setup", "data"], clone, clone / "setup.log")
        demo_s = _timed(["make", "demo"], clone, clone / "demo.log")
        result = {"command": command(), "machine": machine(), "commit": commit,
                  "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "load_average_before": load_before, "load_average_after": os.getloadavg(),
                  "setup_s": setup_s, "demo_s": demo_s, **demo_record(clone / RUN)}
        result["wall_s"] = time.perf_counter() - started
        finished = True
    finally:
        if finished and not args.keep:  # a failed run keeps its clone and logs to look at
            shutil.rmtree(clone.parent if args.clone is None else clone, ignore_errors=True)
    return _write(result, args.out)


def recorded(run: Path, note: str) -> dict[str, Any]:
    """The record of the demo folder ``run`` whose steps were run one by one; its wall time is theirs summed."""
    result = {"command": command(), "machine": machine(), "commit": _git("rev-parse", "--short", "HEAD"),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "run": str(run), "note": note,
              **demo_record(run)}
    result["wall_s"] = (result["supernet"].get("training_wall_s", 0)
                        + sum(search["wall_s"] for search in result["searches"].values()) + result["final"]["wall_s"])
    return result


def _write(result: dict[str, Any], out: Path) -> int:
    atomic_write_json(out.with_suffix(".json"), result)
    atomic_write_text(out.with_suffix(".md"), markdown(result))
    print(markdown(result))
    return 0


def _git(*arguments: str) -> str:
    return subprocess.run(["git", *arguments], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def _timed(argv: list[str], cwd: Path, log: Path) -> float:
    """Run ``argv`` in ``cwd`` with its output in ``log``; its wall time. A failure stops the script, naming the log."""
    start = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"demo_run: `{' '.join(argv)}` failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - start


def demo_record(run: Path) -> dict[str, Any]:
    """The supernet's training, each search's run record and the test-split verdicts of a finished demo."""
    searches = {}
    for folder in sorted(run.glob("search-*")):
        info = json.loads((folder / "run.json").read_text())
        searches[folder.name] = {key: info.get(key) for key in ("strategy", "options", "wall_s", "trials", "refine",
                                                                "command")}
    final = json.loads((run / "report" / "final.json").read_text())
    info = run / "supernet" / "run.json"  # missing like the training record it describes: no command then
    trained = json.loads(info.read_text()) if info.is_file() else {}
    return {"supernet": {**training_summary(run / "supernet"), "command": trained.get("command")}, "searches": searches,
            "final": {key: final[key] for key in ("test_images", "wall_s", "summary", "comparisons")}}


def markdown(result: dict[str, Any]) -> str:
    supernet, final = result["supernet"], result["final"]
    steps = "run" in result  # each step's own command (the demo's steps all share the demo's)

    def step(record: dict[str, Any]) -> str:
        return _step_command(record) if steps else ""

    if steps:  # --record: the steps of a demo folder, run one by one
        lines = [f"# The demo's steps in `{result['run']}`", "", *header(result),
                 "- the wall time is the steps' below, summed",
                 f"- recorded at commit {result['commit']}, {result['date']}; {result['note']}".rstrip("; "), "",
                 "| step | wall time [s] | result |", "|---|---:|---|"]
    else:
        lines = ["# `make demo` on a fresh clone", "", *header(result),
                 f"- clone of commit {result['commit']}, {result['date']}; load average before/after: "
                 f"{result['load_average_before'][0]:.2f} / {result['load_average_after'][0]:.2f} (2 cores)", "",
                 "| step | wall time [s] | result |", "|---|---:|---|",
                 f"| `make setup data` (virtual environment, packages, dataset check) | {result['setup_s']:.0f} | |",
                 f"| `make demo` in all | {result['demo_s']:.0f} | |"]
    lines.append(f"| supernet training{step(supernet)} | {supernet.get('training_wall_s', 0):.0f} | "
                 f"{training_text(supernet)} |")
    for name, search in result["searches"].items():
        refine = search.get("refine") or {}
        refined = (f"; {refine['rescored']} trials re-scored on all {refine['images']} validation images, "
                   f"{refine.get('references', 0)} of them uniform references" if refine.get("rescored") else "")
        trials = search.get("trials") or {}
        lines.append(f"| {name} ({search['strategy']}){step(search)} | {search['wall_s']:.0f} | "
                     f"{sum(trials.values())} trials "
                     f"({trials.get('ok', 0)} ok){refined} |")
    lines.append(f"| final measurement on {final['test_images']} test images | {final['wall_s']:.0f} | see below |")
    lines += ["", "On the test split, against every uniform format at or below each uniform budget (a win needs a "
              "lead beyond 2 paired standard errors over each; a loss, some uniform format ahead by as much; the "
              "table shows the binding one):", ""]
    for name, counts in final["summary"].items():
        verdicts = ", ".join(_count(counts[key], word) for key, word in (("win", "win"), ("tie", "tie"),
                                                                          ("loss", "loss")))
        lines.append(f"- {name}: {verdicts} of {counts['budgets']} budgets")
    lines += ["", "| search | BitOps budget | binding uniform | uniform test % | searched BitOps | searched test % | "
              "difference [points] | verdict |", "|---|---:|---|---:|---:|---:|---|---|"]
    for c in final["comparisons"]:
        searched = (f"{c['searched_bitops']:.4g} | {100 * c['searched_test_accuracy']:.2f} | "
                    f"{100 * c['difference']:+.2f} ± {100 * c['se']:.2f}" if c["verdict"] != "none" else "- | - | -")
        lines.append(f"| {c['run']} | {c['budget']:.4g} | {c['uniform']} | {100 * c['uniform_test_accuracy']:.2f} | "
                     f"{searched} | {c['verdict']} |")
    return "\n".join(lines + [""])


def _step_command(record: dict[str, Any]) -> str:
    """A step's command line (a string or an argv list), where its record keeps one."""
    argv = record.get("command")
    if not argv:
        return ""
    return f": `{argv if isinstance(argv, str) else ' '.join(argv)}`"


def _count(number: int, word: str) -> str:
    return f"{number} {word}{'' if number == 1 else 'es' if word.endswith('s') else 's'}"


if __name__ == "__main__":
    sys.exit(main())
