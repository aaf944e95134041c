"""Seeding, random-number-generator state, device choice (DESIGN.md principle 9), and the
process's memory allocator."""

import contextlib
import ctypes
import random
import sys
from collections.abc import Callable

import numpy as np
import torch

# Independent random streams derived from --seed, one per purpose, so that
# e.g. the feature learning rates are not drawn from the same numbers as the
# initial weights (a generator and the global one seeded alike would be).
_STREAMS = {"feature_lrs": 1}


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (CPU and CUDA) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def derived_generator(seed: int, stream: str) -> torch.Generator:
    """A CPU ``torch.Generator`` for ``stream`` (e.g. ``'feature_lrs'``), seeded from ``seed``,
    independent of the global generators and of the other streams."""
    state = np.random.SeedSequence(seed, spawn_key=(_STREAMS[stream],)).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0]))


def choose_device(no_cuda: bool) -> tuple[torch.device, str]:
    """The device of a run (CUDA when available, unless ``no_cuda``) and a line that says which and why."""
    if not no_cuda and torch.cuda.is_available():
        device = torch.device("cuda")
        return device, f"cuda ({torch.cuda.get_device_name(device)})"
    return torch.device("cpu"), "cpu (--no_cuda)" if no_cuda else "cpu (CUDA is not available)"


def rng_state(device: torch.device) -> dict:
    """The state of every global generator a run draws from: Python's, NumPy's, torch's CPU one and,
    on a CUDA device, that device's generator only (a one-element list).

    Only the run's own device: a run started with two visible GPUs may be resumed with one (e.g.
    under ``reproduce.py``, which gives each run one GPU), where a state per visible device would
    not fit. Made of tensors, lists and numbers only, so that ``torch.load(...,
    weights_only=True)`` reads it back.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else [],
    }


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restore the generators saved by :func:`rng_state`.

    The CUDA state is restored only on a CUDA device when the saved run had
    one, and only into the run's device: its first saved entry (checkpoints
    written before this version hold one entry per visible GPU in index order,
    and the scripts train on the first), whatever the number of GPUs visible now. A run moved
    between CPU and CUDA continues, but not bit for bit.
    """
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"]:
        torch.cuda.set_rng_state(state["cuda"][0], device)


# ------------------------------------------------------------ mixed precision
#: --amp choices: the autocast dtype of each (None: float32 throughout).
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Device types on which --amp fp16 runs. float16 needs a gradient scaler (its range ends at
#: 65,504) and is what CUDA accelerates; on a CPU bfloat16 is the low precision to use. A test
#: adds "cpu" to run the scaler's branch without a GPU.
FP16_DEVICE_TYPES = ("cuda",)


class UnsupportedPrecision(ValueError):
    """An ``--amp`` setting the run's device cannot run (one-line message)."""


class Precision:
    """The ``--amp`` setting of a run: autocast around the forward and loss, and for ``fp16`` a
    ``torch.amp.GradScaler`` around the backward and the optimizer step.

    Raises :class:`UnsupportedPrecision` (a one-line message naming the flag) for ``fp16`` on a device type
    outside :data:`FP16_DEVICE_TYPES`.
    """

    def __init__(self, amp: str, device: torch.device):
        if amp not in AMP_DTYPES:
            raise UnsupportedPrecision(f"--amp {amp}: valid values are {', '.join(AMP_DTYPES)}")
        if amp == "fp16" and device.type not in FP16_DEVICE_TYPES:
            raise UnsupportedPrecision(
                f"--amp fp16 runs only on CUDA (float16 with a gradient scaler); this run is on {device.type}: "
                "use --amp bf16 or --amp off"
            )
        self.amp, self.device_type, self.dtype = amp, device.type, AMP_DTYPES[amp]
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """Where the forward and the loss run: ``torch.autocast`` in the run's dtype, or nothing."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, of the scaled loss with a gradient scaler."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring the gradients back to their true scale (before clipping them); no-op without a scaler."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer, closure: Callable) -> bool:
        """``optimizer.step(closure)``; whether the step was taken.

        Without a scaler, always (and nothing is read on the host). With one, a step whose
        gradients hold inf or NaN is skipped and the scale lowered, as torch's ``GradScaler``
        does; telling so reads the scale on the host, as the scaler itself already does at
        every step (a skipped step must also skip the Alrao switch update).
        """
        if self.scaler is None:
            optimizer.step(closure)
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer, closure)
        self.scaler.update()
        return self.scaler.get_scale() >= scale  # lowered only after a skipped step


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: Allocations up to this size reuse freed memory (see keep_freed_memory).
KEEP_FREED_UP_TO = 1 << 30


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (Linux only; returns whether it applied).

    By default glibc gives every allocation above 32 MB its own ``mmap`` and returns it to the
    system when freed, so each large CPU tensor of a step (e.g. the Alrao copies' outputs of a
    word-level decoder, 168 MB each) is page-faulted in anew at every step: measured with
    ``benchmarks/step_overhead.py``, more than half of the word-level LSTM's Alrao step. Raising the mmap
    and trim thresholds to 1 GB (``mallopt``, as ``MALLOC_MMAP_THRESHOLD_`` and
    ``MALLOC_TRIM_THRESHOLD_`` would) keeps the pages; the process's memory then stays at its
    peak. The scripts call this at start-up; the library does not change a process's allocator.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl): leave the allocator alone
        return False
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, KEEP_FREED_UP_TO)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, KEEP_FREED_UP_TO)
    )
