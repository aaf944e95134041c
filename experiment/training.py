"""The part of a training epoch both scripts share: the meter, the progress bar, the switch update
after each step, and the divergence checks. Each script keeps what is its own (the batches, the
forward, clipping, the LSTM's hidden state) in the ``step`` it passes."""

import math
from collections.abc import Callable, Sized

import torch
from torch import nn

from .meter import Meter, Progress

# Batches between two host reads of the running loss (progress bar, divergence): a read
# synchronises with the device, so not after every step.
REFRESH_EVERY = 10

Step = Callable[[object], tuple[torch.Tensor, torch.Tensor, torch.Tensor, bool]]


def train_steps(model: nn.Module, batches: Sized, epoch: int, step: Step) -> dict:
    """Train ``model`` on each batch of ``batches`` with ``step(batch)``, which runs the forward,
    the backward and the optimizer step and returns ``(loss, output, target, stepped)``
    (``stepped``: the optimizer did step, i.e. the gradient scaler did not skip it).

    After each step the batch goes to the meter (with Alrao, each copy's loss and accuracy too)
    and, when the optimizer stepped, to the Alrao switch (``model.update_switch()``, a no-op on a
    :class:`experiment.PlainModel`). Returns the epoch's mean loss / accuracy (per copy too,
    with Alrao) and ``diverged: True`` when the training loss stopped being finite: checked
    every :data:`REFRESH_EVERY` batches, where the epoch then stops, or at once when the
    pre-classifier itself diverged (a ``FloatingPointError`` from Alrao).
    """
    meter = Meter()
    bar = Progress(batches, desc=f"epoch {epoch}")
    means = {}
    try:
        for i, batch in enumerate(bar):
            loss, output, target, stepped = step(batch)
            meter.add_step(loss, output, target, model)
            if stepped:  # a step the gradient scaler skipped leaves the switch as it was
                model.update_switch()
            if (i + 1) % REFRESH_EVERY == 0 or i + 1 == len(batches):
                means = meter.means()
                bar.set_postfix({"loss": f"{means['loss']:.4f}", "acc": f"{100 * means['acc']:.2f}%"})
                if not math.isfinite(means["loss"]):
                    break
    except FloatingPointError:  # Alrao: the pre-classifier itself diverged (not only some copies)
        means = meter.means()
        means["loss"] = math.nan
    finally:
        bar.close()
    return {**means, "diverged": not math.isfinite(means.get("loss", math.nan))}
