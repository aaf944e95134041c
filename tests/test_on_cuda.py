"""The runner on a real GPU: skipped where CUDA is not available (CI), run by
``benchmarks/gpu_check.py`` on a machine with one. The same branches are forced on the CPU in
test_cuda_paths.py and test_cli_accelerator.py; here they meet the device itself."""

import json

import pytest
import torch

import main_cnn
import main_rnn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CNN = ["--dry_run", "--model_name", "VGG19", "--size_multiplier", "0.125", "--batch_size", "4"]
RNN = ["--dry_run", "--emsize", "8", "--nhid", "8", "--bptt", "8", "--batch_size", "4"]
CNN_ALRAO = ["--use_alrao", "--minLR", "-4", "--maxLR", "0", "--n_last_layers", "3"]
RNN_ALRAO = ["--use_alrao", "--minLR", "-2", "--maxLR", "1", "--n_last_layers", "4"]


def run(script, out_dir, *argv):
    base = CNN if script is main_cnn else RNN
    return script.main(script.build_parser().parse_args([*base, "--out_dir", str(out_dir), *argv]))


@pytest.mark.parametrize("script, flags", [(main_cnn, CNN_ALRAO), (main_rnn, RNN_ALRAO), (main_cnn, [])])
def test_a_run_trains_and_resumes_on_cuda(tmp_path, script, flags):
    run(script, tmp_path, *flags, "--epochs", "1")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["device"].startswith("cuda")
    summary = run(script, tmp_path, *flags, "--epochs", "2", "--resume")
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2


def test_a_checkpoint_written_on_cuda_opens_on_the_cpu(tmp_path):
    run(main_cnn, tmp_path, *CNN_ALRAO)
    checkpoint = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert all(t.device.type == "cpu" for t in checkpoint["model"].values())
    assert len(checkpoint["rng"]["cuda"]) == 1  # the run's device only


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("script, flags", [(main_cnn, []), (main_cnn, CNN_ALRAO), (main_rnn, RNN_ALRAO)])
def test_amp_on_cuda(tmp_path, amp, script, flags):
    summary = run(script, tmp_path, *flags, "--amp", amp)
    assert summary["status"] == "completed" and summary["train_loss"] is not None


@pytest.mark.parametrize("name", ["DoG", "LDoG"])
def test_dog_resumes_on_cuda(tmp_path, name):
    pytest.importorskip("dog")
    run(main_cnn, tmp_path, "--optimizer", name, "--epochs", "1")
    summary = run(main_cnn, tmp_path, "--optimizer", name, "--epochs", "2", "--resume")
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
