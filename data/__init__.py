"""Datasets of the paper's experiments, and offline stand-ins.

Images (32x32 RGB, 10 classes), by name in :data:`IMAGE_DATASETS`:
``cifar10`` (torchvision, downloaded into ``data_path``), ``digits``
(scikit-learn's handwritten digits, offline) and ``fake`` (torchvision's
FakeData, offline). :func:`get_image_loaders` returns reproducible train /
valid / test loaders.

Text, by name in :data:`TEXT_CORPORA`: ``ptb`` (Penn Treebank, downloaded
into ``data_path``) and ``pydoc`` (Python's own help text, offline).
:func:`get_corpus` returns a :class:`Corpus`; :func:`batchify` and
:func:`get_batch` cut it for truncated back-propagation through time.

Missing, unreachable or corrupted data raise :class:`DataError`, with a
one-line message saying where the loader looked and how to get the files.
"""

from typing import TYPE_CHECKING

from experiment.lazy import lazy_package

from .errors import DataError

if TYPE_CHECKING:
    from .images import ImageSplits

#: Names accepted by :func:`get_corpus`.
TEXT_CORPORA = ("ptb", "pydoc")
#: Names accepted by :func:`get_image_loaders`.
IMAGE_DATASETS = ("cifar10", "digits", "fake")


def load_image_splits(name: str, data_path, *, download: bool = True, limit=None) -> "ImageSplits":
    """The image dataset ``name`` in memory (uint8), at most ``limit`` examples per split."""
    from .cifar10 import load_cifar10
    from .offline import load_digits, load_fake

    if name not in IMAGE_DATASETS:
        raise ValueError(f"unknown image dataset {name!r}; valid: {', '.join(IMAGE_DATASETS)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be None or a positive integer (examples per split), got {limit!r}")
    if name == "cifar10":
        return load_cifar10(data_path, download=download).head(limit)
    if name == "digits":
        return load_digits().head(limit)
    return load_fake(limit)


def get_image_loaders(
    name: str,
    data_path,
    batch_size: int,
    *,
    data_augm: bool,
    device,
    seed: int,
    num_workers: int = 0,
    download: bool = True,
    limit=None,
):
    """Train, validation and test loaders of the image dataset ``name``.

    Returns ``(train, valid, test, n_classes)``. Each loader yields ``(x, y)``
    batches, ``x`` float32 ``(B, 3, 32, 32)`` normalised, ``y`` int64 ``(B,)``;
    has ``len()`` (batches per epoch, the last partial batch included) and
    ``set_epoch(epoch)``: the shuffling and augmentation of an epoch depend on
    ``(seed, epoch)`` only. Only train is shuffled, and augmented (random crop
    32 with padding 4, horizontal flip) when ``data_augm``.

    ``device``: on CPU, batches come from a DataLoader with ``num_workers``
    workers (:class:`HostLoader`); on any other device the whole dataset is
    kept on the device and batches are made there (:class:`DeviceLoader`).
    ``data_path``: the folder holding ``cifar-10-batches-py`` (ignored by
    ``digits`` and ``fake``). ``download``: fetch CIFAR-10 there when missing.
    ``limit``: at most this many examples per split (for smoke runs).
    """
    from .loaders import make_loaders

    splits = load_image_splits(name, data_path, download=download, limit=limit)
    train, valid, test = make_loaders(
        splits, batch_size, data_augm=data_augm, device=device, seed=seed, num_workers=num_workers
    )
    return train, valid, test, splits.n_classes


# The names below need torch: imported on first use (experiment.lazy.lazy_package).
_LAZY = {
    **dict.fromkeys(("CIFAR10_MEAN", "CIFAR10_STD", "load_cifar10"), "cifar10"),
    **dict.fromkeys(("ImageSet", "ImageSplits"), "images"),
    **dict.fromkeys(("DeviceLoader", "HostLoader", "epoch_permutation", "make_loaders"), "loaders"),
    **dict.fromkeys(("load_digits", "load_fake"), "offline"),
    **dict.fromkeys(("EOS", "Corpus", "Dictionary", "batchify", "get_batch", "get_corpus"), "text"),
}

__getattr__, __dir__ = lazy_package(__name__, _LAZY)


__all__ = [
    "IMAGE_DATASETS",
    "TEXT_CORPORA",
    "DataError",
    "get_image_loaders",
    "load_image_splits",
    "get_corpus",
    "batchify",
    "get_batch",
    "Corpus",
    "Dictionary",
    "EOS",
    "ImageSet",
    "ImageSplits",
    "DeviceLoader",
    "HostLoader",
    "epoch_permutation",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
]
