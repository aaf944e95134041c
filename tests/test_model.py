"""AlraoModel: the averaged output, the routed gradients, diverged copies, tuple outputs, forwarding."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import alrao

N_COPIES, D, K = 4, 6, 3


class Pre(nn.Module):
    def __init__(self, tuple_output=False):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, D), nn.Tanh())
        self.tuple_output = tuple_output

    def forward(self, x):
        z = self.body(x)
        return (z, x.sum(), "extra") if self.tuple_output else z

    def width(self, factor):
        return D * factor


class CountingClassifier(alrao.LinearClassifier):
    calls = 0

    def forward(self, x):
        CountingClassifier.calls += 1
        return super().forward(x)

    def n_params(self):
        return sum(p.numel() for p in self.parameters())


# alrao.LinearClassifier copies go through the batched path (one matrix product),
# the subclass through the generic one (one call per copy): both must behave alike.
PATHS = pytest.mark.parametrize("cls", [alrao.LinearClassifier, CountingClassifier], ids=["batched", "generic"])


def make(task="classification", tuple_output=False, seed=0, cls=CountingClassifier):
    torch.manual_seed(seed)
    if task == "classification":
        m = alrao.AlraoModel(task, nn.NLLLoss(), Pre(tuple_output), N_COPIES, cls, D, K)
    else:
        m = alrao.AlraoModel(task, alrao.GaussianNLL(), Pre(tuple_output), N_COPIES, alrao.LinearRegressor, D, 2)
    # a non-uniform posterior, so that the weighting matters
    for _ in range(3):
        m.switch.update(torch.rand(N_COPIES) * 2)
    return m


def batch(seed=1, n=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g), torch.randint(0, K, (n,), generator=g)


@PATHS
def test_output_is_posterior_mixture_and_loss_value(cls):
    m = make(cls=cls)
    x, y = batch()
    out = m(x)
    z = m.preclassifier(x)
    probs = torch.stack([c(z).exp() for c in m.classifiers])
    expected = (m.posterior()[:, None, None] * probs).sum(0).log()
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(out.exp().sum(1), torch.ones(len(x)), atol=1e-5)
    assert torch.allclose(m.loss(out, y), F.nll_loss(expected, y), atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(m(x), out)


@PATHS
def test_gradients_are_routed_as_in_the_paper(cls):
    m = make(cls=cls)
    x, y = batch()
    m.loss(m(x), y).backward()

    ref = copy.deepcopy(m)
    ref.zero_grad()
    # pre-classifier: gradient of the averaged model's loss, copies held fixed
    z = ref.preclassifier(x)
    for c in ref.classifiers:
        c.requires_grad_(False)
    mix = torch.logsumexp(torch.stack([c(z) for c in ref.classifiers]) + ref.switch.log_posterior[:, None, None], 0)
    pre_grads = torch.autograd.grad(F.nll_loss(mix, y), list(ref.preclassifier.parameters()))
    for p, g in zip(m.preclassifier.parameters(), pre_grads):
        assert torch.allclose(p.grad, g, atol=1e-6)
    # copy j: gradient of its own loss on the detached pre-classifier output
    for c_model, c_ref in zip(m.classifiers, ref.classifiers):
        c_ref.requires_grad_(True)
        own = F.nll_loss(c_ref(z.detach()), y)
        for p, g in zip(c_model.parameters(), torch.autograd.grad(own, list(c_ref.parameters()))):
            assert torch.allclose(p.grad, g, atol=1e-6)


@pytest.mark.parametrize("diverged", [False, True], ids=["finite", "one-diverged"])
def test_the_accelerator_path_with_masks_equals_the_cpu_path(diverged):
    """On CPU the diverged-copy masks are skipped when every copy is finite; accelerators always
    apply them (no host sync). Forcing the masks here must not change any value or gradient."""

    def step(path):
        m = make(cls=alrao.LinearClassifier)  # (its switch updated on the host path in both)
        if diverged:
            with torch.no_grad():
                m.classifiers[1].fc.weight.fill_(float("nan"))
        x, y = batch()
        with alrao.accelerator_path(path == "accelerator"):
            loss = m.loss(m(x), y)
            loss.backward()
        return [loss] + [p.grad.clone() for p in m.parameters()]

    fast, masked = step("host"), step("accelerator")
    for a, b in zip(fast, masked):
        if diverged:
            assert torch.equal(a, b)
        else:  # the host path's mixture skips the log-sum-exp's shift: equal up to rounding
            torch.testing.assert_close(a, b)
    assert all(torch.isfinite(g).all() for g in fast)


@pytest.mark.parametrize(
    "offset", [0.0, -60.0, -95.0, -200.0, 200.0], ids=["log-probs", "small", "near-underflow", "underflow", "overflow"]
)
def test_the_mixture_equals_logsumexp_with_or_without_its_shift(offset):
    """The host path first tries the mixture without the log-sum-exp's shift; sums that underflow
    or come near it (every copy's probability tiny: below 2**-103 in float32) or overflow (large
    log-likelihoods) fall back to the shift. Small sums above that keep float32's precision."""
    from alrao.mixture import LogMixture

    torch.manual_seed(0)
    y = (torch.log_softmax(torch.randn(3, 5, 7), dim=-1) + offset).requires_grad_(True)
    log_post = torch.log_softmax(torch.randn(3), dim=0).view(3, 1, 1)
    grad = torch.randn(5, 7)
    out, _ = LogMixture.apply(y, log_post, None)  # None: every copy known to be finite
    (g,) = torch.autograd.grad(out, y, grad)
    y64 = y.detach().double().requires_grad_(True)
    ref = torch.logsumexp(y64 + log_post.double(), dim=0)
    (g64,) = torch.autograd.grad(ref, y64, grad.double())
    torch.testing.assert_close(out, ref.float())
    torch.testing.assert_close(g, g64.float())
    _, p = LogMixture.apply(y.detach(), log_post, None, True)  # p: exp(y), made by the unshifted form only
    assert (p is not None) == (offset in (0.0, -60.0))


@pytest.mark.parametrize("mask", [[1, 1, 1], [1, 0, 1], [0, 0, 0]], ids=["all", "one-left-out", "none"])
def test_the_log_mixture_equals_logsumexp_over_the_finite_copies(mask):
    g = torch.Generator().manual_seed(0)
    y = torch.log_softmax(torch.randn(3, 4, 5, generator=g), dim=-1).requires_grad_()
    log_post = torch.log_softmax(torch.randn(3, generator=g), dim=0).view(3, 1, 1)
    log_post[0] = -math.inf  # a copy whose posterior underflowed to 0
    finite = torch.tensor(mask, dtype=torch.bool)
    grad = torch.randn(4, 5, generator=g)
    out, _ = alrao.mixture.LogMixture.apply(y, log_post, finite)
    (got,) = torch.autograd.grad(out, y, grad)
    reference = torch.logsumexp(torch.where(finite.view(3, 1, 1), y + log_post, -math.inf), dim=0)
    (expected,) = torch.autograd.grad(reference, y, grad)
    assert torch.allclose(out, reference, atol=1e-6) and torch.allclose(got, expected.nan_to_num(0.0), atol=1e-6)
    assert torch.isfinite(got).all()  # no NaN even where every copy is left out


def test_each_copy_runs_once_per_step():
    """No re-evaluation in the backward: the stacked copies cost one (vmapped) call of the
    class's forward, the one-by-one fallback one call per copy."""
    m = make()
    x, y = batch()
    CountingClassifier.calls = 0
    loss = m.loss(m(x), y)
    loss.backward()
    m.update_switch()
    assert CountingClassifier.calls == 1

    class HostReading(CountingClassifier):  # .item() in forward: vmap cannot batch it
        def forward(self, x):
            self.last_max = x.max().item()
            return super().forward(x)

    m = make(cls=HostReading)
    with pytest.warns(UserWarning, match="one by one"):
        m(x)
    CountingClassifier.calls = 0
    m.loss(m(x), y).backward()
    assert CountingClassifier.calls == N_COPIES


@PATHS
def test_diverged_copy_is_masked_and_training_goes_on(cls):
    m = make(cls=cls)
    with torch.no_grad():
        m.classifiers[2].fc.weight.fill_(float("nan"))
    opt = alrao.AlraoSGD(m, 1e-3, 1.0)
    x, y = batch()
    before = [p.detach().clone() for p in m.classifiers[0].parameters()]
    for _ in range(5):
        out = m(x)
        loss = m.loss(out, y)
        assert torch.isfinite(loss) and torch.isfinite(out).all()
        opt.zero_grad()
        loss.backward()
        for p in m.parameters():
            assert torch.isfinite(p.grad).all()
        assert all((p.grad == 0).all() for p in m.classifiers[2].parameters())
        opt.step()
        m.update_switch()
    assert not torch.isfinite(m.last_copy_outputs[2]).any()
    assert m.posterior()[2] < 0.05
    assert any(not torch.equal(a, b) for a, b in zip(before, m.classifiers[0].parameters()))
    assert torch.isnan(m.classifiers[2].fc.weight).all()  # untouched, not "repaired" by NaN updates


@pytest.mark.parametrize(
    "layer,args,target",
    [
        (alrao.LinearClassifier, (D, K), lambda n: torch.randint(0, K, (n,))),
        (alrao.LinearRegressor, (D, 2), lambda n: torch.randn(n, 2)),
    ],
)
def test_batched_path_equals_generic_path(layer, args, target):
    """Same outputs, loss and gradients whether the copies run in one product or one by one."""

    class Generic(layer):
        def forward(self, x):
            return super().forward(x)

    task = "classification" if layer is alrao.LinearClassifier else "regression"
    loss = nn.NLLLoss() if task == "classification" else None
    torch.manual_seed(0)
    a = alrao.AlraoModel(task, loss, Pre(), N_COPIES, layer, *args)
    torch.manual_seed(0)
    b = alrao.AlraoModel(task, loss, Pre(), N_COPIES, Generic, *args)
    with torch.no_grad():
        a.classifiers[1].fc.weight[0, 0] = float("nan")  # one diverged copy
        b.classifiers[1].fc.weight[0, 0] = float("nan")
    x, _ = batch()
    y = target(len(x))
    for m in (a, b):
        m.loss(m(x), y).backward()
    torch.testing.assert_close(a.last_copy_outputs, b.last_copy_outputs, equal_nan=True)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def test_copy_losses_match_nll_loss_with_ignore_index():
    m = alrao.AlraoModel("classification", nn.NLLLoss(ignore_index=1), Pre(), N_COPIES, alrao.LinearClassifier, D, K)
    x, y = batch()
    out = m(x)
    m.loss(out, y)
    expected = torch.stack([F.nll_loss(c(m.preclassifier(x)), y, ignore_index=1) for c in m.classifiers])
    torch.testing.assert_close(m.last_copy_losses, expected)


def test_non_finite_preclassifier_output_raises():
    m = make()
    with torch.no_grad():
        m.preclassifier.body[0].bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="pre-classifier"):
        m(batch()[0])


def test_huge_finite_preclassifier_output_does_not_raise():
    # its sum overflows to inf (the host path's one-read shortcut), yet every element is finite
    class Huge(nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], D), 3e38)

    m = alrao.AlraoModel("classification", nn.NLLLoss(), Huge(), N_COPIES, alrao.LinearClassifier, D, K)
    m(batch()[0])
    column = torch.tensor([1])
    for inf in (float("inf"), float("-inf")):
        m.preclassifier.forward = lambda x, inf=inf: torch.full((x.shape[0], D), 3e38).index_fill_(1, column, inf)
        with pytest.raises(FloatingPointError, match="pre-classifier"):
            m(batch()[0])


def test_deferred_finite_check_raises_at_update_switch_and_is_cleared():
    m = make()
    m.check_every = 2
    x, y = batch()
    with torch.no_grad():
        m.preclassifier.body[0].bias.fill_(float("nan"))
    with alrao.accelerator_path():
        m.loss(m(x), y)
        m.update_switch()  # first update: flag set, not read yet
        m.loss(m(x), y)
        with pytest.raises(FloatingPointError, match="pre-classifier"):
            m.update_switch()
        m.check()  # raised once, then cleared


def test_tuple_output_and_method_forwarding():
    m = make(tuple_output=True)
    x, y = batch()
    out, s, extra = m(x)
    assert out.shape == (len(x), K) and torch.equal(s, x.sum()) and extra == "extra"
    m.method_fwd_preclassifier("width")
    m.method_fwd_classifiers("n_params")
    assert m.width(3) == 3 * D
    assert m.n_params() == [D * K + K] * N_COPIES
    with pytest.raises(AttributeError):
        m.method_fwd_preclassifier("nope")
    clone = copy.deepcopy(m)  # forwarding survives a deep copy, bound to the copy
    assert clone.width(2) == 2 * D
    with pytest.raises(AttributeError):
        _ = m.not_forwarded


def test_protocol_errors():
    m = make()
    with pytest.raises(RuntimeError, match="model.loss"):
        m.update_switch()
    with pytest.raises(ValueError, match="task"):
        alrao.AlraoModel("ranking", nn.NLLLoss(), Pre(), 2, alrao.LinearClassifier, D, K)
    with pytest.raises(ValueError, match="n_classifiers"):
        alrao.AlraoModel("classification", nn.NLLLoss(), Pre(), 0, alrao.LinearClassifier, D, K)
    with pytest.raises(ValueError, match="reduction"):
        m2 = alrao.AlraoModel("classification", nn.NLLLoss(reduction="none"), Pre(), 2, alrao.LinearClassifier, D, K)
        x, y = batch()
        m2.loss(m2(x), y)


def test_rnn_decoder_copies():
    class TinyLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(20, 8)
            self.rnn = nn.LSTM(8, 8)

        def forward(self, inp, hidden=None):
            return self.rnn(self.emb(inp), hidden)

    m = alrao.AlraoModel("classification", nn.NLLLoss(), TinyLM(), 3, alrao.LinearClassifierRNN, 8, 20)
    inp = torch.randint(0, 20, (7, 2))
    out, hidden = m(inp)
    assert out.shape == (14, 20) and hidden[0].shape == (1, 2, 8)
    m.loss(out, torch.randint(0, 20, (14,))).backward()
    assert all(p.grad is not None for p in m.parameters())


class Logits(nn.Module):
    """A classifier ending without log_softmax (the misuse the model must catch)."""

    def __init__(self, d, k):
        super().__init__()
        self.fc = nn.Linear(d, k)

    def forward(self, x):
        return self.fc(x) * 3


def test_copies_returning_logits_are_caught_on_the_first_forward():
    torch.manual_seed(0)
    m = alrao.AlraoModel("classification", nn.CrossEntropyLoss(), Pre(), N_COPIES, Logits, D, K)
    x, y = batch()
    with pytest.raises(ValueError, match="log_softmax and use nn.NLLLoss"):
        m(x)
    m(x)  # checked once: later forwards pay nothing


def test_the_log_probability_check_is_deferred_on_the_accelerator_path():
    torch.manual_seed(0)
    m = alrao.AlraoModel("classification", nn.NLLLoss(), Pre(), N_COPIES, Logits, D, K)
    m.check_every = 1
    x, y = batch()
    with alrao.accelerator_path():
        out = m(x)
        m.loss(out, y)
        with pytest.raises(ValueError, match="log_softmax"):
            m.update_switch()
    m.check()  # cleared after raising


def test_log_probabilities_along_the_last_dimension_pass_the_check():
    class SequenceDecoder(nn.Module):  # (batch, time, classes): normalised along the last dim
        def __init__(self, d, k):
            super().__init__()
            self.fc = nn.Linear(d, k)

        def forward(self, z):
            return F.log_softmax(self.fc(z).unsqueeze(1).expand(-1, 7, -1), dim=-1)

    torch.manual_seed(0)
    m = alrao.AlraoModel("classification", nn.NLLLoss(), Pre(), N_COPIES, SequenceDecoder, D, K)
    m(batch()[0])


def test_warns_once_when_update_switch_is_never_called():
    m = make(cls=alrao.LinearClassifier)
    opt = alrao.AlraoSGD(m, min_lr=1e-3, max_lr=0.1)
    x, y = batch()
    with pytest.warns(UserWarning, match=r"update_switch\(\) never called") as caught:
        for _ in range(alrao.model.STEPS_BEFORE_NO_SWITCH_WARNING + 5):
            opt.zero_grad()
            m.loss(m(x), y).backward()
            opt.step()
    assert sum("update_switch" in str(w.message) for w in caught) == 1


def test_no_warning_when_the_switch_is_updated():
    import warnings

    m = make(cls=alrao.LinearClassifier)
    opt = alrao.AlraoSGD(m, min_lr=1e-3, max_lr=0.1)
    x, y = batch()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(alrao.model.STEPS_BEFORE_NO_SWITCH_WARNING + 1):
            opt.zero_grad()
            m.loss(m(x), y).backward()
            opt.step()
            m.update_switch()


def test_data_parallel_without_replicas_works_and_replication_is_rejected():
    m = make(cls=alrao.LinearClassifier)
    wrapped = nn.DataParallel(m)  # on a machine without GPU (or with one), no replica is made
    x, y = batch()
    out = wrapped(x)
    m.loss(out, y).backward()
    m.update_switch()
    # With several GPUs DataParallel replicates the module: rejected, pointing to DDP.
    with pytest.raises(TypeError, match="DistributedDataParallel"):
        m._replicate_for_data_parallel()


def test_half_precision_model_keeps_a_float32_switch_and_mixture():
    m = make(cls=alrao.LinearClassifier).to(torch.bfloat16)
    x, y = batch()
    out = m(x.to(torch.bfloat16))
    assert m.switch.logw.dtype == torch.float32 and out.dtype == torch.float32
    loss = m.loss(out, y)
    assert m.last_copy_losses.dtype == torch.float32
    loss.backward()
    m.update_switch()
    assert torch.isfinite(m.posterior()).all()
