"""Image datasets that need no download, for runs and tests without a network.

- ``digits``: the 1,797 real 8x8 handwritten digits shipped inside
  scikit-learn, upsampled to 32x32 RGB so that the CIFAR-10 networks apply.
- ``fake``: the images of :class:`torchvision.datasets.FakeData`, random 32x32
  images with random labels among 10 classes (nothing to learn: smoke runs only).
"""

import numpy as np
import torch

from .images import ImageSet, ImageSplits, channel_stats

#: Size of the digits validation and test splits (the rest, 1,197 images, is train).
DIGITS_HELD_OUT = 300
#: Sizes of the fake train / valid / test splits.
FAKE_SIZES = (5000, 1000, 1000)


def load_digits() -> ImageSplits:
    """scikit-learn's handwritten digits, split 1,197 / 300 / 300 by a fixed
    permutation (the same for every run), normalised with the train split's
    mean and standard deviation. No horizontal flips: they change digits."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    # Pixel intensities are 0..16; each 8x8 pixel becomes a 4x4 block, the grey copied to 3 channels.
    grey = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    grey = grey.repeat(4, axis=1).repeat(4, axis=2)
    images = torch.from_numpy(np.ascontiguousarray(np.repeat(grey[:, None], 3, axis=1)))
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    # The file is ordered by writer: a fixed shuffle makes the three splits alike.
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    images, labels = images[order], labels[order]
    n_train = len(labels) - 2 * DIGITS_HELD_OUT
    train = ImageSet(images[:n_train], labels[:n_train])
    valid = ImageSet(images[n_train : n_train + DIGITS_HELD_OUT], labels[n_train : n_train + DIGITS_HELD_OUT])
    test = ImageSet(images[n_train + DIGITS_HELD_OUT :], labels[n_train + DIGITS_HELD_OUT :])
    mean, std = channel_stats(train.images)
    return ImageSplits(train, valid, test, n_classes=10, mean=mean, std=std, hflip=False)


def _fake_set(size: int, random_offset: int) -> ImageSet:
    """Images ``0..size-1`` of ``FakeData(size, (3, 32, 32), 10, random_offset=random_offset)``.

    Drawn exactly as FakeData draws them (image ``i`` from a generator seeded
    with ``i + random_offset``: standard normal pixels, then the label; the
    pixels times 255 cast to uint8, as its conversion to a PIL image does),
    but from a private generator: FakeData reseeds torch's global generators
    (the CUDA ones too, lazily), which would override the run's ``--seed``.
    """
    generator = torch.Generator()
    images = torch.empty(size, 3, 32, 32, dtype=torch.uint8)
    labels = torch.empty(size, dtype=torch.int64)
    for i in range(size):
        generator.manual_seed(i + random_offset)
        images[i] = torch.randn(3, 32, 32, generator=generator).mul(255).byte()
        labels[i] = torch.randint(0, 10, (1,), generator=generator)[0]
    return ImageSet(images, labels)


def load_fake(limit=None) -> ImageSplits:
    """torchvision's FakeData images: :data:`FAKE_SIZES` of them (at most ``limit`` per
    split), each split drawn with its own seeds; normalised with the train
    split's statistics."""
    sizes = [size if limit is None else min(size, limit) for size in FAKE_SIZES]
    offsets = (0, FAKE_SIZES[0], FAKE_SIZES[0] + FAKE_SIZES[1])
    train, valid, test = (_fake_set(size, offset) for size, offset in zip(sizes, offsets))
    mean, std = channel_stats(train.images)
    return ImageSplits(train, valid, test, n_classes=10, mean=mean, std=std, hflip=True)
