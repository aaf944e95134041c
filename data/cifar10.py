"""CIFAR-10 with the paper's split and normalisation, read through torchvision.

Train = the first 40,000 images of the 50,000-image training set, validation
= the last 10,000, test = the 10,000-image test set (PAPER.md, "Protocol").
"""

from pathlib import Path

import torch
from torchvision.datasets import CIFAR10
from torchvision.datasets.utils import check_integrity

from .errors import DataError
from .images import ImageSet, ImageSplits

#: Per-channel normalisation of the paper (and of kuangliu/pytorch-cifar), 0..1 pixel scale.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)

#: Fraction of the training set held out, at its end, for validation: 10,000 of 50,000.
VALID_FRACTION = 0.2


def _image_set(dataset: CIFAR10) -> ImageSet:
    images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()  # HWC -> CHW
    return ImageSet(images, torch.tensor(dataset.targets, dtype=torch.int64))


def load_cifar10(data_path, *, download: bool) -> ImageSplits:
    """CIFAR-10 from ``data_path/cifar-10-batches-py`` (torchvision's python
    version), downloaded there first when missing and ``download`` is true.

    Raises :class:`DataError` when the files are missing, cannot be downloaded
    or fail torchvision's MD5 check.
    """
    root = Path(data_path)
    try:
        train_set = CIFAR10(root, train=True, download=download)
        test_set = CIFAR10(root, train=False, download=False)
    except (OSError, RuntimeError) as exc:  # torchvision's "not found or corrupted", urllib's errors
        raise DataError(_describe_problem(root, download, exc)) from None
    train_all = _image_set(train_set)
    n_train = len(train_all) - int(round(len(train_all) * VALID_FRACTION))
    return ImageSplits(
        train=ImageSet(train_all.images[:n_train], train_all.labels[:n_train]),
        valid=ImageSet(train_all.images[n_train:], train_all.labels[n_train:]),
        test=_image_set(test_set),
        n_classes=10,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        hflip=True,
    )


def _describe_problem(root: Path, download: bool, exc: Exception) -> str:
    """One line: which CIFAR-10 files are missing or corrupted, where, and how to get them."""
    folder = root / CIFAR10.base_folder
    expected = dict(CIFAR10.train_list + CIFAR10.test_list)
    expected[CIFAR10.meta["filename"]] = CIFAR10.meta["md5"]
    missing = [name for name in expected if not (folder / name).is_file()]
    corrupted = [
        name for name, md5 in expected.items() if name not in missing and not check_integrity(str(folder / name), md5)
    ]
    reason = " ".join(str(exc).split())
    how = f"download {CIFAR10.url} and extract it into {root}"
    how += f" (the automatic download failed: {reason})" if download else ", or enable the download"
    if corrupted:
        return f"CIFAR-10 files in {folder} are corrupted (MD5 mismatch: {', '.join(corrupted)}); delete them and {how}"
    if missing:
        return f"CIFAR-10 not found: {folder} lacks {', '.join(missing)}; {how}"
    return f"cannot read CIFAR-10 from {folder}: {reason}"
