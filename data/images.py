"""In-memory image datasets: uint8 images and int64 labels, split into train / valid / test.

Every image dataset of the project is loaded whole into this form; both
loaders (:mod:`data.loaders`) batch, augment and normalise from it.
"""

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ImageSet:
    """One split: ``images`` uint8 ``(N, 3, H, W)`` (pixel values 0..255), ``labels`` int64 ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"ImageSet: images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"ImageSet: labels must be int64 ({self.images.shape[0]},), got "
                f"{self.labels.dtype} {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return self.labels.shape[0]

    def head(self, n) -> "ImageSet":
        """The first ``n`` examples (all of them when ``n`` is None)."""
        return self if n is None else ImageSet(self.images[:n], self.labels[:n])


@dataclass(frozen=True)
class ImageSplits:
    """A dataset split three ways, with what is needed to normalise and augment it.

    ``mean`` / ``std``: per channel, on the 0..1 pixel scale (a pixel ``v`` in
    0..255 becomes ``(v / 255 - mean) / std``). ``hflip``: whether a
    horizontal flip preserves the label (true for photographs, not for digits).
    """

    train: ImageSet
    valid: ImageSet
    test: ImageSet
    n_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool

    def head(self, n) -> "ImageSplits":
        """At most ``n`` examples per split (the first ones); unchanged when ``n`` is None."""
        return ImageSplits(
            self.train.head(n), self.valid.head(n), self.test.head(n), self.n_classes, self.mean, self.std, self.hflip
        )


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of uint8 ``(N, C, H, W)`` images,
    on the 0..1 pixel scale."""
    x = images.to(torch.float64).div(255).transpose(0, 1).reshape(images.shape[1], -1)
    return tuple(x.mean(1).tolist()), tuple(x.std(1).tolist())
