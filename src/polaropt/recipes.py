"""Recipes: the field's training methods as polaropt configurations, one call each.

``recipe(name, model, lr=..., weight_decay=...)`` returns one ``torch.optim.Optimizer`` with every
hook it needs attached (its ``handles`` remove them). Each recipe splits the model's parameters the
field's way: *hidden matrices* are the ≥2-D weights except embeddings (``nn.Embedding``) and the
output head (the last ``nn.Linear`` of the model, and anything tied to either); they get the method,
everything else (embeddings, head, biases, norm gains) gets AdamW. ``include=`` / ``exclude=`` (globs
or a callable, as ``polarize_model``) override the choice.

Learning rates: one ``lr`` for the whole recipe. Muon runs with torch's ``adjust_lr_fn=
"match_rms_adamw"`` (its update has AdamW's RMS, so one lr serves both optimizers), as the field does.
"""

from __future__ import annotations

import collections
import math
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from .groups import _no_decay, kept_from_decay, param_groups
from .models import _candidates, _select, polarize_model
from .polar import _own_class_on_copy
from .steps import attach

RECIPES = ("adamw", "adamw-weight-norm", "polar-normalize", "polar-project", "polar-absorb", "polar-absorb-rescale",
           "muon", "hyperball-adamw", "hyperball-muon", "multipliers", "absorb-muon")


class _ChildStates(collections.ChainMap):
    """The children's per-parameter state seen as one mapping. Unlike a plain ChainMap of their
    ``defaultdict``s, a lookup never creates an entry in a child that does not hold the parameter
    (a missing one reads as an empty dict), and ``del`` removes it from the child that holds it."""

    def __getitem__(self, key):
        for m in self.maps:
            if key in m:
                return m[key]
        return {}

    def __delitem__(self, key):
        for m in self.maps:
            if key in m:
                del m[key]
                return
        raise KeyError(key)


class RecipeOptimizer(torch.optim.Optimizer):
    """Several torch optimizers stepped as one (e.g. Muon on hidden matrices, AdamW on the rest).

    ``param_groups`` are the children's own group dicts, so an LR scheduler or a polaropt lr
    multiplier acting on this optimizer acts on the children; ``state`` reads the children's state;
    ``state_dict`` holds every child's. The children's hyper-parameters differ (Muon has no ``betas``),
    so schedulers that cycle momentum need ``cycle_momentum=False``.
    """

    def __init__(self, optimizers: list[torch.optim.Optimizer], recipe: str):
        groups = [g for o in optimizers for g in o.param_groups]
        super().__init__([{"params": g["params"]} for g in groups], {})
        self.param_groups = groups  # the children's dicts, shared: schedulers reach them
        self.optimizers, self.recipe = list(optimizers), recipe
        self.state = _ChildStates(*(o.state for o in self.optimizers))  # read: the children's state

    def add_param_group(self, param_group):
        if hasattr(self, "optimizers"):  # after construction: which child would step it is not defined
            raise TypeError("a RecipeOptimizer's groups belong to its inner optimizers (.optimizers); add the "
                            "group to one of them")
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.optimizers:
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True):
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        # torch's hook contract (Optimizer.state_dict runs these; polaropt's lazy NaN check is one)
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        sd = {"recipe": self.recipe, "optimizers": [o.state_dict() for o in self.optimizers]}
        for hook in self._optimizer_state_dict_post_hooks.values():
            sd = hook(self, sd) or sd
        return sd

    def load_state_dict(self, state_dict):
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            state_dict = hook(self, state_dict) or state_dict
        if state_dict.get("recipe") != self.recipe or len(state_dict.get("optimizers", ())) != len(self.optimizers):
            raise ValueError(f"this state_dict is of recipe {state_dict.get('recipe')!r} with "
                             f"{len(state_dict.get('optimizers', ()))} inner optimizers, not {self.recipe!r} with "
                             f"{len(self.optimizers)}")
        for opt, sd in zip(self.optimizers, state_dict["optimizers"]):
            opt.load_state_dict(sd)
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]
        self.state = _ChildStates(*(o.state for o in self.optimizers))
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)


def hidden_matrices(model: nn.Module, *, include=None, exclude=None) -> list[tuple[str, torch.Tensor]]:
    """``(name, parameter)`` of the hidden matrices: the ≥2-D weights of layers that multiply their input
    (a parameter whose own name contains ``weight``: Linear, Conv, an LSTM's ``weight_ih_l0``,
    MultiheadAttention's ``in_proj_weight``, transformers' ``Conv1D``), except embeddings and the output head
    (the model's last ``nn.Linear`` in registration order), each shared parameter once. Learned tokens and
    tables held as bare parameters (a ViT's ``cls_token`` and ``pos_embed``) are not hidden matrices.
    ``include`` replaces the default choice. The head rule is a heuristic: a model that registers its head
    before its blocks, or ends in a convolution, should name its matrices with ``include``/``exclude``."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    outside = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    if linears:
        outside.add(id(linears[-1].weight))

    def hidden(qualname, module, tensor):
        return tensor.ndim >= 2 and id(tensor) not in outside and "weight" in qualname.rpartition(".")[2]

    chosen = _select(_candidates(model), include if include is not None else hidden, exclude)
    return [(paths[0], p) for p, _, paths in chosen]


def _split(model, include, exclude):
    hidden = hidden_matrices(model, include=include, exclude=exclude)
    ids = {id(p) for _, p in hidden}
    rest = [p for p in dict.fromkeys(model.parameters()) if id(p) not in ids and p.requires_grad]
    return hidden, rest


def _decay_groups(params, kept: set[int], weight_decay) -> list[dict]:
    """``params`` as two groups: decayed, and kept from decay (``kept``: ids, by ``param_groups``' convention)."""
    params = list(params)
    groups = ({"params": [p for p in params if id(p) not in kept], "weight_decay": weight_decay},
              {"params": [p for p in params if id(p) in kept], "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def _adamw(params, lr, weight_decay, kept, **kw):
    groups = _decay_groups(params, kept, weight_decay)
    return torch.optim.AdamW(groups, lr=lr, **kw) if groups else None


def _muon(params, lr, weight_decay):
    return torch.optim.Muon(params, lr=lr, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw")


def _finish(name: str, optimizers: list, handles: Callable | None = None) -> torch.optim.Optimizer:
    """One optimizer for the recipe: the torch optimizer itself when there is one (so polaropt's state
    transport sees its state), else a ``RecipeOptimizer``; ``hooks(opt)`` attaches what the recipe needs.
    The recipe's name is ``opt.polar_recipe`` and its hook handles ``opt.polar_handles``."""
    optimizers = [o for o in optimizers if o is not None]
    opt = optimizers[0] if len(optimizers) == 1 else RecipeOptimizer(optimizers, name)
    opt.polar_recipe = name
    opt.polar_handles = list(handles(opt)) if handles is not None else []
    return opt


class Multipliers(nn.Module):
    """``W_ij = r_i · V_ij · c_j``: learnable row and column multipliers (Falcon LLM team, arXiv
    2601.04890), a ``torch.nn.utils.parametrize`` module; ``r`` and ``c`` start at 1, V at W."""

    def __init__(self, shape: torch.Size, dtype, device):
        super().__init__()
        self.r = nn.Parameter(torch.ones(shape[0], dtype=dtype, device=device))
        self.c = nn.Parameter(torch.ones(shape[1], dtype=dtype, device=device))

    def forward(self, v):
        view = (-1,) + (1,) * (v.ndim - 1)
        col = (1, -1) + (1,) * (v.ndim - 2)
        return self.r.view(view) * v * self.c.view(col)


def round_stochastic_(dst: torch.Tensor, src: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Write float32 ``src`` into bfloat16 ``dst``, rounding each entry up or down with the probability that
    makes the rounding unbiased (E[dst] = src): a random 16-bit integer is added below bfloat16's mantissa
    and the low bits are cut. A step far below bfloat16's resolution then still moves the weight on
    average, as in float32, where rounding to nearest would drop it (HeavyBall rounds this way)."""
    bits = src.contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, src.shape, dtype=torch.int32, device=src.device, generator=generator)
    cut = (bits + noise) & -65536  # 0xFFFF0000: keep sign, exponent and bfloat16's 7 mantissa bits
    return dst.copy_(cut.view(torch.float32))  # exact: the low 16 bits are zero


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
    radius drift 1.2·10⁻³ over 100 steps (``tests/test_recipes.py``)."""

    def __init__(self, params: list[torch.Tensor], names: list[str]):
        self.params, self.names = params, names
        self.before: list[torch.Tensor | None] = []
        self.low: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(p) -> (its low-precision data, grad)

    def pre(self, opt, args, kwargs):
        for p, name in zip(self.params, self.names):  # before anything moves
            if p.grad is not None and "hyperball_radius" not in opt.state.get(p, {}) and not bool(p.detach().any()):
                raise ValueError(
                    f"{name} is all zeros at its first step, so its Hyperball radius R = ‖W‖ would be 0 and it could "
                    "never move (the radius is fixed); initialize it, or leave it out of the hidden matrices with "
                    "exclude= (a zero-initialized output projection trains under polar-absorb: its scale starts at 0)")
        for p in self.params:
            if p.grad is not None and p.dtype in LOW:
                self.low[id(p)] = (p.data, p.grad)
                p.data = p.data.float()
                p.grad = p.grad.float()
                state = opt.state.get(p, {})
                for k, v in list(state.items()):  # a state loaded into low-precision weights: float32 again
                    if isinstance(v, torch.Tensor) and v.dtype in LOW:
                        state[k] = v.float()
        self.before = [p.detach().clone() if p.grad is not None else None for p in self.params]

    @torch.no_grad()
    def post(self, opt, args, kwargs):
        lr = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}  # at step time (schedulers)
        for p, w in zip(self.params, self.before):
            if w is None:
                continue
            state = opt.state[p]  # the base optimizer has created it by now
            if "hyperball_radius" not in state:  # a Python float: a checkpoint loaded into bfloat16 weights keeps it
                state["hyperball_radius"] = float(w.norm(dtype=torch.float64))  # one host sync, at the first step
            R = state["hyperball_radius"]
            step = p - w  # = −η·u
            n = step.norm()
            moved = w + lr[id(p)] * R * step / n if n > 0 else w  # W − η·R·N(u)
            new = R * moved / moved.norm()
            low = self.low.pop(id(p), None)
            if low is None:
                p.copy_(new)
                continue
            data, grad = low
            if data.dtype == torch.bfloat16:
                round_stochastic_(data, new)
            else:
                data.copy_(new)
            p.data, p.grad = data, grad  # the weight's own storage and gradient again
        self.before = []


LOW = (torch.float16, torch.bfloat16)
ATTACHED = ("polar-project", "polar-absorb", "polar-absorb-rescale", "absorb-muon")  # recipes with po.attach


def recipe(name: str, model: nn.Module, *, lr: float, weight_decay: float = 0.0, include=None, exclude=None,
           **options) -> torch.optim.Optimizer:
    """The optimizer of recipe ``name`` for ``model`` (polarized or parametrized in place where the recipe
    says), with its hooks attached: ``optimizer.polar_handles`` (each ``.remove()``) and
    ``optimizer.polar_recipe`` (the name) are reachable from it.

    | name | update |
    |---|---|
    | adamw | torch AdamW on everything |
    | adamw-weight-norm | torch ``weight_norm(dim=0)`` on hidden matrices; AdamW, decay on the direction only |
    | polar-normalize / -project / -absorb | ``polarize_model(mode=…, scale="out")`` on hidden matrices, AdamW with ``param_groups(weight_decay=)`` |
    | polar-absorb-rescale | polar-absorb with ``attach(state="rescale")`` (Adam's moments carried into the new coordinates) |
    | muon | ``torch.optim.Muon`` on hidden 2-D matrices (conv kernels, which torch's Muon refuses, go to AdamW) |
    | hyperball-adamw / -muon | ``W ← R·N(W − η·R·N(u))`` on hidden matrices (Muon: the 2-D ones), no decay there |
    | multipliers | ``W_ij = r_i·V_ij·c_j`` (``Multipliers``), decay on V only |
    | absorb-muon | Liu's absorb (one scale per matrix) with Muon on the direction and AdamW on the scale |

    ``options``: ``betas`` and ``eps`` for the AdamW parts; ``every``, ``check``, ``check_every`` and
    ``restore`` for the recipes that :func:`polaropt.attach` (:data:`ATTACHED`: its renormalization period
    and NaN/Inf check). Unknown names and options are refused, naming the valid ones.
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; valid recipes are {', '.join(RECIPES)}")
    valid = {"betas", "eps"} | ({"every", "check", "check_every", "restore"} if name in ATTACHED else set())
    bad = sorted(set(options) - valid)
    if bad:
        raise ValueError(f"recipe {name!r} takes no option {', '.join(map(repr, bad))}; its options are "
                         f"{', '.join(sorted(valid))}")
    if isinstance(lr, bool) or not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if isinstance(weight_decay, bool) or not (isinstance(weight_decay, (int, float)) and 0 <= weight_decay < math.inf):
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise ValueError("recipe() takes a plain model and parametrizes it itself; this one is already "
                         "parametrized (polarized, weight_norm, or an earlier recipe): build it afresh")
    every = options.pop("every", 1)
    checks = {k: options.pop(k) for k in ("check", "check_every", "restore") if k in options}
    adam_kw = options
    # every recipe keeps the same parameters from decay as param_groups does: 1-D ones (biases, norm gains) and
    # those the model's no_weight_decay() names; read while the names are plain
    kept = kept_from_decay(model, _no_decay(model, "auto"))
    if name == "adamw":
        return _finish(name, [_adamw(model.parameters(), lr, weight_decay, kept, **adam_kw)])
    hidden, rest = _split(model, include, exclude)
    if name in ("adamw-weight-norm", "multipliers"):
        # each hidden matrix must be one module's ``weight``: that is what weight_norm / a parametrization wraps
        owners = {id(p): [(q, m, n) for q, m, n in own] for p, own, _ in _candidates(model)}
        odd = [q for q, p in hidden if len(owners[id(p)]) != 1 or owners[id(p)][0][2] != "weight"]
        if odd:
            raise ValueError(f"recipe {name!r} wraps a module's `weight`; {', '.join(odd)} is not one module's "
                             "own `weight` (tied, or named otherwise, e.g. LSTM/MultiheadAttention): leave it out "
                             "with exclude=")
        direction, factors = [], []
        for q, p in hidden:
            module = owners[id(p)][0][1]
            if name == "multipliers":
                parametrize.register_parametrization(module, "weight", Multipliers(p.shape, p.dtype, p.device))
                direction.append(module.parametrizations.weight.original)
                factors += [module.parametrizations.weight[0].r, module.parametrizations.weight[0].c]
            else:
                torch.nn.utils.parametrizations.weight_norm(module, "weight", dim=0)
                factors.append(module.parametrizations.weight.original0)
                direction.append(module.parametrizations.weight.original1)
            _own_class_on_copy(module)  # a deepcopy gets its own parametrized class
        groups = [{"params": direction, "weight_decay": weight_decay}, {"params": factors, "weight_decay": 0.0},
                  *_decay_groups(rest, kept, weight_decay)]
        return _finish(name, [torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, **adam_kw)])
    if name.startswith("polar-"):
        mode = name.split("-")[1]
        polarize_model(model, include=[q for q, _ in hidden], scale="out", mode=mode)
        opt = torch.optim.AdamW(param_groups(model, weight_decay=weight_decay), lr=lr, **adam_kw)
        state = "rescale" if name.endswith("rescale") else "keep"
        return _finish(name, [opt], (lambda o: [attach(o, model, state=state, every=every, **checks)])
                       if mode in ("project", "absorb") else None)
    if name == "muon":
        mats = [p for _, p in hidden if p.ndim == 2]
        others = [p for _, p in hidden if p.ndim != 2] + rest
        return _finish(name, [_muon(mats, lr, weight_decay) if mats else None,
                              _adamw(others, lr, weight_decay, kept, **adam_kw)])
    if name.startswith("hyperball-"):
        on_muon = name.endswith("muon")
        mats = [p for _, p in hidden if p.ndim == 2 or not on_muon]
        names = [q for q, p in hidden if any(p is m for m in mats)]
        others = [p for _, p in hidden if all(p is not m for m in mats)] + rest
        if not mats:
            raise ValueError(f"recipe {name!r} found no hidden matrix{' (2-D)' if on_muon else ''} in the model; "
                             "name them with include=")
        base = _muon(mats, lr, 0.0) if on_muon else torch.optim.AdamW(mats, lr=lr, weight_decay=0.0, **adam_kw)
        ball = Hyperball(mats, names)
        return _finish(name, [base, _adamw(others, lr, weight_decay, kept, **adam_kw)],
                       lambda o: [base.register_step_pre_hook(ball.pre), base.register_step_post_hook(ball.post)])
    # absorb-muon: a sphere per matrix whose scale grows multiplicatively, Muon stepping on the sphere;
    # weight decay on V (DECAY_ON["absorb"]), as polar-absorb
    polarize_model(model, include=[q for q, p in hidden if p.ndim == 2], scale="tensor", mode="absorb")
    groups = param_groups(model, weight_decay=weight_decay)
    directions = [p for g in groups if g["polar_role"] == "direction" for p in g["params"]]
    others = [g for g in groups if g["polar_role"] != "direction"]
    return _finish(name, [_muon(directions, lr, weight_decay) if directions else None,
                          torch.optim.AdamW(others, lr=lr, **adam_kw) if others else None],
                   lambda o: [attach(o, model, every=every, **checks)])
