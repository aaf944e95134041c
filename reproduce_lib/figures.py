"""The paper's figures as PNG files: learning curves, the switch posterior, the triangle.

Drawn with matplotlib's object interface (``Figure``, no pyplot): no display,
no global state. Every figure carries its provenance line (profile, seeds,
commit) at the bottom and is written atomically.
"""

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import cm, colors
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import blended_transform_factory

from .outputs import Provenance, atomic_write_bytes, format_rate

SPLIT_NAMES = {"train": "train", "test": "test"}


def save(fig: Figure, path: Path, provenance: Provenance) -> Path:
    """Stamp ``provenance`` on ``fig`` and write it to ``path`` as a PNG, atomically."""
    fig.text(0.5, 0.005, provenance.line(), ha="center", va="bottom", fontsize=7, color="0.35")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def series(history: Sequence[dict], key: str) -> np.ndarray:
    """``key`` of every epoch record, NaN where missing or ``null`` (not finite)."""
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in history], dtype=float)


# -------------------------------------------------------------- learning curves
@dataclass(frozen=True)
class Curve:
    """One run's learning curve. ``kind``: ``'sgd'`` (coloured by ``lr``), ``'adam'`` or ``'alrao'``."""

    label: str
    kind: str
    history: list[dict]
    diverged: bool
    lr: float | None = None


def curve_label(curve: Curve) -> str:
    """The legend entry of ``curve``; a diverged run says at which epoch."""
    return curve.label + (f" (diverged, epoch {len(curve.history)})" if curve.diverged else "")


def _style(curve: Curve, sgd_norm) -> dict:
    if curve.kind == "sgd":
        return {"color": cm.viridis(sgd_norm(math.log10(curve.lr))), "linewidth": 1.2}
    if curve.kind == "adam":
        return {"color": "black", "linestyle": "--", "linewidth": 1.6}
    return {"color": "tab:red", "linewidth": 2.4}


def learning_curves(
    title: str, curves: Sequence[Curve], loss_key: str, unit: str, provenance: Provenance, path: Path
) -> Path:
    """Train and test loss per epoch of every run in ``curves`` (``loss_key``: ``'loss'`` or
    ``'bpc'``). A diverged run ends with a cross at its last finite value (at the top of the
    axes when it had none) and says so in the legend."""
    fig = Figure(figsize=(11, 4.6))
    axes = fig.subplots(1, 2)
    lrs = [math.log10(c.lr) for c in curves if c.kind == "sgd"]
    sgd_norm = colors.Normalize(min(lrs, default=0) - 0.5, max(lrs, default=0) + 0.5)
    for ax, split in zip(axes, SPLIT_NAMES):
        top = blended_transform_factory(ax.transData, ax.transAxes)
        for curve in curves:
            values = series(curve.history, f"{split}_{loss_key}")
            epochs = np.arange(1, len(values) + 1)
            style = _style(curve, sgd_norm)
            ax.plot(epochs, values, marker="o", markersize=2.5, label=curve_label(curve), **style)
            if curve.diverged:
                ok = np.flatnonzero(np.isfinite(values))
                if ok.size:
                    ax.plot(epochs[ok[-1]], values[ok[-1]], "x", color=style["color"], markersize=10, mew=2)
                else:
                    ax.plot(
                        len(values), 0.98, "x", color=style["color"], markersize=10, mew=2, transform=top, clip_on=False
                    )
        finite = np.concatenate([series(c.history, f"{split}_{loss_key}") for c in curves])
        finite = finite[np.isfinite(finite) & (finite > 0)]
        if finite.size and finite.max() > 10 * finite.min():  # a log scale only where linear would squash
            ax.set_yscale("log")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{SPLIT_NAMES[split]} loss ({unit})")
        ax.set_title(f"{SPLIT_NAMES[split]} loss")
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(title)
    fig.subplots_adjust(left=0.07, right=0.78, bottom=0.15, wspace=0.25)
    return save(fig, path, provenance)


# ------------------------------------------------------------- switch posterior
def posterior_figure(title: str, history: Sequence[dict], provenance: Provenance, path: Path) -> Path:
    """The switch posterior of each classifier copy at the end of each epoch, as stacked bars
    coloured by the copy's learning rate (an Alrao run's ``posterior`` and ``classifier_lrs``)."""
    records = [r for r in history if r.get("posterior")]
    posterior = np.array([[np.nan if p is None else p for p in r["posterior"]] for r in records], dtype=float)
    lrs = records[-1]["classifier_lrs"] if records else []
    fig = Figure(figsize=(8, 4.6))
    ax = fig.subplots()
    epochs = np.array([r["epoch"] for r in records])
    bottom = np.zeros(len(records))
    palette = cm.viridis(np.linspace(0, 1, max(len(lrs), 1)))
    for j, lr in enumerate(lrs):
        heights = np.nan_to_num(posterior[:, j])
        ax.bar(epochs, heights, bottom=bottom, width=0.85, color=palette[j], label=f"copy {j}: lr {format_rate(lr)}")
        bottom += heights
    ax.set_xlabel("epoch")
    ax.set_ylabel("switch posterior")
    ax.set_ylim(0, 1)
    if len(epochs):
        ax.set_xticks(epochs if len(epochs) <= 20 else epochs[:: math.ceil(len(epochs) / 20)])
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.set_title(title)
    fig.subplots_adjust(left=0.1, right=0.75, bottom=0.15)
    return save(fig, path, provenance)


# --------------------------------------------------------------------- triangle
def triangle_figure(
    title: str,
    ends_log10: Sequence[float],
    train: np.ndarray,
    test: np.ndarray,
    diverged: np.ndarray,
    unit: str,
    provenance: Provenance,
    path: Path,
) -> Path:
    """Heat maps of the final train and test losses for every interval ``(10**ends[i], 10**ends[j])``,
    ``i <= j`` (row: lower end, column: upper end; the diagonal is plain SGD). ``train``,
    ``test``: square arrays, NaN where there is no result; ``diverged``: booleans, marked ``div``."""
    fig = Figure(figsize=(11, 4.8))
    axes = fig.subplots(1, 2)
    n = len(ends_log10)
    labels = [f"1e{e:g}" for e in ends_log10]
    for ax, values, name in zip(axes, (train, test), ("train", "test")):
        upper = np.triu(np.ones((n, n), dtype=bool))
        shown = np.where(upper & np.isfinite(values), values, np.nan)
        finite = shown[np.isfinite(shown) & (shown > 0)]
        # Log colours from the best loss to 100 times it: the range where intervals differ;
        # worse (nearly diverged) cells saturate.
        low = finite.min() if finite.size else 1.0
        high = min(finite.max(), 100 * low) if finite.size else 10.0
        cmap = cm.viridis_r.with_extremes(over="black")
        image = ax.imshow(
            np.ma.masked_invalid(shown), cmap=cmap, origin="lower", norm=colors.LogNorm(low, max(high, low * 1.01))
        )
        for i in range(n):
            for j in range(i, n):
                value = values[i, j]
                text = "div" if diverged[i, j] else (f"{value:.3g}" if np.isfinite(value) else "")
                dark = np.isfinite(value) and value > low * (high / low) ** 0.6  # dark end of the map
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="tab:red" if diverged[i, j] else ("white" if dark else "black"),
                )
        ax.set_xticks(range(n), labels, rotation=45)
        ax.set_yticks(range(n), labels)
        ax.set_xlabel("max_lr (upper end)")
        ax.set_ylabel("min_lr (lower end)")
        ax.set_title(f"{name} loss after the last epoch ({unit})")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, extend="max")
    fig.suptitle(title)
    fig.subplots_adjust(left=0.08, right=0.95, bottom=0.2, wspace=0.35)
    return save(fig, path, provenance)


# ------------------------------------------------------------------ granularity
@dataclass(frozen=True)
class GranularityPoint:
    """One cell of the granularity experiment: Alrao-SGD up to ``max_lr`` with one rate per
    ``granularity`` (``'feature'`` or ``'weight'``); test loss and top-1 (%) as ``(mean, std)``
    over seeds (``None``: no result; std ``None`` for one seed) and how many runs diverged."""

    granularity: str
    max_lr: float
    loss: tuple[float, float | None] | None
    top1: tuple[float, float | None] | None
    diverged: int


def granularity_figure(
    title: str, panels: dict[str, Sequence[GranularityPoint]], unit: str, provenance: Provenance, path: Path
) -> Path:
    """For each model (a column of ``panels``, by display name): test loss (top) and top-1 (bottom)
    against ``max_lr``, one line per granularity, error bars one standard deviation; a cell with
    a diverged run is circled in red."""
    fig = Figure(figsize=(4.5 * len(panels) + 3, 6.6))
    axes = fig.subplots(2, len(panels), squeeze=False)
    styles = {"feature": {"color": "tab:red", "marker": "o"}, "weight": {"color": "tab:blue", "marker": "s"}}
    names = {"feature": "per feature (Alrao)", "weight": "per weight"}
    for column, (name, points) in enumerate(panels.items()):
        for row, (key, label) in enumerate((("loss", f"test loss ({unit})"), ("top1", "test top-1 (%)"))):
            ax = axes[row][column]
            for granularity in names:
                mine = sorted((p for p in points if p.granularity == granularity), key=lambda p: p.max_lr)
                shown = [p for p in mine if getattr(p, key) is not None]
                x = [p.max_lr for p in shown]
                y = [getattr(p, key)[0] for p in shown]
                err = [getattr(p, key)[1] or 0.0 for p in shown]
                ax.errorbar(x, y, yerr=err, capsize=3, label=names[granularity], **styles[granularity])
                bad = [p for p in shown if p.diverged]
                ax.plot(
                    [p.max_lr for p in bad],
                    [getattr(p, key)[0] for p in bad],
                    "o",
                    markersize=13,
                    markerfacecolor="none",
                    markeredgecolor="tab:red",
                    label="some runs diverged" if bad and granularity == "weight" else None,
                )
            ax.set_xscale("log")
            values = np.array([getattr(p, key)[0] for p in points if getattr(p, key) is not None])
            if key == "loss" and values.size and values.min() > 0 and values.max() > 10 * values.min():
                ax.set_yscale("log")  # a diverging cell would squash the others
            ticks = sorted({p.max_lr for p in points})
            ax.set_xticks(ticks, [format_rate(v) for v in ticks])
            ax.set_xlabel("max_lr (min_lr 1e-5)")
            ax.set_ylabel(label)
            if row == 0:
                ax.set_title(name)
            ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(title, fontsize=11)
    fig.subplots_adjust(left=0.14 / len(panels), right=1 - 0.3 / len(panels), bottom=0.12, hspace=0.35, wspace=0.3)
    return save(fig, path, provenance)
