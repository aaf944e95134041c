"""A pool of ``torch.distributed`` worker processes for the tests (gloo, CPU, 127.0.0.1 only).

Starting a process that imports torch costs seconds, so a test module starts
one pool (a module-scoped fixture) and sends it functions to run: every rank
runs the same module-level function and the pool returns each rank's result,
or the exception's one-line text. The pool's process group has a short
timeout, so a test that breaks the ranks' lockstep fails instead of hanging.
"""

import datetime
import os
import queue
import socket
import sys
import traceback

import torch.multiprocessing as mp

TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loopback_env() -> dict:
    """Environment that keeps gloo on the loopback interface (no network on the test machines)."""
    env = {"MASTER_ADDR": "127.0.0.1"}
    if os.path.exists("/sys/class/net/lo"):
        env["GLOO_SOCKET_IFNAME"] = "lo"
    return env


def _serve(rank, world, port, tasks, results, path):
    sys.path[:0] = path
    os.environ.update(loopback_env(), MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=TIMEOUT_S / 2))
    while (task := tasks.get()) is not None:
        fn, args = task
        try:
            results.put((rank, True, fn(*args)))
        except BaseException as e:  # sent back to the test (SystemExit too), which asserts on it
            results.put((rank, False, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    dist.destroy_process_group()


class Pool:
    """``world`` ranks in one gloo process group, on this machine."""

    def __init__(self, world: int = 2):
        ctx = mp.get_context("spawn")
        self.world = world
        self.results = ctx.Queue()
        self.tasks = [ctx.Queue() for _ in range(world)]
        port = free_port()
        self.procs = [
            ctx.Process(target=_serve, args=(r, world, port, self.tasks[r], self.results, list(sys.path)), daemon=True)
            for r in range(world)
        ]
        for p in self.procs:
            p.start()

    def run(self, fn, *args, timeout: float = TIMEOUT_S) -> list:
        """Run ``fn(*args)`` on every rank; return ``[(ok, result or error text)]`` by rank."""
        for q in self.tasks:
            q.put((fn, args))
        out = [None] * self.world
        for _ in range(self.world):
            try:
                rank, ok, value = self.results.get(timeout=timeout)
            except queue.Empty:
                self.close()
                raise TimeoutError(f"the DDP pool did not answer within {timeout} s") from None
            out[rank] = (ok, value)
        return out

    def values(self, fn, *args, **kwargs) -> list:
        """Like :meth:`run`, failing the test if any rank raised."""
        out = self.run(fn, *args, **kwargs)
        for rank, (ok, value) in enumerate(out):
            assert ok, f"rank {rank} raised: {value}"
        return [value for _, value in out]

    def close(self):
        for q in self.tasks:
            q.put(None)
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
