"""Hyperball (Wen, Dang, Lyu, Ma, Liang; Marin's levanter ``optim/muonh.py``, HeavyBall's ``HyperBallAdamW``):
a weight kept at a fixed norm R, stepped along the normalized update of any base optimizer,

    W ← R·N(W − η·R·N(u)),   N(x) = x/‖x‖_F per tensor,

as hooks around the base optimizer's step (the base computes u; the hooks normalize it and project). With
``project=False`` only the step is normalized (W ← W − η·N(u)): the radial rule ``"fixed"`` at a finer
granularity than the tensor, where polaropt's renormalization projects each slice.

:class:`HyperballAdamW` is the same rule with AdamW's update fused into it, one ``torch.compile``-d step per matrix
(``compose(..., compile=True)``): the fast path, tested equal to AdamW + :class:`Hyperball`'s hooks.
"""

from __future__ import annotations

import math
import warnings

import torch

from .slices import slice_norm

LOW = (torch.float16, torch.bfloat16)


def round_stochastic_(dst: torch.Tensor, src: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Write float32 ``src`` into bfloat16 ``dst``, rounding each entry up or down with the probability that
    makes the rounding unbiased (E[dst] = src): a random 16-bit integer is added below bfloat16's mantissa
    and the low bits are cut. A step far below bfloat16's resolution then still moves the weight on
    average, as in float32, where rounding to nearest would drop it (HeavyBall rounds this way)."""
    bits = src.contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, src.shape, dtype=torch.int32, device=src.device, generator=generator)
    cut = (bits + noise) & -65536  # 0xFFFF0000: keep sign, exponent and bfloat16's 7 mantissa bits
    return dst.copy_(cut.view(torch.float32))  # exact: the low 16 bits are zero


def _whole_norm(x: torch.Tensor) -> torch.Tensor:
    """‖x‖_F of the whole tensor; of an FSDP2 shard (a DTensor) across every rank's shard (a replicated DTensor)."""
    return slice_norm(x, tuple(range(x.ndim))) if hasattr(x, "placements") else torch.linalg.vector_norm(x)


def radius_of(x: torch.Tensor) -> float:
    """‖x‖_F in float64 as a Python float (the radius kept in the optimizer's state: torch would cast a tensor to the
    weight's dtype on load); of an FSDP2 shard, across every rank's shard. One host sync."""
    if hasattr(x, "placements"):
        return float(_whole_norm(x.detach().double()).full_tensor())
    return float(torch.linalg.vector_norm(x.detach(), dtype=torch.float64))


def refuse_zero(x: torch.Tensor, name: str) -> None:
    """Refuse a matrix that is all zeros at its first step: its fixed radius would be 0 (for an FSDP2 shard, on every
    rank: one collective, the same answer everywhere)."""
    zero = radius_of(x) == 0 if hasattr(x, "placements") else not bool(x.any())
    if zero:
        raise ValueError(
            f"{name} is all zeros at its first step, so its Hyperball radius R = ‖W‖ would be 0 and it could never "
            "move (the radius is fixed); initialize it, or leave it out of the hidden matrices with exclude= (a "
            "zero-initialized output projection trains under polar-absorb: its scale starts at 0)")


class Hyperball:
    """``W ← R·N(W − η·R·N(u))`` after the base optimizer's step, N(x) = x/‖x‖_F per tensor, u the base
    optimizer's update (recovered as the step it took: W' − W = −η·u), η the group's lr at that step,
    R = ‖W‖_F before the tensor's first step (so weights loaded after ``recipe()`` keep their norm),
    kept in the optimizer's state (``"hyperball_radius"``, a Python float: torch would cast a tensor to the
    weight's dtype on load, and a bfloat16 radius is off by up to 0.4%) so a checkpoint carries it (Wen et al.,
    "Hyperball"; the radius stored as HeavyBall does). A tensor without a gradient is left alone.

    bfloat16/float16 weights are stepped in float32 and rounded once: for the step, the parameter and its
    gradient are float32 copies (the base optimizer's state is then float32 too), and the result is written
    back into the weight's own storage, stochastically rounded for bfloat16 (unbiased: a step below its
    resolution still moves the weight on average), to nearest for float16. Rounding each step in the weight's
    dtype instead (0.3.0) kept 14% of entries still at lr 1e-4, travelled half as far as float32 and let the
    radius drift 1.2·10⁻³ over 100 steps (``tests/test_recipes.py``). The rounding draws from a generator of
    its own, seeded per tensor and step from ``"hyperball_seed"`` and ``"hyperball_rounds"`` in the optimizer's
    state: it takes nothing from torch's global generator (dropout sees the same numbers as in float32), and a
    resumed run rounds as the uninterrupted one. A checkpoint's float32 base state is put back as float32 after
    ``load_state_dict`` (torch casts it to the weight's dtype), so a bfloat16 run resumes bit for bit.

    ``post_hooks(base)`` and ``pre_hooks(base)`` register what a base optimizer needs and return the handles.
    If the base raises inside its step, the next ``pre`` puts the swapped weights back first."""

    def __init__(self, params: list[torch.Tensor], names: list[str], project: bool = True):
        self.params, self.names, self.project = params, names, project
        self.before: list[torch.Tensor | None] = []
        self.low: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(p) -> (its low-precision data, grad)
        self._incoming = None  # the state dict being loaded
        self._generators: dict[torch.device, torch.Generator] = {}

    def post_hooks(self, base: torch.optim.Optimizer) -> list:
        """The step post-hook and the load hooks. Registered before another post-hook (attach's renormalization),
        they run before it."""
        return [base.register_step_post_hook(self.post), base.register_load_state_dict_pre_hook(self.load_pre),
                base.register_load_state_dict_post_hook(self.load_post)]

    def pre_hooks(self, base: torch.optim.Optimizer) -> list:
        """The step pre-hook. Registered after another pre-hook (attach's gradient check), it runs after it, so a step
        that is refused there never finds a weight swapped to its float32 copy."""
        return [base.register_step_pre_hook(self.pre)]

    def _swap_back(self) -> None:
        """Low-precision weights back in their own storage: after a step, or after one that raised in the base."""
        for p in self.params:
            low = self.low.pop(id(p), None)
            if low is not None:
                p.data, p.grad = low

    def load_pre(self, opt, state_dict):
        self._incoming = state_dict

    @torch.no_grad()
    def load_post(self, opt) -> None:
        """Put back as float32 the base state of low-precision weights that torch's load cast to their dtype."""
        incoming, self._incoming = self._incoming, None
        if incoming is None:
            return
        mine = {id(p) for p in self.params if p.dtype in LOW}
        for saved, group in zip(incoming["param_groups"], opt.param_groups):
            for index, p in zip(saved["params"], group["params"]):
                if id(p) in mine and index in incoming["state"]:
                    for k, v in incoming["state"][index].items():
                        if isinstance(v, torch.Tensor) and v.dtype == torch.float32 and k != "step":
                            opt.state[p][k] = v.detach().to(p.device, copy=True)

    def pre(self, opt, args, kwargs):
        self._swap_back()  # a previous step that raised inside the base optimizer left them swapped
        for p, name in zip(self.params, self.names):  # before anything moves
            if self.project and p.grad is not None and "hyperball_radius" not in opt.state.get(p, {}):
                refuse_zero(p.detach(), name)
        for p in self.params:
            if p.grad is not None and p.dtype in LOW:
                self.low[id(p)] = (p.data, p.grad)
                p.data = p.data.float()
                p.grad = p.grad.float()
                state = opt.state.get(p, {})
                for k, v in list(state.items()):  # a state loaded into low-precision weights: float32 again
                    if isinstance(v, torch.Tensor) and v.dtype in LOW:
                        state[k] = v.float()
        self.before = [torch.empty_like(p).copy_(p) if p.grad is not None else None for p in self.params]

    def _generator(self, state: dict, index: int, device) -> torch.Generator:
        """The rounding generator of ``self.params[index]`` for this step: seeded from its state, so a resume
        repeats it."""
        if "hyperball_seed" not in state:
            state["hyperball_seed"] = (torch.initial_seed() + 7919 * index) % (1 << 62)
        seed, rounds = state["hyperball_seed"], state.get("hyperball_rounds", 0)
        state["hyperball_rounds"] = rounds + 1
        gen = self._generators.get(device)
        if gen is None:
            gen = self._generators[device] = torch.Generator(device=device)
        return gen.manual_seed(seed + rounds)

    @torch.no_grad()
    def post(self, opt, args, kwargs):
        lr = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}  # at step time (schedulers)
        for index, (p, w) in enumerate(zip(self.params, self.before)):
            if w is None:
                continue
            state = opt.state[p]  # the base optimizer has created it by now
            if self.project and "hyperball_radius" not in state:  # one sync, once
                state["hyperball_radius"] = radius_of(w)
            # in place in p, no temporary and no host sync, four passes: p − w = −η·u, so
            # W − η·R·N(u) = w + c·(p − w) with c = η·R/‖p − w‖ (a lerp), then R·N(·)
            R = state["hyperball_radius"] if self.project else 1.0
            step = torch.dist(p, w) if not hasattr(p, "placements") else _whole_norm(p - w)  # FSDP2: across shards
            c = lr[id(p)] * R / step.clamp_min(torch.finfo(p.dtype).tiny)
            moved = p.lerp_(w, 1 - c)  # a zero step leaves W as it was
            if self.project:
                moved.mul_(R / _whole_norm(moved))
            low = self.low.pop(id(p), None)
            if low is not None:
                data, grad = low
                if data.dtype == torch.bfloat16:
                    round_stochastic_(data, moved, self._generator(state, index, moved.device))
                else:
                    data.copy_(moved)
                p.data, p.grad = data, grad  # the weight's own storage and gradient again
        self.before = []


def adamw_hyperball_(p, g, m, v, bc2_sqrt: float, lr: float, radius: float, beta1: float, beta2: float,
                     eps: float) -> None:
    """One Hyperball-AdamW step of one matrix, in place: AdamW's moments, its update d = m/(√v/√bc2 + ε) (its
    1/bc1 cancels in N(d)), then ``p ← R·N(p − c·d)`` with c = lr·R/‖d‖ (0 for a zero update, which leaves W as
    it is, as the hooks do). ‖p − c·d‖² = ‖p‖² − 2c⟨p, d⟩ + (lr·R)² comes from the three sums of the first pass,
    so compiled this is two passes over the matrix: the moments and the sums, then the step and the projection.
    ``bc2_sqrt`` is √(1 − β₂ᵗ). torch.compile takes the Python floats as inputs of the kernels, so a new step, a
    scheduled lr or another matrix's radius reuses the compiled code."""
    m.lerp_(g, 1 - beta1)
    v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    d = m / (v.sqrt() / bc2_sqrt + eps)
    dd, pd, pp = (d * d).sum(), (p * d).sum(), (p * p).sum()
    moves = (dd > 0).to(p.dtype)  # a float mask, not torch.where: dynamo would burn a scalar branch's lr in
    c = lr * radius * moves * dd.clamp_min(torch.finfo(p.dtype).tiny).rsqrt()
    step_sq = (lr * radius) ** 2 * moves  # c²·‖d‖², without forming c² (it can overflow)
    p.sub_(c * d).mul_(radius * (pp - 2 * c * pd + step_sq).clamp_min(torch.finfo(p.dtype).tiny).rsqrt())


def adamw_hyperball_many_(ps, gs, ms, vs, bc2_sqrts: list, lr: float, radii: list, beta1: float, beta2: float,
                          eps: float) -> None:
    """:func:`adamw_hyperball_` over lists of flat tensors: compiled, one call steps them all (a call of compiled
    code costs about as much as stepping a 512 × 512 matrix on a CPU)."""
    for p, g, m, v, bc2_sqrt, radius in zip(ps, gs, ms, vs, bc2_sqrts, radii):
        adamw_hyperball_(p, g, m, v, bc2_sqrt, lr, radius, beta1, beta2, eps)


_COMPILED = {}
CHUNKS = (8, 4, 2, 1)  # a list is stepped in chunks of these lengths: four compiled codes per dtype and device


def _compiled_step():
    if "step" not in _COMPILED:  # compiled on first use: importing polaropt compiles nothing
        # dynamic: one compiled code for every matrix length (each is stepped as a flat view) and every float
        _COMPILED["step"] = torch.compile(adamw_hyperball_many_, fullgraph=True, dynamic=True)
    return _COMPILED["step"]


def _chunks(items: list) -> list[list]:
    """``items`` cut into lengths from :data:`CHUNKS`, longest first (13 = 8 + 4 + 1)."""
    out, i = [], 0
    for size in CHUNKS:
        while len(items) - i >= size:
            out.append(items[i:i + size])
            i += size
    return out


class HyperballAdamW(torch.optim.AdamW):
    """Hyperball with AdamW's update, ``W ← R·N(W − η·R·N(u))``, its steps ``torch.compile``-d (``compile=False``:
    the same function eagerly). The state is AdamW's (``exp_avg``, ``exp_avg_sq``, ``step``) and
    :class:`Hyperball`'s ``hyperball_radius``, so a checkpoint loads into either form. Fused, the moments, the
    update's norm, the step and the projection take two passes over each matrix where AdamW's step and the hooks
    take about twelve (``docs/benchmarks.md``); up to 8 matrices go to one compiled call. Should dynamo refuse
    another compiled code (its limit of 8 per function, shared by every HyperballAdamW of the process), the step
    runs eagerly, with a warning, once. float32/float64 weights, no weight decay (the norm is fixed), AdamW's
    ``betas`` and ``eps`` only; anything else is refused, naming it. ``names`` (one per parameter, in order) name
    a refused matrix in the message."""

    def __init__(self, params, names: list[str] | None = None, *, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 compile: bool = True, **refused):
        if refused:
            raise ValueError(f"HyperballAdamW takes AdamW's betas and eps only, not {', '.join(sorted(refused))}: "
                             "leave compile= off in the recipe (AdamW with Hyperball's hooks) for the other options")
        if not isinstance(compile, bool):
            raise ValueError(f"compile must be True or False, got {compile!r}")
        self.names: dict[int, str] = {}
        self._given_names = list(names or [])
        self.compile, self._eager = compile, False
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=0.0)

    def add_param_group(self, param_group: dict) -> None:
        """Each new matrix checked (float32/float64, no weight decay) before AdamW adds it, then named: a refused
        group leaves the optimizer as it was."""
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        names = [self._given_names[len(self.names) + i] if len(self.names) + i < len(self._given_names)
                 else f"parameter {len(self.names) + i}" for i in range(len(params))]
        decay = param_group.get("weight_decay", 0.0)
        if decay != 0:
            raise ValueError(f"HyperballAdamW: weight decay {decay} on a fixed-norm matrix has nothing to decay (its "
                             "norm is fixed); leave it at 0")
        for p, name in zip(params, names):
            if p.dtype not in (torch.float32, torch.float64):
                raise ValueError(f"HyperballAdamW steps float32/float64 weights; {name} is {p.dtype}: use "
                                 "recipe('hyperball-adamw') without compile=, whose hooks step bfloat16/float16 in "
                                 "float32 and round once")
        super().add_param_group({**param_group, "params": params})
        self.names.update(zip(map(id, params), names))

    def _run(self, batch: list, group: dict) -> None:
        ps, gs, ms, vs, bc2s, radii = (list(x) for x in zip(*batch))
        args = (ps, gs, ms, vs, bc2s, group["lr"], radii, *group["betas"], group["eps"])
        if self.compile and not self._eager and ps[0].ndim == 1:
            try:
                return _compiled_step()(*args)
            except torch._dynamo.exc.FailOnRecompileLimitHit:  # refused before it ran: nothing has moved
                warnings.warn("HyperballAdamW: torch.compile reached its limit of compiled codes for the step "
                              "(shared by every HyperballAdamW in this process); this optimizer now steps eagerly",
                              stacklevel=3)
                self._eager = True
        adamw_hyperball_many_(*args)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:  # refused before anything moves
            for p in group["params"]:
                if p.grad is not None and "hyperball_radius" not in self.state[p]:
                    refuse_zero(p, self.names[id(p)])
        for group in self.param_groups:
            flat, shaped = [], []  # (state, p, g, m, v, √bc2, R): flat views go to the compiled code together
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "step" not in state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float64 if torch.get_default_dtype() == torch.float64
                                                 else torch.float32)  # AdamW's
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if "hyperball_radius" not in state:  # one host sync per matrix, at its first step
                    state["hyperball_radius"] = radius_of(p)
                bc2_sqrt = math.sqrt(1 - group["betas"][1] ** (float(state["step"]) + 1))  # `step` is on the CPU
                tensors = (p, p.grad, state["exp_avg"], state["exp_avg_sq"])
                if all(t.is_contiguous() for t in tensors):  # the step is elementwise and its sums whole-tensor
                    flat.append((state, *(t.view(-1) for t in tensors), bc2_sqrt, state["hyperball_radius"]))
                else:
                    shaped.append((state, *tensors, bc2_sqrt, state["hyperball_radius"]))
            # a step is counted with its matrices' move, chunk by chunk: a chunk that raises leaves its matrices,
            # their moments and their steps as they were
            for batch in _chunks(flat) + [[x] for x in shaped]:
                self._run([x[1:] for x in batch], group)
                for x in batch:
                    x[0]["step"] += 1
        return loss
