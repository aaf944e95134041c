"""Alrao under DistributedDataParallel: 2 ranks (gloo, CPU) equal one process on the same
global batches; feature rates checked across ranks; a lost rank stops the other."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist
from ddp_pool import Pool, free_port, loopback_env
from test_readme import python_blocks
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import alrao
from alrao.distributed import check_feature_lrs

N_COPIES, D_IN, WIDTH, K, BATCH, STEPS = 4, 5, 8, 3, 12, 6


@pytest.fixture(scope="module")
def pool():
    p = Pool(2)
    yield p
    p.close()


def make(opt_name: str, lr_seed: int = 0, n_copies: int = N_COPIES):
    """A tiny Alrao MLP (no BatchNorm) and its optimizer, seeded."""
    torch.manual_seed(0)
    pre = nn.Sequential(nn.Linear(D_IN, WIDTH), nn.Tanh(), nn.Linear(WIDTH, WIDTH), nn.Tanh())
    model = alrao.AlraoModel("classification", nn.NLLLoss(), pre, n_copies, alrao.LinearClassifier, WIDTH, K)
    gen = torch.Generator().manual_seed(lr_seed)
    if opt_name == "sgd":
        opt = alrao.AlraoSGD(model, 1e-3, 3.0, momentum=0.9, weight_decay=1e-4, generator=gen)
    else:
        opt = alrao.AlraoAdam(model, 1e-4, 0.3, weight_decay=1e-4, generator=gen)
    return model, opt


def global_batch(step: int):
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(BATCH, D_IN, generator=g), torch.randint(0, K, (BATCH,), generator=g)


def train(opt_name: str, per_rank_switch: bool = False):
    """STEPS steps on this rank's shard of each global batch (the whole batch without
    torch.distributed); returns the parameters, the posterior and the last loss."""
    model, opt = make(opt_name)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    group = None
    if per_rank_switch:  # the negative control: each rank's switch sees its own shard only
        groups = [dist.new_group([r]) for r in range(world)]
        group = groups[rank]
    net = DistributedDataParallel(model) if world > 1 else model
    for step in range(STEPS):
        x, y = global_batch(step)
        x, y = x.chunk(world)[rank], y.chunk(world)[rank]
        loss = model.loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_switch(process_group=group)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    return params, model.posterior().clone(), model.switch.t.clone()


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_two_ranks_equal_one_process(pool, opt_name):
    single_params, single_post, single_t = train(opt_name)
    assert not torch.allclose(single_post, torch.full_like(single_post, 1 / N_COPIES), atol=1e-3)
    ranks = pool.values(train, opt_name)
    for params, post, t in ranks:
        assert torch.equal(t, single_t)
        torch.testing.assert_close(post, single_post, rtol=1e-5, atol=1e-6)
        for name, p in params.items():
            torch.testing.assert_close(p, single_params[name], rtol=1e-5, atol=1e-6, msg=name)
    # Every rank holds the same switch, bit for bit (a sum of the same numbers).
    assert torch.equal(ranks[0][1], ranks[1][1])


def test_per_rank_switch_differs(pool):
    """Without the average (each rank in its own group), the ranks' posteriors part: the
    comparison above can fail."""
    _, single_post, _ = train("sgd")
    (_, post0, _), (_, post1, _) = pool.values(train, "sgd", True)
    assert not torch.allclose(post0, post1, atol=1e-4)
    assert not torch.allclose(post0, single_post, atol=1e-4)


def lrs_check(lr_seed_per_rank: bool, copies_per_rank: bool):
    rank = dist.get_rank()
    _, opt = make("sgd", lr_seed=rank if lr_seed_per_rank else 0, n_copies=N_COPIES + (rank if copies_per_rank else 0))
    check_feature_lrs(opt)
    return "agree"


def test_feature_lrs_agree(pool):
    assert pool.values(lrs_check, False, False) == ["agree", "agree"]


def test_different_seeds_caught_on_every_rank(pool):
    for ok, text in pool.run(lrs_check, True, False):
        assert not ok
        assert "RuntimeError: alrao: feature learning rates differ across ranks" in text
        assert "seed every rank alike" in text


def test_different_models_caught_on_every_rank(pool):
    for ok, text in pool.run(lrs_check, False, True):
        assert not ok
        assert "different numbers of learning rates" in text


def test_check_feature_lrs_takes_an_alrao_optimizer():
    model, _ = make("sgd")
    with pytest.raises(TypeError, match="AlraoSGD or alrao.AlraoAdam, got SGD"):
        check_feature_lrs(torch.optim.SGD(model.parameters(), lr=0.1))


def test_no_distributed_leaves_losses_alone():
    losses = torch.tensor([1.0, 2.0])
    assert alrao.distributed.average_copy_losses(losses) is losses
    model, opt = make("sgd")
    check_feature_lrs(opt)  # a no-op without torch.distributed


# A rank that dies (or stops answering) in the middle of training: the other one must
# stop with an error within the process group's timeout, not wait forever.
LOST_RANK = textwrap.dedent(
    """
    import datetime, os, sys, time
    import torch, torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    sys.path.insert(0, {tests!r})
    from test_ddp import global_batch, make
    torch.set_num_threads(1)
    rank, how = int(os.environ["RANK"]), sys.argv[1]
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=5))
    model, opt = make("sgd")
    net = DistributedDataParallel(model)
    for step in range(50):
        x, y = global_batch(step)
        loss = model.loss(net(x.chunk(2)[rank]), y.chunk(2)[rank])
        opt.zero_grad(); loss.backward(); opt.step()
        if rank == 1 and step == 2:  # between DDP's gradient reduce and the switch's
            if how == "killed":
                os._exit(9)
            time.sleep(60)
        model.update_switch()
    print("finished")
    """
)


@pytest.mark.parametrize("how", ["killed", "stalled"])
def test_lost_rank_stops_the_other(how, tmp_path):
    script = tmp_path / "lost_rank.py"
    script.write_text(LOST_RANK.format(tests=os.path.dirname(__file__)))
    env = dict(os.environ, **loopback_env(), MASTER_PORT=str(free_port()), WORLD_SIZE="2")
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), how],
            env=dict(env, RANK=str(r)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    try:
        out, err = procs[0].communicate(timeout=50)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert procs[0].returncode != 0, out + err
    assert "finished" not in out
    assert "Error" in err


def readme_snippet(code: str):
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    model = namespace["model"]
    return model.posterior(), {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_readme_ddp_snippet_runs(pool):
    blocks = python_blocks("Mixed precision, compile, several GPUs")
    snippet = [b for b in blocks if "DistributedDataParallel" in b]
    assert len(snippet) == 1
    (post0, state0), (post1, state1) = pool.values(readme_snippet, snippet[0])
    assert torch.equal(post0, post1)
    assert not torch.allclose(post0, torch.full_like(post0, 0.1), atol=1e-3)
    for name, value in state0.items():
        assert torch.equal(value, state1[name]), name
