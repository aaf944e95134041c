"""Images per second delivered by the two image loaders, augmentation on.

- host: :class:`data.HostLoader`, the DataLoader path (torchvision transforms
  per image, on CPU worker processes or in the main process);
- device: :class:`data.DeviceLoader`, the whole uint8 dataset on the device,
  crop / flip / normalise per batch there.

Both are timed on CPU; on CUDA (when available) the device loader and the host
loader followed by the copy to the GPU. Each measurement is the best of
``--repeats`` full epochs after one warm-up epoch. Uses the offline ``fake``
dataset by default, so it needs no download::

    python benchmarks/data_throughput.py
    python benchmarks/data_throughput.py --threads 1 --num_workers 2
"""

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument("--dataset", choices=data.IMAGE_DATASETS, default="fake")
    parser.add_argument("--data_path", default="data_files", help="where cifar10 is (or is downloaded)")
    parser.add_argument("--n_images", type=int, default=5000, help="training images per epoch (at most)")
    parser.add_argument("--batch_size", type=int, default=32, help="the paper uses 32")
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader worker processes of the host path")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs; the best one is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    return parser


def images_per_second(loader, n_images: int, repeats: int, device: torch.device) -> float:
    """Best rate over ``repeats`` epochs, after one warm-up epoch; every batch is
    moved to ``device`` (a no-op when it is already there)."""
    best = float("inf")
    for epoch in range(repeats + 1):
        loader.set_epoch(epoch)
        start = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if epoch > 0:
            best = min(best, time.perf_counter() - start)
    return n_images / best


def main(args) -> dict:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    splits = data.load_image_splits(args.dataset, args.data_path, limit=args.n_images)
    images, labels = splits.train.images, splits.train.labels
    common = dict(mean=splits.mean, std=splits.std, shuffle=True, augment=True, hflip=splits.hflip, seed=0)
    cpu = torch.device("cpu")
    cases = [
        (
            "host (DataLoader)",
            "cpu",
            lambda: data.HostLoader(images, labels, args.batch_size, num_workers=args.num_workers, **common),
            cpu,
        ),
        (
            "device-resident",
            "cpu",
            lambda: data.DeviceLoader(images, labels, args.batch_size, device=cpu, **common),
            cpu,
        ),
    ]
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        cases += [
            ("host (DataLoader) + copy", "cuda", cases[0][2], gpu),
            (
                "device-resident",
                "cuda",
                lambda: data.DeviceLoader(images, labels, args.batch_size, device=gpu, **common),
                gpu,
            ),
        ]
    print(
        f"{args.dataset}: {len(labels)} training images, batch {args.batch_size}, augmentation on, "
        f"{torch.get_num_threads()} CPU threads, {args.num_workers} DataLoader workers"
    )
    results = {}
    for name, where, make, device in cases:
        rate = images_per_second(make(), len(labels), args.repeats, device)
        results[(name, where)] = rate
        print(f"  {name:26s} {where:5s} {rate:12,.0f} images/s")
    return results


if __name__ == "__main__":
    main(build_parser().parse_args())
