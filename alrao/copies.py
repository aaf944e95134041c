"""Evaluating the classifier copies once, with the paper's two gradients (section 3.2).

The averaged model's loss must train the pre-classifier output ``z`` only, and
each copy's own loss must train that copy's parameters only. Both losses read
the same copy outputs, so the copies are evaluated once, by an autograd
function with two outputs (the same values): a gradient arriving through the
first (``y_mix``, used by the average) goes to ``z``; one arriving through the
second (``y_own``, used by the copies' own losses) goes to the parameters. The
cost is one ordinary forward and backward pass through the copies.

Three implementations: the built-in linear layers of ``alrao.layers`` (all
copies as one linear layer, the backward written out, and a fused NLL: see
``alrao/linear_copies.py``); :class:`_StackedCopies` for any other classifier
class (the copies' parameters stacked along a new first dimension and the
class's forward run once on them, batched by ``torch.func.vmap``; the backward
by autograd on that one graph); and :class:`_ClassifierCopies`, one call per
copy, the fallback for modules vmap cannot batch (see :func:`evaluate_copies`).

A copy whose output is not finite (too large a learning rate) sends no
gradient anywhere: its NaNs never reach the pre-classifier nor its own
parameters, and the average leaves it out (``finite`` mask).
"""

import warnings
from typing import NamedTuple

import torch
from torch import nn
from torch.func import functional_call, vmap

from .device_path import known_all
from .layers import LinearClassifier, LinearClassifierRNN, LinearRegressor
from .linear_copies import LinearForward, LinearHead, by_copy, linear_copies, linear_forward

# Built-in layers whose copies are evaluated as one linear layer (alrao/linear_copies.py).
_LINEAR_HEADS = {
    LinearClassifier: LinearHead(linear="fc", log_softmax=True, flatten=False),
    LinearClassifierRNN: LinearHead(linear="decoder", log_softmax=True, flatten=True),
    LinearRegressor: LinearHead(linear="fc", log_softmax=False, flatten=False),
}


class LinearCopiesState(NamedTuple):
    """The built-in linear copies' forward on the training path, for the fused NLL
    (``alrao.linear_copies.linear_copies_nll``)."""

    head: LinearHead
    low: torch.dtype | None  # the autocast dtype the product ran in, or None
    forward: LinearForward
    z: torch.Tensor  # the pre-classifier output they read
    params: list  # [W_1, b_1, W_2, b_2, ...]


class CopyOutputs(NamedTuple):
    y_mix: torch.Tensor  # (N, ...) the copies' outputs, on the pre-classifier's gradient path
    y_own: torch.Tensor  # the same values, on the copies' own gradient path
    finite: torch.Tensor  # (N,) whether each copy's outputs are all finite
    linear: LinearCopiesState | None  # built-in linear copies while training, else None


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype ``torch.autocast`` runs matrix products in on ``device``; ``None`` outside autocast."""
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None


def evaluate_copies(copies: list[nn.Module], z: torch.Tensor) -> CopyOutputs:
    """The copies' outputs stacked ``(N, ...)`` twice and the ``(N,)`` mask of copies whose
    output is all finite."""
    head = _LINEAR_HEADS.get(type(copies[0]))
    batched = head is not None and all(type(c) is type(copies[0]) for c in copies) and (head.flatten or z.dim() == 2)
    if not batched:
        return CopyOutputs(*_generic_copies(copies, z), None)
    linears = [getattr(c, head.linear) for c in copies]
    weights, biases = [lin.weight for lin in linears], [lin.bias for lin in linears]
    low = autocast_dtype(z.device)
    fwd = linear_forward(z, weights, biases, head, low)
    if not torch.is_grad_enabled():
        y = by_copy(fwd.y)
        return CopyOutputs(y, y, fwd.finite, None)
    params = [p for w, b in zip(weights, biases) for p in (w, b)]
    y_mix, y_own = linear_copies(head, low, fwd, z, params)
    return CopyOutputs(y_mix, y_own, fwd.finite, LinearCopiesState(head, low, fwd, z, params))


# Classifier classes whose forward vmap failed on -> why: their copies run one by one.
_UNBATCHABLE: dict[type, str] = {}
# (class, reason) pairs already warned about: one warning each.
_WARNED: set[tuple[type, str]] = set()


class _NotBatchable(Exception):
    pass


def _generic_copies(copies: list[nn.Module], z: torch.Tensor):
    """Copies of any classifier class: stacked and evaluated together by vmap when possible.

    Falls back to one call per copy (:class:`_ClassifierCopies`), with one warning per
    class, when the copies cannot be stacked (different classes or parameter shapes), when
    they hold buffers while training (a module may update them in forward, e.g. BatchNorm's
    running statistics, and under vmap the update would go to a stacked copy of the buffers,
    not to the modules), or when vmap fails on the class's forward (in-place writes into an
    unbatched tensor, data-dependent control flow, reading a value on the host, ...). The
    fallback gives the same values and gradients, at the cost of one call per copy.
    """
    cls = type(copies[0])
    reason = _UNBATCHABLE.get(cls)
    if reason is None:
        named = [list(c.named_parameters()) for c in copies]
        reason = _stacking_obstacle(copies, named)
    if reason is None:
        try:
            return _stacked(copies, named, z)
        except (RuntimeError, NotImplementedError, _NotBatchable) as error:
            reason = f"vmap cannot batch its forward ({type(error).__name__}: {str(error).splitlines()[0]})"
    result = _one_by_one(copies, z)  # a genuine error in the class's forward surfaces here
    if reason.startswith("vmap"):
        _UNBATCHABLE[cls] = reason
    if (cls, reason) not in _WARNED:
        _WARNED.add((cls, reason))
        warnings.warn(
            f"AlraoModel: the copies of {cls.__qualname__} are evaluated one by one (slower): {reason}",
            stacklevel=4,
        )
    return result


def _stacking_obstacle(copies: list[nn.Module], named: list[list]) -> str | None:
    """Why the copies (``named``: each copy's ``named_parameters()``) cannot share one vmap
    call, or None."""
    spec = [(n, p.shape, p.dtype, p.device) for n, p in named[0]]
    if not spec:
        return "the copies have no parameters"
    for c, params in zip(copies[1:], named[1:]):
        if type(c) is not type(copies[0]) or [(n, p.shape, p.dtype, p.device) for n, p in params] != spec:
            return "the copies differ in class or parameter shapes"
    first = copies[0]
    if next(first.buffers(), None) is not None and any(
        m.training and next(m.buffers(recurse=False), None) is not None for m in first.modules()
    ):
        return "it holds buffers and is in training mode (e.g. BatchNorm: running statistics)"
    return None


def _one_by_one(copies, z):
    if not torch.is_grad_enabled():
        y = torch.stack([c(z) for c in copies])
        return y, y, torch.isfinite(y.reshape(len(copies), -1)).all(dim=1)
    owned = [(j, p) for j, c in enumerate(copies) for p in c.parameters()]
    return _ClassifierCopies.apply(copies, [j for j, _ in owned], z, *(p for _, p in owned))


def _stacked(copies, named, z):
    names = [n for n, _ in named[0]]
    params = [params[k][1] for k in range(len(names)) for params in named]  # name-major
    if not torch.is_grad_enabled():
        n = len(copies)
        stacked = [torch.stack(params[k * n : (k + 1) * n]) for k in range(len(names))]
        y = _vmapped(copies, names, stacked, z, z_batched=False)
        return y, y, _finite_copies(y)
    return _StackedCopies.apply(copies, names, z, *params)


def _finite_copies(y: torch.Tensor) -> torch.Tensor:
    """``(N,)`` mask of the copies whose outputs ``y[j]`` are finite, by one reduction (the
    rule of :func:`alrao.linear_copies.linear_forward`: a NaN or inf makes the sum non-finite)."""
    return torch.isfinite(y.reshape(y.shape[0], -1).sum(dim=1))


def _vmapped(copies, names, stacked, z, z_batched):
    """The copies' outputs ``(N, ...)`` from one vmapped call of the first copy's forward on
    the stacked parameters (``stacked[k]``: parameter ``names[k]`` of every copy, ``(N, ...)``)
    and buffers; ``z`` is ``(N, ...)`` if ``z_batched``, else shared by the copies."""
    buffers = {}
    if next(copies[0].buffers(), None) is not None:
        named = [list(c.named_buffers()) for c in copies]
        buffers = {b: torch.stack([bufs[k][1] for bufs in named]) for k, (b, _) in enumerate(named[0])}
    versions = [t._version for t in buffers.values()]

    def call(p, b, x):
        return functional_call(copies[0], (p, b), (x,))

    y = vmap(call, in_dims=(0, 0, 0 if z_batched else None), randomness="different")(
        dict(zip(names, stacked)), buffers, z
    )
    if [t._version for t in buffers.values()] != versions:
        raise _NotBatchable("its forward writes into its buffers")
    return y


class _ClassifierCopies(torch.autograd.Function):
    """Evaluates every copy once on the pre-classifier output ``z``.

    Returns ``(y_mix, y_own, finite)``: the stacked copy outputs ``(N, ...)``
    twice (same storage) and a ``(N,)`` mask of the copies whose output is all
    finite. A gradient arriving through ``y_mix`` (the averaged model) goes to
    ``z`` only; one arriving through ``y_own`` (each copy's own loss) goes to
    the copies' parameters only. That is the paper's split, at the cost of one
    ordinary backward pass through the copies (no re-evaluation).
    Copies whose output is not finite send no gradient anywhere.
    """

    @staticmethod
    def forward(ctx, copies, param_owner, z, *params):
        ctx.set_materialize_grads(False)
        with torch.enable_grad():
            # One input leaf per copy, so that each copy's contribution to the
            # gradient of z can be masked separately.
            inputs = [z.detach().requires_grad_(z.requires_grad) for _ in copies]
            ys = [copy(x) for copy, x in zip(copies, inputs)]
        y = torch.stack([out.detach() for out in ys])
        finite = torch.isfinite(y.reshape(len(ys), -1)).all(dim=1)
        ctx.inner = (inputs, ys, finite, params, param_owner)
        ctx.mark_non_differentiable(finite)
        return y, y.detach(), finite

    @staticmethod
    def backward(ctx, grad_mix, grad_own, _):
        inputs, ys, finite, params, owner = ctx.inner
        ctx.inner = None
        grad_z = None
        if grad_mix is not None and ctx.needs_input_grad[2]:
            per_copy = torch.autograd.grad(
                ys, inputs, list(grad_mix.unbind(0)), allow_unused=True, retain_graph=grad_own is not None
            )
            for j, g in enumerate(per_copy):
                if g is not None:
                    g = torch.where(finite[j], g, torch.zeros((), dtype=g.dtype, device=g.device))
                    grad_z = g if grad_z is None else grad_z + g
        grad_params = [None] * len(params)
        if grad_own is not None:
            wanted = [i for i in range(len(params)) if ctx.needs_input_grad[3 + i]]
            if wanted:
                grads = torch.autograd.grad(
                    ys, [params[i] for i in wanted], list(grad_own.unbind(0)), allow_unused=True
                )
                for i, g in zip(wanted, grads):
                    if g is not None:
                        # A diverged copy gets no update (its NaNs stay out of the optimizer).
                        grad_params[i] = torch.where(
                            finite[owner[i]], g, torch.zeros((), dtype=g.dtype, device=g.device)
                        )
        return (None, None, grad_z, *grad_params)


class _StackedCopies(torch.autograd.Function):
    """All copies of one classifier class in one vmapped call (same contract as
    :class:`_ClassifierCopies`: ``(y_mix, y_own, finite)``, the two gradients routed
    as in the paper, nothing from a diverged copy).

    The inputs are the copies' own parameters, name-major (``N`` tensors per parameter
    name); the forward stacks each name's ``N`` tensors into one leaf and feeds ``z`` as
    ``N`` expanded copies (one leaf), so that the backward yields each copy's
    contribution to the gradient of ``z`` separately (to leave out the diverged ones).
    The copies' parameters (``nn.Parameter``) stay the ones the optimizer updates: each receives
    its slice of the stacked leaf's gradient.
    """

    @staticmethod
    def forward(ctx, copies, names, z, *params):
        ctx.set_materialize_grads(False)
        n = len(copies)
        stacked = [torch.stack(params[k * n : (k + 1) * n]) for k in range(len(names))]
        for k, leaf in enumerate(stacked):
            leaf.requires_grad_(any(ctx.needs_input_grad[3 + k * n : 3 + (k + 1) * n]))
        z_in = z.detach().expand(n, *z.shape).requires_grad_(ctx.needs_input_grad[2])
        with torch.enable_grad():
            y_inner = _vmapped(copies, names, stacked, z_in, z_batched=True)
        y = y_inner.detach()
        finite = _finite_copies(y)
        ctx.inner = (z_in, stacked, y_inner, finite)
        ctx.mark_non_differentiable(finite)
        return y, y.detach(), finite

    @staticmethod
    def backward(ctx, grad_mix, grad_own, _):
        z_in, stacked, y_inner, finite = ctx.inner
        ctx.inner = None
        n = finite.numel()
        masked = not known_all(finite)

        def keep(g):  # a diverged copy's slice of the gradient set to zero
            if not masked:
                return g
            zero = torch.zeros((), dtype=g.dtype, device=g.device)
            return torch.where(finite.view(n, *(1,) * (g.dim() - 1)), g, zero)

        grad_z = None
        wanted = [leaf for leaf in stacked if leaf.requires_grad]
        if grad_mix is not None and z_in.requires_grad:
            (g,) = torch.autograd.grad(
                y_inner, z_in, grad_mix, allow_unused=True, retain_graph=grad_own is not None and bool(wanted)
            )
            grad_z = None if g is None else keep(g).sum(dim=0)
        grad_params = [None] * (n * len(stacked))
        if grad_own is not None and wanted:
            grads = iter(torch.autograd.grad(y_inner, wanted, grad_own, allow_unused=True))
            for k, leaf in enumerate(stacked):
                g = next(grads) if leaf.requires_grad else None
                if g is not None:
                    for j, g_j in enumerate(keep(g).unbind(0)):
                        if ctx.needs_input_grad[3 + k * n + j]:
                            grad_params[k * n + j] = g_j
        return (None, None, grad_z, *grad_params)
