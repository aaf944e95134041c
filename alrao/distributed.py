"""Alrao under ``torch.distributed`` (DistributedDataParallel, torchrun).

With DDP every rank sees its own shard of the global batch. The gradients are
averaged by DDP, so the parameters stay identical on every rank; the switch is
not a parameter, and each rank would update it from its own shard's per-copy
losses. :func:`average_copy_losses` (called by ``AlraoModel.update_switch``)
averages those ``n_classifiers`` numbers over the ranks first: every rank then
holds the same posterior, the one a single process gets from the global batch
(the per-copy loss of the global batch is the mean of the shards' losses when
the shards have equal sizes, as DDP's gradient average assumes too).

The feature learning rates are drawn when the optimizer is built, from the
random generator: they agree across ranks only if every rank seeded it alike.
DDP does not see them (it synchronises parameters and gradients, not optimizer
state), so ranks seeded differently would silently train different models;
:func:`check_feature_lrs` says so.
"""

import torch
import torch.distributed as dist


def group_size(process_group=None) -> int:
    """Number of ranks in ``process_group`` (default: the world); 1 when
    ``torch.distributed`` is not initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(process_group)


def average_copy_losses(losses: torch.Tensor, process_group=None) -> torch.Tensor:
    """Per-copy losses averaged over the ranks of ``process_group``.

    Args:
        losses: shape ``(n_classifiers,)``, this rank's per-copy mean losses (nats).
        process_group: the ranks that share the model (default: the world). A
            group of one rank (or no initialised ``torch.distributed``) returns
            ``losses`` unchanged: pass ``dist.new_group([rank])`` to keep a
            per-rank switch (e.g. independent runs in one job).

    One all-reduce of ``n_classifiers`` numbers, in float32 at least. It is
    launched asynchronously: with NCCL, waiting on it only orders the switch's
    update after it on the device stream, the host never blocks; with gloo the
    host waits for the few numbers. A non-finite loss on any rank makes that
    copy's global loss non-finite (the switch then gives it no mass this step).
    Never reads a tensor on the host.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return losses  # group_size() inlined: this is every training step's path without DDP
    size = dist.get_world_size(process_group)
    if size == 1:
        return losses
    buffer = losses.detach().to(torch.promote_types(losses.dtype, torch.float32), copy=True)
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=process_group, async_op=True).wait()
    return buffer.div_(size)


def _collective_device(tensor_device: torch.device, process_group) -> torch.device:
    """Where a tensor must be for the group's backend: NCCL alone takes CUDA tensors only."""
    if tensor_device.type == "cpu" and dist.get_backend(process_group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return tensor_device


def check_feature_lrs(optimizer: torch.optim.Optimizer, process_group=None) -> None:
    """Raise on every rank if the optimizer's feature learning rates (or its
    groups' ``lr``, ``min_lr``, ``max_lr``) differ from rank 0's.

    Call it once on every rank after building an :class:`alrao.AlraoSGD` /
    :class:`alrao.AlraoAdam` (it is a collective: all ranks of the group must
    call it). Compares exactly: one broadcast of the rates (one per feature)
    and two all-reduces of a few numbers; reads them on the host, so it is meant
    for set-up, not for the training step. A no-op without ``torch.distributed``.

    Raises:
        TypeError: ``optimizer`` has no feature learning rates.
        RuntimeError: the ranks disagree (the message names the counts and the fix).
    """
    if not callable(getattr(optimizer, "feature_lrs", None)):
        raise TypeError(f"check_feature_lrs takes an alrao.AlraoSGD or alrao.AlraoAdam, got {type(optimizer).__name__}")
    if group_size(process_group) == 1:
        return
    rates = list(optimizer.feature_lrs().values())
    device = _collective_device(rates[0].device if rates else torch.device("cpu"), process_group)
    scalars = [float(g.get(key, 0.0)) for g in optimizer.param_groups for key in ("lr", "min_lr", "max_lr")]
    mine = torch.cat(
        [r.detach().reshape(-1).to(device, torch.float64) for r in rates]
        + [torch.tensor(scalars, dtype=torch.float64, device=device)]
    )
    n = mine.numel()
    # Same number of rates everywhere first: a broadcast of unequal sizes would fail or hang.
    sizes = torch.tensor([n, -n], dtype=torch.float64, device=device)
    dist.all_reduce(sizes, op=dist.ReduceOp.MAX, group=process_group)
    largest, smallest = int(sizes[0]), -int(sizes[1])
    if largest != smallest:
        raise RuntimeError(
            f"alrao: the ranks' optimizers hold different numbers of learning rates ({smallest} to {largest}; "
            f"this rank: {n}): every rank must build the same model and optimizer"
        )
    reference = mine.clone()
    dist.broadcast(reference, group=process_group, group_src=0)
    differ = (reference != mine).sum().to(torch.float64).reshape(1)
    worst = differ.clone()
    dist.all_reduce(worst, op=dist.ReduceOp.MAX, group=process_group)
    if int(worst) > 0:
        raise RuntimeError(
            f"alrao: feature learning rates differ across ranks (up to {int(worst)} of {n} differ from rank 0's; "
            f"this rank: {int(differ)}). They are drawn when the optimizer is built: seed every rank alike "
            "before building the model and optimizer (torch.manual_seed(seed), or the optimizer's "
            "generator=torch.Generator().manual_seed(seed)), and vary only the data order per rank"
        )
