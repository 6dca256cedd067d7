import hashlib
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from automq.space.candidate import Candidate
from automq.cost import CostModel, cost_range
from automq.search.results import SearchLog, load_trials
from automq.space.space import SearchSpace
from automq.strategies.tune import (
    MAX_REPEATS,
    SAMPLERS,
    Proposals,
    SuggestCandidate,
    TuneStrategy,
    create_sampler,
    directions,
    retell,
    seed_candidates,
    tell,
)
from automq.search.strategy import Budget, evaluate_candidate

from _killed_search import kill_then_resume

F64 = 1e-12  # values passed through float64 arithmetic of a few operations: relative error far below this

REPO = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


class ProxyEvaluator:
    """Stand-in for the one-shot estimator: accuracy grows with log BitOps, minus a fixed per-candidate jitter,
    so fronts are not trivial; ``delay_s`` simulates evaluation time; ``calls`` lists the candidates scored."""

    def __init__(self, space, delay_s=0.0):
        self.space, self.delay_s = space, delay_s
        self.cost_model = CostModel(space)
        low, high = cost_range(space)["bitops"]
        self.log_low, self.log_high = math.log(low), math.log(high)
        self.calls = []

    def costs(self, candidate):
        return self.cost_model.metrics(candidate)

    def __call__(self, candidate):
        self.calls.append(candidate.id)
        time.sleep(self.delay_s)
        costs = self.costs(candidate)
        x = (math.log(costs["bitops"]) - self.log_low) / (self.log_high - self.log_low)
        jitter = int(hashlib.sha1(candidate.id.encode()).hexdigest()[:8], 16) / 2**32
        accuracy = 0.5 + 0.4 * x - 0.1 * jitter
        return {**costs, "accuracy": accuracy, "loss": 1.0 - accuracy}


class FailingEvaluator(ProxyEvaluator):
    """Fails every attempt on candidates whose head activations are int4, and the first attempt (remembered in
    a marker file, so across worker processes) on other candidates of width 0.75."""

    def __init__(self, space, marker_dir):
        super().__init__(space)
        self.marker_dir = str(marker_dir)

    def __call__(self, candidate):
        if candidate.layer_formats()["conv_head"][1] == "int4":
            raise RuntimeError("int4 head always breaks")
        marker = Path(self.marker_dir) / candidate.id
        if candidate.width_mult == 0.75 and not marker.exists():
            marker.touch()
            raise RuntimeError("flaky first attempt")
        return super().__call__(candidate)


class BarrierEvaluator(ProxyEvaluator):
    """Each Ray node's first evaluation waits (up to a minute) until another node has started one too, so a
    search that finishes proves that two nodes evaluated candidates at the same time."""

    def __init__(self, space, folder):
        super().__init__(space)
        self.folder = str(folder)

    def __call__(self, candidate):
        import ray

        (Path(self.folder) / ray.get_runtime_context().get_node_id()).touch()
        deadline = time.monotonic() + 60
        while len(list(Path(self.folder).iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        return super().__call__(candidate)


@pytest.fixture(scope="module")
def space():
    return SearchSpace.from_file(REPO / "spaces/mbv2_fmnist.yaml")


@pytest.fixture(scope="module")
def tiny():
    return SearchSpace.from_file(REPO / "spaces/tiny_enum.yaml")


@pytest.fixture(scope="module")
def budgeted(space):
    """mbv2_fmnist with a BitOps budget 30% of the way from its smallest to its largest candidate."""
    low, high = cost_range(space)["bitops"]
    data = yaml.safe_load(Path(space.source).read_text())
    data["budgets"] = {"bitops": low + 0.3 * (high - low)}
    return SearchSpace.from_dict(data, source=space.source)


def bitops(space, candidate):
    return CostModel(space).metrics(candidate)["bitops"]


EXPECTED_SAMPLERS = {"nsga2": optuna.samplers.NSGAIISampler, "nsga3": optuna.samplers.NSGAIIISampler,
                     "tpe": optuna.samplers.TPESampler, "gp": optuna.samplers.GPSampler,
                     "random": optuna.samplers.RandomSampler}


@pytest.mark.parametrize("name", sorted(EXPECTED_SAMPLERS))
def test_create_sampler_by_name(name):
    assert type(create_sampler(name, seed=0, trials=100)) is EXPECTED_SAMPLERS[name]


def test_sampler_options_and_unknown_name():
    assert create_sampler("tpe", seed=0, trials=10)._multivariate
    assert create_sampler("nsga2", seed=0, trials=200)._population_size == 20  # ten generations in the budget
    assert create_sampler("nsga3", seed=0, trials=1000)._population_size == 50
    with pytest.raises(ValueError, match="nsga2, nsga3, tpe, gp, random"):
        create_sampler("cmaes", seed=0, trials=10)
    assert sorted(SAMPLERS) == sorted(EXPECTED_SAMPLERS)
    with pytest.raises(ValueError, match="unknown sampler 'cmaes'"):
        TuneStrategy(sampler="cmaes")


@pytest.mark.parametrize("name", ["nsga2", "nsga3", "tpe", "random"])
def test_define_by_run_suggests_exactly_the_active_decisions(space, name):
    suggest, evaluator = SuggestCandidate(space), ProxyEvaluator(space)
    study = optuna.create_study(directions=directions(space), sampler=create_sampler(name, seed=1, trials=40))
    multi_choice = {d.name for d in space.decisions()}
    for _ in range(40):  # population 8: NSGA-II/III breed from the second generation on
        ot_trial = study.ask()
        candidate = Candidate.from_json(suggest(ot_trial)["candidate"])
        space.validate_candidate(candidate)
        # checked from the candidate itself: a block's decisions are suggested iff the stage depth reaches it
        blocks = {f"blocks.{i}.{j}.{key}" for i, depth in enumerate(candidate.depths) for j in range(depth)
                  for key in ("kernel_size", "expand_ratio")}
        layers = {f"{layer}.{fmt}" for layer, _, _ in candidate.formats for fmt in ("w_fmt", "a_fmt")}
        arch = {"width_mult"} | {f"stages.{i}.depth" for i in range(len(candidate.depths))}
        assert set(ot_trial.params) == (blocks | layers | arch) & multi_choice
        assert space.candidate_from_choices(ot_trial.params) == candidate
        study.tell(ot_trial, [evaluator(candidate)["accuracy"], bitops(space, candidate)])


def test_budget_is_rejected_with_its_reason_and_never_scored(budgeted):
    limit, evaluator = budgeted.budgets["bitops"], ProxyEvaluator(budgeted)
    trials = TuneStrategy(sampler="nsga2", workers=0).run(budgeted, evaluator, Budget(30), seed=3)
    assert {t.status for t in trials} == {"ok", "infeasible"}
    for trial in trials:
        cost = bitops(budgeted, trial.candidate)
        assert trial.status == ("infeasible" if cost > limit else "ok")
        if trial.status == "infeasible":
            assert trial.error == f"bitops = {cost:.6g} > budget {limit:.6g}"
            assert "accuracy" not in trial.metrics
    assert sorted(evaluator.calls) == sorted(t.candidate.id for t in trials if t.status == "ok")


def test_budget_is_an_optuna_constraint_set_in_the_define_by_run_function(budgeted):
    limit, evaluator = budgeted.budgets["bitops"], ProxyEvaluator(budgeted)
    suggest = SuggestCandidate(budgeted)
    study = optuna.create_study(directions=directions(budgeted), sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(12):
        ot_trial = study.ask()
        trial = evaluate_candidate(0, Candidate.from_json(suggest(ot_trial)["candidate"]), evaluator, strategy="tune")
        tell(study, ot_trial, budgeted, trial)
    states = set()
    for frozen in study.trials:
        cost = bitops(budgeted, budgeted.candidate_from_choices(frozen.params))
        assert frozen.constraints == {"bitops": pytest.approx((cost - limit) / limit, rel=F64)}
        assert frozen.state == optuna.trial.TrialState.COMPLETE
        feasible = cost <= limit
        states.add(feasible)
        # infeasible: the analytic cost and chance-level accuracy (1 of 10 classes), never a measured value
        assert frozen.values[1] == pytest.approx(cost, rel=F64)
        if not feasible:
            assert frozen.values[0] == pytest.approx(0.1, rel=F64)
    assert states == {True, False}
    assert all(all(v <= 0 for v in t.constraints.values()) for t in study.best_trials)


def test_batched_optuna_search_tells_each_candidate_of_a_batch(tiny):
    from ray.tune.search import Searcher

    from automq.strategies._tune_ray import CANDIDATES, INDEX, RECORD, BatchedOptunaSearch

    suggest, evaluator = SuggestCandidate(tiny), ProxyEvaluator(tiny)
    search = BatchedOptunaSearch(suggest, metric=["accuracy", "bitops"], mode=["max", "min"],
                                 sampler=optuna.samplers.RandomSampler(seed=0), batch_size=3, total=5)
    first, second = search.suggest("a"), search.suggest("b")
    assert search.suggest("a") is first and search.suggest("c") == Searcher.FINISHED  # 3 + 2 handed out
    assert [len(first[CANDIDATES]), len(second[CANDIDATES])] == [3, 2]
    for index in (0, 2):
        trial = evaluate_candidate(0, Candidate.from_json(first[CANDIDATES][index]), evaluator, strategy="tune")
        search.on_trial_result("a", {INDEX: index, RECORD: json.dumps(trial.to_dict())})
        search.on_trial_result("a", {INDEX: index, RECORD: json.dumps(trial.to_dict())})  # a retry re-reports it
    search.on_trial_complete("a", error=True)
    states = [t.state for t in search.proposals.study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL,
                      optuna.trial.TrialState.COMPLETE] + [optuna.trial.TrialState.RUNNING] * 2
    told = Candidate.from_json(first[CANDIDATES][2])
    told_values = [pytest.approx(evaluator(told)["accuracy"], rel=F64), bitops(tiny, told)]
    assert search.proposals.study.trials[2].values == told_values


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_repeated_proposals_are_answered_from_the_record_not_evaluated(tiny):
    suggest, evaluator = SuggestCandidate(tiny), ProxyEvaluator(tiny)
    a, b = (tiny.choices_of(tiny.sample(seed)) for seed in (0, 1))
    fixed_a = optuna.samplers.PartialFixedSampler(a, optuna.samplers.RandomSampler(seed=0))
    study = optuna.create_study(directions=directions(tiny), sampler=fixed_a)
    proposals = Proposals(study, tiny)
    ot_a, candidate_a = proposals.ask(suggest)
    for params in (a, b):
        study.enqueue_trial(params)
    ot_b, candidate_b = proposals.ask(suggest)  # a again, still being evaluated: dropped
    assert candidate_b == tiny.candidate_from_choices(b)
    scored_a = evaluate_candidate(0, candidate_a, evaluator, strategy="tune")
    proposals.tell(ot_a, scored_a)
    assert proposals.ask(suggest) is None  # the fixed sampler only repeats a: taken as converged
    states = [t.state for t in study.trials]
    assert states[:3] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.RUNNING]
    assert len(study.trials) == 3 + MAX_REPEATS
    assert all(t.values == study.trials[0].values for t in study.trials[3:])  # told a's recorded result
    assert evaluator.calls == [candidate_a.id]


def test_seeds_are_the_feasible_uniform_points_and_the_smallest_spread_over_bitops(budgeted):
    model = CostModel(budgeted)
    pool = [budgeted.uniform(w, a, "largest", clamp=True) for w, a in budgeted.uniform_pairs()]
    pool.append(budgeted.smallest())
    limit = budgeted.budgets["bitops"]
    feasible = sorted({c.id: c for c in pool if model.metrics(c)["bitops"] <= limit}.values(),
                      key=lambda c: model.metrics(c)["bitops"])
    assert 3 < len(feasible) < len(pool)  # the budget rules some uniform points out
    assert seed_candidates(budgeted, 100) == feasible
    assert seed_candidates(budgeted, 3) == [feasible[0], feasible[round((len(feasible) - 1) / 2)], feasible[-1]]
    assert seed_candidates(budgeted, 1) == [feasible[0]] and seed_candidates(budgeted, 0) == []


def test_a_search_scores_its_seeds_first_and_a_resumed_one_not_again(space, tmp_path):
    strategy = TuneStrategy(sampler="nsga2", workers=0)
    first = strategy.run(space, ProxyEvaluator(space), Budget(12), seed=0,
                         log=SearchLog(tmp_path, space, strategy="tune"))
    seeds = seed_candidates(space, 12 // 4)
    assert [t.candidate for t in first[:3]] == seeds
    evaluator = ProxyEvaluator(space)
    strategy.run(space, evaluator, Budget(12), seed=0, log=SearchLog(tmp_path, space, strategy="tune", resume=True))
    # 24 trials in all now allow 6 seeds: the resumed run scores those it has not scored yet, first
    unscored = [c.id for c in seed_candidates(space, 24 // 4) if c not in seeds]
    assert evaluator.calls[:len(unscored)] == unscored and not {c.id for c in seeds} & set(evaluator.calls)
    unseeded = TuneStrategy(sampler="nsga2", workers=0, seed_fraction=0).run(space, ProxyEvaluator(space),
                                                                             Budget(3), seed=0)
    assert [t.candidate for t in unseeded] != seeds
    with pytest.raises(ValueError, match="seed_fraction must be within"):
        TuneStrategy(seed_fraction=1.5)


def test_same_seed_same_search(space):
    def ids(seed):
        trials = TuneStrategy(sampler="nsga2", workers=0).run(space, ProxyEvaluator(space), Budget(12), seed=seed)
        return [t.candidate.id for t in trials]

    assert ids(5) == ids(5)
    assert ids(5) != ids(6)


def test_resume_retells_logged_trials_instead_of_evaluating_them(budgeted, tmp_path):
    strategy = TuneStrategy(sampler="nsga2", workers=0)
    first = strategy.run(budgeted, ProxyEvaluator(budgeted), Budget(10), seed=0,
                         log=SearchLog(tmp_path, budgeted, strategy="tune"))
    evaluator = ProxyEvaluator(budgeted)
    log = SearchLog(tmp_path, budgeted, strategy="tune", resume=True)
    second = strategy.run(budgeted, evaluator, Budget(10), seed=0, log=log)
    assert len(evaluator.calls) == sum(t.status == "ok" for t in second)  # only the new trials were scored
    saved = load_trials(tmp_path)
    assert [t.number for t in saved] == list(range(20))
    assert [t.to_dict() for t in saved] == [t.to_dict() for t in first + second]
    assert [t.candidate.id for t in second] != [t.candidate.id for t in first]  # a resumed run draws anew

    suggest = SuggestCandidate(budgeted)
    study = optuna.create_study(directions=directions(budgeted))
    retell(study, suggest, saved)
    for frozen, trial in zip(study.trials, saved, strict=True):
        assert budgeted.candidate_from_choices(frozen.params) == trial.candidate
        assert frozen.values[1] == trial.metrics["bitops"]
        limit = budgeted.budgets["bitops"]
        assert frozen.constraints["bitops"] == pytest.approx((trial.metrics["bitops"] - limit) / limit, rel=F64)


def assert_failures_recorded(trials, max_failures):
    assert {t.status for t in trials} >= {"ok", "failed"}
    for trial in trials:
        head = trial.candidate.layer_formats()["conv_head"][1]
        if head == "int4":
            assert trial.status == "failed" and "int4 head always breaks" in trial.error
            assert trial.info["attempts"] == max_failures + 1
        else:
            assert trial.status == "ok"
            assert trial.info["attempts"] == (2 if trial.candidate.width_mult == 0.75 else 1)


def test_local_failures_are_retried_then_recorded(tiny, tmp_path):
    trials = TuneStrategy(sampler="random", workers=0, max_failures=2).run(
        tiny, FailingEvaluator(tiny, tmp_path), Budget(16), seed=0)
    assert len(trials) == 16
    assert_failures_recorded(trials, max_failures=2)


# ------------------------------------------------------------------------------------- an existing cluster
# What README's "On a Ray cluster" section tells a user to do, run as written: `ray start` processes and the
# `automq search --address` command, with the one-shot estimator of a tiny trained supernet.
CLUSTER_SPACE_CHANGES = {
    "dataset": {"input_size": 64, "val_size": 512},
    "training": {"epochs": 1, "batch_size": 32, "num_random": 1, "train_size": 64},
    "search": {"eval_size": 512, "calib_size": 32},
}
RAY_ENV_SETTINGS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "RAY_TMPDIR")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def automq_command(*argv, env, timeout):
    """Run the `automq` command in a fresh process, as a user would."""
    return subprocess.run([sys.executable, "-m", "automq.cli", *map(str, argv)], env=env, timeout=timeout,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def supernet_run(tiny_space, tmp_path_factory):
    """(space file, train-supernet run folder) of a tiny supernet trained for one epoch."""
    from automq.cli import main

    folder = tmp_path_factory.mktemp("supernet")
    space_file = Path(tiny_space(CLUSTER_SPACE_CHANGES, folder=folder).source)
    assert main(["train-supernet", str(space_file), "--out", str(folder / "run")]) == 0
    return space_file, folder / "run"


def ray_command(*argv):
    return [Path(sys.executable).parent / "ray", *argv]


@pytest.fixture
def user_env(tmp_path):
    """The environment of a user who has set no Ray variable and made a token with `ray get-auth-token
    --generate`, in a temporary HOME (so the real ~/.ray is untouched)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in RAY_ENV_SETTINGS}
    env = {**env, "HOME": str(home), "OMP_NUM_THREADS": "1"}
    subprocess.run(ray_command("get-auth-token", "--generate"), env=env, check=True, capture_output=True)
    assert (home / ".ray" / "auth_token").is_file()
    return env


def start_ray_node(arguments, env, log):
    """`ray start ... --block` of one node, in its own session so that its PID names all its processes."""
    return subprocess.Popen(ray_command("start", *arguments, "--num-cpus", "1", "--disable-usage-stats", "--block"),
                            env=env, start_new_session=True, stdout=log.open("w"), stderr=subprocess.STDOUT)


def wait_until_running(process, log):
    deadline = time.monotonic() + 120
    while "Ray runtime started" not in log.read_text():
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)


def stop_ray_node(process):
    """SIGTERM to the `ray start --block` process stops its node's processes; SIGKILL whatever of its process
    group is left after a minute."""
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the whole group is gone
    process.wait()


@pytest.fixture
def started_cluster(user_env, tmp_path):
    """A head started with `ray start --head --port PORT` and a second node joining it as README says, one CPU
    each, in a short temp dir (Ray's unix sockets need short paths); yields the address. Both nodes are stopped
    by their PIDs, and the temp dir removed, whether the test passes or not."""
    temp_dir = tempfile.mkdtemp(prefix="amq-ray-")
    port = free_port()
    address = f"127.0.0.1:{port}"
    head_log, node_log = tmp_path / "head.log", tmp_path / "node.log"
    nodes = []
    try:
        nodes.append(start_ray_node(["--head", "--port", str(port), "--temp-dir", temp_dir, "--include-dashboard",
                                     "false"], user_env, head_log))
        wait_until_running(nodes[-1], head_log)
        assert "Token authentication is enabled" in head_log.read_text()  # it found the user's token
        # Ray 2.60's `ray start --address` joins with authentication off unless told
        nodes.append(start_ray_node(["--address", address, "--temp-dir", temp_dir],
                                    {**user_env, "RAY_AUTH_MODE": "token"}, node_log))
        wait_until_running(nodes[-1], node_log)
        yield address
    finally:
        for node in reversed(nodes):
            stop_ray_node(node)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_search_on_a_cluster_started_as_the_readme_says(started_cluster, supernet_run, user_env, tmp_path):
    space_file, run = supernet_run
    out = tmp_path / "search"
    finished = automq_command("search", space_file, "--supernet", run, "--strategy", "tune", "--address",
                              started_cluster, "--workers", 2, "--option", "batch_size=2", "--trials", 12,
                              "--out", out, env=user_env, timeout=400)
    assert finished.returncode == 0, finished.stderr[-3000:]
    trials = load_trials(out)
    assert [t.status for t in trials] == ["ok"] * 12
    assert all(0 <= t.metrics["accuracy"] <= 1 for t in trials)  # measured by the one-shot estimator
    placement = [(t.worker, t.info["tune_trial"], t.wall_s) for t in trials]
    assert len({t.info["node_id"] for t in trials}) == 2, placement  # the head and the second node evaluated

    # the same head refuses a wrong token: one line that says where the token belongs, no traceback
    wrong = automq_command("search", space_file, "--supernet", run, "--strategy", "tune", "--address",
                           started_cluster, "--trials", 1, "--out", tmp_path / "refused",
                           env={**user_env, "RAY_AUTH_TOKEN": secrets.token_hex(32)}, timeout=120)
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    last_line = wrong.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"automq: error: the Ray cluster at {started_cluster} rejected this machine's "
                                "authentication token: put the head node's ~/.ray/auth_token"), wrong.stderr[-3000:]


@pytest.mark.parametrize(("address", "message"), [
    ("127.0.0.1:{port}", "cannot reach a Ray cluster at 127.0.0.1:{port} (Connection refused): check that "
                         "`ray start --head --port {port}` runs on 127.0.0.1"),
    ("{port}", "--address '{port}': expected auto, HOST:PORT or ray://HOST:PORT"),
])
def test_a_cluster_that_cannot_be_reached_is_one_error_line_at_once(address, message, supernet_run, user_env,
                                                                     tmp_path):
    port = free_port()  # nobody listens there
    space_file, run = supernet_run
    start = time.monotonic()
    finished = automq_command("search", space_file, "--supernet", run, "--strategy", "tune", "--address",
                              address.format(port=port), "--trials", 1, "--out", tmp_path / "search", env=user_env,
                              timeout=120)
    assert time.monotonic() - start < 60  # Ray alone retries an unreachable head for minutes
    assert finished.returncode == 2
    assert finished.stderr.startswith("automq: error: ") and finished.stderr.count("\n") == 1, finished.stderr
    assert message.format(port=port) in finished.stderr


# ------------------------------------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A two-node Ray cluster of one CPU each on this machine; its files stay in a pytest folder."""
    import ray
    from ray.cluster_utils import Cluster

    folder = tmp_path_factory.mktemp("ray")
    (folder / "ray").mkdir()
    link = Path("/tmp") / f"amq-test-{os.getpid()}"  # Ray's unix sockets need a short path
    link.symlink_to(folder, target_is_directory=True)
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("RAY_TMPDIR", str(link))  # session files and the cluster-address file
            # the nodes' workers unpickle this module's evaluators
            env.setenv("PYTHONPATH", os.pathsep.join([str(REPO), str(TESTS), os.environ.get("PYTHONPATH", "")]))
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
            try:
                cluster.add_node(num_cpus=1)
                cluster.wait_for_nodes()
                ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
                yield cluster
            finally:
                ray.shutdown()
                cluster.shutdown()
    finally:
        link.unlink()


@pytest.mark.slow
def test_search_runs_on_both_nodes_of_a_ray_cluster(ray_cluster, tiny, tmp_path):
    import ray

    log = SearchLog(tmp_path / "log", tiny, strategy="tune")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    trials = TuneStrategy(sampler="nsga2", workers=2, batch_size=2).run(
        tiny, BarrierEvaluator(tiny, barrier), Budget(12), seed=0, log=log)
    assert [t.number for t in load_trials(tmp_path / "log")] == list(range(12))
    assert all(t.status == "ok" for t in trials)
    nodes = {node["NodeID"] for node in ray.nodes()}
    assert {p.name for p in barrier.iterdir()} == nodes  # both nodes were evaluating at once
    assert {t.info["node_id"] for t in trials} == nodes
    assert {t.worker for t in trials} == {f"{t.info['node_ip']}:{t.info['node_id'][:8]}" for t in trials}


@pytest.mark.slow
def test_ray_failures_are_retried_then_recorded(ray_cluster, tiny, tmp_path):
    trials = TuneStrategy(sampler="random", workers=2, batch_size=4, max_failures=1).run(
        tiny, FailingEvaluator(tiny, tmp_path), Budget(8), seed=0)
    assert len(trials) == 8
    assert_failures_recorded(trials, max_failures=1)


@pytest.mark.slow
def test_killed_search_resumes_without_losing_a_finished_trial(tmp_path):
    before, after = kill_then_resume(tmp_path, "tune", trials=16, kill_after=4)
    assert [t.to_dict() for t in after[:len(before)]] == before  # nothing finished before the kill was lost
    assert [t.number for t in after] == list(range(16))
    assert json.loads((tmp_path / "search" / "run.json").read_text())["resumed_with_trials"] == len(before)
    links = [p for p in Path(tempfile.gettempdir()).glob("automq-ray-*")
             if p.is_symlink() and str(tmp_path) in os.readlink(p)]
    assert links == []  # the resumed search removed the link to its Ray files that the killed one left
