"""The tuning-free baselines in the runner (experiment/baselines.py): each trains through
main_cnn.py, Schedule-Free evaluates and saves its evaluation point, DoG its averaged weights,
and a missing optional package is a one-line error naming the pip command."""

import json
import sys

import pytest
import torch

import experiment
import main_cnn
from experiment import baselines
from experiment import run as run_module

# As tests/test_main_cnn.py: VGG19 at width 1/8 (it has BatchNorm), 3 batches of 4 images per split.
# --no-cuda: the suite runs on the CPU, whatever the machine (exact resume is a CPU guarantee).
TINY = ["--dry_run", "--model_name", "VGG19", "--size_multiplier", "0.125", "--batch_size", "4", "--no-cuda"]
PACKAGE = {name: spec.package[0] for name, spec in experiment.OPTIMIZERS.items() if spec.package}
BASELINES = list(experiment.optimizers.BASELINES)  # a new entry of the registry is run here too
SCHEDULE_FREE = ["--optimizer", "SGDScheduleFree", "--lr", "0.1"]  # the default 1.0 blows up this tiny run


def run(out_dir, *argv):
    return main_cnn.main(main_cnn.build_parser().parse_args([*TINY, "--out_dir", str(out_dir), *argv]))


def needs(name):
    if name in PACKAGE:
        pytest.importorskip(PACKAGE[name])


def records(out_dir):
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "epoch_time_s"} for line in lines]


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("name", BASELINES)
def test_each_baseline_trains_a_dry_run(tmp_path, name):
    needs(name)
    summary = run(tmp_path, "--optimizer", name, *(["--lr", "0.1"] if name == "SGDScheduleFree" else []))
    assert summary["status"] == "completed" and summary["test_loss"] < 10
    checkpoint = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert checkpoint["args"]["optimizer"] == name
    (record,) = records(tmp_path)
    assert record["lr"] == (0.1 if name in ("AliG", "SGDScheduleFree") else experiment.OPTIMIZERS[name].default_lr)
    extra = {
        "AliG": "step_size",
        "Prodigy": "adapted_lr",
        "DAdaptSGD": "adapted_lr",
        "DAdaptAdam": "adapted_lr",
        "DoG": "eta",
        "LDoG": "eta",
    }.get(name)
    assert extra is None or record[extra] > 0


def test_the_builders_follow_the_authors_settings():
    needs("DoG")
    args = main_cnn.build_parser().parse_args([*TINY, "--optimizer", "DoG"])
    with_bn = main_cnn.models.build_preclassifier("VGG19", 0.125)
    without_bn = torch.nn.Linear(3, 2)
    assert experiment.build_optimizer(with_bn, args).param_groups[0]["reps_rel"] == 1e-4
    assert experiment.build_optimizer(without_bn, args).param_groups[0]["reps_rel"] == 1e-6
    args = main_cnn.build_parser().parse_args([*TINY, "--optimizer", "AliG", "--lr", "0.5", "--momentum", "0.9"])
    group = experiment.build_optimizer(without_bn, args).param_groups[0]
    assert (group["max_lr"], group["momentum"]) == (0.5, 0.9)


def test_a_missing_package_is_a_one_line_error_naming_the_pip_command(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "prodigyopt", None)  # `import prodigyopt` now raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        main_cnn.build_parser().parse_args(["--optimizer", "Prodigy"])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message == (
        "main_cnn.py: error: --optimizer Prodigy needs the package prodigyopt: pip install "
        "prodigyopt (or all the baselines: pip install 'alrao[baselines]')"
    )
    with pytest.raises(baselines.MissingPackage, match="pip install prodigyopt"):
        baselines.prodigy(torch.nn.Linear(2, 2), 1.0, None)


def test_options_a_baseline_does_not_use_are_errors(capsys):
    for argv, named in [
        (["--optimizer", "AliG", "--weight_decay", "0.1"], "--weight_decay 0.1 is not used"),
        (["--optimizer", "DoG", "--use_alrao"], "--optimizer DoG has no Alrao version"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main_cnn.build_parser().parse_args(argv)
        assert exit_info.value.code == 2 and named in capsys.readouterr().err


@pytest.fixture(scope="module")
def schedule_free_reference(tmp_path_factory):
    """An uninterrupted 2-epoch Schedule-Free SGD run, with a spy on the optimizer's mode at each
    evaluation, checkpoint and BatchNorm recalibration."""
    pytest.importorskip("schedulefree")
    out = tmp_path_factory.mktemp("schedule_free")
    events, built = [], []

    def mode():
        return "train" if built[0].param_groups[0]["train_mode"] else "eval"

    def build_optimizer_hooks(model, optimizer, args, **kwargs):
        built.append(optimizer)
        return build(model, optimizer, args, **kwargs)

    def evaluate(*args):
        events.append(("evaluate", mode()))
        return main_cnn_evaluate(*args)

    def save(obj, path, **kwargs):
        events.append((path.name, mode()))
        return atomic_torch_save(obj, path, **kwargs)

    def recalibrate(self):
        events.append(("batch_norm", mode()))
        return recompute(self)

    build, main_cnn_evaluate, atomic_torch_save = (
        experiment.build_optimizer_hooks,
        main_cnn.evaluate,
        run_module.atomic_torch_save,
    )
    recompute = baselines.ScheduleFreeHooks._recompute_batch_norm_statistics
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(experiment, "build_optimizer_hooks", build_optimizer_hooks)
        patch.setattr(main_cnn, "evaluate", evaluate)
        patch.setattr(run_module, "atomic_torch_save", save)
        patch.setattr(baselines.ScheduleFreeHooks, "_recompute_batch_norm_statistics", recalibrate)
        run(out, *SCHEDULE_FREE, "--epochs", "2")
    return out, events


def test_schedule_free_evaluates_and_saves_its_evaluation_point(schedule_free_reference):
    _, events = schedule_free_reference
    assert {mode for _, mode in events} == {"eval"}  # (its steps raise unless in train mode)
    epoch = ["batch_norm", "evaluate", "evaluate", "checkpoint.pt"]  # best.pt too, on a better epoch
    assert [event for event, _ in events if event != "best.pt"] == ["checkpoint.pt", *epoch, *epoch]
    assert events[4] == ("best.pt", "eval")  # the first epoch is always the best so far


def test_a_resumed_schedule_free_run_equals_the_uninterrupted_one(schedule_free_reference, tmp_path):
    reference, _ = schedule_free_reference
    run(tmp_path, *SCHEDULE_FREE, "--epochs", "1")
    run(tmp_path, *SCHEDULE_FREE, "--epochs", "2", "--resume")
    assert records(tmp_path) == records(reference)
    saved, expected = (
        torch.load(d / "checkpoint.pt", map_location="cpu", weights_only=True) for d in (tmp_path, reference)
    )
    assert_same_state(saved["model"], expected["model"])
    assert_same_state(saved["optimizer"]["state"][0], expected["optimizer"]["state"][0])


def test_dog_evaluates_and_saves_its_averaged_weights_and_resumes(tmp_path, monkeypatch):
    needs("DoG")
    evaluated, snapshots, hooks = [], [], []
    build, evaluate = experiment.build_optimizer_hooks, main_cnn.evaluate

    def build_optimizer_hooks(*args, **kwargs):
        hooks.append(build(*args, **kwargs))
        return hooks[-1]

    def spy(model, *args):
        evaluated.append(model)
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return evaluate(model, *args)

    monkeypatch.setattr(experiment, "build_optimizer_hooks", build_optimizer_hooks)
    monkeypatch.setattr(main_cnn, "evaluate", spy)
    run(tmp_path / "a", "--optimizer", "DoG", "--epochs", "2")
    averager = hooks[0].averager
    assert len(evaluated) == 4 and all(model is averager.averaged_model for model in evaluated)
    assert averager.t == 1 + 2 * main_cnn.DRY_RUN_BATCHES  # one average per step
    average, base = averager.averaged_model.state_dict(), averager.base_model.state_dict()
    weight = next(k for k in base if k.endswith("weight"))
    assert not torch.equal(average[weight], base[weight])
    best = torch.load(tmp_path / "a" / "best.pt", map_location="cpu", weights_only=True)
    assert_same_state(best["model"], snapshots[2 * (best["epoch"] - 1)])  # the validation pass of that epoch
    # Resume: the averager's state comes back with the checkpoint.
    run(tmp_path / "b", "--optimizer", "DoG", "--epochs", "1")
    run(tmp_path / "b", "--optimizer", "DoG", "--epochs", "2", "--resume")
    assert records(tmp_path / "b") == records(tmp_path / "a")
    saved = torch.load(tmp_path / "b" / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert_same_state(saved["optimizer_hooks"]["av_model"], average)
    assert_same_state(saved["model"], base)
