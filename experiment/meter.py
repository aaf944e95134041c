"""Running means of one epoch's loss and accuracy, kept on the device, the epoch's record, and
the progress shown while an epoch trains."""

import math
import sys
import time

import torch
from torch import nn
from tqdm import tqdm

import alrao

from .distributed import sum_over_ranks, world_size


class Meter:
    """Sums of the per-prediction loss and of the correct predictions over an epoch.

    :meth:`add` works on device tensors and does not synchronise with the
    host; :meth:`means` does. With Alrao, it also keeps each classifier copy's
    loss and accuracy. Losses are in nats (negative log-likelihoods).
    """

    def __init__(self):
        self.count = 0
        self.loss_sum = None
        self.correct = None
        self.copy_loss_sum = None
        self.copy_correct = None

    @torch.no_grad()
    def add(
        self,
        loss: torch.Tensor,
        log_probs: torch.Tensor,
        target: torch.Tensor,
        copy_losses: torch.Tensor | None = None,
        copy_log_probs: torch.Tensor | None = None,
    ) -> None:
        """Add one batch.

        Args:
            loss: mean loss over the batch (0-dim tensor).
            log_probs: ``(n, classes)`` predicted log-probabilities; ``target``: ``(n,)``.
            copy_losses: ``(N,)`` mean loss of each classifier copy on the batch.
            copy_log_probs: ``(N, n, classes)`` each copy's log-probabilities.
        """
        n = target.numel()
        loss_sum = loss.detach().double() * n
        correct = (log_probs.argmax(-1) == target).sum()
        self.loss_sum = loss_sum if self.loss_sum is None else self.loss_sum + loss_sum
        self.correct = correct if self.correct is None else self.correct + correct
        self.count += n
        if copy_losses is not None:
            copy_loss_sum = copy_losses.detach().double() * n
            copy_correct = (copy_log_probs.argmax(-1) == target).sum(-1)
            if self.copy_loss_sum is None:
                self.copy_loss_sum, self.copy_correct = copy_loss_sum, copy_correct
            else:
                self.copy_loss_sum = self.copy_loss_sum + copy_loss_sum
                self.copy_correct = self.copy_correct + copy_correct

    def add_step(self, loss: torch.Tensor, log_probs: torch.Tensor, target: torch.Tensor, model: nn.Module) -> None:
        """Add one training batch of ``model``, with its copies' losses and outputs on it when it
        has copies (``model.last_copy_losses`` / ``last_copy_outputs``: Alrao's; ``None`` on a
        :class:`experiment.PlainModel`). Call it before ``model.update_switch()``, which uses up
        the copies' losses."""
        self.add(loss, log_probs, target, model.last_copy_losses, model.last_copy_outputs)

    def means(self) -> dict:
        """``{'loss', 'acc'}`` (mean loss in nats, accuracy as a fraction in [0, 1]), plus
        ``{'copy_loss', 'copy_acc'}`` lists when copies were added. NaN when empty.
        Under several processes, the sums of every rank's batches (a collective: every rank
        calls it at the same point; see ``experiment/distributed.py``)."""
        count, loss_sum, correct = self.count, self.loss_sum, self.correct
        copy_loss_sum, copy_correct = self.copy_loss_sum, self.copy_correct
        if world_size() > 1:
            copies = [copy_loss_sum, copy_correct] if copy_loss_sum is not None else []
            count, loss_sum, correct, *copies = sum_over_ranks(
                [count, 0.0 if loss_sum is None else loss_sum, 0 if correct is None else correct, *copies]
            )
            count = int(count)
            copy_loss_sum, copy_correct = copies or (None, None)
        if count == 0:
            return {"loss": float("nan"), "acc": float("nan")}
        out = {"loss": loss_sum.item() / count, "acc": correct.item() / count}
        if copy_loss_sum is not None:
            out["copy_loss"] = (copy_loss_sum / count).tolist()
            out["copy_acc"] = (copy_correct.double() / count).tolist()
        return out


def epoch_record(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    splits: dict[str, dict | None],
    diverged: bool,
    loss_unit: str | None = None,
) -> dict:
    """The metrics of one epoch, as logged in ``metrics.jsonl``.

    Args:
        splits: ``{'train': means, 'valid': means, 'test': means}`` from
            :meth:`Meter.means`; ``None`` for a split that was not evaluated
            (its metrics are NaN, written ``null``).
        diverged: the training loss stopped being finite.
        loss_unit: also give each loss in ``'bpc'`` (bits per character:
            nats / ln 2) or ``'ppl'`` (perplexity: exp of the loss in nats).

    Returns ``{split}_loss`` (nats) and ``{split}_acc`` (fraction) for each
    split; with Alrao, the copies' learning rates ``classifier_lrs``, the
    switch ``posterior`` and each copy's ``copy_train_loss`` /
    ``copy_train_acc``; otherwise the plain optimizer's ``lr``; and ``diverged``.
    """
    if loss_unit not in (None, "bpc", "ppl"):
        raise ValueError(f"loss_unit must be None, 'bpc' or 'ppl', got {loss_unit!r}")
    record = {}
    for split, means in splits.items():
        loss = means["loss"] if means else math.nan
        record[f"{split}_loss"] = loss
        record[f"{split}_acc"] = means["acc"] if means else math.nan
        if loss_unit == "bpc":
            record[f"{split}_bpc"] = loss / math.log(2)
        elif loss_unit == "ppl":
            record[f"{split}_ppl"] = math.inf if loss > 709 else math.exp(loss)  # exp overflows float64 above ~709.8
    if isinstance(model, alrao.AlraoModel):
        train = splits["train"]
        record["classifier_lrs"] = optimizer.classifier_lrs()
        record["posterior"] = model.posterior().tolist()
        record["copy_train_loss"] = train.get("copy_loss", [math.nan] * model.n_classifiers)
        record["copy_train_acc"] = train.get("copy_acc", [math.nan] * model.n_classifiers)
    else:
        group = optimizer.param_groups[0]
        record["lr"] = group["lr"] if "lr" in group else group["max_lr"]  # AliG's rate is its max_lr
    record["diverged"] = diverged
    return record


class Progress:
    """Progress through one epoch's batches: a tqdm bar on a terminal; elsewhere (a log file, a
    pipe, a sweep's subprocess) a plain line every ``every_s`` seconds, so that a log holds no
    carriage-return frames and the epoch's summary starts on its own line.

    Iterate over it as over ``iterable``; :meth:`set_postfix` gives the running numbers to show
    (e.g. ``{'loss': '2.3026', 'acc': '10.00%'}``); :meth:`close` ends the bar.
    """

    def __init__(self, iterable, desc: str, every_s: float = 30.0, stream=None):
        self.iterable, self.desc, self.every_s = iterable, desc, every_s
        self.stream = stream if stream is not None else sys.stderr
        self.postfix: dict = {}
        self.bar = None
        if _is_terminal(self.stream):
            self.bar = tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True, file=self.stream)

    def __iter__(self):
        if self.bar is not None:
            yield from self.bar
            return
        total = len(self.iterable) if hasattr(self.iterable, "__len__") else None
        last = time.monotonic()
        for i, item in enumerate(self.iterable):
            yield item
            now = time.monotonic()
            if now - last >= self.every_s:
                last = now
                numbers = ", ".join(f"{k} {v}" for k, v in self.postfix.items())
                done = f"{i + 1}/{total}" if total is not None else f"{i + 1}"
                print(f"{self.desc}: batch {done}" + (f" ({numbers})" if numbers else ""), file=self.stream)

    def set_postfix(self, postfix: dict) -> None:
        self.postfix = dict(postfix)
        if self.bar is not None:
            self.bar.set_postfix(postfix)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
