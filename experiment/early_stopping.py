"""Best validation loss so far and the paper's early-stopping rule (PAPER.md, protocol)."""

import math


class EarlyStopping:
    """Tracks the epoch of the best validation loss; stops after ``patience`` epochs without improvement.

    Args:
        patience: number of consecutive epochs without a strictly lower
            validation loss after which training stops (the paper: 20);
            ``None`` never stops, but still tracks the best epoch (the one
            evaluated on test).

    A non-finite validation loss never counts as an improvement.
    """

    def __init__(self, patience: int | None):
        if patience is not None and not (isinstance(patience, int) and patience >= 1):
            raise ValueError(f"patience must be an integer >= 1 or None, got {patience!r}")
        self.patience = patience
        self.best_loss = math.inf
        self.best_epoch: int | None = None
        self.epochs_without_improvement = 0

    def step(self, epoch: int, valid_loss: float) -> bool:
        """Record ``epoch``'s validation loss; ``True`` if it is the best so far."""
        if math.isfinite(valid_loss) and valid_loss < self.best_loss:
            self.best_loss, self.best_epoch = valid_loss, epoch
            self.epochs_without_improvement = 0
            return True
        self.epochs_without_improvement += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.epochs_without_improvement >= self.patience

    def state_dict(self) -> dict:
        return {
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "epochs_without_improvement": self.epochs_without_improvement,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best_loss = state["best_loss"]
        self.best_epoch = state["best_epoch"]
        self.epochs_without_improvement = state["epochs_without_improvement"]
