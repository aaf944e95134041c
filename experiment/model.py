"""The network of a run: an Alrao model, or the same pre-classifier with one classifier."""

import os
from collections.abc import Callable

import torch
from torch import nn

import alrao

from .run_folder import UsageError


class PlainModel(nn.Module):
    """A pre-classifier followed by one classifier, trained by an ordinary optimizer (the baselines).

    Same interface as :class:`alrao.AlraoModel` where the training loops need
    it: ``preclassifier``, ``classifiers`` (a list of one), ``loss(output,
    target)``; a tuple ``(x, a, b, ...)`` returned by the pre-classifier gives
    ``(classifier(x), a, b, ...)``. No copies to report (``last_copy_losses`` and
    ``last_copy_outputs`` are ``None``), no switch (``update_switch`` does nothing) and no
    deferred check (``check`` does nothing), so the same loops train and evaluate both
    (:func:`experiment.train_steps`).
    """

    last_copy_losses = None
    last_copy_outputs = None

    def __init__(self, loss: Callable, preclassifier: nn.Module, classifier: nn.Module):
        super().__init__()
        self.loss_fn = loss
        self.preclassifier = preclassifier
        self.classifiers = nn.ModuleList([classifier])

    def forward(self, *args, **kwargs):
        out = self.preclassifier(*args, **kwargs)
        if isinstance(out, tuple):
            return (self.classifiers[0](out[0]), *out[1:])
        return self.classifiers[0](out)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss_fn(output, target)

    def update_switch(self, process_group=None) -> None:
        """Nothing: one classifier, no switch to update."""

    def check(self) -> None:
        """Nothing: no divergence check deferred (Alrao's accelerator path defers its own)."""


# Training memory per parameter, in bytes: the float32 weight, its gradient and up to two
# optimizer moments (Adam's). Activations come on top: an estimate from below.
BYTES_PER_TRAINED_PARAMETER = 16
# More classifier copies than this cannot make sense: the paper uses 6 to 10, and a thousand
# already sample the interval's learning rates more finely than any of its experiments needs.
MAX_CLASSIFIERS = 1000


def available_memory(device: torch.device) -> int | None:
    """Bytes of memory free for a new allocation on ``device`` (CPU: the system's available
    memory), or ``None`` when it cannot be known."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(n_parameters: int, device: torch.device, flags: str, available: int | None = None) -> None:
    """:class:`UsageError` naming ``flags`` when training ``n_parameters`` parameters cannot fit in the
    memory ``available`` on ``device`` (default: :func:`available_memory`)."""
    available = available_memory(device) if available is None else available
    needed = n_parameters * BYTES_PER_TRAINED_PARAMETER
    if available is not None and needed > available:
        raise UsageError(
            f"{flags}: the network's {n_parameters / 1e6:.4g}M parameters need at least {needed / 2**30:.3g} GiB "
            f"to train (weights, gradients, optimizer state), more than the {available / 2**30:.3g} GiB "
            f"available on {torch.device(device).type}"
        )


def check_classifier_copies(
    n_classifiers: int,
    classifier_cls: Callable[..., nn.Module],
    classifier_args: tuple,
    device: torch.device,
    other_parameters: int = 0,
    available: int | None = None,
) -> None:
    """:class:`UsageError` when ``n_classifiers`` copies cannot make sense (above
    :data:`MAX_CLASSIFIERS`) or cannot fit beside ``other_parameters`` in the memory of ``device``;
    estimated from one copy built on the meta device, before any is allocated."""
    flag = f"--n_last_layers {n_classifiers}"
    if n_classifiers > MAX_CLASSIFIERS:
        raise UsageError(f"{flag}: at most {MAX_CLASSIFIERS} classifier copies make sense (the paper uses 6 to 10)")
    with torch.device("meta"):
        per_copy = sum(p.numel() for p in classifier_cls(*classifier_args).parameters())
    available = available_memory(device) if available is None else available
    if available is None:
        return
    fit = (available // BYTES_PER_TRAINED_PARAMETER - other_parameters) // max(per_copy, 1)
    if n_classifiers > fit:
        needed = (other_parameters + n_classifiers * per_copy) * BYTES_PER_TRAINED_PARAMETER
        raise UsageError(
            f"{flag}: {n_classifiers} classifier copies of {per_copy} parameters need at least "
            f"{needed / 2**30:.3g} GiB to train, more than the {available / 2**30:.3g} GiB available on "
            f"{torch.device(device).type}; at most {max(fit, 0)} copies fit"
        )


def build_model(
    args,
    preclassifier: nn.Module,
    classifier_cls: Callable[..., nn.Module],
    *classifier_args,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """With ``args.use_alrao``: an :class:`alrao.AlraoModel` with ``args.n_last_layers``
    copies of ``classifier_cls(*classifier_args)``; otherwise a :class:`PlainModel` with one.

    The classifiers return log-probabilities, so the loss is the negative
    log-likelihood (in nats). :class:`UsageError` when the copies cannot fit in
    the memory of ``device`` (checked before they are allocated).
    """
    if args.use_alrao:
        n_pre = sum(p.numel() for p in preclassifier.parameters())
        check_classifier_copies(args.n_last_layers, classifier_cls, classifier_args, device, n_pre)
        return alrao.AlraoModel(
            "classification", nn.NLLLoss(), preclassifier, args.n_last_layers, classifier_cls, *classifier_args
        )
    return PlainModel(nn.NLLLoss(), preclassifier, classifier_cls(*classifier_args))


def count_parameters(model: nn.Module) -> dict:
    """``{'n_parameters': all of them, 'n_parameters_without_copies': with one classifier}``
    (the paper's "Alrao adds (N_cl - 1) K (d + 1) parameters")."""
    total = sum(p.numel() for p in model.parameters())
    copies = model.classifiers
    one_copy = sum(p.numel() for p in copies[0].parameters())
    return {"n_parameters": total, "n_parameters_without_copies": total - (len(copies) - 1) * one_copy}
