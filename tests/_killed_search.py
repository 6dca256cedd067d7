"""A search through Ray (2 workers, a stand-in evaluator on ``tiny_enum``) SIGKILLed mid-run and resumed.

Shared by the tune and evolution tests: both run Ray Tune's executor, so both must keep every trial that finished
before the kill and continue the numbering after it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from automq.search.results import load_trials
from automq.search.trial import Trial

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_tune import ProxyEvaluator
from automq.search.driver import run_search
from automq.space.space import SearchSpace

space = SearchSpace.from_file({space!r})
run_search(space, out={out!r}, strategy={strategy!r}, trials={trials}, resume="--resume" in sys.argv, progress=False,
           options={{"workers": 2, "batch_size": 2}}, evaluator=ProxyEvaluator(space, delay_s=0.3))
"""


def kill_then_resume(tmp_path: Path, strategy: str, *, trials: int, kill_after: int) -> tuple[list[dict], list[Trial]]:
    """Start the search, SIGKILL its process group once ``kill_after`` trials are logged, resume it to the end.

    Returns the logged trials (as dicts) at the kill and all trials after the resume."""
    out, script = tmp_path / "search", tmp_path / "search.py"
    script.write_text(SCRIPT.format(tests=str(TESTS), space=str(REPO / "spaces/tiny_enum.yaml"), out=str(out),
                                    strategy=strategy, trials=trials))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(TESTS)])}
    with (tmp_path / "stderr.txt").open("w") as stderr:
        process = subprocess.Popen([sys.executable, str(script)], env=env, start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + 120
        while len(load_trials(out)) < kill_after and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
        os.killpg(process.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        process.wait()
    before = [t.to_dict() for t in load_trials(out)]
    assert kill_after <= len(before) < trials, (tmp_path / "stderr.txt").read_text()[-2000:]
    subprocess.run([sys.executable, str(script), "--resume"], env=env, check=True, timeout=300,
                   stdout=subprocess.DEVNULL)
    return before, load_trials(out)
