"""What a benchmark's result file records about its run: the command line, the machine and the wall time."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from automq.io import atomic_write_json, atomic_write_text


def command() -> str:
    """The command line of this process, as one could paste it into a shell."""
    return shlex.join([sys.executable, *sys.argv])


def machine() -> dict[str, Any]:
    """What the numbers were measured on (the CPU by name: timings on another one are not comparable)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
               platform.processor() or platform.machine())
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def machine_text(info: dict[str, Any]) -> str:
    """``machine()`` in one line for a Markdown header; also the records of the scripts' earlier copies of it, which
    lack some of its keys, name the GPU ``cuda`` and add ``shared`` and ``load_average``."""
    usable, count, gpu = info.get("usable_cpus"), info.get("cpu_count"), info.get("gpu") or info.get("cuda")
    cpus = (f"{usable} usable of {count} CPUs" if usable and count else
            f"{usable} usable CPUs" if usable else f"{count} CPUs")
    torch_threads = info.get("torch_threads")
    threads = f" with {torch_threads} thread{'' if torch_threads == 1 else 's'}" if torch_threads else ""
    parts = [f"{info['cpu']} ({cpus})" if "cpu" in info else cpus, f"GPU {gpu}" if gpu else "",
             f"Python {info['python']}" if "python" in info else "", f"torch {info['torch']}{threads}",
             info.get("platform", ""), info.get("shared", ""),
             f"1-min load average {info['load_average'][0]:.1f}" if "load_average" in info else ""]
    return ", ".join(part for part in parts if part)


def header(result: dict[str, Any]) -> list[str]:
    """The Markdown lines naming a result's ``command``, ``machine`` and ``wall_s``."""
    return [f"- command: `{result['command']}`", f"- machine: {machine_text(result['machine'])}",
            f"- wall time: {result['wall_s']:.0f} s"]


def judge_and_write(args: argparse.Namespace, judge: Callable[[argparse.Namespace], dict[str, Any]],
                    markdown: Callable[[dict[str, Any]], str], name: str) -> dict[str, Any]:
    """A judging script's run: ``judge(args)`` on one torch thread (the estimates do not depend on the machine's
    core count), its record written to ``<args.out>/<name>.json`` and its table to ``<name>.md``, atomically."""
    torch.set_num_threads(1)
    result = judge(args)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"{name}.json", result)
    atomic_write_text(args.out / f"{name}.md", markdown(result))
    return result
