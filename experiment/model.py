"""The network of a run: an Alrao model, or the same pre-classifier with one classifier."""

from collections.abc import Callable

import torch
from torch import nn

import alrao


class PlainModel(nn.Module):
    """A pre-classifier followed by one classifier, trained by an ordinary optimizer (the baselines).

    Same interface as :class:`alrao.AlraoModel` where the training loops need
    it: ``preclassifier``, ``classifiers`` (a list of one), ``loss(output,
    target)``; a tuple ``(x, a, b, ...)`` returned by the pre-classifier gives
    ``(classifier(x), a, b, ...)``.
    """

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


def build_model(
    args, preclassifier: nn.Module, classifier_cls: Callable[..., nn.Module], *classifier_args
) -> nn.Module:
    """With ``args.use_alrao``: an :class:`alrao.AlraoModel` with ``args.n_last_layers``
    copies of ``classifier_cls(*classifier_args)``; otherwise a :class:`PlainModel` with one.

    The classifiers return log-probabilities, so the loss is the negative
    log-likelihood (in nats).
    """
    if args.use_alrao:
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
