"""The ``automq`` command line.

Each subcommand is a small function that parses nothing itself: ``argparse`` hands it the namespace, and it
calls the library. Heavy modules (torch, ray) are imported inside the commands so ``automq --help`` is instant.
User errors (:class:`automq.errors.AutomqError`) print one clear message and exit with status 2.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence

from automq.errors import AutomqError

Command = Callable[[argparse.Namespace], int | None]


def _cmd_formats(args: argparse.Namespace) -> None:
    from automq.formats import format_table

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


def _cmd_space_validate(args: argparse.Namespace) -> None:
    from automq.space import SearchSpace

    space = SearchSpace.from_file(args.file)
    print(f"{args.file}: valid search space '{space.name}'")


def _cmd_space_info(args: argparse.Namespace) -> None:
    from automq.cost import cost_range
    from automq.space import SearchSpace

    space = SearchSpace.from_file(args.file)
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``automq`` console command."""
    args = build_parser().parse_args(argv)
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
