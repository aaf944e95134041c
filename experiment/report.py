"""What a run prints: the resolved configuration once, then one summary per epoch."""

import math

SPLITS = (("train", "train"), ("valid", "valid"), ("test", "test"))
# Extra units of a language model's loss: bits per character or perplexity.
LOSS_UNITS = (("bpc", "bits/char"), ("ppl", "ppl"))


def format_config(config: dict) -> str:
    """The resolved configuration, one ``name  value`` line each."""
    width = max(map(len, config))
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in config.items())


def format_number(value: float | None, spec: str) -> str:
    """``value`` formatted with ``spec``, or ``'nan'`` when missing or not finite."""
    return "nan" if value is None or not math.isfinite(value) else format(value, spec)


def _percent(value: float | None) -> str:
    return "nan" if value is None or not math.isfinite(value) else f"{100 * value:.2f}%"


def format_epoch(record: dict) -> str:
    """One line: the epoch's train / validation / test loss (nats, and bits/char or perplexity
    for a language model) and accuracy, and its wall time."""
    parts = [f"epoch {record['epoch']:>3}"]
    for key, name in SPLITS:
        if f"{key}_loss" not in record:
            continue
        text = f"{name} loss {format_number(record[f'{key}_loss'], '.4f')}"
        for unit, label in LOSS_UNITS:
            if f"{key}_{unit}" in record:
                text += f" ({format_number(record[f'{key}_{unit}'], '.3f')} {label})"
        parts.append(f"{text} acc {_percent(record.get(f'{key}_acc'))}")
    parts.append(f"{record['epoch_time_s']:.1f} s")
    if record.get("diverged"):
        parts.append("DIVERGED")
    return " | ".join(parts)


def format_copies(record: dict) -> list[str]:
    """With Alrao: one line per classifier copy, its learning rate, switch posterior and
    train loss / accuracy on the epoch."""
    if "posterior" not in record:
        return []
    lines = []
    for j, (lr, post, loss, acc) in enumerate(
        zip(record["classifier_lrs"], record["posterior"], record["copy_train_loss"], record["copy_train_acc"])
    ):
        lines.append(
            f"    copy {j:>2}  lr {lr:.1e}  posterior {format_number(post, '.3e')}  "
            f"train loss {format_number(loss, '.4f')} acc {_percent(acc)}"
        )
    return lines
