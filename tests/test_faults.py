"""Fault injection: what a run folder, the scripts and a sweep survive (README, "Guarantees").

kill -9 at every write of a run, corrupted checkpoints, a full disk (a failing write, and a real
file-size limit), Ctrl-C and SIGTERM inside torch.save, a read-only or impossible --out_dir, a
folder raced by two processes, garbled run folders in a sweep, a folder still trained by an
orphaned process, losses that blow up without being NaN, and sizes that cannot fit. The killed
processes are forks of the test process (torch already loaded), so each costs milliseconds.
"""

import errno
import json
import math
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch
from tiny_script import DEFAULTS
from torch import nn

import alrao
import experiment
import lr_scan
import main_cnn
import models
import reproduce
from experiment import files as files_module
from experiment import run as run_module
from experiment import run_folder
from reproduce_lib.launch import launch
from reproduce_lib.plan import Plan, adam
from reproduce_lib.protocol import PROFILES

REPO = Path(__file__).resolve().parent.parent
needs_flock = pytest.mark.skipif(run_folder.fcntl is None, reason="no flock on this platform")
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")


def parse(*argv):
    parser = experiment.ArgumentParser(prog="script.py")
    experiment.add_common_arguments(parser, DEFAULTS)
    return parser.parse_args(list(argv))


def train(folder, epochs=3, *flags, lr_bump=None):
    """A tiny classification run in ``folder`` (4 features, 3 classes, 16 examples per epoch), as
    the scripts drive :class:`experiment.Run`; returns its final model's state. ``lr_bump``: a
    function of the epoch giving the training loss to report instead of the real one."""
    torch.manual_seed(0)  # the scripts seed everything; a resumed run restores the generators
    args = parse("--out_dir", str(folder), "--epochs", str(epochs), *flags)
    run = experiment.Run(args, "script.py", "test", torch.device("cpu"))
    model = experiment.build_model(args, nn.Sequential(nn.Linear(4, 6), nn.ReLU()), alrao.LinearClassifier, 6, 3)
    optimizer = experiment.build_optimizer(model, args)
    run.start(model, optimizer, n_outputs=3)
    with run:
        for epoch in run.epochs():
            x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
            loss = model.loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            value = loss.item() if lr_bump is None else lr_bump(epoch)
            run.end_epoch({"train_loss": value, "valid_loss": loss.item(), "test_loss": loss.item()})
    run.finish()
    return {k: v.clone() for k, v in model.state_dict().items()}


def in_child(body, timeout_s=60.0) -> int:
    """Run ``body()`` in a forked copy of this process; its exit status (negative: the signal that
    ended it). The child is killed if it runs past ``timeout_s``."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            torch.set_num_threads(1)
            body()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except BaseException:
            code = 99
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    deadline = time.monotonic() + timeout_s
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the child process hung")
        time.sleep(0.005)


def kill_at_event(n: int, monkeypatch) -> None:
    """Make this process kill itself with SIGKILL at the ``n``-th step (from 1) of writing a file:
    torch.save's first chunk (a half-written file), an fsync, before and after a rename."""
    count = [0]

    def tick():
        count[0] += 1
        if count[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)

    real_write, real_replace = files_module._HashingWriter.write, os.replace

    def write(self, data):
        if not getattr(self, "ticked", False):
            self.ticked = True
            tick()
        return real_write(self, data)

    def fsync(fd):  # no power loss is simulated: the file's bytes need not reach the disk
        tick()

    def replace(src, dst):
        tick()
        real_replace(src, dst)
        tick()

    monkeypatch.setattr(files_module._HashingWriter, "write", write)
    monkeypatch.setattr(files_module.os, "fsync", fsync)
    monkeypatch.setattr(files_module.os, "replace", replace)


def assert_states_equal(a, b):
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def temporaries(folder):
    return [p.name for p in Path(folder).iterdir() if p.name.endswith(".tmp")]


# ------------------------------------------------------------------ kill -9
@needs_fork
def test_kill_9_at_every_write_leaves_a_folder_that_the_same_command_continues_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(files_module.os, "fsync", lambda fd: None)  # speed: no power loss is simulated
    monkeypatch.setattr(run_module, "git_commit", lambda: "test")  # speed: no git process per run
    reference = train(tmp_path / "reference", 2)
    killed_at = []
    for event in range(1, 200):
        folder = tmp_path / f"killed{event}"

        def killed_run(event=event, folder=folder):
            kill_at_event(event, monkeypatch)
            train(folder, 2)

        status = in_child(killed_run)
        if status == 0:  # the run wrote all its files before the n-th step: every moment was tried
            break
        assert status == -signal.SIGKILL
        killed_at.append(event)
        checkpoint = folder / "checkpoint.pt"
        if checkpoint.exists():  # never half a file: a complete checkpoint matching its checksum
            assert files_module.verify_checksum(checkpoint)
            torch.load(checkpoint, map_location="cpu", weights_only=True)
        # The same command, with --resume when there is something to resume: no file to delete by hand.
        state = train(folder, 2, *(["--resume"] if (folder / "config.json").exists() else []))
        assert_states_equal(state, reference)
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["epochs_completed"] == 2
        metrics = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        assert [m["epoch"] for m in metrics] == [1, 2]
        assert temporaries(folder) == []
    # every step of every write: config.json, 3 checkpoints, 2 best.pt, their checksums, metrics.jsonl
    assert len(killed_at) > 40


@needs_fork
def test_a_folder_killed_before_its_first_checkpoint_starts_again_with_the_same_flags(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "run"

    def killed_in_first_checkpoint():
        kill_at_event(4, monkeypatch)  # config.json's fsync and rename are steps 1-3; then the checkpoint
        train(folder)

    assert in_child(killed_in_first_checkpoint) == -signal.SIGKILL
    monkeypatch.undo()
    assert (folder / "config.json").exists() and not (folder / "checkpoint.pt").exists()
    assert [name.startswith(".checkpoint.pt.") for name in temporaries(folder)] == [True]  # half written
    with pytest.raises(experiment.UsageError, match=r"killed before its first checkpoint, with other flags: --lr 0.5"):
        train(folder, 3, "--lr", "0.5")
    train(folder)  # a plain rerun with the same flags
    assert "killed before its first checkpoint (it trained nothing): starting again" in capsys.readouterr().out
    assert json.loads((folder / "summary.json").read_text())["status"] == "completed"
    assert temporaries(folder) == []


def test_stale_temporary_files_are_removed_when_the_folder_is_next_opened(tmp_path):
    folder = tmp_path / "run"
    train(folder, 1)
    stale = [".checkpoint.pt.12345.tmp", ".best.pt.99.tmp", ".metrics.jsonl.7.tmp"]
    for name in stale:
        (folder / name).write_bytes(b"x" * 1000)
    (folder / "notes.tmp").write_text("not ours")
    train(folder, 2, "--resume")
    assert temporaries(folder) == ["notes.tmp"]


@needs_flock
def test_the_lock_is_taken_before_the_folder_is_checked(tmp_path):
    """Process A checks the empty folder, pauses; B trains the folder to completion; A must not
    write over B's run when it goes on (the race of issue 14, item 3)."""
    folder = tmp_path / "run"
    args = parse("--out_dir", str(folder), "--epochs", "2")
    paused = experiment.Run(args, "script.py", "test", torch.device("cpu"))  # checked: empty
    finished = train(folder, 2)
    model = experiment.build_model(args, nn.Sequential(nn.Linear(4, 6), nn.ReLU()), alrao.LinearClassifier, 6, 3)
    with pytest.raises(experiment.UsageError, match="already holds a run"):
        paused.start(model, experiment.build_optimizer(model, args))
    assert_states_equal(torch.load(folder / "checkpoint.pt", map_location="cpu", weights_only=True)["model"], finished)
    assert run_folder.lock_holder(folder) is None  # the refused run released the lock


# -------------------------------------------------------------- corruption
def corrupt(path: Path, offset_from_end: int, data: bytes) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) - offset_from_end : len(raw) - offset_from_end + len(data)] = data
    path.write_bytes(bytes(raw))


def test_a_corrupted_checkpoint_is_refused_on_resume_naming_the_file(tmp_path):
    folder = tmp_path / "run"
    state = train(folder, 1)
    checkpoint = folder / "checkpoint.pt"
    pristine = checkpoint.read_bytes()
    # NaNs written into a tensor's bytes: the file still loads, and would resume silently wrong
    weight = state["preclassifier.0.weight"].numpy().tobytes()
    raw = bytearray(pristine)
    at = raw.find(weight)
    assert at > 0
    raw[at : at + 4] = torch.tensor([math.nan]).numpy().tobytes()
    checkpoint.write_bytes(bytes(raw))
    loaded = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert loaded["model"]["preclassifier.0.weight"].isnan().any()
    with pytest.raises(
        experiment.UsageError, match=r"checkpoint.pt does not match its checksum in .*checkpoint.pt.sha256"
    ):
        train(folder, 2, "--resume")
    # random bytes in the middle of the file
    checkpoint.write_bytes(pristine)
    corrupt(checkpoint, len(pristine) // 2, os.urandom(64))
    with pytest.raises(experiment.UsageError, match="does not match its checksum"):
        train(folder, 2, "--resume")
    # a garbled side file is no checksum either
    checkpoint.write_bytes(pristine)
    (folder / "checkpoint.pt.sha256").write_text("garbage\n")
    with pytest.raises(experiment.UsageError, match="not a list of SHA-256 digests"):
        train(folder, 2, "--resume")


def test_a_checkpoint_without_its_side_file_resumes_with_a_warning(tmp_path, capsys):
    folder = tmp_path / "run"
    train(folder, 1)
    (folder / "checkpoint.pt.sha256").unlink()
    train(folder, 2, "--resume")
    assert "has no checksum file beside it: not verified" in capsys.readouterr().err
    assert files_module.verify_checksum(folder / "checkpoint.pt")  # written again at the next checkpoint


# --------------------------------------------------------------- full disk
def fail_writes_after(monkeypatch, n_bytes: int, error=errno.ENOSPC):
    real = files_module._HashingWriter.write
    written = [0]

    def write(self, data):
        written[0] += len(data)
        if written[0] > n_bytes:
            raise OSError(error, os.strerror(error))
        return real(self, data)

    monkeypatch.setattr(files_module._HashingWriter, "write", write)


def test_a_full_disk_is_one_line_naming_the_file_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    train(folder, 1)
    before = (folder / "checkpoint.pt").read_bytes()
    fail_writes_after(monkeypatch, 100)  # torch.save then reports "unexpected pos ..."
    with pytest.raises(experiment.WriteError) as failure:
        train(folder, 2, "--resume")
    message = str(failure.value)
    assert "\n" not in message and "write failed at" in message and "disk full (No space left on device)" in message
    assert "the previous file is intact" in message
    assert (folder / "checkpoint.pt").read_bytes() == before and temporaries(folder) == []
    monkeypatch.undo()
    train(folder, 2, "--resume")  # space again: the run goes on from its last checkpoint


@needs_fork
def test_a_real_file_size_limit_ends_the_run_with_status_1_and_the_checkpoint_intact(tmp_path, capfd):
    folder = tmp_path / "run"
    train(folder, 1)
    before = (folder / "checkpoint.pt").read_bytes()

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) // 2, resource.RLIM_INFINITY))
        try:
            train(folder, 2, "--resume")
        except experiment.WriteError as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(1) from None

    assert in_child(limited) == 1
    assert "disk full (File too large)" in capfd.readouterr().err
    assert (folder / "checkpoint.pt").read_bytes() == before and temporaries(folder) == []


def test_the_scripts_report_a_full_disk_in_one_line_with_status_1(tmp_path, monkeypatch, capsys):
    args = main_cnn.build_parser().parse_args(["--dry_run", "--model_name", "VGG19", "--size_multiplier", "0.125"])
    args.out_dir = str(tmp_path / "run")
    fail_writes_after(monkeypatch, 0)
    with pytest.raises(SystemExit) as exit_info:
        main_cnn.main(args)
    assert exit_info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("main_cnn.py: error: write failed at ") and "checkpoint.pt: disk full" in lines[-1]


# ------------------------------------------------------ signals mid-write
@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_inside_torch_save_ends_like_any_ctrl_c_with_the_checkpoint_whole(
    tmp_path, monkeypatch, capsys, signum, status
):
    real_write, real_save = files_module._HashingWriter.write, run_module.Run._save_checkpoint
    saving = [None]  # the epoch whose checkpoint is being written, and whether it was signalled

    def write(self, data):  # the signal lands inside torch.save of epoch 2's checkpoint
        if saving[0] == 2:
            saving[0] = "signalled"
            os.kill(os.getpid(), signum)
        return real_write(self, data)

    def save(self):
        saving[0] = self.epoch
        real_save(self)

    monkeypatch.setattr(run_module.Run, "_save_checkpoint", save)
    monkeypatch.setattr(files_module._HashingWriter, "write", write)
    with pytest.raises(SystemExit) as exit_info:
        train(tmp_path / "run", 4)
    assert exit_info.value.code == status
    err = capsys.readouterr().err
    assert "Traceback" not in err and "interrupted during epoch 3" in err and "holds epoch 2" in err
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    assert files_module.verify_checksum(checkpoint)
    assert torch.load(checkpoint, map_location="cpu", weights_only=True)["epoch"] == 2
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["epochs_completed"] == 2


def test_sigint_at_start_up_is_one_line_and_status_130(tmp_path):
    command = [sys.executable, "main_cnn.py", "--dry_run", "--out_dir", str(tmp_path / "run")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:  # the configuration is printed before the data and the model are built
        if line.startswith("configuration:"):
            process.send_signal(signal.SIGINT)
            break
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("main_cnn.py: interrupted")


SLOW_TORCH = """
import runpy, sys, time
class SlowTorch:  # the first import of torch waits, so that a signal lands while torch loads
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            print("importing torch", file=sys.stderr, flush=True)
            time.sleep(60)
        return None
sys.meta_path.insert(0, SlowTorch())
sys.argv = ["main_cnn.py", "--dry_run", "--no-cuda", "--out_dir", {out!r}]
runpy.run_path("main_cnn.py", run_name="__main__")
"""


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_torch_loads_is_one_line(tmp_path, signum, status):
    command = [sys.executable, "-c", SLOW_TORCH.format(out=str(tmp_path / "run"))]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if line.startswith("importing torch"):
            process.send_signal(signum)
            break
    _, err = process.communicate(timeout=60)
    assert process.returncode == status, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("main_cnn.py: ")


# ----------------------------------------------------- one-line failures
def run_main_cnn(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        main_cnn.main(main_cnn.build_parser().parse_args(["--dry_run", "--model_name", "VGG19", *argv]))
    err = capsys.readouterr().err.strip().splitlines()
    return exit_info.value.code, err[-1]


@needs_flock
def test_a_folder_locked_by_another_process_is_a_one_line_error(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    fd = run_folder.lock_folder(folder)  # another open file description: as another process
    try:
        code, line = run_main_cnn(capsys, "--out_dir", str(folder))
    finally:
        os.close(fd)
    assert code == 2
    assert line == (
        f"main_cnn.py: error: --out_dir {folder} is being trained by another process (process {os.getpid()} "
        f"holds {folder / 'run.lock'}): wait for it to end, or choose another --out_dir"
    )


def test_an_impossible_out_dir_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    code, line = run_main_cnn(capsys, "--out_dir", str(tmp_path / "file" / "run"))
    assert (code, line) == (
        2,
        f"main_cnn.py: error: --out_dir {tmp_path / 'file' / 'run'}: {tmp_path / 'file'} is a file, not a folder",
    )
    with pytest.raises(SystemExit) as exit_info:
        reproduce.build_parser().parse_args(["table1", "--out_dir", str(tmp_path / "file" / "runs")])
    assert exit_info.value.code == 2 and "is a file, not a folder" in capsys.readouterr().err


@needs_fork
def test_a_read_only_out_dir_is_a_one_line_error(capfd):
    with tempfile.TemporaryDirectory() as parent:  # in /tmp: a folder that any user can reach
        Path(parent).chmod(0o755)
        folder = Path(parent) / "read-only"
        folder.mkdir(mode=0o555)

        def as_a_user():
            if os.geteuid() == 0:  # root writes anywhere: drop to nobody for the permission to hold
                os.setgid(65534)
                os.setuid(65534)
            main_cnn.main(main_cnn.build_parser().parse_args(["--dry_run", "--out_dir", str(folder / "run")]))

        assert in_child(as_a_user) == 2
    err = capfd.readouterr().err
    assert f"main_cnn.py: error: --out_dir {folder / 'run'}: cannot write into {folder}" in err
    assert "Traceback" not in err


def test_lr_scan_checks_out_before_scanning(tmp_path, capsys):
    (tmp_path / "scan.json").mkdir()
    for out, message in [
        (tmp_path / "scan.json", "--out "),  # not a .png
        (tmp_path / "scan.png", "scan.json is a folder, not a file"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            lr_scan.build_parser().parse_args(["--out", str(out)])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


# ---------------------------------------------------------------- sweeps
def test_a_sweep_reports_garbled_run_folders_and_goes_on(tmp_path, capsys):
    plan = Plan(PROFILES["quick"], models=("LSTM",), seeds=(0, 1, 2), epochs=1, dry_run=True)
    runs = [plan.run("LSTM", adam(), seed) for seed in (0, 1, 2)]
    assert all(o.ok for o in launch(runs, tmp_path, launcher="inline"))
    (tmp_path / runs[0].folder / "summary.json").write_text('{"status": "compl')
    (tmp_path / runs[1].folder / "config.json").write_bytes(b"\xff\xfe garbage")
    outcomes = launch(runs, tmp_path, launcher="inline")
    assert [o.ok for o in outcomes] == [False, False, True]
    assert f"{tmp_path / runs[0].folder / 'summary.json'} is unreadable (JSONDecodeError" in outcomes[0].message
    assert f"{tmp_path / runs[1].folder / 'config.json'} is unreadable (UnicodeDecodeError" in outcomes[1].message
    args = reproduce.build_parser().parse_args(
        ["table1", "--profile", "quick", "--models", "LSTM", "--seeds", "0", "1", "2", "--epochs", "1", "--dry_run"]
        + ["--out_dir", str(tmp_path), "--results_dir", str(tmp_path / "results"), "--collect_only"]
    )
    capsys.readouterr()
    assert reproduce.main(args) == 1  # the tables are written; the two runs are reported as failed
    out = capsys.readouterr().out
    assert "wrote" in out and f"{runs[0].folder}: {tmp_path / runs[0].folder / 'summary.json'} is unreadable" in out


@needs_flock
def test_a_sweep_waits_for_a_folder_still_trained_by_an_orphaned_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("reproduce_lib.launch.LOCK_POLL_S", 0.05)
    plan = Plan(PROFILES["quick"], models=("LSTM",), seeds=(0,), epochs=1, dry_run=True)
    run = plan.run("LSTM", adam(), 0)
    folder = tmp_path / run.folder
    folder.mkdir(parents=True)
    fd = run_folder.lock_folder(folder)  # the orphan of a sweep killed with -9
    threading.Timer(0.5, os.close, (fd,)).start()  # ... ends a moment later
    (outcome,) = launch([run], tmp_path, launcher="inline")
    assert outcome.ok and json.loads((folder / "summary.json").read_text())["status"] == "completed"
    out = capsys.readouterr().out
    assert f"being trained by process {os.getpid()}" in out and "waiting for process" in out


# ---------------------------------------------------------------- divergence
def test_a_loss_that_blows_up_without_being_nan_is_a_divergence(tmp_path, capsys):
    bound = run_module.DIVERGENCE_FACTOR * math.log(3)
    train(tmp_path / "run", 5, lr_bump=lambda epoch: 1.0 if epoch == 1 else 3.9e11)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["status"], summary["diverged"], summary["epochs_completed"], summary["best_epoch"]) == (
        "diverged",
        True,
        2,
        1,
    )
    assert summary["divergence_bound_nats"] == pytest.approx(bound)
    assert f"the training loss 3.9e+11 nats is above the divergence bound {bound:.3g}" in capsys.readouterr().out
    train(tmp_path / "below", 3, lr_bump=lambda epoch: 0.99 * bound)  # below the bound: trains on
    assert json.loads((tmp_path / "below" / "summary.json").read_text())["status"] == "completed"


def test_a_run_whose_validation_loss_is_never_finite_is_not_completed(tmp_path):
    args = parse("--out_dir", str(tmp_path / "run"), "--epochs", "3")
    run = experiment.Run(args, "script.py", "test", torch.device("cpu"))
    model = experiment.build_model(args, nn.Sequential(nn.Linear(4, 6), nn.ReLU()), alrao.LinearClassifier, 6, 3)
    run.start(model, experiment.build_optimizer(model, args), n_outputs=3)
    for _ in run.epochs():
        run.end_epoch({"train_loss": 1.0, "valid_loss": math.nan, "test_loss": math.nan, "diverged": False})
    summary = run.finish()
    assert (summary["status"], summary["best_epoch"], summary["valid_loss"]) == ("diverged", None, None)


def test_alrao_whose_bad_copies_alone_blow_up_keeps_training():
    """Copies at rates up to 1e7 blow up far beyond the bound; the averaged model, which is what
    the divergence rule judges, stays below it and the run is not stopped."""
    torch.manual_seed(0)
    x, y = torch.randn(256, 8), torch.randint(0, 3, (256,))
    features = nn.Linear(8, 8).requires_grad_(False)  # fixed features: only the copies train
    model = alrao.AlraoModel("classification", nn.NLLLoss(), features, 6, alrao.LinearClassifier, 8, 3)
    optimizer = alrao.AlraoSGD(model, min_lr=1e-2, max_lr=1e7)
    bound = run_module.DIVERGENCE_FACTOR * math.log(3)
    run = run_module.Run.__new__(run_module.Run)  # only its divergence rule
    run.divergence_bound = bound
    worst_copy, averaged = 0.0, []
    for start in range(0, 256, 16):
        xb, yb = x[start : start + 16], y[start : start + 16]
        loss = model.loss(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        copy_losses = model.last_copy_losses.detach()
        model.update_switch()
        averaged.append(loss.item())
        worst_copy = max(worst_copy, copy_losses.nan_to_num(posinf=math.inf).max().item())
    assert worst_copy > bound  # the bad copies blew up ...
    assert run.divergence({"train_loss": sum(averaged) / len(averaged), "valid_loss": averaged[-1]}) is None


# ------------------------------------------------------------------ bounds
def test_classifier_copies_beyond_sense_or_memory_are_rejected_before_allocation(tmp_path, capsys):
    start = time.perf_counter()
    argv = ["--use_alrao", "--n_last_layers", "100000000", "--size_multiplier", "0.125", "--out_dir", str(tmp_path)]
    code, line = run_main_cnn(capsys, *argv)
    assert time.perf_counter() - start < 30  # no hang: nothing is allocated
    assert code == 2
    assert line == (
        "main_cnn.py: error: --n_last_layers 100000000: at most 1000 classifier copies make sense "
        "(the paper uses 6 to 10)"
    )
    expected = (
        r"--n_last_layers 900: 900 classifier copies of 5130 parameters need at least .* GiB to train, "
        r"more than the 0.0625 GiB available on cpu; at most 817 copies fit"
    )
    with pytest.raises(experiment.UsageError, match=expected):
        experiment.model.check_classifier_copies(900, alrao.LinearClassifier, (512, 10), "cpu", 0, available=2**26)


def test_a_network_too_large_or_too_thin_is_rejected_with_the_limit(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main_cnn.build_parser().parse_args(["--size_multiplier", "1e-9"])
    assert exit_info.value.code == 2
    assert (
        "--size_multiplier 1e-09 is below 0.0625: the narrowest layer of GoogLeNet (16 channels"
        in capsys.readouterr().err
    )
    with pytest.raises(
        experiment.UsageError, match=r"--size_multiplier 1000: the network's .*M parameters need at least"
    ):
        experiment.check_memory(6_156_000 * 10**6, "cpu", "--size_multiplier 1000")


def test_the_narrowest_widths_are_those_of_the_networks():
    for name, narrowest in models.NARROWEST_WIDTH.items():
        with torch.device("meta"):
            net = models.build_preclassifier(name, 1)
        widths = [m.out_channels for n, m in net.named_modules() if isinstance(m, nn.Conv2d) and "fc" not in n]
        assert min(widths) == narrowest, name
