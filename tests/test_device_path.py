"""The accelerator path forced on CPU: a full Alrao step reads nothing on the host; the forward
and the loss compile with fullgraph=True and equal eager; the deferred checks."""

import contextlib

import pytest
import torch
from torch import nn

import alrao
import main_cnn
import main_rnn
from models.rnn import RNNModel

HOST_READS = ("item", "__bool__", "__float__", "__int__", "tolist", "cpu", "numpy", "nonzero")


@contextlib.contextmanager
def host_reads_fail(monkeypatch):
    """Every way of reading a tensor on the host raises (what a GPU step would synchronise on)."""

    def fail(name):
        def read(*args, **kwargs):
            raise AssertionError(f"host read in the training step: {name}")

        return read

    with monkeypatch.context() as patch:
        for name in HOST_READS:
            patch.setattr(torch.Tensor, name, fail(f"Tensor.{name}"))
        patch.setattr(torch, "nonzero", fail("torch.nonzero"))
        patch.setattr(torch.cuda, "synchronize", fail("torch.cuda.synchronize"))
        yield


def make_model(cls=alrao.LinearClassifier, seed=0):
    torch.manual_seed(seed)
    pre = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU())
    return alrao.AlraoModel("classification", nn.NLLLoss(), pre, 3, cls, 8, 5)


def batches(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(6, 3, 4, generator=g), torch.randint(0, 5, (6,), generator=g)) for _ in range(n)]


def alrao_step(model, optimizer, x, y, amp):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        output = model(x)
        loss = model.loss(output, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    model.update_switch()
    return loss


class GenericCopy(alrao.LinearClassifier):
    """A classifier class of the user's own (the generic copies path)."""


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("optimizer", [alrao.AlraoSGD, alrao.AlraoAdam])
@pytest.mark.parametrize("cls", [alrao.LinearClassifier, GenericCopy], ids=["linear", "generic"])
def test_a_full_step_on_the_accelerator_path_reads_nothing_on_the_host(monkeypatch, optimizer, amp, cls):
    model = make_model(cls)
    opt = optimizer(model, min_lr=1e-3, max_lr=1.0)
    t0 = model.switch.t.clone()
    with alrao.accelerator_path(), host_reads_fail(monkeypatch):
        for x, y in batches():  # the first forward included (its log-probability check is deferred)
            alrao_step(model, opt, x, y, amp)
    assert int(model.switch.t - t0) == 3
    assert torch.isfinite(model.posterior()).all()
    # The deferred checks are the only read, at check(): nothing to report here.
    model.check()


def test_check_is_where_the_accelerator_path_reads(monkeypatch):
    model = make_model()
    model.check_every = 2
    opt = alrao.AlraoSGD(model, min_lr=1e-3, max_lr=1.0)
    (x, y), (x2, y2) = batches(2)
    with alrao.accelerator_path(), host_reads_fail(monkeypatch):
        alrao_step(model, opt, x, y, amp=False)
        with pytest.raises(AssertionError, match="host read"):
            alrao_step(model, opt, x2, y2, amp=False)  # the 2nd update_switch runs check()


def test_accelerator_path_is_scoped_and_also_forces_the_host_path():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not alrao.on_accelerator_path(cpu) and alrao.on_accelerator_path(cuda)
    with alrao.accelerator_path():
        assert alrao.on_accelerator_path(cpu)
        with alrao.accelerator_path(False):
            assert not alrao.on_accelerator_path(cuda)
        assert alrao.on_accelerator_path(cpu)
    assert not alrao.on_accelerator_path(cpu)


def test_forward_and_loss_compile_with_fullgraph_and_equal_eager():
    """One small model (compiling on 2 cores is slow): no graph break in forward nor in loss
    (fullgraph=True raises on one), the CPU-only finiteness shortcut traced away. (Compiling
    model and model.loss separately, as the README shows, was checked the same way.)"""
    torch._dynamo.reset()
    model = make_model()
    x, y = batches(1)[0]
    eager_out = model(x)
    eager_loss = model.loss(eager_out, y)
    eager_copy_losses = model.last_copy_losses

    @torch.compile(fullgraph=True)  # one graph for both (one compilation: the test stays short)
    def forward_and_loss(x, y):
        out = model(x)
        return out, model.loss(out, y)

    out, loss = forward_and_loss(x, y)
    torch.testing.assert_close(out, eager_out)
    torch.testing.assert_close(loss, eager_loss)
    torch.testing.assert_close(model.last_copy_losses, eager_copy_losses)
    model.update_switch()  # the compiled loss left the copies' losses for the switch
    assert int(model.switch.t) == 2


@pytest.mark.parametrize(
    "backend, own_copied",
    [("inductor", None), ("aot_eager", True)],
    ids=["inductor", "the-copy-for-torch-2.11"],
)
@pytest.mark.parametrize("loss_term", [False, True], ids=["fused-nll", "general-path"])
def test_training_through_a_compiled_forward_equals_eager(monkeypatch, backend, own_copied, loss_term):
    """The CLIs' --compile: model.compile(), the loss, backward and step eager. The copies' own
    outputs then get no gradient from the fused NLL, which inductor's backward failed on in
    torch 2.11; those versions get a copy of them (forced here, where torch is newer)."""
    if own_copied is not None:
        monkeypatch.setattr(alrao.linear_copies, "_OWN_OUTPUTS_COPIED_WHEN_COMPILED", own_copied)
    torch._dynamo.reset()
    losses, params = [], []
    for compiled in (False, True):
        model = make_model()
        optimizer = alrao.AlraoSGD(model, 1e-3, 1.0, generator=torch.Generator().manual_seed(0))
        if compiled:
            model.compile(backend=backend)
        for x, y in batches(3):
            out = model(x)
            loss = model.loss(out, y) + (out.exp().sum() * 1e-3 if loss_term else 0)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            model.update_switch()
            losses.append(loss.detach())
        params.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    torch.testing.assert_close(losses[3:], losses[:3])
    torch.testing.assert_close(params[1], params[0])


@pytest.mark.parametrize("accelerator", [False, True], ids=["host-path", "accelerator-path"])
def test_a_diverged_network_is_scored_the_same_on_every_path(accelerator):
    model = make_model()
    with torch.no_grad():
        model.preclassifier[1].bias.fill_(float("nan"))
    loader = batches(2)
    torch.manual_seed(0)
    lstm = alrao.AlraoModel("classification", nn.NLLLoss(), RNNModel(7, 4, 5, 1), 2, alrao.LinearClassifierRNN, 5, 7)
    with torch.no_grad():
        lstm.preclassifier.rnn.bias_ih_l0.fill_(float("nan"))
    text = torch.randint(0, 7, (9, 2), generator=torch.Generator().manual_seed(0))
    with alrao.accelerator_path(accelerator):
        scores = [main_cnn.evaluate(model, loader, "cpu"), main_rnn.evaluate(lstm, text, 4)]
        for score in scores:
            assert set(score) == {"loss", "acc"} and all(v != v for v in score.values()), score  # both NaN
        model.check()  # the deferred flag was cleared when it raised
        lstm.check()
