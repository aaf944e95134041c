"""End-to-end tests of reproduce.py: the quick profile shrunk to seconds (the character LSTM,
one seed, one epoch of a few batches), resume, failures, the launchers and the command line."""

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import main_cnn
import main_rnn
import reproduce
from experiment import OPTIMIZERS
from experiment.provenance import RESULTS_SOURCES, source_hash
from reproduce_lib import figures
from reproduce_lib import launch as launch_module
from reproduce_lib.experiments import BASELINES, EXPERIMENTS, Context, missing_baselines, width_rows
from reproduce_lib.launch import LaunchError, SlurmOptions, launch, thread_env
from reproduce_lib.outputs import Provenance, file_sha256, git_commit
from reproduce_lib.plan import Plan, adam
from reproduce_lib.protocol import PROFILES, SGD_RATES, TriangleSetting

SHRUNK = ["--profile", "quick", "--models", "LSTM", "--seeds", "0", "--epochs", "1", "--dry_run"]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def runs_on_the_cpu():
    """Every run these sweeps start gets --no-cuda: the suite runs on the CPU, whatever the machine."""
    command = launch_module.command
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(launch_module, "command", lambda *a, **k: [*command(*a, **k), "--no-cuda"])
        yield


def reproduce_main(tmp, *argv):
    args = reproduce.build_parser().parse_args(
        [*argv, *SHRUNK, "--out_dir", str(tmp / "runs"), "--results_dir", str(tmp / "results")]
    )
    return reproduce.main(args)


def summary(run_dir):
    return json.loads((Path(run_dir) / "summary.json").read_text())


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """table1, curves and baselines of the shrunk quick profile, in process; the triangle on a 2-end grid."""
    tmp = tmp_path_factory.mktemp("sweep")
    small = dataclasses.replace(PROFILES["quick"], triangle=TriangleSetting("LSTM", (-2, 0), epochs=1, n_seeds=1))
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(PROFILES, "quick", small)
        status = reproduce_main(tmp, "table1", "curves", "triangle", "baselines", "--launcher", "inline")
    return tmp, status


def test_the_shrunk_quick_profile_writes_the_table_and_the_figures(sweep):
    tmp, status = sweep
    assert status == 0
    results = tmp / "results"
    assert sorted(p.name for p in results.iterdir()) == [
        "baselines.json",
        "baselines.md",
        "curves_LSTM.png",
        "posterior_LSTM.png",
        "provenance.json",
        "table1.json",
        "table1.md",
        "triangle_LSTM.json",
        "triangle_LSTM.png",
    ]
    for png in results.glob("*.png"):
        assert png.read_bytes().startswith(PNG)
    assert not list(results.glob(".*"))  # no temporary file left behind
    manifest = json.loads((results / "provenance.json").read_text())
    code = source_hash(RESULTS_SOURCES)
    assert sorted(manifest) == sorted(p.name for p in results.iterdir() if p.name != "provenance.json")
    for name, entry in manifest.items():
        assert entry["sha256"] == file_sha256(results / name) and entry["source_hash"] == code
    assert json.loads((results / "table1.json").read_text())["source_hash"] == code
    assert f"· code {code} ·" in (results / "table1.md").read_text()


def test_a_dry_run_or_a_part_of_a_profile_never_writes_the_committed_results(capsys):
    def parse(*argv):
        return reproduce.build_parser().parse_args(["table1", "--profile", "quick", *argv])

    dry = parse("--dry_run")
    assert (dry.out_dir, dry.results_dir) == ("runs/reproduce-quick-dry_run", "runs/reproduce-quick-dry_run/results")
    assert dry.launcher == "inline" and parse("--dry_run", "--jobs", "2").launcher == "local"
    assert parse("--models", "LSTM").results_dir == "runs/reproduce-quick/results"
    assert parse("--epochs", "1", "--out_dir", "x").results_dir == "x/results"
    assert parse().results_dir == "results/quick" and parse("--profile", "paper").results_dir == "results"
    with pytest.raises(SystemExit):
        parse("--dry_run", "--results_dir", str(Path(reproduce.__file__).parent / "results" / "quick"))
    assert "a dry run's numbers mean nothing" in capsys.readouterr().err


def test_the_tables_numbers_are_those_of_the_runs_summaries(sweep):
    tmp, _ = sweep
    runs = tmp / "runs" / "LSTM" / "pydoc-1ep-dry"
    sgd = {lr: summary(runs / f"sgd-lr{lr:g}" / "seed0") for lr in SGD_RATES}
    best_lr = min(SGD_RATES, key=lambda lr: sgd[lr]["valid_loss"] if sgd[lr]["valid_loss"] is not None else math.inf)
    expected = {
        "SGD": sgd[best_lr],
        "Adam": summary(runs / "adam" / "seed0"),
        "Alrao": summary(runs / "alrao-sgd-0.001-100-x6" / "seed0"),
    }
    table = json.loads((tmp / "results" / "table1.json").read_text())
    assert table["profile"] == "quick" and table["seeds"] == "0" and table["commit"] == git_commit()
    assert json.loads((runs / "adam" / "seed0" / "config.json").read_text())["commit"] == git_commit()
    (row,) = table["rows"]
    assert row["model"] == "LSTM" and row["loss_unit"] == "bits/char" and row["comparable"] is False
    assert row["cells"]["SGD"]["lr"] == best_lr
    assert table["run_commits"] == [git_commit()] and row["cells"]["Adam"]["runs"][0]["commit"] == git_commit()
    markdown = (tmp / "results" / "table1.md").read_text()
    assert f"profile quick · seeds 0 · commit {git_commit()}" in markdown
    ours = next(line for line in markdown.splitlines() if "| ours |" in line)
    for column, run in expected.items():
        cell = row["cells"][column]
        assert cell["loss"]["mean"] == run["test_bpc"] and cell["loss"]["n"] == 1  # bits per character
        assert cell["top1"]["mean"] == pytest.approx(100 * run["test_acc"])
        assert f"| {run['test_bpc']:.3f} | {100 * run['test_acc']:.1f} |" in ours


def test_the_baselines_run_with_their_authors_defaults_and_get_a_row_each(sweep):
    tmp, _ = sweep
    runs = tmp / "runs" / "LSTM" / "pydoc-1ep-dry"
    table = json.loads((tmp / "results" / "baselines.json").read_text())
    (row,) = table["rows"]
    assert list(row["cells"]) == ["SGD", "Adam", "Alrao", *BASELINES]
    markdown = (tmp / "results" / "baselines.md").read_text()
    for name in BASELINES:
        run_dir = runs / name.lower() / "seed0"
        args = json.loads((run_dir / "config.json").read_text())["args"]
        assert args["optimizer"] == name and args["lr"] == OPTIMIZERS[name].default_lr  # no --lr given
        run = summary(run_dir)
        cell = row["cells"][name]
        assert cell["loss"]["mean"] == run["test_bpc"] and cell["paper"] is None
        assert f"| {name} | {run['test_bpc']:.3f} | {100 * run['test_acc']:.1f} |" in markdown
    # SGD, Adam and Alrao are Table 1's runs, not trained twice
    assert row["cells"]["Adam"] == json.loads((tmp / "results" / "table1.json").read_text())["rows"][0]["cells"]["Adam"]


def test_a_baseline_without_its_package_is_left_out_and_said(sweep, monkeypatch, capsys):
    tmp, _ = sweep
    monkeypatch.setitem(sys.modules, "prodigyopt", None)  # import prodigyopt -> ImportError
    assert "pip install prodigyopt" in missing_baselines()["Prodigy"]
    plan = Plan(PROFILES["quick"], models=("LSTM",), seeds=(0,), epochs=1, dry_run=True)
    assert "prodigy" not in {run.method.name for run in EXPERIMENTS["baselines"].runs(plan)}
    args = reproduce.build_parser().parse_args(
        ["baselines", *SHRUNK, "--out_dir", str(tmp / "runs"), "--results_dir", str(tmp / "without"), "--collect_only"]
    )
    assert reproduce.main(args) == 0
    assert "baselines: left out: --optimizer Prodigy needs the package prodigyopt" in capsys.readouterr().out
    markdown = (tmp / "without" / "baselines.md").read_text()
    assert "| Prodigy |" not in markdown and "- Not run: --optimizer Prodigy needs" in markdown
    with pytest.raises(SystemExit) as exit_:  # asked for by name: an error, not a silent omission
        reproduce.build_parser().parse_args(["baselines", "--baselines", "AliG", "Prodigy"])
    assert exit_.value.code == 2 and "pip install prodigyopt" in capsys.readouterr().err


def test_baselines_narrows_the_optimizers_of_the_baselines_experiment():
    plan = Plan(PROFILES["quick"], models=("LSTM",), seeds=(0,), baselines=("AliG", "DoG"))
    names = [run.method.name for run in EXPERIMENTS["baselines"].runs(plan)]
    table1 = [run.method.name for run in EXPERIMENTS["table1"].runs(plan)]
    assert names == table1 + ["alig", "dog"]


def test_the_curves_add_sgd_at_100_as_the_papers_figures_do_but_table1_does_not(sweep):
    tmp, _ = sweep
    assert (tmp / "runs" / "LSTM" / "pydoc-1ep-dry" / "sgd-lr100" / "seed0" / "summary.json").is_file()
    table = json.loads((tmp / "results" / "table1.json").read_text())
    assert "sgd-lr100" not in table["rows"][0]["cells"]["SGD"]["validation_loss_by_method"]


def test_the_triangle_has_sgd_on_the_diagonal_and_alrao_above(sweep):
    tmp, _ = sweep
    triangle = json.loads((tmp / "results" / "triangle_LSTM.json").read_text())
    runs = tmp / "runs" / "LSTM" / "pydoc-1ep-noES-dry"
    assert sorted(p.name for p in runs.iterdir()) == ["alrao-sgd-0.01-1-x6", "sgd-lr0.01", "sgd-lr1"]
    last = [json.loads(line) for line in (runs / "alrao-sgd-0.01-1-x6" / "seed0" / "metrics.jsonl").open()][-1]
    test = triangle["rows_min_lr_cols_max_lr"]["test"]
    assert test[0][1] == last["test_bpc"] and test[1][0] is None  # only min_lr <= max_lr
    assert json.loads((runs / "sgd-lr1" / "seed0" / "config.json").read_text())["args"]["early_stopping"] is False


def test_a_second_sweep_trains_nothing_and_an_interrupted_run_is_resumed(sweep, capsys):
    tmp, _ = sweep
    plan = Plan(PROFILES["quick"], models=("LSTM",), seeds=(0,), epochs=1, dry_run=True)
    runs = EXPERIMENTS["table1"].runs(plan)
    partial = tmp / "runs" / runs[0].folder
    (partial / "summary.json").unlink()  # as if killed after its last checkpoint
    before = {run.folder: (tmp / "runs" / run.folder / "metrics.jsonl").read_text() for run in runs}
    outcomes = launch(runs, tmp / "runs", launcher="inline")
    assert all(o.ok for o in outcomes)
    assert sorted(o.message for o in outcomes) == ["finished before"] * 8 + ["trained"]
    assert summary(partial)["status"] == "completed"
    assert "9 runs: 8 finished before, 1 to train" in capsys.readouterr().out
    assert before == {run.folder: (tmp / "runs" / run.folder / "metrics.jsonl").read_text() for run in runs}


def test_a_failed_run_is_reported_and_the_others_go_on(tmp_path, monkeypatch, capsys):
    real_main = main_rnn.main

    def main_failing_for_seed_1(args):
        if args.seed == 1:
            raise RuntimeError("out of memory")
        return real_main(args)

    monkeypatch.setattr(main_rnn, "main", main_failing_for_seed_1)
    plan = Plan(PROFILES["quick"], models=("LSTM",), seeds=(0, 1), epochs=1, dry_run=True)
    runs = [plan.run("LSTM", adam(), seed) for seed in (0, 1, 2)]
    outcomes = launch(runs, tmp_path, launcher="inline")
    assert [o.ok for o in outcomes] == [True, False, True]
    assert outcomes[1].message == "RuntimeError: out of memory"
    assert "[2/3] LSTM/pydoc-1ep-dry/adam/seed1: FAILED (RuntimeError: out of memory)" in capsys.readouterr().out


def test_a_folder_holding_another_run_is_reported_not_overwritten(tmp_path):
    plan = Plan(PROFILES["quick"], models=("LSTM",), seeds=(0,), epochs=1, dry_run=True)
    run = plan.run("LSTM", adam(), 0)
    (outcome,) = launch([run], tmp_path, launcher="inline")
    config = tmp_path / run.folder / "config.json"
    saved = json.loads(config.read_text())
    saved["args"]["bptt"] = 35
    config.write_text(json.dumps(saved))
    (outcome,) = launch([run], tmp_path, launcher="inline")
    assert not outcome.ok and "holds another run (--bptt 35, wanted 70)" in outcome.message


def test_the_local_launcher_runs_the_scripts_as_subprocesses_and_reports_their_errors(tmp_path):
    plan = Plan(PROFILES["quick"], models=("LSTM",), seeds=(0,), epochs=1, dry_run=True)
    good, broken = plan.run("LSTM", adam(), 0), plan.run("LSTM", adam(), 1)
    (tmp_path / broken.folder).mkdir(parents=True)
    (tmp_path / broken.folder / "checkpoint.pt").write_bytes(b"not a checkpoint")  # resumed, and rejected
    outcomes = {o.run.seed: o for o in launch([good, broken], tmp_path, launcher="local", jobs=2)}
    assert outcomes[0].ok and summary(tmp_path / good.folder)["status"] == "completed"
    log = (tmp_path / good.folder / "reproduce.log").read_text()
    assert "main_rnn.py --dataset pydoc" in log and "completed after 1 epoch" in log  # the run's own output
    assert not outcomes[1].ok
    assert "exit status 2: main_rnn.py: error: --resume: cannot read" in outcomes[1].message


def test_a_terminated_sweep_interrupts_its_runs_which_keep_their_checkpoints(tmp_path):
    out = tmp_path / "runs"
    sweep = subprocess.Popen(
        [
            sys.executable,
            str(Path(reproduce.__file__)),
            "table1",
            "--profile",
            "quick",
            "--models",
            "LSTM",
            "--seeds",
            "0",
            "--epochs",
            "50",
            "--jobs",
            "1",
            "--out_dir",
            str(out),
            "--results_dir",
            str(tmp_path / "results"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},  # its runs on the CPU, whatever the machine
    )
    first = out / "LSTM" / "pydoc-50ep" / "sgd-lr1e-05" / "seed0"
    deadline = time.monotonic() + 120
    while not (first / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # inside the training loop
    sweep.send_signal(signal.SIGTERM)  # `kill`: the sweep only, not its runs
    output, _ = sweep.communicate(timeout=120)
    assert sweep.returncode == 143, output
    assert "interrupted; the runs keep their checkpoints" in output
    assert summary(first)["status"] == "interrupted"  # the run was stopped, not left training unseen
    assert "interrupted during epoch" in (first / "reproduce.log").read_text()
    assert [p.parent.parent.name for p in out.glob("LSTM/pydoc-50ep/*/seed0/reproduce.log")] == ["sgd-lr1e-05"]


def test_the_slurm_launcher_runs_jobs_through_submitit(tmp_path):
    pytest.importorskip("submitit")
    plan = Plan(PROFILES["quick"], models=("LSTM",), seeds=(0,), epochs=1, dry_run=True)
    run = plan.run("LSTM", adam(), 0)
    (outcome,) = launch(
        [run],
        tmp_path,
        launcher="slurm",
        slurm=SlurmOptions(cluster="local", gpus_per_job=0, cpus_per_job=1, timeout_min=5),
    )
    assert outcome.ok, outcome.message
    assert summary(tmp_path / run.folder)["status"] == "completed"


def test_the_slurm_launcher_without_submitit_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "submitit", None)  # import submitit -> ImportError
    plan = Plan(PROFILES["quick"], models=("LSTM",), seeds=(0,), epochs=1, dry_run=True)
    with pytest.raises(LaunchError, match="pip install submitit"):
        launch([plan.run("LSTM", adam(), 0)], tmp_path, launcher="slurm")


def test_concurrent_local_runs_share_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(launch_module.os, "cpu_count", lambda: 8)
    assert thread_env(4) == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    assert thread_env(16)["OMP_NUM_THREADS"] == "1" and thread_env(1) == {}
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert thread_env(4) == {}  # the user's choice wins


def test_diverged_runs_are_marked_in_the_learning_curves_not_dropped(tmp_path):
    fine = [{"epoch": 1, "train_loss": 2.0, "test_loss": 2.1}, {"epoch": 2, "train_loss": 1.0, "test_loss": 1.2}]
    at_once = [{"epoch": 1, "train_loss": None, "test_loss": None, "diverged": True}]  # no finite value at all
    later = fine[:1] + [{"epoch": 2, "train_loss": None, "test_loss": None, "diverged": True}]
    curves = [
        figures.Curve("SGD lr 1e-2", "sgd", fine, False, 0.01),
        figures.Curve("SGD lr 10", "sgd", at_once, True, 10),
        figures.Curve("SGD lr 1", "sgd", later, True, 1.0),
        figures.Curve("Alrao", "alrao", fine, False),
    ]
    assert [figures.curve_label(c) for c in curves] == [
        "SGD lr 1e-2",
        "SGD lr 10 (diverged, epoch 1)",
        "SGD lr 1 (diverged, epoch 2)",
        "Alrao",
    ]
    path = figures.learning_curves(
        "t", curves, "loss", "nats", Provenance("quick", "0", "abc", "cmd"), tmp_path / "curves.png"
    )
    assert path.read_bytes().startswith(PNG)


def test_width_rows_are_adam_and_alrao_on_cnns_three_times_wider():
    plan = Plan(PROFILES["quick"], models=("VGG19", "LSTM"), seeds=(0,))
    (row,) = width_rows(plan)
    runs = plan.row_runs(row)
    assert [r.method.name for r in runs] == ["adam", "alrao-sgd-1e-05-10-x10"]
    for run in runs:
        assert run.flags[run.flags.index("--size_multiplier") + 1] == "0.75"
        assert run.folder.startswith("VGG19-x0.75/digits-5ep/")


def test_the_paper_profile_runs_the_published_protocol():
    plan = Plan(PROFILES["paper"])
    runs = EXPERIMENTS["table1"].runs(plan)
    assert len(runs) == 3 * 9 * 10 + 9 * 5  # 3 CNNs and the LSTM; 7 SGD rates, Adam, Alrao; 10 and 5 seeds
    lstm_alrao = next(r for r in runs if r.model == "LSTM" and r.method.name.startswith("alrao"))
    args = main_rnn.build_parser().parse_args([*lstm_alrao.flags, "--out_dir", "x"])
    assert (args.dataset, args.char_prediction, args.bptt, args.epochs) == ("ptb", True, 70, 300)
    assert (args.minLR, args.maxLR, args.n_last_layers, args.batch_size, args.nhid) == (-3, 2, 6, 20, 100)
    assert len(EXPERIMENTS["triangle"].runs(plan)) == 55  # both ends in {1e-7, ..., 1e2}
    cnn = next(r for r in runs if r.model == "VGG19")
    assert cnn.flags[cnn.flags.index("--epochs") + 1] == "80"  # the authors' launcher: 80 epochs, patience 20


def test_the_granularity_experiment_is_alrao_per_feature_and_per_weight_on_the_cnns(capsys):
    paper = Plan(PROFILES["paper"])
    runs = EXPERIMENTS["granularity"].runs(paper)
    assert len(runs) == 3 * 6 * 10  # Table 1's CNNs; 2 granularities x max_lr {1, 10, 100}; 10 seeds
    assert {r.model for r in runs} == {"MobileNetV2", "GoogLeNet", "VGG19"}
    assert EXPERIMENTS["granularity"].warnings(paper) == ["left out: LSTM (the ablation is on the CNNs)"]
    table1 = {r.folder for r in EXPERIMENTS["table1"].runs(paper)}
    shared = [r for r in runs if r.folder in table1]
    assert {r.method.name for r in shared} == {"alrao-sgd-1e-05-10-x10"}  # per feature at 10: Table 1's Alrao
    quick = Plan(PROFILES["quick"])
    runs = EXPERIMENTS["granularity"].runs(quick)
    assert len(runs) == 6 * 2 and {r.model for r in runs} == {"VGG19"}
    per_weight = [r for r in runs if "--lr_granularity" in r.flags]
    assert sorted({r.method.name for r in per_weight}) == [
        "alrao-sgd-1e-05-1-x10-per-weight",
        "alrao-sgd-1e-05-10-x10-per-weight",
        "alrao-sgd-1e-05-100-x10-per-weight",
    ]
    args = main_cnn.build_parser().parse_args([*per_weight[0].flags, "--out_dir", "x"])
    assert (args.lr_granularity, args.minLR, args.dataset) == ("weight", -5, "digits")


def test_the_granularity_report_writes_its_table_and_figure(tmp_path):
    """The report from fake finished runs: a row per granularity and max_lr, the figure a PNG."""
    plan = Plan(PROFILES["quick"], seeds=(0,))
    for i, run in enumerate(EXPERIMENTS["granularity"].runs(plan)):
        folder = tmp_path / "runs" / run.folder
        folder.mkdir(parents=True)
        args = main_cnn.build_parser().parse_args([*run.flags, "--out_dir", str(folder)])
        (folder / "config.json").write_text(json.dumps({"args": vars(args), "commit": "abc"}))
        (folder / "summary.json").write_text(
            json.dumps({"status": "finished", "valid_loss": 0.5 + i, "test_loss": 0.4 + i, "test_acc": 0.9})
        )
        (folder / "metrics.jsonl").write_text("")
    context = Context(plan, tmp_path / "runs", tmp_path / "results", "def", "python reproduce.py granularity")
    written = EXPERIMENTS["granularity"].report(context)
    assert sorted(p.name for p in written) == ["granularity.json", "granularity.md", "granularity.png"]
    table = (tmp_path / "results" / "granularity.md").read_text()
    assert "| per weight, max_lr 1e2 | 5.40 | 90.0 |" in table
    assert (tmp_path / "results" / "granularity.png").read_bytes().startswith(PNG)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["table1", "--launcher", "inline", "--jobs", "2"], "--jobs 2 is used only with --launcher local"),
        (["table1", "--models", "LSTM", "--dataset", "digits"], "--dataset digits is an image data set"),
        (["table1", "--seeds", "0", "0"], "--seeds 0 0 repeats a seed"),
        (["table1", "--baselines", "AliG"], "--baselines AliG is used only by the baselines experiment"),
        (["baselines", "--baselines", "Adam"], "invalid choice: 'Adam'"),
        (["table1", "--slurm_partition", "gpu"], "--slurm_partition gpu is used only with --launcher slurm"),
        (["figure9"], "invalid choice: 'figure9'"),
    ],
)
def test_bad_command_lines_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        reproduce.build_parser().parse_args(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_the_commit_is_marked_changed_by_code_changes_not_by_rewritten_results(tmp_path):
    def git(*args):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True, capture_output=True
        )

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "table1.md").write_text("old")
    (tmp_path / "code.py").write_text("x = 1")
    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "c")
    clean = git_commit(tmp_path)
    assert "+" not in clean and clean != "unknown"
    (tmp_path / "results" / "table1.md").write_text("new")  # reproduce.py rewrote its results
    assert git_commit(tmp_path) == clean
    (tmp_path / "code.py").write_text("x = 2")
    assert git_commit(tmp_path) == clean + "+changes"


def test_the_commit_is_unknown_outside_a_repository(tmp_path):
    assert git_commit(tmp_path) == "unknown"
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert git_commit().split("+")[0] == head
