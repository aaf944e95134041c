"""One run on several processes: ``torchrun --nproc_per_node N main_cnn.py ...`` (and main_rnn.py).

Each process (rank) trains the same network, wrapped in DistributedDataParallel, on its
shard of every global batch (``--batch_size`` stays the global batch, the paper's 32 / 20);
the switch averages the per-copy losses over the ranks (``alrao/distributed.py``), so every
rank holds the same state. What the scripts need beyond that lives here:

- :meth:`Ranks.from_env`: the process group (nccl on CUDA, gloo on CPU) from torchrun's
  environment; a plain ``python main_cnn.py`` is one rank and nothing changes.
- shards: each rank's part of every batch of the image loaders, or its streams (columns)
  of the batchified text.
- :func:`sum_over_ranks`: the sums of :class:`experiment.Meter` over the ranks, so the
  printed and logged metrics (train, valid, test) are those of the global batches.
- rank 0 alone prints, shows progress and writes the run's files (:class:`Leader`); the
  other ranks follow it (:class:`Follower`): same epochs, same stopping, the state rank 0
  loaded on ``--resume``, its summary.
- stopping together: under several ranks, Ctrl-C / SIGTERM on any rank is noted, not
  raised; the ranks learn of it at the next sum of the meters (every few batches) and stop
  together, so rank 0 keeps its last checkpoint and writes an ``interrupted`` summary.
- random state: each epoch starts from a generator seeded by ``(seed, epoch, rank)`` (the
  dropout masks of a rank's shard), so a resumed run continues exactly as an uninterrupted one.
"""

import atexit
import contextlib
import gc
import os
import signal
import sys
from functools import partialmethod

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .optimizers import OPTIMIZERS
from .run import Run
from .run_folder import Terminated, UsageError, sigterm_as_interrupt
from .runtime import choose_device

# Signals received (SIGINT, SIGTERM) since the last sum over the ranks: ranks stop together.
_pending = {signal.SIGINT: 0, signal.SIGTERM: 0}
# Optimizers whose step reads the loss itself (each rank's own shard's), not only the averaged
# gradients: their ranks would part.
LOCAL_LOSS_OPTIMIZERS = frozenset(name for name, spec in OPTIMIZERS.items() if spec.steps_by_the_loss)
_RESEED = 3  # stream of derive_seed for the per-epoch generators (data/loaders.py uses 0..2)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _device() -> torch.device:
    """Where the collectives' tensors go: NCCL takes CUDA tensors only."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_over_ranks(values: list) -> list:
    """``values`` (numbers or tensors of any shape) summed over the ranks, as float64 tensors.

    A collective: every rank calls it at the same point (the scripts' meters do, every few
    batches and once per evaluation). It also carries the stop requests (Ctrl-C, SIGTERM) of
    every rank: when one is pending anywhere, every rank raises it here, together."""
    device = _device()
    flat = [torch.as_tensor(v, dtype=torch.float64).to(device).reshape(-1) for v in values]
    stops = torch.tensor([_pending[signal.SIGINT], _pending[signal.SIGTERM]], dtype=torch.float64, device=device)
    packed = torch.cat([*flat, stops])
    dist.all_reduce(packed)
    sigint, sigterm = packed[-2:].tolist()
    if sigterm or sigint:
        _pending.update({signal.SIGINT: 0, signal.SIGTERM: 0})
        raise Terminated() if sigterm else KeyboardInterrupt()
    out, offset = [], 0
    for v, f in zip(values, flat):
        out.append(packed[offset : offset + f.numel()].reshape(torch.as_tensor(v).shape))
        offset += f.numel()
    return out


@contextlib.contextmanager
def _signals_noted():
    """Within this block SIGINT and SIGTERM are noted for :func:`sum_over_ranks`, not raised. A
    third one of a kind is raised at once (the user insists, or the ranks no longer meet): one
    Ctrl-C in a terminal brings two, the terminal's and the one torchrun passes on."""

    def note(signum, frame):
        _pending[signum] += 1
        if _pending[signum] >= 3:
            _pending[signum] = 0
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    previous = {s: signal.signal(s, note) for s in _pending}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class _Transparent(DistributedDataParallel):
    """DDP whose wrapper answers for the wrapped model's attributes (``loss``, ``update_switch``,
    ``last_copy_losses``, ``preclassifier``...), so the scripts' loops run unchanged on it."""

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "module":  # not set yet (in DDP's constructor)
                raise
            return getattr(self.module, name)


def _leave_process_group() -> None:
    """At exit, leave the process group this process joined, before the interpreter tears down.

    A process group still alive when the interpreter tears down can abort the process (gloo:
    "terminate called without an active exception"), which torchrun reports as the run's
    failure. ``destroy_process_group`` alone was not enough: what still refers to the group
    (the network in DistributedDataParallel, held in reference cycles) lives on until the
    collector runs. Measured with 2 gloo ranks on a loaded 2-core machine: 2 of 36 finished
    runs aborted without the collection, 0 of 64 with it."""
    gc.collect()
    if dist.is_initialized():
        dist.destroy_process_group()


class Ranks:
    """This process's place in the run: ``rank`` of ``world``, ``local_rank`` on its machine."""

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0):
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.is_main = rank == 0

    @classmethod
    def from_env(cls, no_cuda: bool) -> "Ranks":
        """The ranks torchrun started (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``...):
        joins the process group (nccl with CUDA, else gloo), unless it is already initialised.
        Without torchrun: one rank. On ranks other than 0, stdout and progress bars are silenced."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1 and not dist.is_initialized():
            return cls()
        if not dist.is_initialized():
            cuda = torch.cuda.is_available() and not no_cuda
            if cuda:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl" if cuda else "gloo")
            atexit.register(_leave_process_group)
        ranks = cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
        if not ranks.is_main:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (for the life of the process)
            from tqdm import tqdm

            tqdm.__init__ = partialmethod(tqdm.__init__, disable=True)
        return ranks

    def choose_device(self, no_cuda: bool) -> tuple[torch.device, str]:
        """:func:`experiment.choose_device`, on this rank's GPU (``cuda:LOCAL_RANK``)."""
        device, text = choose_device(no_cuda)
        if self.world == 1:
            return device, text
        if device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
        return device, f"{text}, {self.world} processes ({dist.get_backend()})"

    # ------------------------------------------------------------------ data
    def shard_loaders(self, train, *evaluation) -> None:
        """Each loader yields this rank's part of every batch; the training parts are equal
        (up to ``world - 1`` examples of the last batch are left out when it does not split)."""
        if self.world > 1:
            train.shard(self.rank, self.world, drop_uneven=True)
            for loader in evaluation:
                loader.shard(self.rank, self.world, drop_uneven=False)

    def columns(self, source: torch.Tensor, train: bool) -> torch.Tensor:
        """This rank's streams (columns) of a batchified text ``(steps, streams)``: training
        splits them in equal parts (:class:`UsageError` if they do not split), evaluation as
        evenly as it can."""
        if self.world == 1:
            return source
        streams = source.size(1)
        if train and streams % self.world:
            raise UsageError(
                f"--batch_size {streams} does not split into {self.world} processes: use a multiple of {self.world}"
            )
        if streams < self.world:
            raise UsageError(f"{streams} evaluation streams are fewer than the {self.world} processes")
        return torch.tensor_split(source, self.world, dim=1)[self.rank].contiguous()

    # ----------------------------------------------------------------- model
    def wrap(self, model: nn.Module, optimizer, device: torch.device) -> nn.Module:
        """The network the training loop calls: ``model`` in DistributedDataParallel under several
        ranks (its BatchNorm layers made SyncBatchNorm on CUDA, see :func:`synchronise_batchnorm`),
        ``model`` itself otherwise. Checks first that every rank drew the same feature learning
        rates (Alrao optimizers)."""
        if self.world == 1:
            return model
        if callable(getattr(optimizer, "feature_lrs", None)):
            from alrao.distributed import check_feature_lrs

            check_feature_lrs(optimizer)
        if device.type == "cuda":
            synchronise_batchnorm(model)
        ids = [device.index] if device.type == "cuda" else None
        # Buffers: the switch is the same on every rank; rank 0's BatchNorm statistics replace the
        # others' before every training forward (they differ on CPU, where gloo has no SyncBatchNorm).
        return _Transparent(model, device_ids=ids)

    def sync_buffers(self, model: nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm statistics), e.g. before evaluating."""
        if self.world > 1:
            for buffer in model.buffers():
                dist.broadcast(buffer.data, src=0)

    # ------------------------------------------------------------------- run
    def run(self, args, prog: str, name: str, device: torch.device):
        """The run: :class:`experiment.Run` with one rank; a :class:`Leader` on rank 0 and a
        :class:`Follower` elsewhere with several."""
        if self.world == 1:
            return Run(args, prog, name, device)
        if args.optimizer in LOCAL_LOSS_OPTIMIZERS:
            raise UsageError(
                f"--optimizer {args.optimizer} steps by the mini-batch loss, which differs between the "
                f"{self.world} processes: run it in one process"
            )
        return Leader(self, args, prog, name, device) if self.is_main else Follower(self, args)

    def _broadcast(self, obj):
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=_device())
        return box[0]

    def reseed(self, seed: int, epoch: int) -> None:
        """The generators of this rank's epoch ``epoch`` (dropout), from ``(seed, epoch, rank)`` only."""
        from data.loaders import derive_seed  # here: the experiment package does not need the data one

        torch.manual_seed(derive_seed(seed, epoch, self.rank, _RESEED) % 2**63)


def synchronise_batchnorm(model: nn.Module) -> nn.Module:
    """Make ``model``'s BatchNorm layers SyncBatchNorm, in place: they normalise with the global
    batch's statistics, as one process does (torch runs them on accelerators only). The new
    layers keep the parameter objects, so the optimizer's feature rates still apply."""
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if converted is not model:
        raise ValueError("the model's root is a BatchNorm layer: SyncBatchNorm cannot replace it in place")
    return model


class Leader:
    """Rank 0's run: an :class:`experiment.Run` (files, prints) that tells the other ranks
    what it decided: whether it starts, the state it resumed, each epoch, the summary."""

    def __init__(self, ranks: Ranks, args, prog, name, device):
        self.ranks, self.args = ranks, args
        try:
            self.run = Run(args, prog, name, device)
        except UsageError:
            ranks._broadcast(False)
            raise
        ranks._broadcast(args.out_dir)

    def start(self, model, optimizer, hooks=None, **facts) -> None:
        try:
            self.run.start(model, optimizer, hooks, **facts)
        except BaseException:  # e.g. the folder, checked again once locked, holds another run
            self.ranks._broadcast(None)  # the other ranks stop too
            raise
        hooks = self.run.hooks
        self.ranks._broadcast(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "hooks": hooks.state_dict()}
        )

    def epochs(self):
        for epoch in self.run.epochs():
            self.ranks._broadcast(epoch)
            self.ranks.reseed(self.args.seed, epoch)
            yield epoch
        self.ranks._broadcast(0)

    def end_epoch(self, record: dict) -> None:
        self.run.end_epoch(record)

    def finish(self) -> dict:
        return self.ranks._broadcast(self.run.finish())

    def __enter__(self):
        self.run.__enter__()
        self._noted = _signals_noted()
        self._noted.__enter__()
        return self

    def __exit__(self, exc_type, exc, traceback):
        self._noted.__exit__(None, None, None)
        return self.run.__exit__(exc_type, exc, traceback)


class Follower:
    """A rank other than 0: the same loop as rank 0, no files; its state and decisions come
    from rank 0."""

    def __init__(self, ranks: Ranks, args):
        self.ranks, self.args = ranks, args
        out_dir = ranks._broadcast(None)
        if out_dir is False:  # rank 0 could not start the run; it says why
            raise SystemExit(2)
        args.out_dir = out_dir

    def start(self, model, optimizer, hooks=None, **facts) -> None:
        state = self.ranks._broadcast(None)
        if state is None:  # rank 0 could not start the run; it says why
            raise SystemExit(2)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if hooks is not None:
            hooks.load_state_dict(state["hooks"])

    def epochs(self):
        while epoch := self.ranks._broadcast(None):
            self.ranks.reseed(self.args.seed, epoch)
            yield epoch

    def end_epoch(self, record: dict) -> None:
        pass

    def finish(self) -> dict:
        return self.ranks._broadcast(None)

    def __enter__(self):
        self._sigterm = sigterm_as_interrupt()
        self._sigterm.__enter__()
        self._noted = _signals_noted()
        self._noted.__enter__()
        return self

    def __exit__(self, exc_type, exc, traceback):
        self._noted.__exit__(None, None, None)
        self._sigterm.__exit__(None, None, None)
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            raise SystemExit(128 + (signal.SIGTERM if issubclass(exc_type, Terminated) else signal.SIGINT)) from None
        return False
