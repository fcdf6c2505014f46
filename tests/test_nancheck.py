"""attach(check="lazy"): nothing on the step, the parameters read every k steps, and the snapshot a
failed read restores; and the compiled training step (no graph break and no recompile over plain
weights, equal to eager)."""

import copy
import gc
import shutil

import pytest
import torch
from torch import nn

import polaropt as po


class TinyLM(nn.Module):
    """Token embedding tied to the head, a fused qkv-like Linear, an MLP: the shapes a GPT has."""

    def __init__(self, vocab=11, d=8):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.qkv = nn.Linear(d, 3 * d)
        self.up, self.down = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, idx):
        x = self.tok(idx)
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        x = x + torch.softmax(q @ k.transpose(-1, -2) / 3, dim=-1) @ v
        x = x + self.down(torch.relu(self.up(x)))
        return self.head(x)


def attach_restoring(opt, model, **kw):
    """``po.attach`` with ``restore=True`` for the lazy check: the snapshot these tests are about is opt-in
    (the default keeps no copy and restores nothing; tests/test_guard_default.py)."""
    kw.setdefault("restore", kw.get("check", "lazy") == "lazy")
    return po.attach(opt, model, **kw)


def build(mode="absorb", seed=0, **attach):
    torch.manual_seed(seed)
    model = TinyLM()
    po.polarize_model(model, scale="row", mode=mode)
    opt = torch.optim.AdamW(po.param_groups(model, weight_decay=0.1), lr=1e-2)
    handle = attach_restoring(opt, model, **attach)
    return model, opt, handle


def batch(t):
    g = torch.Generator().manual_seed(t)
    return torch.randint(0, 11, (4, 6), generator=g)


def step(model, opt, t, poison=False):
    opt.zero_grad()
    idx = batch(t)
    logits = model(idx)
    loss = nn.functional.cross_entropy(logits.flatten(0, 1), idx.flatten())
    loss.backward()
    if poison:
        model.down.bias.grad[0] = float("nan")
    opt.step()
    return loss.detach()


def snapshot(model, opt):
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    state = {(i, k): v.clone() for i, p in enumerate(opt.param_groups[0]["params"] + opt.param_groups[-1]["params"])
             for k, v in opt.state[p].items() if torch.is_tensor(v)}
    return params, state


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lazy_equals_step_check_when_nothing_goes_wrong():
    a, oa, _ = build(check="lazy", check_every=3)
    b, ob, _ = build(check="step")
    for t in range(10):
        assert torch.equal(step(a, oa, t), step(b, ob, t))
    assert same(snapshot(a, oa)[0], snapshot(b, ob)[0])


@pytest.mark.parametrize("mode", ["absorb", "project", "normalize", "free"])
def test_a_nan_lives_at_most_check_every_steps_then_everything_is_restored(mode):
    model, opt, _ = build(mode, check="lazy", check_every=4)
    for t in range(4):
        step(model, opt, t)  # the read after step 4 is clean: the snapshot is taken there
    params, state = snapshot(model, opt)
    step(model, opt, 4)
    step(model, opt, 5, poison=True)  # no error yet: no host sync on the step
    assert not torch.isfinite(model.down.bias).all()  # the bad value lives (AdamW wrote it)
    step(model, opt, 6)
    with pytest.raises(FloatingPointError, match=r"last 4 step\(s\) of AdamW \(steps 5–8.*tensors hold one now "
                                                 r"\(.*restored to step 4, the last snapshot"):
        step(model, opt, 7)
    after_params, after_state = snapshot(model, opt)
    assert same(after_params, params) and same(after_state, state)
    assert po.direction_of(model.head) is po.direction_of(model.tok)  # the tie holds
    step(model, opt, 8)  # training goes on from the restored state
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_state_dict_read_moves_neither_the_snapshot_nor_the_schedule():
    """opt.state_dict() only checks: a DDP job saving on rank 0 alone keeps its ranks' periodic reads
    and snapshots the same, clean or not (0.3.0 restarted rank 0's schedule there and took its own snapshot, so the
    ranks raised at different steps and restored different states)."""
    model, opt, handle = build(check="lazy", check_every=4)
    lazy = po.steps._controls[opt].lazy
    for t in range(4):
        step(model, opt, t)
    taken = lazy.snapshot
    step(model, opt, 4)
    opt.state_dict()
    assert lazy.snapshot is taken and lazy.good_at == 4
    for t in range(5, 8):
        step(model, opt, t)
    assert lazy.good_at == 8  # four steps after the last periodic read, as without the state_dict()
    step(model, opt, 8)
    step(model, opt, 9, poison=True)
    with pytest.raises(FloatingPointError, match=r"last 2 step\(s\).*restored to step 8"):
        opt.state_dict()  # a bad one still restores and raises
    step(model, opt, 10)
    step(model, opt, 11)
    assert lazy.good_at == 12  # nor a failed one: it restored, and the periodic read came at step 12 as planned
    po.check_finite(opt)  # check_finite takes a snapshot (under torch.compile it is the only read)
    assert lazy.good_at == lazy.steps


def test_state_dict_and_check_finite_read_the_flag():
    model, opt, _ = build(check="lazy", check_every=1000)
    step(model, opt, 0)
    po.check_finite(opt)  # clean: snapshot taken after step 1
    params, _ = snapshot(model, opt)
    step(model, opt, 1, poison=True)
    with pytest.raises(FloatingPointError, match="restored to step 1"):
        opt.state_dict()  # a checkpoint never holds an unreported NaN
    assert same(snapshot(model, opt)[0], params)
    step(model, opt, 2, poison=True)
    with pytest.raises(FloatingPointError, match="restored to step 1"):
        po.check_finite(opt)
    opt.state_dict()  # the flag was cleared by the restore


def test_removing_the_handle_reads_the_flag_one_last_time():
    model, opt, handle = build(check="lazy", check_every=1000)
    step(model, opt, 0, poison=True)
    with pytest.raises(FloatingPointError):
        handle.remove()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert not opt._optimizer_step_pre_hooks  # detached all the same
    step(model, opt, 1)


def test_leaving_a_with_block_by_an_exception_detaches_without_the_last_read(monkeypatch):
    # the read is a collective under FSDP2: a rank leaving by its own error must not start one alone
    torch.manual_seed(0)
    model = TinyLM()
    po.polarize_model(model, scale="row", mode="absorb")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with attach_restoring(opt, model, check_every=1000) as handle:
        lazy = po.steps._controls[opt].lazy
        step(model, opt, 0)
    assert not opt._optimizer_step_pre_hooks
    reads = []
    with pytest.raises(KeyError, match="the data loader"):
        with attach_restoring(opt, model, check_every=1000) as handle:
            lazy = po.steps._controls[opt].lazy
            monkeypatch.setattr(lazy, "read", lambda *a, **k: reads.append(1))
            step(model, opt, 1)
            raise KeyError("the data loader failed")
    assert reads == [] and not opt._optimizer_step_pre_hooks  # the error, unchanged; detached all the same
    handle.remove()  # a second remove is a no-op


def test_a_nan_written_into_v_is_caught_at_the_read():
    model, opt, _ = build(check="lazy", check_every=2)
    step(model, opt, 0)
    step(model, opt, 1)
    params, _ = snapshot(model, opt)
    with torch.no_grad():
        po.direction_of(model.up)[3, 1] = float("inf")  # not through a gradient
    step(model, opt, 2)
    with pytest.raises(FloatingPointError, match=r"steps 3–4.*restored to step 2"):
        step(model, opt, 3)
    assert same(snapshot(model, opt)[0], params)


def _syncs_and_checks(model, opt, t):
    """Host syncs (``_local_scalar_dense``: ``.item()``/``bool()``) and sums that one ``opt.step()``
    dispatches (its hooks included)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(func.__name__)
            return func(*args, **(kwargs or {}))

    opt.zero_grad()
    idx = batch(t)
    nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten()).backward()
    with Count() as c:
        opt.step()
    return sum(op.startswith("_local_scalar_dense") for op in c.ops), sum(op.startswith("sum") for op in c.ops)


def _sgd(**attach):
    """SGD with momentum: unlike torch's Adam on CPU (``.item()`` of its step counts), it never syncs."""
    torch.manual_seed(0)
    model = TinyLM()
    po.polarize_model(model, scale="row", mode="absorb")
    opt = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    attach_restoring(opt, model, **attach)
    return model, opt


def test_a_lazy_step_has_no_host_sync_and_no_finite_check():
    model, opt = _sgd(check="lazy", check_every=3)
    step(model, opt, 0)
    assert _syncs_and_checks(model, opt, 1) == (0, 0)  # between reads: the step and its renormalization only
    syncs, _ = _syncs_and_checks(model, opt, 2)  # the third step reads
    assert syncs >= 1
    model, opt = _sgd(check="step")
    syncs, checks = _syncs_and_checks(model, opt, 0)
    assert syncs >= 2 and checks >= len(list(model.parameters()))  # every gradient; then s and V


def test_attach_to_a_model_that_already_holds_a_nan_is_refused():
    torch.manual_seed(0)
    model = TinyLM()
    po.polarize_model(model, scale="row", mode="absorb")
    with torch.no_grad():
        po.direction_of(model.qkv)[0, 0] = float("nan")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with pytest.raises(FloatingPointError, match=r"NaN or Inf at attach: 1 tensor holds one now \(qkv\.parametrizations\.weight\.original1\)\. "
                                                 r"Nothing was restored"):
        attach_restoring(opt, model)
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_state_dict_pre_hooks  # nothing left behind
    with torch.no_grad():
        po.direction_of(model.qkv)[0, 0] = 1.0
    attach_restoring(opt, model)  # fixed: attaches once
    step(model, opt, 0)
    n = po.direction_of(model.qkv).norm(dim=1)
    torch.testing.assert_close(n, torch.ones_like(n))


def test_a_huge_finite_value_is_not_a_false_alarm():
    model, opt, _ = build(check="lazy")
    with torch.no_grad():
        model.up.bias.fill_(3e38)  # finite; the sum over the tensor overflows float32
    po.check_finite(opt)  # confirmed tensor by tensor: nothing non-finite


def test_check_settings_are_validated():
    model, opt, _ = build(check="lazy")
    with pytest.raises(ValueError, match=r"unknown check 'later'; valid choices are 'lazy', 'step'"):
        attach_restoring(opt, model, check="later")
    with pytest.raises(ValueError, match=r"check_every must be a positive int .*got 0"):
        attach_restoring(opt, model, check_every=0)
    with pytest.raises(ValueError, match=r"already attached with check='lazy', check_every=100.*got check='step'"):
        attach_restoring(opt, model, check="step")


def test_a_load_is_the_new_point_to_go_back_to():
    model, opt, _ = build(check="lazy", check_every=1000)
    for t in range(3):
        step(model, opt, t)
    saved = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}, opt.state_dict()
    for t in range(3, 6):
        step(model, opt, t)
    po.check_finite(opt)  # a snapshot after step 6
    model.load_state_dict(saved[0], strict=False)  # resume from step 3 (the polar settings are unchanged)
    opt.load_state_dict(saved[1])
    step(model, opt, 6, poison=True)
    with pytest.raises(FloatingPointError):
        po.check_finite(opt)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved[0].items())  # step 3, not step 6


class Wrapper(nn.Module):
    """What DistributedDataParallel looks like from here: the model as ``.module``."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args):
        return self.module(*args)


@pytest.mark.parametrize("through", ["a wrapper's module", "a part"])
def test_a_load_past_the_attached_module_is_noticed_too(through):
    """0.3.0 noticed only a load of the attached module itself: after ``ddp.module.load_state_dict``
    (or ``model.up.load_state_dict``) a later NaN restored the weights from before the load."""
    torch.manual_seed(0)
    model = TinyLM()
    po.polarize_model(model, scale="row", mode="absorb")
    attached = Wrapper(model) if through == "a wrapper's module" else model
    opt = torch.optim.AdamW(attached.parameters(), lr=1e-2)
    attach_restoring(opt, attached, check_every=1000)
    for t in range(3):
        step(model, opt, t)
    loads_into = model if through == "a wrapper's module" else model.up
    saved = copy.deepcopy(loads_into.state_dict())
    for t in range(3, 6):
        step(model, opt, t)
    po.check_finite(opt)  # a snapshot after step 6
    loads_into.load_state_dict(saved)
    step(model, opt, 6)  # the loaded state is read before this step, and is the new snapshot
    step(model, opt, 7, poison=True)
    with pytest.raises(FloatingPointError, match="restored to step 6"):
        po.check_finite(opt)
    now = loads_into.state_dict()
    assert all(torch.equal(now[k], v) for k, v in saved.items() if torch.is_tensor(v))


def test_a_load_into_a_module_added_after_attach_is_noticed():
    """The model grows after attach (a new part, in a new param group): a load into that part is the new
    point to go back to, like a load into a part that was there at attach (f302bf9 hooked only those)."""
    torch.manual_seed(0)
    model = TinyLM()
    po.polarize_model(model, scale="row", mode="absorb")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    attach_restoring(opt, model, check_every=1000)
    model.extra = nn.Linear(8, 8)  # used by no forward: only its load matters here
    po.polarize_model(model.extra, scale="row", mode="absorb")
    opt.add_param_group({"params": list(model.extra.parameters())})
    step(model, opt, 0)  # the grown group starts a read
    saved = copy.deepcopy(model.extra.state_dict())
    with torch.no_grad():
        model.extra.parametrizations.weight.original1.mul_(-1)  # a state that is not the saved one
    for t in range(1, 3):
        step(model, opt, t)
    po.check_finite(opt)  # a snapshot after step 3, with the sign flipped
    model.extra.load_state_dict(saved)
    step(model, opt, 3)
    step(model, opt, 4, poison=True)
    with pytest.raises(FloatingPointError, match="restored to step 3"):
        po.check_finite(opt)
    now = model.extra.state_dict()
    assert all(torch.equal(now[k], v) for k, v in saved.items() if torch.is_tensor(v))


@pytest.mark.parametrize("loaded", ["clean", "with a NaN"])
def test_a_part_loaded_then_added_is_read_before_it_moves(loaded):
    """Fine-tuning: a head loaded from a checkpoint, then given to the optimizer. Its new param group
    is read before the step (d47f687 read it after, and a NaN loaded there was stepped on, then
    reported as one that entered in training, with the rest of the model rolled back)."""
    torch.manual_seed(0)
    model = TinyLM()
    po.polarize_model(model, scale="row", mode="absorb")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    attach_restoring(opt, model, check_every=1000)
    for t in range(3):
        step(model, opt, t)
    before, _ = snapshot(model, opt)
    model.extra = nn.Linear(8, 8)
    po.polarize_model(model.extra, scale="row", mode="absorb")
    saved = copy.deepcopy(model.extra.state_dict())
    if loaded == "with a NaN":
        saved["bias"][0] = float("nan")
    model.extra.load_state_dict(saved)  # before the optimizer knows it
    opt.add_param_group({"params": list(model.extra.parameters())})
    if loaded == "clean":
        step(model, opt, 3)
        assert po.steps._controls[opt].lazy.good_at == 3  # the snapshot holds the loaded head
        return
    with pytest.raises(FloatingPointError, match=r"in parameters added since the last clean read: 1 tensor holds one now \(extra\.bias\)\. "
                                                 "Nothing was restored"):
        step(model, opt, 3)
    now = snapshot(model, opt)[0]
    assert all(torch.equal(now[k], v) for k, v in before.items())  # the rest of the model was not rolled back
    with torch.no_grad():
        model.extra.bias.zero_()  # fixed: the next step reads it, snapshots, and goes on
    step(model, opt, 3)
    assert po.steps._controls[opt].lazy.good_at == 3


def test_a_kept_handle_keeps_nothing_of_a_dropped_optimizer():
    import weakref
    model = TinyLM()
    po.polarize_model(model, scale="row", mode="absorb")

    def hooks():
        return sum(len(m._load_state_dict_post_hooks) for m in model.modules())
    before, handles, gone = hooks(), [], []
    for _ in range(3):  # a new optimizer per phase; the handles kept on a trainer
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        handles.append(attach_restoring(opt, model))
        step(model, opt, 0)
        gone.append(weakref.ref(po.steps._controls[opt].lazy))
        del opt
    gc.collect()
    assert hooks() == before and all(ref() is None for ref in gone)  # no hook, no snapshot left
    for h in handles:
        h.remove()  # a no-op now
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    finalizers = len(weakref.finalize._registry)
    for _ in range(20):  # attach and remove again and again on a live optimizer: nothing piles up
        with attach_restoring(opt, model):
            pass
    assert hooks() == before and len(weakref.finalize._registry) <= finalizers


def test_an_optimizer_dropped_without_remove_takes_its_load_hooks_along():
    model = TinyLM()
    po.polarize_model(model, scale="row", mode="absorb")

    def hooks():
        return sum(len(m._load_state_dict_post_hooks) for m in model.modules())
    before = hooks()
    for _ in range(5):
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        attach_restoring(opt, model)
        assert hooks() > before
        del opt
        gc.collect()
        assert hooks() == before
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    attach_restoring(opt, model).remove()
    assert hooks() == before


def test_recovering_from_an_unnoticed_nan_by_loading_a_checkpoint():
    model, opt, _ = build(check="lazy", check_every=1000)
    step(model, opt, 0)
    saved = ({k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)},
             copy.deepcopy(opt.state_dict()))  # torch's state_dict shares the live moments
    step(model, opt, 1, poison=True)  # the loss shows NaN before any read
    model.load_state_dict(saved[0], strict=False)  # the optimizer half still holds the NaN: no error yet
    opt.load_state_dict(saved[1])
    step(model, opt, 2)  # the loaded state is read before this step, and is the new snapshot
    step(model, opt, 3, poison=True)
    with pytest.raises(FloatingPointError, match="restored to step 2"):
        po.check_finite(opt)


def test_a_bad_checkpoint_is_named_and_nothing_is_restored():
    model, opt, _ = build(check="lazy", check_every=1000)
    step(model, opt, 0)
    bad = {k: v.clone() for k, v in model.state_dict().items() if torch.is_tensor(v)}
    bad["up.bias"][0] = float("nan")
    model.load_state_dict(bad, strict=False)
    with pytest.raises(FloatingPointError, match=r"in the state loaded since the last step: 1 tensor holds one now \(up\.bias\)\. Nothing was restored"):
        step(model, opt, 1)


def test_a_copy_of_the_model_and_a_dropped_optimizer_leave_the_check_alone():
    import copy
    import gc
    import weakref
    model, opt, handle = build(check="lazy", check_every=1000)
    step(model, opt, 0)
    ema = copy.deepcopy(model)  # carries the model's hooks
    ema.load_state_dict(model.state_dict())
    ctl = po.steps._controls[opt]
    assert not ctl.lazy.reload  # loading the copy is not loading the attached model
    ref = weakref.ref(ctl)
    del opt, handle, ctl
    gc.disable()
    try:
        assert ref() is None  # no cycle: the snapshot goes with the optimizer, while the model lives
    finally:
        gc.enable()


def test_only_a_new_param_group_starts_a_read_between_the_periodic_ones(monkeypatch):
    # a read under FSDP2 is a collective: one started by what one rank alone did would hang the others
    model, opt, _ = build(check="lazy", check_every=1000)
    step(model, opt, 0)
    reads = []
    lazy = po.steps._controls[opt].lazy
    read = lazy.read
    monkeypatch.setattr(lazy, "read", lambda *a, **k: (reads.append(1), read(*a, **k)))
    copy.deepcopy(model)  # e.g. rank 0 copying the model to evaluate or save it
    po.polarize(nn.Linear(3, 3))
    step(model, opt, 1)
    assert reads == []
    model.extra = po.polarize(nn.Linear(3, 3), mode="absorb", trainable_scale=False)  # a fixed scale joins
    step(model, opt, 2)
    assert reads == []  # covered from the next periodic read on (what all ranks do together)
    opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))]})  # the same on every rank of a program
    step(model, opt, 3)
    assert reads == [1]
    assert any(t is po.scale_of(model.extra) for t, _ in lazy.snapshot[0])


def test_a_failed_second_attach_does_not_roll_the_first_model_back():
    model, opt, _ = build(check="lazy", check_every=1000)
    step(model, opt, 0)
    other = po.polarize(nn.Linear(3, 3), scale="row", mode="absorb", trainable_scale=False)
    with torch.no_grad():
        po.scale_of(other)[0] = float("nan")
    before = {k: v.clone() for k, v in model.named_parameters()}
    with pytest.raises(FloatingPointError, match="in parameters added since the last clean read.*Nothing was restored"):
        attach_restoring(opt, other, check_every=1000)
    assert same({k: v for k, v in model.named_parameters()}, before)
    step(model, opt, 1)  # the first attachment goes on


def test_a_param_group_added_after_attach_is_covered():
    model, opt, _ = build(check="lazy", check_every=1000)
    extra = nn.Linear(3, 3)
    opt.add_param_group({"params": extra.parameters()})
    step(model, opt, 0)  # the optimizer's groups changed: read (and snapshot) before this step moves anything
    before = extra.weight.detach().clone()
    opt.zero_grad()
    model(batch(1)).sum().backward()
    extra.weight.grad = torch.full_like(extra.weight, float("nan"))
    extra.bias.grad = torch.zeros_like(extra.bias)
    opt.step()
    with pytest.raises(FloatingPointError, match="restored to step 0"):
        po.check_finite(opt)
    assert torch.equal(extra.weight, before)


def test_nested_optimizer_state_is_read_and_restored():
    class Nested(torch.optim.Optimizer):
        """Momentum kept in a list inside a dict, as Shampoo/SOAP-style optimizers keep theirs."""

        def __init__(self, params):
            super().__init__(params, {"lr": 0.01})

        @torch.no_grad()
        def step(self, closure=None):
            for g in self.param_groups:
                for p in g["params"]:
                    if p.grad is None:
                        continue
                    st = self.state[p].setdefault("bufs", {"m": [torch.zeros_like(p)]})
                    st["m"][0].mul_(0.9).add_(p.grad)
                    p.sub_(st["m"][0], alpha=g["lr"])

    torch.manual_seed(0)
    model = TinyLM()
    po.polarize_model(model, scale="row", mode="absorb")
    opt = Nested(model.parameters())
    attach_restoring(opt, model, check_every=1000)
    step(model, opt, 0)
    po.check_finite(opt)
    saved = {id(p): opt.state[p]["bufs"]["m"][0].clone() for p in opt.state}
    step(model, opt, 1, poison=True)
    with pytest.raises(FloatingPointError):
        po.check_finite(opt)
    assert all(torch.equal(opt.state[p]["bufs"]["m"][0], saved[id(p)]) for p in opt.state)


def test_the_absorb_muon_recipe_is_read_and_restored_through_its_children():
    torch.manual_seed(0)
    model = TinyLM()
    opt = po.recipe("absorb-muon", model, lr=1e-2, check_every=2, restore=True)
    for t in range(4):
        step(model, opt, t)
    sizes = [len(o.state) for o in opt.optimizers]
    opt.state_dict()  # the reads looked the state up without adding entries to a child
    assert [len(o.state) for o in opt.optimizers] == sizes
    adamw = opt.optimizers[1]
    po.check_finite(opt)
    p = next(iter(adamw.state))
    m = adamw.state[p]["exp_avg"].clone()
    with torch.no_grad():
        adamw.state[p]["exp_avg"][0] = float("nan")  # only in the AdamW child's moments
    with pytest.raises(FloatingPointError, match=r"the RecipeOptimizer state of"):
        opt.state_dict()  # RecipeOptimizer.state_dict runs torch's state-dict hooks
    assert torch.equal(adamw.state[p]["exp_avg"], m)


def test_recipe_state_lookups_create_nothing_and_reset_reaches_the_child():
    torch.manual_seed(0)
    model = TinyLM()
    opt = po.recipe("absorb-muon", model, lr=1e-2, restore=True)
    step(model, opt, 0)
    adamw = opt.optimizers[1]
    p = next(iter(adamw.state))
    assert opt.state[p] is adamw.state[p] and p not in opt.optimizers[0].state  # looked up, not created
    opt.state_dict()
    po.renormalize_(model, optimizer=opt, state="reset")  # deletes from the child that holds it


def test_plan_follows_a_module_added_with_its_param_group_and_a_dtype_change():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    po.polarize_model(model, scale="row", mode="absorb")
    extra = po.polarize(nn.Linear(4, 4), scale="row", mode="absorb")
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    attach_restoring(opt, model)
    x = torch.randn(3, 4)
    model(x).sum().backward()
    opt.step()
    model.append(extra)  # surgery: a new polar module, and its parameters in the optimizer
    opt.add_param_group({"params": extra.parameters()})
    model(x).sum().backward()
    opt.step()
    n = po.direction_of(extra).norm(dim=1)
    torch.testing.assert_close(n, torch.ones_like(n))
    model(x)  # renormalized: no stale direction
    model[0].double()  # the plan's groups were (float32, ...): rebuilt
    model[0](x.double()).sum().backward()
    opt.step()
    assert po.direction_of(model[0]).dtype == torch.float64


def test_the_snapshot_does_not_keep_the_model_alive():
    import gc
    import weakref
    model, opt, handle = build(check="lazy")
    step(model, opt, 0)
    refs = [weakref.ref(model), weakref.ref(opt)]
    del model, opt, handle
    gc.collect()
    assert all(r() is None for r in refs)


# ----- torch.compile ------------------------------------------------------------------------------

def _can_compile() -> str | None:
    if shutil.which("c++") is None and shutil.which("g++") is None and shutil.which("clang++") is None:
        return "torch.compile's CPU backend (inductor) needs a C++ compiler, and none is on PATH"
    return None


def _compiled_run(mode, steps=6, **attach):
    """Graph breaks and graphs compiled after one eager warm-up step, and the losses."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = TinyLM()
    if mode != "plain":
        po.polarize_model(model, scale="row", mode=mode)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    if mode != "plain":
        attach_restoring(opt, model, **attach)
    idx = batch(0)

    def train_step():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(idx).flatten(0, 1), idx.flatten())
        loss.backward()
        opt.step()
        return loss.detach()

    losses = [train_step()]  # eager: optimizer state and polaropt's watch lists exist
    counters.clear()
    compiled = torch.compile(train_step)
    losses.append(compiled())
    first = counters["stats"].get("unique_graphs", 0)
    losses += [compiled() for _ in range(steps - 2)]
    return (sum(counters["graph_break"].values()), first, counters["stats"].get("unique_graphs", 0),
            torch.stack(losses), model)


@pytest.mark.skipif(_can_compile() is not None, reason=str(_can_compile()))
@pytest.mark.parametrize("mode", ["absorb", "project", "normalize"])
def test_compiled_step_adds_no_graph_break_no_recompile_and_matches_eager(mode):
    plain_breaks, *_ = _compiled_run("plain")
    breaks, first, total, losses, model = _compiled_run(mode)
    assert breaks == plain_breaks  # torch's own (zero_grad, the optimizer's no_grad region): nothing added
    assert total == first  # steps 2.. reuse what step 1 compiled: nothing read changes between steps
    torch.manual_seed(0)
    eager = TinyLM()
    po.polarize_model(eager, scale="row", mode=mode)
    opt = torch.optim.AdamW(eager.parameters(), lr=1e-2)
    attach_restoring(opt, eager)
    idx = batch(0)
    ref = []
    for _ in range(len(losses)):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(eager(idx).flatten(0, 1), idx.flatten())
        loss.backward()
        opt.step()
        ref.append(loss.detach())
    torch.testing.assert_close(losses, torch.stack(ref), rtol=1e-5, atol=1e-6)
    if mode in ("absorb", "project"):  # renormalized inside the compiled step
        n = po.direction_of(model.up).norm(dim=1)
        torch.testing.assert_close(n, torch.ones_like(n))


@pytest.mark.skipif(_can_compile() is not None, reason=str(_can_compile()))
def test_another_model_polarized_copied_loaded_or_unpolarized_recompiles_no_step():
    """An eval or export model handled between compiled steps (on one FSDP2 rank alone, every
    such event recompiled the hooks there; past dynamo's recompile limit they ran eagerly on that
    rank only, and its periodic read, a collective, hung)."""
    import copy

    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    model, opt, _ = build()
    step(model, opt, 0)
    compiled = torch.compile(lambda t: step(model, opt, t))
    compiled(1)
    counters.clear()
    for t in range(2, 12):
        other = TinyLM()
        po.polarize_model(other, scale="row", mode="absorb")
        copy.deepcopy(other).load_state_dict(other.state_dict(), assign=True)
        po.unpolarize_model(other)
        compiled(t)
    assert counters["stats"].get("unique_graphs", 0) == 0
    n = po.direction_of(model.up).norm(dim=1)
    torch.testing.assert_close(n, torch.ones_like(n))


@pytest.mark.skipif(_can_compile() is not None, reason=str(_can_compile()))
def test_weights_swapped_in_place_between_compiled_steps_recompile_nothing():
    """An EMA evaluation loads other weights into the trained model and the trained ones back, in
    place (f302bf9 bumped the optimizer's version at every such load: each recompiled the hooks)."""
    import copy

    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    model, opt, _ = build()
    step(model, opt, 0)
    compiled = torch.compile(lambda t: step(model, opt, t))
    ema = copy.deepcopy(model.state_dict())

    def evaluate_then_step(t):
        trained = copy.deepcopy(model.state_dict())
        model.load_state_dict(ema)
        model.load_state_dict(trained)  # the lazy check reads it before the step: one branch compiled once
        compiled(t)
    compiled(1)
    evaluate_then_step(2)
    counters.clear()
    for t in range(3, 13):
        evaluate_then_step(t)
    assert counters["stats"].get("unique_graphs", 0) == 0


@pytest.mark.skipif(_can_compile() is not None, reason=str(_can_compile()))
def test_compiled_lazy_flag_is_read_at_check_finite():
    torch._dynamo.reset()
    model, opt, _ = build(check="lazy", check_every=1)
    step(model, opt, 0)

    def train_step(poison):
        return step(model, opt, 1, poison)

    compiled = torch.compile(train_step)
    compiled(False)
    po.check_finite(opt)
    params, _ = snapshot(model, opt)
    compiled(True)  # the periodic read does not run inside the compiled step
    with pytest.raises(FloatingPointError, match="restored to step"):
        po.check_finite(opt)
    assert same(snapshot(model, opt)[0], params)


@pytest.mark.skipif(_can_compile() is not None, reason=str(_can_compile()))
def test_compiled_every_k_renormalizes_on_the_right_steps():
    """every > 1 needs the step count: under compile it is kept eagerly (one graph break), correctly."""
    torch._dynamo.reset()
    model, opt, _ = build(every=3)
    step(model, opt, 0)
    compiled = torch.compile(lambda t: step(model, opt, t))
    for t in range(1, 6):
        compiled(t)
        n = po.direction_of(model.up).norm(dim=1)
        assert torch.allclose(n, torch.ones_like(n)) == ((t + 1) % 3 == 0), t
    assert opt.param_groups[0]["polar_steps"] == 6


def test_a_bad_loaded_state_refuses_every_step_until_a_clean_one_is_loaded():
    # review finding: the failed read cleared the reload flag, the next steps trained on the NaN and a later
    # read blamed them ("entered in the last 10 step(s)")
    model, opt, _ = build(check="lazy", check_every=10)
    for t in range(3):
        step(model, opt, t)
    good = copy.deepcopy(opt.state_dict())
    bad = copy.deepcopy(good)
    next(iter(bad["state"].values()))["exp_avg"].view(-1)[0] = float("nan")
    opt.load_state_dict(bad)
    for t in (3, 4):
        with pytest.raises(FloatingPointError, match="in the state loaded since the last step"):
            step(model, opt, t)
    with pytest.raises(FloatingPointError, match="in the state loaded since the last step"):
        opt.state_dict()  # nor is it saved
    opt.load_state_dict(good)
    step(model, opt, 5)  # a clean state: training goes on


def test_a_second_attach_blames_the_steps_for_a_nan_the_first_model_already_held():
    model, opt, _ = build(check="lazy", check_every=1000)
    for t in range(3):
        step(model, opt, t)
    po.check_finite(opt)  # snapshot at step 3
    params, _ = snapshot(model, opt)
    step(model, opt, 3, poison=True)
    other = po.polarize(nn.Linear(3, 3), scale="row", mode="absorb", trainable_scale=False)
    with pytest.raises(FloatingPointError, match=r"entered in the last 1 step\(s\).*restored to step 3"):
        attach_restoring(opt, other, check_every=1000)
    assert same(snapshot(model, opt)[0], params)


def test_an_attached_model_and_its_copy_can_be_saved_whole(tmp_path):
    # torch refuses to pickle a parametrized module; a plain attached model (the NaN check alone) pickles,
    # its load hooks as inert ones (a lambda could not be pickled)
    torch.manual_seed(0)
    model = TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    po.attach(opt, model)
    step(model, opt, 0)
    torch.save(model, tmp_path / "model.pt")
    twin = copy.deepcopy(model)
    torch.save(twin, tmp_path / "twin.pt")
    loaded = torch.load(tmp_path / "twin.pt", weights_only=False)
    loaded.load_state_dict(model.state_dict())
    twin.load_state_dict(model.state_dict())
    assert not po.steps._controls[opt].lazy.reload  # a copy's load is not the attached model's
    model.load_state_dict(twin.state_dict())
    assert po.steps._controls[opt].lazy.reload  # the attached model's own load is noticed
