"""FSDP2 (``fully_shard``, dim-0 shards as DTensors): 2 gloo processes on CPU train a polarized model exactly
as one process does with the full batch, resume from a distributed checkpoint, and agree on a NaN."""

import copy
import functools
import os
import sys

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import polaropt as po
import spawned

fsdp = pytest.importorskip("torch.distributed.fsdp")
if not hasattr(fsdp, "fully_shard") or not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("needs torch.distributed with gloo and FSDP2's fully_shard", allow_module_level=True)
if sys.platform == "win32":
    pytest.skip("spawned gloo workers are not tested on Windows", allow_module_level=True)

WORLD, STEPS, D, VOCAB, T = 2, 30, 16, 24, 6
CASES = [(m, s) for m in po.MODES for s in po.SCALES if not (m == "normalize" and s == "element")]


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln = nn.LayerNorm(D)
        self.qkv, self.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)

    def forward(self, x):
        q, k, v = self.qkv(self.ln(x)).chunk(3, dim=-1)
        return x + self.proj(F.scaled_dot_product_attention(q, k, v, is_causal=True))


class GPT(nn.Module):
    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(VOCAB, D)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(D, VOCAB, bias=False)
        self.head.weight = self.tok.weight  # tied

    def forward(self, idx):
        x = self.tok(idx)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def build(kind, mode, scale, shard, check="lazy", check_every=100):
    torch.manual_seed(0)
    model = (GPT() if kind == "gpt" else nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))).double()
    po.polarize_model(model, mode=mode, scale=scale)  # polarize first, then shard
    if shard:
        for m in (model.blocks if kind == "gpt" else (model[0], model[2])):
            fsdp.fully_shard(m)
        fsdp.fully_shard(model)
    opt = torch.optim.AdamW(po.param_groups(model, weight_decay=0.01), lr=1e-2)
    po.attach(opt, model, state="rescale", check=check, check_every=check_every, restore=check == "lazy")
    return model, opt


def batch(kind, step, rank=None):
    g = torch.Generator().manual_seed(100 + step)
    if kind == "gpt":
        idx = torch.randint(0, VOCAB, (4, T + 1), generator=g)
        x, y = idx[:, :-1], idx[:, 1:]
    else:
        x, y = torch.randn(8, 8, generator=g, dtype=torch.float64), torch.randn(8, 4, generator=g, dtype=torch.float64)
    if rank is not None:  # each rank its share; FSDP2 averages the gradients, as the full batch's mean does
        world = dist.get_world_size()
        x, y = x.chunk(world)[rank], y.chunk(world)[rank]
    return x, y


def train(model, opt, kind, start, stop, rank=None):
    for step in range(start, stop):
        x, y = batch(kind, step, rank)
        opt.zero_grad()
        out = model(x)
        loss = F.cross_entropy(out.flatten(0, 1), y.flatten()) if kind == "gpt" else F.mse_loss(out, y)
        loss.backward()
        opt.step()


def plain(model):
    """Every weight as a plain tensor (gathered from the shards)."""
    return {k: v.detach().clone() for k, v in po.plain_state_dict(model, full=True).items()}


def spawn(job, tmp_path, world=WORLD, timeout=spawned.TIMEOUT):
    """``job(rank, out_dir)`` on ``world`` gloo ranks; rank 0's result."""
    return spawned.spawn(job, tmp_path, world, timeout)[0]


def _train_every_case(rank, out_dir):
    results = {}
    for kind in ("mlp", "gpt"):
        for mode, scale in CASES:
            model, opt = build(kind, mode, scale, shard=True)
            train(model, opt, kind, 0, STEPS, rank)
            results[(kind, mode, scale)] = plain(model)
            if kind == "gpt":  # the tie holds under FSDP2
                assert model.tok.parametrizations.weight is model.head.parametrizations.weight
    return results


def test_fsdp2_trains_every_mode_and_scale_as_one_process_does(tmp_path):
    sharded = spawn(_train_every_case, tmp_path)
    for kind in ("mlp", "gpt"):
        for mode, scale in CASES:
            model, opt = build(kind, mode, scale, shard=False)
            train(model, opt, kind, 0, STEPS)
            ref = po.plain_state_dict(model)
            got = sharded[(kind, mode, scale)]
            assert set(got) == set(ref)
            for key in ref:  # tensor and column norms span the shards: this checks their all-reduce
                torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-5,
                                           msg=lambda m: f"{kind} {mode} {scale} {key}: {m}")


def _sharded(kind, mode, scale, mesh_shape=None):
    """``build``'s model sharded with ``fully_shard`` (on a 2-D mesh, HSDP, when ``mesh_shape`` is given),
    with an AdamW that has taken one step (so ``state="rescale"`` has moments to multiply), each rank's
    shard of V then moved off the sphere by its own noise."""
    from polaropt.renorm import _targets
    from torch.distributed.device_mesh import init_device_mesh

    torch.manual_seed(0)
    if kind == "value head":  # one output: that V has one row, one rank holds it and the other nothing
        model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    else:
        model = GPT().double()
    po.polarize_model(model, mode=mode, scale=scale)
    mesh = None if mesh_shape is None else init_device_mesh("cpu", mesh_shape, mesh_dim_names=("replicate", "shard"))
    parts = model.blocks if kind == "gpt" else [model[2]]
    for m in [*parts, model]:
        fsdp.fully_shard(m, mesh=mesh) if mesh is not None else fsdp.fully_shard(m)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randint(0, VOCAB, (2, T)) if kind == "gpt" else torch.randn(4, 8, dtype=torch.float64)
    model(x).square().mean().backward()
    opt.step()
    # each shard perturbed by its own noise, alike in both copies (and in every replica of it, under HSDP)
    g = torch.Generator().manual_seed(7 + (dist.get_rank() if mesh is None else mesh.get_local_rank("shard")))
    with torch.no_grad():
        for t in _targets(model):
            v = t.direction.to_local()
            v.add_(torch.randn(v.shape, generator=g, dtype=v.dtype))
    return model, opt


def _renormalize(targets, opt, batched):
    """What ``renormalize_targets(..., state="rescale")`` does, keeping the norms: the batched path or
    the per-tensor reference."""
    from polaropt.renorm import _plan_transport, _renormalize_grouped, _renormalize_reference, _transport

    plan = _plan_transport(opt, targets, "rescale")
    norms = _renormalize_grouped(targets, check=True) if batched else _renormalize_reference(targets)
    with torch.no_grad():
        _transport(opt, plan, norms, "rescale")
    return norms


def _grouped_against_reference(rank, out_dir):
    from polaropt.renorm import _targets
    world = dist.get_world_size()
    cases = [("gpt", "absorb", scale, None) for scale in po.SCALES] + [
        ("gpt", "project", "column", None), ("gpt", "absorb", "column", (1, world)),
        ("gpt", "absorb", "column", (world, 1)), ("gpt", "absorb", "row", (1, world))] + [
        ("value head", "absorb", scale, None) for scale in ("tensor", "column", "row")]
    out = {}
    for case in cases:
        (ma, oa), (mb, ob) = _sharded(*case), _sharded(*case)
        a, b = _targets(ma), _targets(mb)
        moments = [(oa.state[p][k], ob.state[q][k]) for p, q in zip(oa.param_groups[0]["params"],
                                                                    ob.param_groups[0]["params"])
                   for k in ("exp_avg", "exp_avg_sq")]
        before = [x.to_local().clone() for x, _ in moments]
        na, nb = _renormalize(a, oa, batched=True), _renormalize(b, ob, batched=False)
        pairs = list(zip(na, nb)) + [(x.direction, y.direction) for x, y in zip(a, b)] + [
            (x.scale, y.scale) for x, y in zip(a, b)] + moments
        local = [(x.to_local(), y.to_local()) for x, y in pairs]
        # every rank holds the same replicated norms (the all-reduce gave them the same sums); row and
        # element norms stay sharded, each rank its own
        mine = torch.cat([n.to_local().reshape(-1) for n in na if all(p.is_replicate() for p in n.placements)] +
                         [torch.zeros(1, dtype=torch.float64)])
        every = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(every, mine)
        # every rank's verdict, not rank 0's alone: a rank whose shard was divided by other norms differs
        verdict = torch.tensor([float(all(torch.equal(x, y) for x, y in local)),
                                -max(float((x - y).abs().max()) if x.numel() else 0.0 for x, y in local)],
                               dtype=torch.float64)
        dist.all_reduce(verdict, op=dist.ReduceOp.MIN)
        moved = torch.tensor([float(any(not torch.equal(x.to_local(), m) for (x, _), m in zip(moments, before)))])
        dist.all_reduce(moved, op=dist.ReduceOp.MAX)
        out[case] = {"bitwise": bool(verdict[0]), "max_diff": -float(verdict[1]),
                     "ranks_agree": all(torch.equal(e, every[0]) for e in every), "moments_moved": bool(moved)}
    return out


@pytest.mark.parametrize("world", [2, 3])
def test_the_batched_renormalization_of_shards_equals_the_reference(tmp_path, world):
    # the batched path finishes the norms that span the shards (tensor and column) with one all-reduce
    # for every tensor; the reference, tensor by tensor, with one each. On 2 ranks the sum is a + b
    # whatever the buffer: bitwise equal; on more, the ring adds in an order that depends on the
    # position in the buffer (the last bit may differ, the same on every rank). Every scale, a value
    # head (one rank holds its one row, the other nothing), 2-D meshes as HSDP lays them out (one of
    # the two mesh dims of size 1: 4 ranks would be needed for both > 1), and the moments
    # state="rescale" multiplies (checked to have moved). Every rank's shards are compared.
    got = spawn(_grouped_against_reference, tmp_path, world=world)
    for case, r in got.items():
        assert r["ranks_agree"], case
        assert r["moments_moved"], case
        if world == 2 or case[2] in ("row", "element"):
            assert r["bitwise"], case
        assert r["max_diff"] <= 1e-13, (case, r["max_diff"])


def _value_head(shard, rank=None):
    """An MLP ending in one output (a value or reward head): that V has one row, so on 2 ranks one
    shard holds it and the other is empty."""
    out = {}
    for scale in ("tensor", "column", "row"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 1)).double()
        po.polarize_model(model, mode="absorb", scale=scale)
        if shard:
            fsdp.fully_shard(model[2])
            fsdp.fully_shard(model)
        opt = torch.optim.AdamW(po.param_groups(model), lr=1e-2)
        po.attach(opt, model, state="rescale")
        for step in range(5):
            g = torch.Generator().manual_seed(step)
            x, y = torch.randn(8, 8, generator=g, dtype=torch.float64), torch.randn(8, 1, generator=g, dtype=torch.float64)
            if rank is not None:
                x, y = x.chunk(2)[rank], y.chunk(2)[rank]
            opt.zero_grad()
            F.mse_loss(model(x), y).backward()
            opt.step()
        out[scale] = plain(model)
    return out


def _value_head_sharded(rank, out_dir):
    return _value_head(True, rank)


def test_a_layer_with_one_output_renormalizes_under_fsdp2(tmp_path):
    # V of shape (1, 16) sharded on dim 0: DTensor has no in-place division for it by a replicated
    # norm (tensor and column scales raised "in-place operations that require placement changes")
    got = spawn(_value_head_sharded, tmp_path)
    ref = _value_head(False)
    for scale in ref:
        for key in ref[scale]:
            torch.testing.assert_close(got[scale][key], ref[scale][key], rtol=1e-5, atol=1e-5)


def _dcp_job(resume, rank, out_dir):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model, opt = build("gpt", "absorb", "column", shard=True)
    ckpt = os.path.join(out_dir, "ckpt")
    if resume:  # fresh processes, fresh model and optimizer: load step 15, train 15 more
        msd, osd = get_state_dict(model, opt)
        dcp.load({"model": msd, "opt": osd}, checkpoint_id=ckpt)
        set_state_dict(model, opt, model_state_dict=msd, optim_state_dict=osd)
        train(model, opt, "gpt", 15, STEPS, rank)
    else:
        train(model, opt, "gpt", 0, 15, rank)
        msd, osd = get_state_dict(model, opt)
        dcp.save({"model": msd, "opt": osd}, checkpoint_id=ckpt)
        train(model, opt, "gpt", 15, STEPS, rank)
    return plain(model)


def test_distributed_checkpoint_resume_equals_the_uninterrupted_run(tmp_path):
    uninterrupted = spawn(functools.partial(_dcp_job, False), tmp_path)
    resumed = spawn(functools.partial(_dcp_job, True), tmp_path)
    for key, value in uninterrupted.items():
        assert torch.equal(resumed[key], value), key
    # DCP reshards: the checkpoint of 2 ranks resumes on 1. One full batch sums its gradient in another
    # order than the mean of two halves; 15 Adam steps amplify that rounding to ~1e-10 (measured), while
    # a wrongly resharded tensor would be off by O(1)
    on_one = spawn(functools.partial(_dcp_job, True), tmp_path, world=1)
    for key, value in uninterrupted.items():
        torch.testing.assert_close(on_one[key], value, rtol=1e-7, atol=1e-9, msg=lambda m: f"{key}: {m}")


def step_on_every_rank(model, opt, before, call=None) -> dict:
    """Step (or ``call``); gather on every rank whether it raised FloatingPointError, and whether the
    weights moved."""
    try:
        (call or opt.step)()
        raised = False
    except FloatingPointError:
        raised = True
    flags = [None] * WORLD
    dist.all_gather_object(flags, raised)
    after = plain(model)
    return {"raised": flags, "unchanged": all(torch.equal(after[k], before[k]) for k in before)}


def _nan_on_one_rank(rank, out_dir, check="step"):
    model, opt = build("mlp", "absorb", "tensor", shard=True, check=check)
    train(model, opt, "mlp", 0, 2, rank)
    po.check_finite(opt)  # lazy: a clean read, the snapshot is taken here (a no-op with check="step")
    before = plain(model)
    x, y = batch("mlp", 2, rank)
    if rank == 1:
        x = x.clone()
        x[0, 0] = float("nan")  # only rank 1's data is bad
    opt.zero_grad()
    F.mse_loss(model(x), y).backward()
    if check == "step":
        return step_on_every_rank(model, opt, before)
    opt.step()  # lazy: no error yet, the NaN is written; the flag is global, so every rank sees it
    return step_on_every_rank(model, opt, before, call=lambda: po.check_finite(opt))


def test_a_nan_on_one_rank_makes_every_rank_raise_and_nothing_is_written(tmp_path):
    result = spawn(_nan_on_one_rank, tmp_path)
    assert result["raised"] == [True] * WORLD
    assert result["unchanged"]


def _nan_on_one_rank_lazy(rank, out_dir):
    return _nan_on_one_rank(rank, out_dir, check="lazy")


def test_a_nan_on_one_rank_makes_every_rank_raise_at_the_lazy_read_and_restore(tmp_path):
    result = spawn(_nan_on_one_rank_lazy, tmp_path)
    assert result["raised"] == [True] * WORLD
    assert result["unchanged"]  # every rank restored its shards of the snapshot


def _polarize_after_sharding(rank, out_dir):
    out = {}
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    fsdp.fully_shard(model)
    with torch.no_grad():
        model(torch.randn(2, 4))  # the root keeps its weights unsharded (plain Parameters) after a forward
    for what, call in (("model", lambda: po.polarize_model(model)), ("root", lambda: po.polarize(model, "0.weight"))):
        try:
            call()
            out[what] = "no error"
        except ValueError as e:
            out[what] = str(e)
    po.polarize(model[0])  # a child is not an FSDP module itself: caught when the model is used
    try:
        po.param_groups(model)
        out["unsharded leaf"] = "no error"
    except ValueError as e:
        out["unsharded leaf"] = str(e)
    return out


def test_polarize_after_fully_shard_is_refused(tmp_path):
    messages = spawn(_polarize_after_sharding, tmp_path)
    assert "already sharded with FSDP2's fully_shard: polarize (polarize_model) first" in messages["model"]
    assert "already sharded with FSDP2's fully_shard: polarize first" in messages["root"]
    assert "were polarized after fully_shard" in messages["unsharded leaf"]


def _rank_zero_alone_copies(rank, out_dir):
    model, opt = build("mlp", "absorb", "tensor", shard=True)  # lazy check: a read is a collective
    train(model, opt, "mlp", 0, 3, rank)
    if rank == 0:  # what one rank alone does (a model to evaluate, built and loaded): no read may start
        other = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)).double()
        po.polarize_model(other)
        other.load_state_dict(copy.deepcopy(other.state_dict()))
    train(model, opt, "mlp", 3, 6, rank)
    po.check_finite(opt)  # every rank reads here, together
    return plain(model)


def assert_as_one_process(got, scale, steps):
    """``got`` (a sharded absorb MLP's plain weights) is what one process trains unsharded."""
    model, opt = build("mlp", "absorb", scale, shard=False)
    train(model, opt, "mlp", 0, steps)
    ref = po.plain_state_dict(model)
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-5)


def test_what_one_rank_alone_polarizes_or_loads_starts_no_collective(tmp_path):
    # 0.3.0 read at rank 0's next step (a collective rank 1 never joined): the ranks hung
    got = spawn(_rank_zero_alone_copies, tmp_path, timeout=120)
    assert_as_one_process(got, "tensor", steps=6)


def _rank_zero_alone_copies_compiled(rank, out_dir):
    model, opt = build("mlp", "absorb", "row", shard=True, check_every=3)

    def step(x, y):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()

    step(*batch("mlp", 0, rank))  # eager: the optimizer state and polaropt's caches exist
    compiled = torch.compile(step, backend="eager")
    for k in range(8):  # dynamo's recompile limit is 8
        if rank == 0:  # an eval model, on one rank alone, between compiled steps
            po.polarize_model(nn.Sequential(nn.Linear(4, 4)))
        for t in range(3):
            compiled(*batch("mlp", 1 + 3 * k + t, rank))
    po.check_finite(opt)
    return plain(model)


def test_what_one_rank_alone_polarizes_recompiles_nothing_under_torch_compile(tmp_path):
    # 0.3.0 recompiled rank 0's hooks at every such event (they read a process-wide counter); past the
    # recompile limit they ran eagerly there alone, and the periodic read (a collective) hung
    got = spawn(_rank_zero_alone_copies_compiled, tmp_path, timeout=150)
    assert_as_one_process(got, "row", steps=25)


def _error_on_one_rank_in_a_with_block(rank, out_dir):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    po.polarize_model(model, mode="absorb", scale="tensor")
    fsdp.fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with po.attach(opt, model):
        train(model, opt, "mlp", 0, 2, rank)
        if rank == 1:
            raise KeyError("a bad batch on rank 1")
        train(model, opt, "mlp", 2, 4, rank)  # rank 0 goes on, and waits in FSDP2's next all-gather


def test_an_error_on_one_rank_in_a_with_block_is_raised_not_hung(tmp_path):
    # 0.3.0 read (a collective) on the way out of the with block, on rank 1 alone: its error became a hang
    with pytest.raises(Exception, match="a bad batch on rank 1"):
        spawned.spawn(_error_on_one_rank_in_a_with_block, tmp_path, timeout=60)


def _restore_after_an_eval_forward(rank, out_dir):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    po.polarize_model(model, mode="absorb", scale="row", trainable_scale=False)
    fsdp.fully_shard(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    po.attach(opt, model, restore=True)
    x, y = torch.randn(4, 8, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64)
    opt.zero_grad()
    F.mse_loss(model(x), y).backward()
    opt.step()
    with torch.no_grad():
        model(x)  # the root now holds its weights unsharded
    po.check_finite(opt)  # where one logs: the snapshot
    before = plain(model)
    opt.zero_grad()
    F.mse_loss(model(x), y * float("nan")).backward()
    opt.step()
    return step_on_every_rank(model, opt, before, call=lambda: po.check_finite(opt))


def test_a_restore_after_an_eval_forward_writes_into_the_shards(tmp_path):
    # 0.3.0 snapshotted the unsharded fixed scales, whose storage FSDP2 frees after the next backward:
    # the restore wrote into freed memory (a segfault)
    result = spawn(_restore_after_an_eval_forward, tmp_path, timeout=60)
    assert result["raised"] == [True] * WORLD and result["unchanged"]


def _one_sharded_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4)).double()
    po.polarize_model(model, mode="absorb")
    fsdp.fully_shard(model)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def _nan_in_one_shard(rank, out_dir):
    model, opt = _one_sharded_layer()
    out = {}
    for check in ("step", "lazy"):
        handle = po.attach(opt, model, check=check, restore=check == "lazy")
        x, y = torch.randn(2, 8, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
        if rank == 1:
            y = y.clone()
            y[0, 3] = float("nan")  # only output row 3's gradient: a row that only rank 1's shard holds
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        before = plain(model)
        if check == "step":
            out[check] = step_on_every_rank(model, opt, before)
        else:  # the step writes the NaN into rank 1's shard; the read is global and restores it
            opt.step()
            out[check] = step_on_every_rank(model, opt, before, call=lambda: po.check_finite(opt))
        handle.remove()
    return out


def test_a_nan_in_one_rank_shard_only_makes_every_rank_raise(tmp_path):
    result = spawn(_nan_in_one_shard, tmp_path)
    for check in ("step", "lazy"):
        assert result[check]["raised"] == [True] * WORLD and result[check]["unchanged"], check


def _nan_in_one_shard_default_check(rank, out_dir):
    """The default attach (no snapshot) under FSDP2: a NaN that reaches rank 1's shard alone."""
    model, opt = _one_sharded_layer()
    po.attach(opt, model)
    x, y = torch.randn(2, 8, dtype=torch.float64), torch.randn(2, 4, dtype=torch.float64)
    if rank == 1:
        y = y.clone()
        y[0, 3] = float("nan")  # only output row 3's gradient: a row that only rank 1's shard holds
    opt.zero_grad()
    F.mse_loss(model(x), y).backward()
    opt.step()  # no error and no sync on the step
    out = {}
    for name, read in (("check_finite", lambda: po.check_finite(opt)), ("state_dict", opt.state_dict)):
        try:
            read()  # a collective: every rank reads, and every rank raises
            out[name] = None
        except FloatingPointError as e:
            out[name] = str(e)
    out["shard_finite"] = bool(torch.isfinite(po.direction_of(model[0]).to_local()).all())
    return out


def test_the_default_check_finds_a_nan_in_one_rank_shard_on_every_rank(tmp_path):
    r0, r1 = spawned.spawn(_nan_in_one_shard_default_check, tmp_path, world=WORLD, timeout=60)
    for r in (r0, r1):
        for read in ("check_finite", "state_dict"):
            assert r[read] is not None and "Nothing was restored" in r[read], (read, r[read])
            assert "0.parametrizations.weight.original" in r[read]
    assert r0["shard_finite"] and not r1["shard_finite"]  # nothing restored: the NaN stays in rank 1's shard


def _uneven_normalize_column(rank, out_dir):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3)).double()  # 5 output channels over 2 ranks: uneven shards
    po.polarize_model(model, mode="normalize", scale="column")
    fsdp.fully_shard(model)
    return {"full": plain(model), "sharded_type": type(po.plain_state_dict(model)["0.weight"]).__name__}


def test_plain_export_of_uneven_shards(tmp_path):
    result = spawn(_uneven_normalize_column, tmp_path)
    torch.manual_seed(0)
    ref = nn.Sequential(nn.Conv2d(3, 5, 3)).double()
    po.polarize_model(ref, mode="normalize", scale="column")
    torch.testing.assert_close(result["full"]["0.weight"], ref[0].weight.detach(), rtol=1e-14, atol=1e-15)
    assert result["sharded_type"] == "DTensor"


def _muon_mlp(shard, normuon):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    if shard:
        for m in (model[0], model[2], model[4]):
            fsdp.fully_shard(m)
        fsdp.fully_shard(model)
    hidden = [model[0].weight, model[2].weight]
    rest = [p for p in model.parameters() if all(p is not q for q in hidden)]
    opts = [po.Muon(hidden, lr=0.02, weight_decay=0.01, backend="polar-express", ns_steps=8, normuon=normuon),
            torch.optim.AdamW(rest, lr=1e-2)]
    return model, opts


def _train_muon(model, opts, rank=None, start=0, stop=10):
    for step in range(start, stop):
        x, y = batch("mlp", step, rank)
        for o in opts:
            o.zero_grad()
        F.mse_loss(model(x), y).backward()
        for o in opts:
            o.step()


def _muon_sharded(rank, out_dir):
    out = {}
    for normuon in (False, True):
        model, opts = _muon_mlp(True, normuon)
        _train_muon(model, opts, rank)
        out[normuon] = {k: v.full_tensor().detach().clone() for k, v in model.state_dict().items()}
    return out


def test_muon_under_fsdp2_orthogonalizes_whole_matrices_as_one_process_does(tmp_path):
    # a dim-0 shard orthogonalized alone is not Muon: each rank's half of a 16 x 16 matrix would get
    # orthonormal rows of its own, and the run would drift from the one-process run at the first step
    sharded = spawn(_muon_sharded, tmp_path)
    for normuon in (False, True):
        model, opts = _muon_mlp(False, normuon)
        _train_muon(model, opts)
        for key, ref in model.state_dict().items():
            torch.testing.assert_close(sharded[normuon][key], ref, rtol=1e-5, atol=1e-5,
                                       msg=lambda m: f"normuon={normuon} {key}: {m}")


def _compose_muon(rank, out_dir):
    model, _ = _muon_mlp(True, False)
    opt = po.compose(model, direction="muon", radial="none", lr=0.02, weight_decay=0.01,
                     direction_options={"backend": "polar-express", "ns_steps": 8})
    _train_muon(model, [opt], rank)
    sd = copy.deepcopy(opt.state_dict())  # a checkpoint of the sharded optimizer state, read on every rank
    return {"weights": {k: v.full_tensor().detach().clone() for k, v in model.state_dict().items()},
            "momentum": [st["momentum_buffer"].full_tensor() for st in sd["optimizers"][0]["state"].values()]}


def test_compose_on_a_sharded_model_trains_as_one_process(tmp_path):
    # the plain-weight cells (radial='none') on a model already sharded with fully_shard: po.Muon gathers each
    # update whole; the polar cells polarize first, so they need polarize -> fully_shard -> optimizer by hand
    sharded = spawn(_compose_muon, tmp_path)
    model, _ = _muon_mlp(False, False)
    opt = po.compose(model, direction="muon", radial="none", lr=0.02, weight_decay=0.01,
                     direction_options={"backend": "polar-express", "ns_steps": 8})
    _train_muon(model, [opt])
    for key, ref in model.state_dict().items():
        torch.testing.assert_close(sharded["weights"][key], ref, rtol=1e-5, atol=1e-5, msg=lambda m: f"{key}: {m}")
    for got, st in zip(sharded["momentum"], opt.optimizers[0].state.values()):
        torch.testing.assert_close(got, st["momentum_buffer"], rtol=1e-5, atol=1e-5)


def _muon_dcp_job(resume, normuon, rank, out_dir):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model, opts = _muon_mlp(True, normuon)
    ckpt = os.path.join(out_dir, f"muon-ckpt-{normuon}")

    if resume:  # fresh processes, model and optimizers: load step 5, train 5 more
        msd, osd = get_state_dict(model, opts)
        dcp.load({"model": msd, "opt": osd}, checkpoint_id=ckpt)
        set_state_dict(model, opts, model_state_dict=msd, optim_state_dict=osd)
    else:
        _train_muon(model, opts, rank, 0, 5)
        msd, osd = get_state_dict(model, opts)
        dcp.save({"model": msd, "opt": osd}, checkpoint_id=ckpt)
    _train_muon(model, opts, rank, 5, 10)
    return {k: v.full_tensor().detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("normuon", [False, True])
def test_po_muon_resumes_from_a_distributed_checkpoint_as_the_uninterrupted_run(tmp_path, normuon):
    # the momentum buffers are sharded like their parameters; NorMuon's row statistics are kept whole on every
    # rank (a plain tensor in the state), which DCP saves as replicated
    uninterrupted = spawn(functools.partial(_muon_dcp_job, False, normuon), tmp_path)
    resumed = spawn(functools.partial(_muon_dcp_job, True, normuon), tmp_path)
    for key, value in uninterrupted.items():
        assert torch.equal(resumed[key], value), key


SHARD_CELLS = [("adamw", "absorb", "tensor"), ("muon", "retract", "row"), ("adamw", "multipliers", "out"),
               ("adamw", "fixed", "tensor"), ("adamw", "fixed", "row"), ("muon", "none", "out"),
               ("muon", "none", "scion")]  # the last: Scion whole (its oracles on the head, embedding and vectors)


def _shard_gpt(model):
    for b in model.blocks:
        fsdp.fully_shard(b)
    fsdp.fully_shard(model)


def _compose_cell(cell, shard):
    torch.manual_seed(0)
    model = GPT().double()
    direction, radial, scale = cell
    options = {"backend": "polar-express", "ns_steps": 8} if direction == "muon" else {}
    rest = {"rest": "scion", "scale": "out"} if scale == "scion" else {"scale": scale}
    opt = po.compose(model, direction=direction, radial=radial, lr=1e-2, weight_decay=0.01,
                     direction_options=options, shard=_shard_gpt if shard else None, **rest)
    return model, opt


def _compose_cells_sharded(rank, out_dir):
    out = {}
    for cell in SHARD_CELLS:
        model, opt = _compose_cell(cell, True)
        train(model, opt, "gpt", 0, 6, rank)
        out[cell] = plain(model)
    return out


def test_compose_shard_trains_every_kind_of_cell_as_one_process(tmp_path):
    """compose(..., shard=fn): the cell parametrizes the model, fn shards it, then the optimizers are built on the
    sharded parameters; 2 ranks (each half the batch) train as one process with the whole batch, on a GPT with a tied
    head: a polar cell (Liu's absorb), Muown's (retract × row, Muon gathering whole matrices), the multipliers,
    Hyperball (a fixed norm per tensor and per row) and a plain Muon cell."""
    sharded = spawn(_compose_cells_sharded, tmp_path, timeout=240)
    for cell in SHARD_CELLS:
        model, opt = _compose_cell(cell, False)
        train(model, opt, "gpt", 0, 6)
        ref = plain(model)
        assert sharded[cell].keys() == ref.keys()
        for key in ref:
            torch.testing.assert_close(sharded[cell][key], ref[key], rtol=1e-5, atol=1e-6,
                                       msg=lambda m: f"{cell} {key}: {m}")


def _compose_refusals(rank, out_dir):
    out = {}

    def fails(m):  # shards, then raises: the model cannot be put back
        _shard_gpt(m)
        raise OSError("disk full")
    try:
        po.compose(GPT().double(), radial="absorb", lr=1e-2, shard=fails)
        out["failed shard"] = "no error"
    except RuntimeError as e:
        out["failed shard"] = str(e)
    model = GPT().double()
    _shard_gpt(model)
    for key, kwargs in {"polar": dict(radial="absorb"), "twice": dict(radial="none", shard=_shard_gpt),
                        "compile": dict(radial="fixed", scale="tensor", compile=True)}.items():
        try:
            po.compose(model, lr=1e-2, **kwargs)
            out[key] = "no error"
        except ValueError as e:
            out[key] = str(e)
    return out


def test_compose_on_a_sharded_model_refuses_what_must_come_before_fully_shard(tmp_path):
    messages = spawn(_compose_refusals, tmp_path)
    assert "radial='absorb' parametrizes it, which must come first: pass the unsharded model and shard=" in \
        messages["polar"]
    assert "already sharded with FSDP2's fully_shard: pass it unsharded with shard=" in messages["twice"]
    assert "compile=True steps whole local tensors; under FSDP2" in messages["compile"]
    assert "failed once shard= had started sharding the model (OSError: disk full); fully_shard cannot be undone" in \
        messages["failed shard"]
