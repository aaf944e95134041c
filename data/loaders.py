"""Mini-batches of normalised, optionally augmented images, reproducible per epoch.

Two loaders give the same batches in the same order (same permutation of the
examples for a given ``(seed, epoch)``), and augmentations with the same
distribution:

- :class:`HostLoader`, the CPU path: a :class:`torch.utils.data.DataLoader`
  applying torchvision's ``RandomCrop(32, padding=4)`` and
  ``RandomHorizontalFlip`` to each image;
- :class:`DeviceLoader`, the accelerator path: the whole uint8 dataset lives
  on the device, and cropping, flipping and normalisation run there on whole
  batches, so that the GPU never waits for CPU workers.

Each loader has ``set_epoch(epoch)``: the shuffling and the augmentation
randomness of an epoch are functions of ``(seed, epoch)`` only, so a run
resumed from a checkpoint sees the same batches as an uninterrupted run.
"""

import math

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision import transforms

from .images import ImageSet, ImageSplits

#: Zero padding of the random crop (paper: random crop 32 with padding 4).
CROP_PADDING = 4

_MASK64 = (1 << 64) - 1
# Independent random streams drawn from one (seed, epoch).
_SHUFFLE, _DEVICE_AUGMENT, _HOST_AUGMENT = 0, 1, 2


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def derive_seed(*values: int) -> int:
    """A 64-bit seed that depends on every one of the integers ``values``
    (e.g. ``(seed, epoch, stream)``), so that nearby tuples seed unrelated streams."""
    h = 0
    for value in values:
        h = _splitmix64(h ^ _splitmix64(value & _MASK64))
    return h


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order, int64 ``(n,)`` on CPU, in which a shuffled loader visits ``n``
    examples in epoch ``epoch`` of a run seeded with ``seed``."""
    generator = torch.Generator().manual_seed(derive_seed(seed, epoch, _SHUFFLE))
    return torch.randperm(n, generator=generator)


def _check_epoch(epoch) -> int:
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"set_epoch: epoch must be an integer >= 0, got {epoch!r}")
    return epoch


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


class _EpochLoader:
    """Epoch bookkeeping shared by both loaders: the iteration that follows
    ``set_epoch(e)`` is epoch ``e``, and every iteration advances the epoch by
    one, so forgetting ``set_epoch`` never replays an epoch's order."""

    def __init__(self, n_examples: int, batch_size: int, shuffle: bool, augment: bool, seed: int):
        self.n_examples = n_examples
        self.batch_size = _check_batch_size(batch_size)
        self.shuffle, self.augment, self.seed = shuffle, augment, seed
        self.epoch = 0  # the epoch of the next iteration
        self.rank, self.world, self.drop_uneven = 0, 1, False

    def shard(self, rank: int, world: int, drop_uneven: bool) -> None:
        """Yield only rank ``rank``'s part of every batch, of ``world`` contiguous parts (several
        processes, one run: ``batch_size`` stays the global batch). ``drop_uneven``: every part has
        ``size // world`` examples, the last ``size % world`` of a batch are left out (training: the
        ranks step together on equal shards); otherwise the parts differ by one at most.
        A rank's empty part is skipped."""
        if not (0 <= rank < world):
            raise ValueError(f"shard: rank must be in [0, {world}), got {rank!r}")
        self.rank, self.world, self.drop_uneven = rank, world, drop_uneven

    def _part(self, start: int, stop: int) -> tuple[int, int]:
        """This rank's ``[lo, hi)`` of the global batch ``[start, stop)``."""
        size = stop - start
        if self.drop_uneven:
            lo = start + self.rank * (size // self.world)
            return lo, lo + size // self.world
        base, extra = divmod(size, self.world)
        lo = start + self.rank * base + min(self.rank, extra)
        return lo, lo + base + (self.rank < extra)

    def _parts(self):
        """``[lo, hi)`` of each non-empty batch this rank yields, in order."""
        for start in range(0, self.n_examples, self.batch_size):
            lo, hi = self._part(start, min(start + self.batch_size, self.n_examples))
            if hi > lo:
                yield lo, hi

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch ``epoch`` (an integer >= 0)."""
        self.epoch = _check_epoch(epoch)

    def _start_epoch(self) -> int:
        epoch, self.epoch = self.epoch, self.epoch + 1
        return epoch

    def __len__(self) -> int:
        """Number of batches per epoch (the last, partial batch included)."""
        if self.world > 1:
            return sum(1 for _ in self._parts())
        return math.ceil(self.n_examples / self.batch_size)


# ----------------------------------------------------------------- device path


def crop_and_flip(
    batch: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int = CROP_PADDING
) -> torch.Tensor:
    """Crop each image of ``batch`` from its zero-padded version, then mirror it.

    Args:
        batch: ``(B, C, H, W)`` images (any dtype).
        offsets: int64 ``(B, 2)``: top row and left column of the ``H x W``
            window in the image padded by ``padding`` pixels, each in ``[0, 2 * padding]``.
        flips: bool ``(B,)``: mirror left-right after cropping.

    Equals torchvision's ``RandomCrop(H, padding)`` then ``RandomHorizontalFlip``
    with these draws; one gather per axis, no Python loop over images.
    """
    b, c, h, w = batch.shape
    padded = F.pad(batch, (padding,) * 4)
    rows = offsets[:, :1] + torch.arange(h, device=batch.device)
    columns = torch.arange(w, device=batch.device)
    columns = offsets[:, 1:] + torch.where(flips[:, None], w - 1 - columns, columns)
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * padding))
    return out.gather(3, columns[:, None, None, :].expand(b, c, h, w))


class DeviceLoader(_EpochLoader):
    """Batches from a dataset held whole on ``device`` (uint8: 123 MB for CIFAR-10's train split).

    Yields ``(x, y)``: ``x`` float32 ``(B, C, H, W)`` normalised, ``y`` int64
    ``(B,)``, both on ``device``; the last batch may be smaller. Works on any
    device, CPU included (the tests use CPU tensors).

    Args:
        images: uint8 ``(N, C, H, W)``; labels: int64 ``(N,)``.
        mean, std: per channel, on the 0..1 pixel scale.
        shuffle: visit the examples in :func:`epoch_permutation` order.
        augment: random crop (zero padding :data:`CROP_PADDING`) and, when
            ``hflip``, horizontal flip with probability 1/2.
        seed: the run's seed; with the epoch it fixes the shuffling and the augmentation.
    """

    def __init__(
        self, images, labels, batch_size, *, mean, std, device, shuffle=False, augment=False, hflip=True, seed=0
    ):
        super().__init__(len(labels), batch_size, shuffle, augment, seed)
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(self.device)
        self.hflip = hflip
        self._mean = torch.as_tensor(mean, dtype=torch.float32, device=self.device).view(-1, 1, 1)
        self._std = torch.as_tensor(std, dtype=torch.float32, device=self.device).view(-1, 1, 1)

    def _augmentation_draws(self, epoch: int):
        """Crop offsets and flips of every example of the epoch, drawn on CPU
        (identical on every device) and moved to the device in one copy."""
        generator = torch.Generator().manual_seed(derive_seed(self.seed, epoch, _DEVICE_AUGMENT))
        offsets = torch.randint(0, 2 * CROP_PADDING + 1, (self.n_examples, 2), generator=generator)
        flips = torch.randint(0, 2, (self.n_examples,), generator=generator).bool()
        if not self.hflip:
            flips.zero_()
        return offsets.to(self.device), flips.to(self.device)

    def __iter__(self):
        epoch = self._start_epoch()
        order = epoch_permutation(self.n_examples, self.seed, epoch).to(self.device) if self.shuffle else None
        if self.augment:
            offsets, flips = self._augmentation_draws(epoch)
        for start, stop in self._parts():
            if order is None:
                x, y = self.images[start:stop], self.labels[start:stop]
            else:
                index = order[start:stop]
                x, y = self.images.index_select(0, index), self.labels.index_select(0, index)
            if self.augment:
                x = crop_and_flip(x, offsets[start:stop], flips[start:stop])
            # Same operations, in the same order, as ConvertImageDtype + Normalize on the host path.
            yield x.to(torch.float32).div_(255).sub_(self._mean).div_(self._std), y


# ------------------------------------------------------------------- host path


class _ImageDataset(Dataset):
    """Normalised (and augmented) images; the augmentation of example ``i`` in
    epoch ``e`` is seeded by ``(seed, e, i)``, whatever worker computes it."""

    def __init__(self, images, labels, *, mean, std, augment, hflip, seed):
        self.images, self.labels, self.seed = images, labels, seed
        self.epoch = 0
        steps = []
        if augment:
            steps.append(transforms.RandomCrop(images.shape[-2:], padding=CROP_PADDING))
            if hflip:
                steps.append(transforms.RandomHorizontalFlip())
        self.augmentation = transforms.Compose(steps) if steps else None
        self.normalise = transforms.Compose(
            [transforms.ConvertImageDtype(torch.float32), transforms.Normalize(mean, std)]
        )

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = self.images[i]
        if self.augmentation is not None:
            # torchvision's transforms draw from torch's global CPU generator:
            # seed it for this example and give the caller its own state back.
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(derive_seed(self.seed, self.epoch, _HOST_AUGMENT, i))
                x = self.augmentation(x)
        return self.normalise(x), self.labels[i]


class _EpochBatches(Sampler):
    """The indices of each batch of the loader's epoch (its shard's part of each, see ``shard``)."""

    def __init__(self, loader: _EpochLoader):
        self.loader = loader
        self.epoch = 0

    def __iter__(self):
        loader = self.loader
        order = epoch_permutation(loader.n_examples, loader.seed, self.epoch) if loader.shuffle else None
        for lo, hi in loader._parts():
            yield order[lo:hi].tolist() if order is not None else list(range(lo, hi))

    def __len__(self):
        return len(self.loader)


class HostLoader(_EpochLoader):
    """Batches computed on CPU by a :class:`~torch.utils.data.DataLoader`
    (``num_workers`` worker processes; 0 = in the main process).

    Same arguments, batches and order as :class:`DeviceLoader`; the
    augmentation is torchvision's ``RandomCrop`` + ``RandomHorizontalFlip``.
    Yields CPU tensors.
    """

    def __init__(
        self, images, labels, batch_size, *, mean, std, shuffle=False, augment=False, hflip=True, seed=0, num_workers=0
    ):
        super().__init__(len(labels), batch_size, shuffle, augment, seed)
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"num_workers must be an integer >= 0, got {num_workers!r}")
        self.dataset = _ImageDataset(images, labels, mean=mean, std=std, augment=augment, hflip=hflip, seed=seed)
        self.sampler = _EpochBatches(self)
        # Workers are started anew each epoch so that they see the dataset's current epoch.
        # The private generator keeps DataLoader from drawing its workers' base seed from
        # torch's global generator, which would shift the run's other random draws.
        self.loader = DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=num_workers,
            persistent_workers=False,
            generator=torch.Generator().manual_seed(derive_seed(seed, _HOST_AUGMENT)),
        )

    def __iter__(self):
        epoch = self._start_epoch()
        self.sampler.epoch = self.dataset.epoch = epoch
        return iter(self.loader)


# --------------------------------------------------------------------- factory


def make_loaders(splits: ImageSplits, batch_size: int, *, data_augm: bool, device, seed: int, num_workers: int = 0):
    """``(train, valid, test)`` loaders over ``splits``: device-resident unless
    ``device`` is the CPU. Only train is shuffled, and augmented when ``data_augm``."""
    device = torch.device(device)

    def loader(part: ImageSet, train: bool):
        common = dict(
            mean=splits.mean, std=splits.std, shuffle=train, augment=train and data_augm, hflip=splits.hflip, seed=seed
        )
        if device.type == "cpu":
            return HostLoader(part.images, part.labels, batch_size, num_workers=num_workers, **common)
        return DeviceLoader(part.images, part.labels, batch_size, device=device, **common)

    return loader(splits.train, True), loader(splits.valid, False), loader(splits.test, False)
