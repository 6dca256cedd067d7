"""Devices: ``--device`` resolves to a torch device or is one ``automq: error:`` line; every format fake-quantizes the
same values on CUDA as on the CPU, and the CPU against an independent numpy/ml_dtypes reference; the CPU path of
training and estimating is the one it was before devices existed; in-memory images move to the device once.

Where torch sees no GPU (the CI machine) the CUDA comparisons are replaced by the CPU-against-reference ones, never
skipped; ``experiments/gpu_check.py`` runs the GPU side on a GPU machine."""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from automq.cli import main
from automq.data import fixed_batches, make_loader
from automq.device import DeviceError, module_device, resolve_device
from automq.numerics.formats import format_names, get_format
from automq.oneshot.evaluate import OneShotEstimator
from automq.oneshot.train import load_space_data, load_supernet, train_supernet
from automq.space.space import SearchSpace

from _spaces import SpaceFactory

CUDA = torch.cuda.is_available()
ELEMENT_DTYPES = {
    "fp8_e4m3": ml_dtypes.float8_e4m3fn, "fp8_e5m2": ml_dtypes.float8_e5m2, "fp6_e3m2": ml_dtypes.float6_e3m2fn,
    "fp6_e2m3": ml_dtypes.float6_e2m3fn, "fp4_e2m1": ml_dtypes.float4_e2m1fn, "mxfp8_e4m3": ml_dtypes.float8_e4m3fn,
    "mxfp6_e3m2": ml_dtypes.float6_e3m2fn, "mxfp4_e2m1": ml_dtypes.float4_e2m1fn,
}  # fmt: skip
CAST_DTYPES = {"fp16": np.float16, "bf16": ml_dtypes.bfloat16, "fp32": np.float32}
MX_EMAX = {"mxfp8_e4m3": 8, "mxfp6_e3m2": 4, "mxfp4_e2m1": 2, "mxint8": 0}  # OCP MX spec, emax of the element
MX_BLOCK = 32
SPACE_CHANGES = {
    "dataset": {"val_size": 64},
    "training": {"epochs": 1, "batch_size": 32, "num_random": 1, "train_size": 96},
    "search": {"eval_size": 64, "calib_size": 32},
}


# ------------------------------------------------------------------------------------------------ resolve_device
def test_auto_is_the_gpu_when_torch_sees_one_and_cpu_is_always_the_cpu() -> None:
    assert resolve_device("auto") == resolve_device(None) == torch.device("cuda" if CUDA else "cpu")
    assert resolve_device("cpu") == resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("spec, words", [("gpu", "is not a device"), ("mps", "not on mps"), ("cuda:x", "not a device")])
def test_a_malformed_or_foreign_device_names_the_choices(spec: str, words: str) -> None:
    with pytest.raises(DeviceError, match=words) as error:
        resolve_device(spec)
    assert "auto, cpu, cuda or cuda:N" in str(error.value)


def _missing_gpu() -> str:
    """A CUDA device this machine lacks: any GPU on a CPU machine, the one past the last on a GPU machine."""
    return f"cuda:{torch.cuda.device_count()}" if CUDA else "cuda"


def test_a_missing_gpu_is_a_device_error() -> None:
    with pytest.raises(DeviceError, match="CUDA GPU"):
        resolve_device(_missing_gpu())
    if CUDA:
        assert resolve_device("cuda:0") == torch.device("cuda:0")


@pytest.mark.parametrize("command", [
    ["train-supernet", "SPACE", "--out", "OUT"],
    ["estimate", "RUN", "largest"],
    ["export", "RUN", "largest", "--out", "OUT/model.pt"],
    ["search", "SPACE", "--supernet", "RUN", "--out", "OUT"],
])  # fmt: skip
def test_every_command_that_computes_refuses_a_missing_gpu_in_one_line_before_any_work(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the paths do not exist: a command that looked at them before the device would report them instead
    argv = [arg.replace("SPACE", str(tmp_path / "space.yaml")).replace("RUN", str(tmp_path / "run"))
            .replace("OUT", str(tmp_path / "out")) for arg in command]
    assert main([*argv, "--device", _missing_gpu()]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"automq: error: --device '{_missing_gpu()}'") and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_gpus_per_trial_is_refused_by_a_strategy_without_ray_trials(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["search", "tiny", "--supernet", str(tmp_path), "--out", str(tmp_path / "out"), "--strategy", "random",
            "--gpus-per-trial", "0.25", "--device", "cpu"]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("automq: error: --gpus-per-trial is not an option of the 'random'")


@pytest.mark.parametrize("fraction, accepted", [(0.25, True), (1, True), (2, True), (1.5, False), (-0.5, False)])
def test_tune_asks_ray_for_gpu_fractions_up_to_one_or_whole_gpus(fraction: float, accepted: bool) -> None:
    from automq.strategies.tune import TuneStrategy

    if accepted:
        assert TuneStrategy(gpus_per_trial=fraction).gpus_per_trial == fraction
    else:
        with pytest.raises(ValueError, match="gpus_per_trial"):
            TuneStrategy(gpus_per_trial=fraction)


# ------------------------------------------------------------------------------------------------ numerics
WEIGHT_SCALES = torch.tensor([2.0**-9, 2.0**-6, 0.25, 0.75, 3.0, 40.0])  # per row: some values clip, some do not


def _weights() -> torch.Tensor:
    """A conv weight [6, 40, 3, 3] whose rows span 2^-8..2^8, with a zero MX block and exact ties of the int grid."""
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(6, 40, 3, 3, generator=gen) * torch.exp2(torch.arange(-8.0, 10.0, 3.0)).view(6, 1, 1, 1)
    w[1].view(-1)[:MX_BLOCK] = 0.0
    w[2].view(-1)[:8] = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 3.5, 4.5, -2.5]) * WEIGHT_SCALES[2]
    return w


def _activations() -> torch.Tensor:
    """An activation [2, 40, 4, 4]: 40 channels make one whole and one partial MX block along the channel axis."""
    gen = torch.Generator().manual_seed(8)
    return torch.randn(2, 40, 4, 4, generator=gen) * 3.0


def _reference(name: str, x: torch.Tensor, scale: torch.Tensor | None, axis: int | None) -> torch.Tensor:
    """``name``'s fake quantization recomputed with numpy and ml_dtypes, from the format's definition."""
    fmt, values = get_format(name), x.numpy()
    if name in CAST_DTYPES:
        return torch.from_numpy(values.astype(CAST_DTYPES[name]).astype(np.float32))
    if fmt.family == "mx":
        return torch.from_numpy(_mx_reference(name, values, axis))
    s = scale.numpy().reshape([-1] + [1] * (values.ndim - 1))
    y = values * (np.float32(1.0) / s)  # float32, as the scaled formats compute it
    if fmt.family == "int":
        half = 2.0 ** (fmt.bits - 1)
        q = np.round(np.clip(y, -half, half - 1))  # np.round: half to even
    else:
        top = float(ml_dtypes.finfo(ELEMENT_DTYPES[name]).max)
        q = np.clip(y, -top, top).astype(ELEMENT_DTYPES[name]).astype(np.float32)
    return torch.from_numpy((q * s).astype(np.float32))


def _mx_reference(name: str, values: np.ndarray, axis: int | None) -> np.ndarray:
    """OCP MX: blocks of 32 along the reduction axis (a weight row's in*kh*kw, an activation's channels) share
    2^(floor(log2 amax) - emax) clamped to [-127, 127]; elements round to nearest even and saturate."""
    rows = values.reshape(values.shape[0], -1) if axis == 0 else np.moveaxis(values, 1, -1)
    length = rows.shape[-1]
    padded = np.pad(rows.astype(np.float64), [(0, 0)] * (rows.ndim - 1) + [(0, -length % MX_BLOCK)])
    blocks = padded.reshape(*padded.shape[:-1], -1, MX_BLOCK)
    amax = np.abs(blocks).max(axis=-1, keepdims=True)
    with np.errstate(divide="ignore"):
        exponent = np.clip(np.floor(np.log2(amax)) - MX_EMAX[name], -127, 127)
    if name == "mxint8":  # two's complement int8 elements with an implicit 2^-6: a top of 127/64
        elements = np.clip(np.round(blocks / 2.0**exponent * 64), -128, 127) / 64
    else:
        top = float(ml_dtypes.finfo(ELEMENT_DTYPES[name]).max)
        elements = np.clip(blocks / 2.0**exponent, -top, top).astype(ELEMENT_DTYPES[name]).astype(np.float64)
    out = (elements * 2.0**exponent).reshape(padded.shape)[..., :length].astype(np.float32)
    return out.reshape(values.shape) if axis == 0 else np.moveaxis(out, -1, 1)


def _quantize_args(name: str, role: str) -> tuple[torch.Tensor, torch.Tensor | None, int | None]:
    """(x, scale, axis) of a weight (per-row scales, axis 0) or an activation (one scale, axis None)."""
    fmt = get_format(name)
    x, axis = (_weights(), 0) if role == "weight" else (_activations(), None)
    if not fmt.learnable_scale:
        return x, None, axis
    return x, (WEIGHT_SCALES if role == "weight" else torch.tensor([0.05])), axis


@pytest.mark.parametrize("role", ["weight", "activation"])
@pytest.mark.parametrize("name", format_names())
def test_every_format_computes_the_same_values_on_every_device(name: str, role: str) -> None:
    fmt = get_format(name)
    x, scale, axis = _quantize_args(name, role)
    on_cpu = fmt.quantize(x, scale, axis=axis)
    assert on_cpu.dtype == torch.float32
    assert torch.equal(on_cpu, _reference(name, x, scale, axis))
    if CUDA:
        on_gpu = fmt.quantize(x.cuda(), None if scale is None else scale.cuda(), axis=axis)
        assert torch.equal(on_gpu.cpu(), on_cpu)


# ------------------------------------------------------------------------------------------------ data
def test_in_memory_splits_move_once_and_stay_put_when_they_are_there(tiny_space: SpaceFactory) -> None:
    data = load_space_data(tiny_space(SPACE_CHANGES))
    assert data.to("cpu") is data  # nothing is copied on the CPU path
    device = resolve_device("auto")
    moved = data.to(device)
    assert moved.train.tensors[0].device.type == device.type and moved.to(device) is moved
    for split in ("train", "val"):
        before, after = getattr(data, split).tensors, getattr(moved, split).tensors
        assert all(torch.equal(a.cpu(), b) for a, b in zip(after, before))


def test_a_lazy_dataset_reaches_the_device_batch_by_batch_in_the_samplers_order(tiny_space: SpaceFactory) -> None:
    data = load_space_data(tiny_space(SPACE_CHANGES), train_subset=96)
    lazy = _Lazy(data.train)
    device = resolve_device("auto")
    batches = list(make_loader(lazy, 32, shuffle=True, seed=3, device=device))
    order = torch.randperm(len(lazy), generator=torch.Generator().manual_seed(3))  # RandomSampler's draw
    images, labels = data.train.tensors
    assert len(batches) == 3 and all(b[0].device.type == device.type for b in batches)
    assert torch.equal(torch.cat([b[0].cpu() for b in batches]), images[order])
    assert torch.equal(torch.cat([b[1].cpu() for b in batches]), labels[order])
    fixed = fixed_batches(lazy, 40, 32, device=device)
    assert [len(b[1]) for b in fixed] == [32, 8] and torch.equal(torch.cat([b[0].cpu() for b in fixed]), images[:40])


class _Lazy(torch.utils.data.Dataset):
    """A map-style dataset that is not a TensorDataset, as ImageFolder's is."""

    def __init__(self, dataset: TensorDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset[index]


# ------------------------------------------------------------------------------------------------ training, estimates
@pytest.fixture(scope="module")
def run_dir(tiny_space: SpaceFactory, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("device")
    train_supernet(tiny_space(SPACE_CHANGES, folder=folder), folder / "run", progress=False)
    return folder / "run"


def test_training_on_the_cpu_device_is_the_default_run_bit_for_bit(run_dir: Path, tmp_path: Path) -> None:
    space = SearchSpace.from_file(run_dir / "space.yaml")
    train_supernet(space, tmp_path / "cpu", progress=False, device="cpu")
    default, explicit = load_supernet(run_dir, space), load_supernet(tmp_path / "cpu", space)
    assert default.state_dict().keys() == explicit.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), explicit.state_dict().values()))


def test_the_estimator_runs_where_its_supernet_is_and_moves_with_it(run_dir: Path) -> None:
    space = SearchSpace.from_file(run_dir / "space.yaml")
    cpu = OneShotEstimator.from_run(run_dir, device="cpu", cache=False)
    candidates = [space.largest(), space.smallest(), space.sample(np.random.default_rng(0))]
    on_cpu = [cpu.estimate(c) for c in candidates]
    device = resolve_device("auto")
    moved = cpu.to(device)
    assert moved is cpu and moved.device.type == device.type == module_device(moved.supernet).type
    assert all(b[0].device.type == device.type for b in moved.calib + moved.val)
    for candidate, reference in zip(candidates, on_cpu):
        estimate = moved.estimate(candidate)
        assert estimate.keys() == reference.keys()
        # float32 everywhere; a GPU's other summation order may flip an image on a rounding boundary
        tolerance = 0.0 if device.type == "cpu" else reference["accuracy_se"]
        assert abs(estimate["accuracy"] - reference["accuracy"]) <= tolerance
    assert [cpu.to("cpu").estimate(c) for c in candidates] == on_cpu


# ------------------------------------------------------------------------------------------------ Ray Tune trials
class _MovableEvaluator:
    """Stands in for the estimator: records where it is, and where it was when Ray stored it."""

    def __init__(self, device: str) -> None:
        self.device, self.moves = torch.device(device), []

    def to(self, device: str) -> _MovableEvaluator:
        self.device = torch.device(device)
        self.moves.append(str(self.device))
        return self


def test_the_object_store_gets_the_estimator_on_the_cpu_and_the_driver_keeps_its_device(monkeypatch) -> None:
    from automq.strategies import _tune_ray

    stored = []
    monkeypatch.setattr(_tune_ray.ray, "put", lambda evaluator: stored.append(str(evaluator.device)) or "ref")
    evaluator = _MovableEvaluator("cuda:1")  # no tensor is made: the device is only a label here
    assert _tune_ray._put_from_cpu(evaluator) == "ref"
    assert stored == ["cpu"] and evaluator.device == torch.device("cuda:1") and evaluator.moves == ["cpu", "cuda:1"]
    on_cpu = _MovableEvaluator("cpu")
    _tune_ray._put_from_cpu(on_cpu)
    assert stored == ["cpu", "cpu"] and on_cpu.moves == []


@pytest.mark.parametrize("gpu_ids, moves", [([], []), ([0], ["cuda"])])
def test_a_trial_moves_the_estimator_onto_the_gpu_ray_gave_it(monkeypatch, gpu_ids: list[int],
                                                              moves: list[str]) -> None:
    from automq.strategies import _tune_ray

    monkeypatch.setattr(_tune_ray.ray, "get_gpu_ids", lambda: gpu_ids)
    evaluator = _MovableEvaluator("cpu")
    assert _tune_ray._on_trial_device(evaluator) is evaluator and evaluator.moves == moves


@pytest.mark.parametrize("strategy", ["dnas", "differentiable", "ssps", "fliqs", "limpq", "clado"])
def test_a_strategy_that_trains_networks_of_its_own_is_refused_a_gpu_estimator(strategy: str, tiny_space: SpaceFactory,
                                                                               tmp_path: Path) -> None:
    from automq.errors import AutomqError
    from automq.search.driver import run_search

    space = tiny_space(SPACE_CHANGES)
    with pytest.raises(AutomqError, match=f"'{strategy}' trains or scores networks of its own .* --device cpu"):
        run_search(space, out=tmp_path / "out", supernet=tmp_path / "no-run", strategy=strategy, device="cuda:0",
                   progress=False)


@pytest.mark.parametrize("strategy", ["tune", "evolution", "random", "uniform"])
def test_a_strategy_that_only_asks_for_scores_may_have_a_gpu_estimator(strategy: str, tiny_space: SpaceFactory,
                                                                       tmp_path: Path) -> None:
    from automq.errors import CheckpointError
    from automq.search.driver import run_search

    # no GPU is touched: the estimator's supernet is loaded first, and this run folder has none
    with pytest.raises(CheckpointError, match="no-run"):
        run_search(tiny_space(SPACE_CHANGES), out=tmp_path / "out", supernet=tmp_path / "no-run", strategy=strategy,
                   device="cuda:0", progress=False)
