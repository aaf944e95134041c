"""main_cnn.py / main_rnn.py on 2 processes (gloo, CPU), as torchrun starts them: the same files
as one process, close metrics, rank 0 alone writes, an interruption on one rank stops both with
the checkpoint kept, and the resumed run continues exactly as an uninterrupted one."""

import json
import os
import signal

import pytest
import torch
import torch.distributed as dist
from ddp_pool import Pool, loopback_env

import data
import experiment
from experiment import run as run_module
from experiment.distributed import synchronise_batchnorm

CNN = [
    "--no-cuda",
    "--dry_run",
    "--model_name",
    "VGG19",
    "--size_multiplier",
    "0.125",
    "--batch_size",
    "8",
    "--use_alrao",
]
RNN = ["--no-cuda", "--dry_run", "--emsize", "8", "--nhid", "8", "--bptt", "8", "--batch_size", "4", "--use_alrao"]
FILES = set(run_module.RUN_FILES)  # config, metrics, checkpoint and best (with their checksums), summary


@pytest.fixture(scope="module")
def pool():
    p = Pool(2)
    yield p
    p.close()


def script(name: str):
    import main_cnn
    import main_rnn

    return {"cnn": main_cnn, "rnn": main_rnn}[name]


def without_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    for name, child in module.named_children():
        if isinstance(child, torch.nn.BatchNorm2d):
            setattr(module, name, torch.nn.Identity())
        else:
            without_batchnorm(child)
    return module


def main(name: str, argv: list, stop_rank: int | None = None, stop_epoch: int = 0, batchnorm: bool = True):
    """The script's main() on this rank; ``stop_rank`` sends itself SIGTERM as epoch ``stop_epoch``
    begins (what a scheduler or `kill` does to one process of the run); ``batchnorm=False``: the
    CNN's BatchNorm layers are left out."""
    module = script(name)
    original, build = module.train_epoch, module.models.build_preclassifier
    if not batchnorm:
        module.models.build_preclassifier = lambda *a: without_batchnorm(build(*a))

    def train_epoch(*args):
        rank = dist.get_rank() if dist.is_initialized() else 0
        if rank == stop_rank and stop_epoch in args:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args)

    module.train_epoch = train_epoch
    try:
        return module.main(module.build_parser().parse_args(argv))
    finally:
        module.train_epoch, module.models.build_preclassifier = original, build


def records(out_dir) -> list[dict]:
    lines = (out_dir / experiment.METRICS).read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "epoch_time_s"} for line in lines]


def assert_close_records(a: list[dict], b: list[dict], rtol: float):
    assert len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for key, va in ra.items():
            if isinstance(va, float | list):
                torch.testing.assert_close(torch.tensor(va), torch.tensor(rb[key]), rtol=rtol, atol=1e-6, msg=key)
            else:
                assert va == rb[key], key


def run_files(out_dir) -> set:
    return {p.name for p in out_dir.iterdir() if not p.name.endswith(".lock")}


def test_rnn_two_processes_write_what_one_process_writes(pool, tmp_path):
    argv = [*RNN, "--drop_out", "0", "--epochs", "2"]  # no dropout: the ranks draw their own masks
    main("rnn", [*argv, "--out_dir", str(tmp_path / "one")])
    summaries = pool.values(main, "rnn", [*argv, "--out_dir", str(tmp_path / "two")])
    assert summaries[0] == summaries[1]  # rank 1 returns rank 0's summary
    assert run_files(tmp_path / "two") == run_files(tmp_path / "one") == FILES
    # The global batches and the switch are those of one process: only float rounding differs.
    assert_close_records(records(tmp_path / "two"), records(tmp_path / "one"), rtol=1e-4)
    config = json.loads((tmp_path / "two" / experiment.CONFIG).read_text())
    assert "2 processes (gloo)" in config["device"]


def test_cnn_two_processes_write_what_one_process_writes(pool, tmp_path):
    """Without BatchNorm, 2 ranks train on the global batches of one process (the image loader's
    shards, augmentation included): the same metrics up to float rounding."""
    argv = [*CNN, "--epochs", "2"]
    main("cnn", [*argv, "--out_dir", str(tmp_path / "one")], batchnorm=False)
    pool.values(main, "cnn", [*argv, "--out_dir", str(tmp_path / "two")], None, 0, False)
    assert run_files(tmp_path / "two") == run_files(tmp_path / "one") == FILES
    assert_close_records(records(tmp_path / "two"), records(tmp_path / "one"), rtol=1e-4)


def test_cnn_with_batchnorm_on_two_processes(pool, tmp_path):
    """With BatchNorm, each rank normalises its 4 images by their own statistics (gloo has no
    SyncBatchNorm): the same files and copies, losses close to one process on 8, not equal."""
    argv = [*CNN, "--epochs", "1"]
    main("cnn", [*argv, "--out_dir", str(tmp_path / "one")])
    pool.values(main, "cnn", [*argv, "--out_dir", str(tmp_path / "two")])
    assert run_files(tmp_path / "two") == run_files(tmp_path / "one") == FILES
    (one,), (two,) = records(tmp_path / "one"), records(tmp_path / "two")
    assert one.keys() == two.keys() and one["classifier_lrs"] == two["classifier_lrs"]
    # Two steps on 4 images per rank: the per-shard statistics move the losses by up to ~15%.
    for key in ("train_loss", "valid_loss", "test_loss"):
        assert two[key] == pytest.approx(one[key], rel=0.25), key


def test_cnn_interrupted_on_one_rank_then_resumed(pool, tmp_path):
    argv = [*CNN, "--epochs", "2"]
    pool.values(main, "cnn", [*argv, "--out_dir", str(tmp_path / "straight")])
    # SIGTERM to rank 1 as epoch 2 begins: both ranks stop, rank 0 keeps the epoch-1 checkpoint.
    stopped = pool.run(main, "cnn", [*argv, "--out_dir", str(tmp_path / "cut")], 1, 2)
    for ok, text in stopped:
        assert not ok and text.startswith("SystemExit: 143")
    summary = json.loads((tmp_path / "cut" / experiment.SUMMARY).read_text())
    assert summary["status"] == "interrupted" and summary["epochs_completed"] == 1
    checkpoint = torch.load(tmp_path / "cut" / experiment.CHECKPOINT, map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] == 1
    pool.values(main, "cnn", [*argv, "--out_dir", str(tmp_path / "cut"), "--resume"])
    assert records(tmp_path / "cut") == records(tmp_path / "straight")
    a = torch.load(tmp_path / "cut" / experiment.CHECKPOINT, map_location="cpu", weights_only=True)["model"]
    b = torch.load(tmp_path / "straight" / experiment.CHECKPOINT, map_location="cpu", weights_only=True)["model"]
    for name, value in a.items():
        assert torch.equal(value, b[name]), name


def test_rnn_resumed_with_dropout_continues_exactly(pool, tmp_path):
    """Each rank's dropout masks come from (seed, epoch, rank): the resumed run draws the same."""
    argv = [*RNN, "--drop_out", "0.2"]
    pool.values(main, "rnn", [*argv, "--epochs", "2", "--out_dir", str(tmp_path / "straight")])
    pool.values(main, "rnn", [*argv, "--epochs", "1", "--out_dir", str(tmp_path / "cut")])
    pool.values(main, "rnn", [*argv, "--epochs", "2", "--out_dir", str(tmp_path / "cut"), "--resume"])
    assert records(tmp_path / "cut") == records(tmp_path / "straight")


def test_uneven_streams_are_refused(pool, tmp_path):
    argv = [*RNN, "--batch_size", "5", "--out_dir", str(tmp_path / "odd")]
    for ok, text in pool.run(main, "rnn", argv):
        assert not ok and text.startswith("SystemExit: 2")


def test_aligs_local_loss_is_refused(pool, tmp_path):
    argv = [*RNN, "--optimizer", "AliG", "--out_dir", str(tmp_path / "alig")]
    argv.remove("--use_alrao")
    for ok, text in pool.run(main, "rnn", argv):
        assert not ok and text.startswith("SystemExit: 2")
    assert not (tmp_path / "alig").exists()


@pytest.mark.parametrize("loader_cls", [data.HostLoader, data.DeviceLoader])
@pytest.mark.parametrize("train", [True, False])
def test_loader_shards_split_each_global_batch(loader_cls, train):
    """Both loader paths (the device path forced on CPU): the ranks' parts of every batch, put
    together, are the one-process batch; training parts are equal (the remainder left out)."""
    images = torch.randint(0, 256, (23, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(23)
    kw = dict(mean=(0.5,) * 3, std=(0.25,) * 3, shuffle=train, augment=train, seed=3)
    if loader_cls is data.DeviceLoader:
        kw["device"] = "cpu"
    whole = loader_cls(images, labels, 6, **kw)
    parts = []
    for rank in range(2):
        loader = loader_cls(images, labels, 6, **kw)
        loader.shard(rank, 2, drop_uneven=train)
        loader.set_epoch(4)
        parts.append(list(loader))
        assert len(loader) == len(parts[-1])
    whole.set_epoch(4)
    for i, (x, y) in enumerate(whole):
        (x0, y0), (x1, y1) = parts[0][i], parts[1][i]
        if train:
            assert len(y0) == len(y1) == len(y) // 2
            x, y = x[: 2 * len(y0)], y[: 2 * len(y0)]
        assert torch.equal(torch.cat([y0, y1]), y)
        torch.testing.assert_close(torch.cat([x0, x1]), x)


def launched_run(tmp_path, monkeypatch, launcher: str, **options):
    """One quick LSTM run of reproduce.py's plan on 2 processes; its config and summary."""
    from reproduce_lib.launch import launch
    from reproduce_lib.plan import Plan, adam
    from reproduce_lib.protocol import PROFILES

    for key, value in loopback_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    run = Plan(PROFILES["quick"], models=("LSTM",), seeds=(0,), epochs=1, dry_run=True).run("LSTM", adam(), 0)
    (outcome,) = launch([run], tmp_path, launcher=launcher, **options)
    logs = "\n".join(log.read_text()[-4000:] for log in tmp_path.glob("**/reproduce.log"))
    assert outcome.ok, f"{outcome.message}\n{logs}"
    folder = tmp_path / run.folder
    return json.loads((folder / experiment.CONFIG).read_text()), json.loads((folder / experiment.SUMMARY).read_text())


def test_reproduce_local_run_on_two_processes(tmp_path, monkeypatch):
    """torchrun starts the ranks (the command a user types), which join through its environment;
    rank 0 alone prints."""
    config, summary = launched_run(tmp_path, monkeypatch, "local", jobs=1, gpus_per_run=2)
    assert "2 processes (gloo)" in config["device"] and summary["status"] == "completed"
    (log,) = tmp_path.glob("**/reproduce.log")
    assert "torch.distributed.run --standalone --nproc_per_node=2" in log.read_text()
    assert log.read_text().count("configuration:") == log.read_text().count("completed after 1 epoch") == 1


def test_reproduce_slurm_run_on_two_tasks(tmp_path, monkeypatch):
    pytest.importorskip("submitit")
    from reproduce_lib.launch import SlurmOptions

    slurm = SlurmOptions(cluster="local", gpus_per_job=0, cpus_per_job=1, timeout_min=5, processes_per_job=2)
    config, summary = launched_run(tmp_path, monkeypatch, "slurm", slurm=slurm)
    assert "2 processes (gloo)" in config["device"] and summary["status"] == "completed"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--gpus_per_run", "2", "--launcher", "inline"], "--gpus_per_run 2 needs processes of their own"),
        (
            ["--gpus_per_run", "2", "--launcher", "slurm", "--slurm_gpus", "1"],
            "--slurm_gpus 1 with --gpus_per_run 2: each process of a run takes one GPU",
        ),
    ],
)
def test_reproduce_gpus_per_run_checks(argv, message, capsys):
    import reproduce

    with pytest.raises(SystemExit) as exit_:
        reproduce.build_parser().parse_args(["table1", *argv])
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_cuda_branch_makes_batchnorm_synchronised():
    """What Ranks.wrap does on CUDA, run on CPU (DDP takes SyncBatchNorm on GPU modules only)."""
    import main_cnn

    args = main_cnn.build_parser().parse_args([*CNN])
    torch.manual_seed(0)
    pre = main_cnn.models.build_preclassifier(args.model_name, args.size_multiplier)
    model = experiment.build_model(args, pre, main_cnn.alrao.LinearClassifier, pre.num_features, 10)
    optimizer = experiment.build_optimizer(model, args, experiment.derived_generator(0, "feature_lrs"))
    before = {name: p for name, p in model.named_parameters()}
    assert synchronise_batchnorm(model) is model
    kinds = {type(m).__name__ for m in model.modules()}
    assert "SyncBatchNorm" in kinds and "BatchNorm2d" not in kinds
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():  # the same objects, under the same names
        assert p is before[name] and id(p) in in_optimizer
    with pytest.raises(ValueError, match="root is a BatchNorm layer"):
        synchronise_batchnorm(torch.nn.BatchNorm1d(3))
