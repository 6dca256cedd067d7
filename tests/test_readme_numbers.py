"""README's results are the committed files' results: every figure quoted in README's ``## Results`` section is
found in the file README cites for it, and every results file says what produced it.

How README cites (the convention this test enforces):

- a table with a ``file`` column: each row's figures come from the files named in that cell (backticked, relative
  to ``experiments/results/``, globs allowed);
- any other paragraph, bullet or table row: a ``<!-- from: NAME [NAME ...] -->`` comment inside it; a table
  without a ``file`` column takes the sources of the paragraph that introduces it.

A ``.md`` source also brings its ``.json`` twin. A figure matches a source number when the source rounds to it
at the figure's precision (``0.92`` matches 0.9213), directly or as a percentage (``86.9%`` matches 0.869);
signs are words in README ("+0.38", "a drop of 0.38"), so they are not compared. Commands (indented code),
inline code and headings are not figures.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
SOURCE_MARK = re.compile(r"<!--\s*from:(.*?)-->")
NOT_FIGURES = re.compile(r"<!--.*?-->|`[^`]*`|\]\([^)]*\)")  # comments, inline code, link targets
README_FIGURE = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+(?:\.\d+)?)(?:e([-+]?\d+))?(k\b)?")
SOURCE_NUMBER = re.compile(r"\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


@dataclass(frozen=True)
class Unit:
    """One paragraph, bullet or table row of README's results, with the files it cites."""

    line: int
    text: str
    sources: tuple[str, ...]


@dataclass(frozen=True)
class Figure:
    """A number as README writes it: its value and the half-width of its last digit."""

    text: str
    value: float
    tolerance: float


def results_section(readme: str) -> list[tuple[int, str]]:
    """The numbered lines from ``## Results`` up to the next level-2 heading."""
    lines = readme.splitlines()
    start = lines.index("## Results")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return [(i + 1, lines[i]) for i in range(start + 1, end)]


def marked_sources(text: str) -> tuple[str, ...]:
    return tuple(name for mark in SOURCE_MARK.findall(text) for name in mark.replace(",", " ").split())


def table_cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def units(readme: str) -> list[Unit]:
    """Split the results section into units: paragraphs and bullets (sources from their ``from:`` marks) and table
    rows (sources from the ``file`` column, else from the paragraph before the table)."""
    found: list[Unit] = []
    paragraph: list[tuple[int, str]] = []
    table_header: list[str] | None = None

    def close_paragraph() -> None:
        if paragraph:
            text = " ".join(line for _, line in paragraph)
            found.append(Unit(paragraph[0][0], text, marked_sources(text)))
            paragraph.clear()

    section = results_section(readme)
    for index, (number, line) in enumerate(section):
        stripped = line.strip()
        if stripped.startswith("|"):
            close_paragraph()
            following = section[index + 1][1].strip() if index + 1 < len(section) else ""
            if re.fullmatch(r"\|[-:| ]+\|", stripped):
                continue
            if re.fullmatch(r"\|[-:| ]+\|", following):
                table_header, introduction = table_cells(stripped), found[-1] if found else None
                table_sources = introduction.sources if introduction else ()
                continue
            cells = table_cells(stripped)
            if table_header and "file" in table_header:
                file_cell = cells.pop(table_header.index("file"))
                sources = tuple(re.findall(r"`([^`]+)`", file_cell))
            else:
                sources = table_sources + marked_sources(stripped)
            found.append(Unit(number, " | ".join(cells), sources))
            continue
        table_header = None
        if not stripped or line.startswith("    ") or stripped.startswith("#"):  # blank, code block, heading
            close_paragraph()
        elif stripped.startswith("- ") or stripped.startswith("\\*"):
            close_paragraph()
            paragraph.append((number, stripped))
        else:
            paragraph.append((number, stripped))
    close_paragraph()
    return found


def figures(text: str) -> list[Figure]:
    """The numbers README states in ``text``: ``2,000``, ``0.92``, ``86.9%``, ``2.5e7``, ``20k``, ``1.31x``."""
    found = []
    for match in README_FIGURE.finditer(NOT_FIGURES.sub(" ", text)):
        mantissa, exponent, thousands = match.group(1).replace(",", ""), int(match.group(2) or 0), match.group(3)
        decimals = len(mantissa.partition(".")[2])
        scale = 10.0 ** exponent * (1000 if thousands else 1)
        found.append(Figure(match.group(0), float(mantissa) * scale, 0.5 * 10.0 ** -decimals * scale))
    return found


def source_files(name: str) -> list[Path]:
    """The files a cited name stands for: a glob under experiments/results/, each .md with its .json twin."""
    paths = sorted(RESULTS.glob(name.removeprefix("experiments/results/")))
    twins = [path.with_suffix(".json") for path in paths if path.suffix == ".md"]
    return paths + [twin for twin in twins if twin.is_file()]


def source_numbers(paths: list[Path]) -> list[float]:
    numbers = []
    for path in paths:
        text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", path.read_text())  # 8,538 -> 8538
        numbers += [float(number) for number in SOURCE_NUMBER.findall(text)]
    return numbers


def matches(figure: Figure, numbers: list[float]) -> bool:
    tolerance = figure.tolerance * (1 + 1e-9)  # a source printed at the figure's precision sits on the boundary
    return any(abs(abs(number) * scale - figure.value) <= tolerance for number in numbers for scale in (1, 100))


def problems(readme: str) -> list[str]:
    """Every figure of the results section without a cited source, with a missing source, or not in its sources."""
    found = []
    for unit in units(readme):
        stated = figures(unit.text)
        if not stated:
            continue
        if not unit.sources:
            found.append(f"README line {unit.line}: {[f.text for f in stated]} cite no source: {unit.text[:80]!r}")
            continue
        paths = [path for name in unit.sources for path in source_files(name)]
        if missing := [name for name in unit.sources if not source_files(name)]:
            found.append(f"README line {unit.line}: cited {missing} not under experiments/results/")
            continue
        numbers = source_numbers(paths)
        found += [f"README line {unit.line}: {figure.text} is not in {list(unit.sources)}"
                  for figure in stated if not matches(figure, numbers)]
    return found


def readme() -> str:
    return (ROOT / "README.md").read_text()


def test_every_results_figure_in_readme_is_in_the_file_it_cites() -> None:
    assert problems(readme()) == []


def new_problems(planted: str) -> list[str]:
    """The problems a changed README has that README itself has not (each test plants one)."""
    known = set(problems(readme()))
    return [problem for problem in problems(planted) if problem not in known]


def test_a_planted_wrong_figure_is_caught() -> None:
    row = "1 thread: int8 1.29x"
    assert row in readme()  # the figure to corrupt is still quoted (bench_formats.md: int8 ratio 1.29)
    assert new_problems(readme().replace(row, "1 thread: int8 1.39x")) == [
        f"README line {line_of(row)}: 1.39 is not in ['bench_formats.md']"]


def test_a_figure_without_a_source_is_caught() -> None:
    planted = readme().replace("\n## Layout", "\nUnseeded it reached 0.51.\n\n## Layout")
    assert new_problems(planted) == [f"README line {line_of('## Layout')}: ['0.51'] cite no source: "
                                     "'Unseeded it reached 0.51.'"]


def test_a_missing_cited_file_is_caught() -> None:
    planted = readme().replace("\n## Layout", "\nMeasured 12 s. <!-- from: no_such_bench.md -->\n\n## Layout")
    assert new_problems(planted) == [f"README line {line_of('## Layout')}: cited ['no_such_bench.md'] not under "
                                     "experiments/results/"]


def line_of(text: str) -> int:
    return next(number for number, line in enumerate(readme().splitlines(), 1) if text in line)


@pytest.mark.parametrize(("written", "source", "found"), [
    ("86.9%", 0.869, True),  # a fraction quoted as a percentage
    ("0.92 points", 0.9213, True),  # rounded to the quoted precision
    ("0.92 points", 0.9251, False),
    ("2,000 images", 2000, True),
    ("20k images", 20000, True),
    ("2.5e7 BitOps", 2.5e7, True),
    ("1.29e8 BitOps", 1.3e8, False),
    ("+0.38 tau", -0.3837, True),  # the sign is README's wording
])
def test_a_figure_matches_a_source_number_at_its_precision(written: str, source: float, found: bool) -> None:
    (figure,) = figures(written)
    assert matches(figure, [source]) is found


def test_commands_inline_code_and_names_are_not_figures() -> None:
    text = "int8 and fp4_e2m1 on MobileNetV2 (`training.smallest: true`, [x](results/a1.md)) <!-- from: b2.md -->"
    assert figures(text) == []


COMMAND = re.compile(r"`[^`\n]*(?:\.py|automq )[^`\n]*`")


@pytest.mark.parametrize("path", sorted(RESULTS.glob("*.md")) + sorted(RESULTS.glob("compare_all_*/compare_all.md")),
                         ids=lambda path: str(path.relative_to(RESULTS)))
def test_every_results_file_states_its_command_machine_and_wall_time(path: Path) -> None:
    text = path.read_text()
    assert COMMAND.search(text), "no command in backticks (an experiments/*.py or automq command line)"
    assert re.search(r"\bmachine\b", text, re.I), "no machine (write 'machine: not recorded' if it is unknown)"
    assert re.search(r"\bwall time\b", text, re.I), "no wall time (write 'wall time: not recorded' if unknown)"
