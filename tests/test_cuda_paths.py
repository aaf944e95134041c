"""The runner's CUDA branches, forced on a CPU (issue 17): the generators' state of the run's
device, checkpoints written on a GPU, GPU slots of the sweeps, DoG's state across devices."""

import ast
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import experiment
import main_cnn
import reproduce
from reproduce_lib import launch as launch_module
from reproduce_lib.plan import Plan, adam
from reproduce_lib.protocol import PROFILES

REPO = Path(__file__).resolve().parent.parent
TINY = ["--dry_run", "--model_name", "VGG19", "--size_multiplier", "0.125", "--batch_size", "4", "--no-cuda"]
ALRAO = ["--use_alrao", "--minLR", "-4", "--maxLR", "0", "--n_last_layers", "3"]


def run_cnn(out_dir, *argv):
    return main_cnn.main(main_cnn.build_parser().parse_args([*TINY, "--out_dir", str(out_dir), *argv]))


# ------------------------------------------------------- generators (item 1)
class FakeCuda:
    """``torch.cuda``'s generator functions on ``n_visible`` fake GPUs, each state a tensor."""

    def __init__(self, monkeypatch, n_visible: int):
        self.n_visible = n_visible
        self.states = {i: torch.full((4,), i, dtype=torch.uint8) for i in range(n_visible)}
        monkeypatch.setattr(torch.cuda, "get_rng_state", self.get_rng_state)
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set_rng_state)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [self.states[i] for i in range(n_visible)])

        def set_all(states):  # what the old code called: one state per visible device
            for i, state in enumerate(states):
                self.set_rng_state(state, i)

        monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_all)

    def index(self, device) -> int:
        index = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
        return 0 if index.index is None else index.index

    def get_rng_state(self, device="cuda"):
        return self.states[self.index(device)].clone()

    def set_rng_state(self, state, device="cuda"):
        i = self.index(device)
        if i >= self.n_visible:
            raise IndexError("tuple index out of range")  # what CUDA raises for a device not visible
        self.states[i] = state.clone()


def test_the_cuda_generator_saved_is_the_run_devices_only(monkeypatch):
    fake = FakeCuda(monkeypatch, n_visible=2)
    fake.states[0] = torch.tensor([7, 7, 7, 7], dtype=torch.uint8)
    state = experiment.rng_state(torch.device("cuda"))
    assert len(state["cuda"]) == 1 and torch.equal(state["cuda"][0], fake.states[0])
    assert experiment.rng_state(torch.device("cpu"))["cuda"] == []


@pytest.mark.parametrize("saved_entries", [1, 2, 4])
def test_a_run_saved_with_several_visible_gpus_resumes_with_one(monkeypatch, saved_entries):
    """Checkpoints of this version hold one entry; older ones one per visible GPU (here faked):
    both resume on a machine (or a sweep slot) that sees a single GPU."""
    experiment.seed_everything(3)
    state = experiment.rng_state(torch.device("cpu"))
    state["cuda"] = [torch.full((4,), 10 + i, dtype=torch.uint8) for i in range(saved_entries)]
    fake = FakeCuda(monkeypatch, n_visible=1)
    draws = (random.random(), np.random.rand(), torch.rand(2))
    experiment.set_rng_state(state, torch.device("cuda"))
    assert torch.equal(fake.states[0], state["cuda"][0])  # the run's device gets the run's state
    again = (random.random(), np.random.rand(), torch.rand(2))
    assert draws[:2] == again[:2] and torch.equal(draws[2], again[2])


def test_a_cuda_state_is_not_restored_on_a_cpu_run(monkeypatch):
    fake = FakeCuda(monkeypatch, n_visible=1)
    state = experiment.rng_state(torch.device("cpu"))
    state["cuda"] = [torch.full((4,), 9, dtype=torch.uint8)]
    experiment.set_rng_state(state, torch.device("cpu"))
    assert torch.equal(fake.states[0], torch.zeros(4, dtype=torch.uint8))


# ------------------------------------------------- checkpoints (item 10)
def torch_load_calls_without_map_location() -> list[str]:
    """``file:line`` of every ``torch.load(...)`` in the project's Python files that does not
    pass ``map_location``."""
    found = []
    for path in sorted(REPO.rglob("*.py")):
        if any(part.startswith(".") or part in ("runs", "datasets") for part in path.relative_to(REPO).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"
                and not any(k.arg == "map_location" for k in node.keywords)
            ):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return found


def test_every_torch_load_of_the_project_passes_map_location():
    assert torch_load_calls_without_map_location() == []


def test_a_checkpoint_written_on_a_gpu_resumes_on_a_cpu_only_machine(tmp_path, monkeypatch):
    """The run's files are written with every tensor tagged ``cuda:0``, as on a GPU (and its
    generators' state holding a CUDA entry); the run then resumes on the CPU."""
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        run_cnn(tmp_path, *ALRAO, "--epochs", "1")
    checkpoint_path = tmp_path / "checkpoint.pt"
    if not torch.cuda.is_available():  # the files really say CUDA: a load without map_location fails
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(checkpoint_path, map_location=None, weights_only=True)  # as written
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
    checkpoint["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)]  # saved on a GPU: ignored on the CPU
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        experiment.atomic_torch_save(checkpoint, checkpoint_path, checksum=True)  # as the run writes it
    summary = run_cnn(tmp_path, *ALRAO, "--epochs", "2", "--resume")
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2


# ------------------------------------------------ GPU slots of sweeps (item 7)
@pytest.mark.parametrize(
    "listed, gpus",
    [
        ("0,1", ["0", "1"]),
        ("0, 1", ["0", "1"]),  # a space after the comma is not part of the second entry
        (" 2 ,3 ", ["2", "3"]),
        ("0,-1,1", ["0"]),  # CUDA hides every device after an invalid entry
        ("-1", []),
        ("", []),
        ("0,,1", ["0"]),
        ("GPU-8e1f, MIG-2a", ["GPU-8e1f", "MIG-2a"]),  # UUIDs stay as they are
    ],
)
def test_visible_gpus_are_read_as_cuda_reads_them(monkeypatch, listed, gpus):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)
    assert launch_module.visible_gpus() == gpus
    assert launch_module.default_jobs() == max(1, len(gpus))


def test_without_the_variable_the_gpus_are_those_torch_counts(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert launch_module.visible_gpus() == ["0", "1", "2"]


def test_gpu_slots_share_a_gpu_only_with_a_warning():
    said = []
    assert launch_module.gpu_slots(2, ["0", "1"], said.append) == ["0", "1"] and said == []
    assert launch_module.gpu_slots(4, ["0"], said.append) == ["0"] * 4
    (warning,) = said
    assert "--jobs 4 with 1 visible GPU (0): up to 4 runs share a GPU" in warning and "--jobs 1" in warning
    said.clear()
    assert launch_module.gpu_slots(3, ["0", "1"], said.append) == ["0", "1", "0"] and "up to 2 runs" in said[0]
    assert launch_module.gpu_slots(3, [], said.append) == [None] * 3  # CPU runs


@pytest.mark.parametrize(
    "listed, jobs, children",
    [("0, 1", 2, {"0", "1"}), ("0,-1,1", 2, {"0"}), ("3", 4, {"3"}), ("", 2, {None})],
)
def test_each_local_run_gets_one_gpu_of_the_visible_ones(tmp_path, monkeypatch, capsys, listed, jobs, children):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", listed)
    seen = []

    def fake_subprocess(cmd, log_path, env, running=None):
        seen.append(env.get("CUDA_VISIBLE_DEVICES"))
        return None

    monkeypatch.setattr(launch_module, "run_subprocess", fake_subprocess)
    plan = Plan(PROFILES["quick"], models=("LSTM",), seeds=(0, 1, 2, 3), epochs=1, dry_run=True)
    runs = [plan.run("LSTM", adam(), seed) for seed in range(4)]
    outcomes = launch_module.launch(runs, tmp_path, launcher="local", jobs=jobs)
    assert all(o.ok for o in outcomes) and set(seen) == children
    out = capsys.readouterr().out
    assert ("share a GPU" in out) == (jobs > len(children) and None not in children)


def test_slurm_jobs_of_more_than_one_gpu_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        reproduce.build_parser().parse_args(["table1", "--launcher", "slurm", "--slurm_gpus", "2"])
    assert exit_.value.code == 2
    assert "--slurm_gpus 2: each process of a run trains on one GPU" in capsys.readouterr().err
    assert reproduce.build_parser().parse_args(["table1", "--launcher", "slurm", "--slurm_gpus", "1"]).slurm_gpus == 1
    plan = Plan(PROFILES["quick"], models=("LSTM",), seeds=(0,), epochs=1, dry_run=True)
    with pytest.raises(launch_module.LaunchError, match="reserve 2 that no one uses"):
        launch_module.launch(
            [plan.run("LSTM", adam(), 0)], tmp_path, launcher="slurm", slurm=launch_module.SlurmOptions(gpus_per_job=3)
        )


# ------------------------------------------------------- DoG on CUDA (item 8)
@pytest.mark.parametrize("name", ["DoG", "LDoG"])
def test_dog_state_resumed_on_another_device_is_on_the_parameters_device(name):
    """A DoG state saved on one device (the CPU) and loaded into a run on another (``meta``
    stands for CUDA): the package's ``load_state_dict`` alone leaves rbar, G and eta on the CPU."""
    pytest.importorskip("dog")
    args = main_cnn.build_parser().parse_args([*TINY, "--optimizer", name])
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    optimizer = experiment.build_optimizer(model, args)
    for _ in range(2):
        optimizer.zero_grad()
        model(torch.randn(5, 3)).pow(2).sum().backward()
        optimizer.step()
    saved = optimizer.state_dict()
    on_meta = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)).to("meta")
    resumed = experiment.build_optimizer(on_meta, args)
    resumed.load_state_dict(saved)
    (group,) = resumed.param_groups
    moved = [group[k] for k in ("rbar", "G", "init_buffer", "eta")]
    tensors = [t for value in moved for t in (value if isinstance(value, list) else [value])]
    assert tensors and all(t.device.type == "meta" for t in tensors)
    assert type(resumed).__name__ == name and not resumed._first_step


def test_the_cuda_branch_of_the_device_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    device, text = experiment.choose_device(no_cuda=False)
    assert device == torch.device("cuda") and text == "cuda (Fake GPU)"
    device, text = experiment.choose_device(no_cuda=True)
    assert device.type == "cpu" and "--no_cuda" in text


def test_compile_may_change_on_resume_amp_may_not(tmp_path, capsys):
    """--compile changes how the forward runs, not what it computes; --amp changes the numbers."""
    run_cnn(tmp_path, "--epochs", "1")
    summary = run_cnn(tmp_path, "--epochs", "1", "--resume", "--compile")  # nothing left to train
    assert summary["epochs_completed"] == 1
    with pytest.raises(SystemExit) as exit_:
        run_cnn(tmp_path, "--epochs", "1", "--resume", "--amp", "bf16")
    assert exit_.value.code == 2 and "--amp bf16 (run: off)" in capsys.readouterr().err
