"""Images per second of main_cnn.py's training step on 1, 2, ... processes (DistributedDataParallel),
Alrao against plain SGD, and Alrao without the switch's all-reduce (each rank its own switch):
the last two columns show what the all-reduce of the N per-copy losses costs.

The step is main_cnn.py's: its model and optimizer (built from its flags), forward through the
DDP wrapper the runner uses, loss, backward, optimizer step, switch update, on this rank's part
of a global batch of --batch_size random images. The variants run interleaved (A, B, C, A, ...)
in the same processes; each figure is --batch_size over the median step time on rank 0.

    python benchmarks/ddp_scaling.py                               # 1 and 2 CPU processes (gloo)
    python benchmarks/ddp_scaling.py --device cuda --processes 1 2 4 8   # GPUs (nccl)
"""

import argparse
import datetime
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import experiment  # noqa: E402
import main_cnn  # noqa: E402
import models  # noqa: E402

VARIANTS = ("plain SGD", "Alrao", "Alrao, per-rank switch")


def build(variant: str, args, ranks: experiment.Ranks, device: torch.device):
    """main_cnn.py's model and optimizer for ``variant``; returns one training step on ``x, y``."""
    use_alrao = variant != "plain SGD"
    flags = ["--model_name", args.model_name, "--size_multiplier", str(args.size_multiplier)]
    flags += ["--use_alrao"] if use_alrao else ["--lr", "0.01"]
    run_args = main_cnn.build_parser().parse_args(flags)
    torch.manual_seed(0)
    pre = models.build_preclassifier(run_args.model_name, run_args.size_multiplier)
    model = experiment.build_model(run_args, pre, main_cnn.alrao.LinearClassifier, pre.num_features, 10).to(device)
    optimizer = experiment.build_optimizer(model, run_args, experiment.derived_generator(0, "feature_lrs"))
    net = ranks.wrap(model, optimizer, device)
    own_group = None
    if variant == "Alrao, per-rank switch" and ranks.world > 1:
        own_group = [dist.new_group([r]) for r in range(ranks.world)][ranks.rank]

    def step(x, y):
        output = net(x)
        loss = model.loss(output, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if use_alrao:
            model.update_switch(process_group=own_group)

    return step


def worker(rank: int, world: int, port: int, args, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    os.environ.setdefault("LOCAL_RANK", str(rank))
    os.environ["LOCAL_RANK"] = str(rank)
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if world > 1:
        if cuda:
            torch.cuda.set_device(rank)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=5))
    ranks = experiment.Ranks.from_env(no_cuda=not cuda) if world > 1 else experiment.Ranks()
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    steps = [build(v, args, ranks, device) for v in VARIANTS]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch_size, 3, 32, 32, generator=g).chunk(world)[rank].to(device)
    y = torch.randint(0, 10, (args.batch_size,), generator=g).chunk(world)[rank].to(device)
    times = [[] for _ in VARIANTS]
    for i in range(args.warmup + args.steps):
        for k, step in enumerate(steps):
            if world > 1:
                dist.barrier()
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            step(x, y)
            if cuda:
                torch.cuda.synchronize()
            if world > 1:
                dist.barrier()
            if i >= args.warmup:
                times[k].append(time.perf_counter() - start)
    if rank == 0:
        results.put([args.batch_size / statistics.median(t) for t in times])
    if world > 1:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts (default 1 2)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cpu (gloo) or cuda (nccl)")
    parser.add_argument("--model_name", choices=list(models.MODELS), default="VGG19")
    parser.add_argument("--size_multiplier", type=float, default=0.25, help="main_cnn.py's flag (default 0.25)")
    parser.add_argument("--batch_size", type=int, default=32, help="the global batch (default 32, the paper's)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant (default 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (default 1)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and max(args.processes) > torch.cuda.device_count():
        parser.error(f"--processes {max(args.processes)} needs as many GPUs; {torch.cuda.device_count()} visible")
    if os.path.exists("/sys/class/net/lo"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    print(
        f"{args.model_name} x{args.size_multiplier}, global batch {args.batch_size}, {args.device}, "
        f"{args.threads} thread(s) per process, median of {args.steps} steps, torch {torch.__version__}"
    )
    columns = [f"{v} (img/s)" for v in VARIANTS] + ["Alrao step / plain step", "all-reduce cost"]
    print("| processes | " + " | ".join(columns) + " |")
    print("|---:|" + "---:|" * (len(VARIANTS) + 2))
    ctx = mp.get_context("spawn")
    for world in args.processes:
        results = ctx.Queue()
        mp.start_processes(worker, args=(world, free_port(), args, results), nprocs=world, start_method="spawn")
        plain, alrao_, per_rank = results.get()
        cost = per_rank / alrao_ - 1  # > 0: the all-reduce slows the step by this fraction
        print(f"| {world} | {plain:.1f} | {alrao_:.1f} | {per_rank:.1f} | {plain / alrao_:.2f} | {100 * cost:+.1f}% |")


if __name__ == "__main__":
    main()
