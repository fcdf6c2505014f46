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
from .hyperball import Hyperball, HyperballAdamW
from .lion import Lion
from .models import _candidates, _select, polarize_model, unpolarize_model
from .muon import Muon
from .nancheck import check_mode
from .polar import _is_fsdp_module, _own_class_on_copy, polar_tensors
from .scion import ScionLMO, check_group
from .slices import SCALES, slice_norm
from .steepest import SteepestDescent
from .steps import attach
from .transport import STATES

DIRECTIONS = ("adamw", "muon", "normuon", "lion", "l2", "linf", "rms", "spectral")
RADIALS = ("none", "free", "normalize", "retract", "project", "absorb", "fixed", "multipliers")
# the field's methods, each one cell of compose's grid; "adamw" and "adamw-weight-norm" are the plain
# baselines (torch's AdamW, torch's weight_norm)
MUON_AS_TORCH = {"dtype": torch.bfloat16, "adjust_lr_fn": "match_rms_adamw"}  # torch.optim.Muon's arithmetic
NAMED = {
    "polar-normalize": dict(direction="adamw", radial="normalize", scale="out"),
    "polar-project": dict(direction="adamw", radial="project", scale="out"),
    "polar-absorb": dict(direction="adamw", radial="absorb", scale="out"),
    "polar-absorb-rescale": dict(direction="adamw", radial="absorb", scale="out", state="rescale"),
    "muon": dict(direction="muon", radial="none", direction_options=MUON_AS_TORCH),
    "normuon": dict(direction="normuon", radial="none", direction_options={"adjust_lr_fn": "match_rms_adamw"}),
    "hyperball-adamw": dict(direction="adamw", radial="fixed", scale="tensor"),
    "hyperball-muon": dict(direction="muon", radial="fixed", scale="tensor", direction_options=MUON_AS_TORCH),
    "multipliers": dict(direction="adamw", radial="multipliers"),
    # AngularMuown (fhueb/angular-muown): W = diag(g)·U, rows of U on the sphere, Polar Express on U's tangent
    # gradient, Adam (betas 0.9, 0.95) on g; its angular lr decay is a schedule on the direction group
    # Scion (LIONS-EPFL/scion): its Spectral LMO on the hidden matrices, momentum as an average (α = 0.1), the
    # constrained step W ← (1 − γ)W − γ·ρ·lmo with weight_decay=1 (0: unconstrained); the head by its Sign LMO,
    # embeddings by ColNorm, vectors by BiasRMS (rest="scion")
    "scion": dict(direction="muon", radial="none", rest="scion",
                  direction_options={"nesterov": False, "momentum": 0.9, "adjust_lr_fn": "spectral"}),
    "muown": dict(direction="muon", radial="retract", scale="row", direction_options={"backend": "polar-express"},
                  adam_options={"betas": (0.9, 0.95)}),
    "absorb-muon": dict(direction="muon", radial="absorb", scale="tensor", direction_options=MUON_AS_TORCH),
}
RECIPES = ("adamw", "adamw-weight-norm", *NAMED)


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


def _decay_groups(params, kept: set[int], weight_decay, **options) -> list[dict]:
    """``params`` as two groups: decayed, and kept from decay (``kept``: ids, by ``param_groups``' convention);
    ``options`` (e.g. ``lr``) set on both."""
    params = list(params)
    groups = ({"params": [p for p in params if id(p) not in kept], "weight_decay": weight_decay, **options},
              {"params": [p for p in params if id(p) in kept], "weight_decay": 0.0, **options})
    return [g for g in groups if g["params"]]


def _adamw(params, lr, weight_decay, kept, **kw):
    groups = _decay_groups(params, kept, weight_decay)
    return torch.optim.AdamW(groups, lr=lr, **kw) if groups else None


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


ATTACHED = ("polar-project", "polar-absorb", "polar-absorb-rescale", "absorb-muon")  # the recipes that renormalize


def _weight_owners(model: nn.Module, hidden, name: str) -> list[nn.Module]:
    """The module whose own ``weight`` each hidden matrix is (what a parametrization or weight_norm wraps);
    refused, naming them, for a matrix that is not one (tied, or an LSTM's ``weight_ih_l0``)."""
    owners = {id(p): own for p, own, _ in _candidates(model)}
    odd = [q for q, p in hidden if len(owners[id(p)]) != 1 or owners[id(p)][0][2] != "weight"]
    if odd:
        raise ValueError(f"{name!r} wraps a module's `weight`; {', '.join(odd)} is not one module's own `weight` "
                         "(tied, or named otherwise, e.g. LSTM/MultiheadAttention): leave it out with exclude=")
    return [owners[id(p)][0][1] for _, p in hidden]


def _direction_class(rule: str) -> type:
    return {"adamw": torch.optim.AdamW, "muon": Muon, "normuon": Muon, "lion": Lion}.get(rule, SteepestDescent)


def _check_direction_options(rule: str, options: dict) -> None:
    """Refuse an option the direction rule's optimizer does not take (or one compose sets itself), naming
    the valid ones."""
    import inspect

    taken = {"self", "params", "lr", "normuon", "norm", "weight_decay"}
    valid = sorted(n for n, q in inspect.signature(_direction_class(rule).__init__).parameters.items()
                   if n not in taken and q.kind not in (q.VAR_POSITIONAL, q.VAR_KEYWORD))
    bad = sorted(set(options) - set(valid))
    if bad:
        raise ValueError(f"direction {rule!r} takes no option {', '.join(map(repr, bad))} in direction_options; its "
                         f"options are {', '.join(valid)} (lr and weight_decay are compose's own arguments)")


def _direction_optimizer(rule: str, groups: list[dict], lr: float, options: dict, adam: dict):
    """The optimizer of direction rule ``rule`` over ``groups`` (each with its weight decay)."""
    if rule == "adamw":
        return torch.optim.AdamW(groups, lr=lr, **{**adam, **options})
    if rule in ("muon", "normuon"):
        return Muon(groups, lr=lr, normuon=rule == "normuon", **options)
    if rule == "lion":
        return Lion(groups, lr=lr, **options)
    return SteepestDescent(groups, lr=lr, norm=rule, **options)


def _check_rates(weight_decay, **lrs) -> None:
    """Refuse an lr that is not a positive finite number, or a weight decay below 0, naming it."""
    for key, value in lrs.items():
        if isinstance(value, bool) or not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
            raise ValueError(f"{key} must be a positive finite number, got {value!r}")
    if isinstance(weight_decay, bool) or not (isinstance(weight_decay, (int, float)) and 0 <= weight_decay < math.inf):
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")


def _choice(kind: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid choices are {', '.join(map(repr, valid))}")


def compose(model: nn.Module, *, direction: str = "adamw", radial: str = "none", scale: str = "out", lr: float,
            radial_lr: float | None = None, rest_lr: float | None = None, weight_decay: float = 0.0, include=None,
            exclude=None, direction_options: dict | None = None, adam_options: dict | None = None, state: str = "keep",
            every: int = 1, check: str | None = "lazy", check_every: int = 100, restore: bool = False,
            compile: bool = False, shard: Callable[[nn.Module], object] | None = None, rest: str = "adamw",
            rest_options: dict | None = None, name: str | None = None) -> torch.optim.Optimizer:
    """One optimizer for ``model``: a direction rule × a radial rule × a scale granularity on its hidden
    matrices (:func:`hidden_matrices`), AdamW on everything else (embeddings, head, biases, gains).

    - ``direction`` (what steps the matrix, or its direction V): ``"adamw"`` (torch's AdamW), ``"muon"`` and
      ``"normuon"`` (:class:`polaropt.Muon`; conv kernels as out × in·kh·kw), ``"lion"`` (:class:`polaropt.Lion`),
      ``"l2"``/``"linf"``/``"rms"``/``"spectral"`` (:class:`polaropt.SteepestDescent`, CS182's norms).
      ``direction_options``: that optimizer's own options (Muon's ``backend``, ``ns_steps``, ``dtype``,
      ``adjust_lr_fn``, ``batch_dims``, ``momentum``; Lion's ``betas``; ...).
    - ``radial`` (what happens to the norm): ``"none"`` (plain W, decayed by ``weight_decay``), the polar modes
      ``"free"`` (W = s ⊙ V, both trained: learnable multipliers), ``"normalize"`` (weight normalization),
      ``"retract"`` (weight normalization whose V is put back on the sphere after each step, which leaves W as
      it is: V's gradient is tangent and its step size stays lr; Muown's geometry),
      ``"project"`` (V back on the sphere after each step), ``"absorb"`` (Liu: ‖V‖ moved into s), each with a
      trainable scale stepped by AdamW at ``radial_lr`` (default ``lr``); ``"fixed"`` (Hyperball: the norm fixed
      at its value at the first step, the step normalized per tensor, W ← R·N(W − η·R·N(u)); at a finer
      ``scale`` each slice's norm is fixed); ``"multipliers"`` (W_ij = r_i·V_ij·c_j, Falcon's row × column
      multipliers; ``scale`` does not apply).
    - ``scale``: the granularity of the polar scale (``"out"``/``"in"`` by the layer's layout, ``"tensor"``,
      ``"row"``, ``"column"``, ``"element"``).

    ``rest_lr`` (default ``lr``): the lr of what steps everything but the hidden matrices and their scales
    (embeddings, the head, biases, norm gains: AdamW, or Scion's oracles), e.g. fixed at a tuned AdamW's lr while
    ``lr`` is searched.
    ``rest="scion"`` (plain hidden matrices: ``radial`` ``"none"``, or ``"fixed"`` per tensor) steps them instead
    with Scion's oracles (:class:`polaropt.scion.ScionLMO`): the output head (the last ``nn.Linear``, tied or not)
    by Sign, embeddings by ColNorm, vectors by BiasRMS, anything else by AdamW; ``rest_options`` sets
    ``head_scale`` (default 10), ``embed_scale`` and ``vector_scale`` (1) and Scion's ``momentum`` α (0.1), and
    ``weight_decay`` λ is Scion's (1: its constrained step, on every one of them).

    Weight decay λ lands where each radial rule carries W's norm (:func:`polaropt.param_groups`): on V for
    ``free``/``absorb``, on s for ``normalize``/``project``, nowhere for ``fixed`` (its norm is fixed); 1-D
    parameters and a model's ``no_weight_decay()`` names are kept from it. ``state``, ``every``, ``check``,
    ``check_every``, ``restore``: :func:`polaropt.attach`'s, for ``project``/``absorb``/``fixed``. Returns one
    optimizer (a :class:`RecipeOptimizer` when two are needed) with ``polar_handles`` and ``polar_recipe``.
    ``compile=True`` (Hyperball-AdamW only: ``"adamw"`` × ``"fixed"`` × ``"tensor"``, float32/float64 weights) steps
    the hidden matrices with :class:`polaropt.HyperballAdamW`, AdamW's update and Hyperball's fused by
    ``torch.compile`` (the first step compiles, which takes seconds and, on a CPU, a C++ compiler); the same rule
    and state as without it. ``shard``: under FSDP2, a function that shards the model (``fully_shard`` on its
    blocks, then on the root), called after the cell has parametrized it and before the optimizers are built, the
    order FSDP2 needs (a polar cell's s and V, or the multipliers, must exist before ``fully_shard`` so FSDP
    shards and reduces them like any parameter); a plain cell may also take a model already sharded.
    A cell that cannot work is refused, naming why (``"fixed"`` with ``scale="element"``: each entry's magnitude
    would be fixed; ``"normalize"``/``"retract"`` with ``"element"``: V/|V| is a sign, it has no gradient).
    """
    _choice("direction rule", direction, DIRECTIONS)
    _choice("radial rule", radial, RADIALS)
    _choice("scale", scale, SCALES + ("out", "in"))
    _check_rates(lr=lr, radial_lr=lr if radial_lr is None else radial_lr, rest_lr=lr if rest_lr is None else rest_lr,
                 weight_decay=weight_decay)
    if radial == "fixed" and scale == "element":
        raise ValueError("radial='fixed' with scale='element' fixes every entry's magnitude: only its sign could "
                         "change. Use 'tensor' (Hyperball), 'row'/'out' or 'column'/'in'")
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise ValueError("compose() takes a plain model and parametrizes it itself; this one is already "
                         "parametrized (polarized, weight_norm, or an earlier recipe): build it afresh")
    # everything that can be refused is checked before the model is touched
    check_mode(check, check_every, restore)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be a positive int (renormalize every k steps), got {every!r}")
    _choice("state policy", state, STATES)
    renormalized = radial in ("project", "absorb") or (radial == "fixed" and scale != "tensor")
    if not renormalized and (state != "keep" or every != 1):
        raise ValueError(f"state= and every= set the renormalization after the step, which radial={radial!r}"
                         f"{'' if radial != 'fixed' else ' at scale=' + repr(scale)} does not have; leave them at "
                         "'keep' and 1")
    options, adam = dict(direction_options or {}), dict(adam_options or {})
    _check_direction_options(direction, options)
    if not isinstance(compile, bool):
        raise ValueError(f"compile must be True or False, got {compile!r}")
    if compile and (direction, radial, scale) != ("adamw", "fixed", "tensor"):
        raise ValueError(f"compile=True fuses AdamW's update with Hyperball's (direction='adamw', radial='fixed', "
                         f"scale='tensor': the recipe 'hyperball-adamw'); direction={direction!r}, radial={radial!r}, "
                         f"scale={scale!r} has no fused form")
    _choice("rest rule", rest, RESTS)
    scion_rest = _scion_rest_options(rest, rest_options, radial, scale)
    sharded = any(_is_fsdp_module(m) for m in model.modules())
    if sharded and (shard is not None or not _plain(radial, scale)):
        raise ValueError("the model is already sharded with FSDP2's fully_shard"
                         + (": pass it unsharded with shard=" if shard is not None else
                            f"; radial={radial!r}" + (f" at scale={scale!r}" if radial == "fixed" else "")
                            + " parametrizes it, which must come first: pass the unsharded model and shard=<a "
                              "function that calls fully_shard on it>"))
    if compile and (sharded or shard is not None):
        raise ValueError("compile=True steps whole local tensors; under FSDP2 (DTensor shards) use compile=False")
    if shard is not None and not callable(shard):
        raise ValueError(f"shard must be a function that shards the model (e.g. calls fully_shard), got {shard!r}")
    unfused = (set(adam) | set(options)) - {"betas", "eps"}
    if compile and unfused:
        raise ValueError(f"compile=True takes AdamW's betas and eps only, got {', '.join(sorted(unfused))}: leave "
                         "compile=False for them")
    radial_lr = lr if radial_lr is None else radial_lr
    rest_lr = lr if rest_lr is None else rest_lr
    name = name or f"{direction}/{radial}" + ("" if radial in ("none", "multipliers") else f"/{scale}")
    checks = dict(every=every, check=check, check_every=check_every, restore=restore)
    # kept from decay as param_groups keeps them (1-D, no_weight_decay()), read while the names are plain
    kept = kept_from_decay(model, _no_decay(model, "auto"))
    hidden, rest = _split(model, include, exclude)
    if not hidden:
        raise ValueError(f"{name}: found no hidden matrix in the model; name them with include=")
    # the direction rule's own checks (its options, its shapes) on the plain matrices, before the model is touched
    _direction_optimizer(direction, [{"params": [p for _, p in hidden], "weight_decay": weight_decay}], lr, options,
                         adam)
    sharding = {"started": False}

    def sharded(m):
        sharding["started"] = True
        shard(m)

    def give_back(e: BaseException) -> None:
        """A refused cell leaves the model as it came, unless shard= has started sharding it."""
        if sharding["started"]:
            raise RuntimeError(f"{name}: failed once shard= had started sharding the model ({type(e).__name__}: {e}); "
                               "fully_shard cannot be undone, so the model is left as it is: build it afresh") from e
        _undo(model)
    try:
        optimizers, base, ball = _build(model, direction, radial, scale, lr, radial_lr, rest_lr, weight_decay, hidden,
                                        rest, kept, options, adam, name, compile, shard and sharded, scion_rest)
    except BaseException as e:
        give_back(e)
        raise

    def hooks(opt):
        # the cell's own post-hooks run before attach's (the renormalization), its pre-hooks after attach's (the
        # gradient check): a refused step finds nothing of the cell's done
        handles = ball.post_hooks(base) if ball is not None else []
        try:  # every cell is guarded against NaN/Inf (check=); project/absorb and a fixed radius per slice renormalize
            handles.append(attach(opt, model, state=state, **checks))
        except BaseException:
            for h in handles:
                h.remove()
            raise
        return handles + (ball.pre_hooks(base) if ball is not None else [])
    try:
        return _finish(name, optimizers, hooks)
    except BaseException as e:
        give_back(e)
        raise


class Retract:
    """After the direction optimizer's step, each slice of V back on the unit sphere (weight normalization's W =
    s ⊙ V/‖V‖ does not change): the radial rule ``"retract"``."""

    def __init__(self, targets):
        self.targets = [(t.direction, t.polar.dims) for t in targets]

    def post_hooks(self, base: torch.optim.Optimizer) -> list:
        return [base.register_step_post_hook(self.post)]

    def pre_hooks(self, base: torch.optim.Optimizer) -> list:
        return []

    @torch.no_grad()
    def post(self, opt, args, kwargs) -> None:
        for v, dims in self.targets:
            v.div_(slice_norm(v, dims).clamp_min(torch.finfo(v.dtype).tiny).to(v.dtype))


def _undo(model: nn.Module) -> None:
    """Take off what compose put on ``model`` (polar tensors, multipliers); their weights are kept."""
    unpolarize_model(model)
    for module in model.modules():
        if isinstance(getattr(module, "parametrizations", None), nn.ModuleDict) and "weight" in module.parametrizations \
                and isinstance(module.parametrizations.weight[0], Multipliers):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def _plain(radial: str, scale: str) -> bool:
    """Whether the cell steps W itself, unparametrized: no radial rule, or Hyperball's fixed norm per tensor."""
    return radial == "none" or (radial == "fixed" and scale == "tensor")


def _resharded(model, shard, *lists):
    """``shard(model)``, then each list of parameters again as the sharded model's (fully_shard replaces every
    parameter with a DTensor one; the same qualified name finds it)."""
    if shard is None:
        return lists
    before = {id(p): q for q, p in model.named_parameters(remove_duplicate=False)}
    shard(model)
    return tuple([model.get_parameter(before[id(p)]) for p in params] for params in lists)


RESTS = ("adamw", "scion")
SCION_REST = {"head_scale": 10.0, "embed_scale": 1.0, "vector_scale": 1.0, "momentum": 0.1}


def _scion_rest_options(rest: str, options: dict | None, radial: str, scale: str) -> dict | None:
    """``rest_options`` checked for ``rest="scion"`` (None for AdamW, which takes none)."""
    if rest == "adamw":
        if options:
            raise ValueError(f"rest_options are Scion's (rest='scion'); rest='adamw' takes none, got {options!r}")
        return None
    if not _plain(radial, scale):
        raise ValueError(f"rest='scion' steps the parameters around plain hidden matrices (radial='none', or 'fixed' "
                         f"at scale='tensor'); radial={radial!r} at scale={scale!r} puts its scales there too")
    bad = sorted(set(options or {}) - set(SCION_REST))
    if bad:
        raise ValueError(f"unknown rest_options {', '.join(map(repr, bad))}; valid are {', '.join(SCION_REST)}")
    options = {**SCION_REST, **(options or {})}
    check_group(**options)
    return options


def _scion_rest(model, rest, lr, weight_decay, kept, adam, options) -> list:
    """Scion's oracles for ``rest`` (the head by Sign, embeddings by ColNorm, vectors by BiasRMS), AdamW for
    anything else; ``rest`` are the model's parameters as the optimizers will see them."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    head = {id(linears[-1].weight)} if linears else set()
    embeds = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)} - head
    kinds = {"sign": [p for p in rest if id(p) in head], "colnorm": [p for p in rest if id(p) in embeds],
             "bias_rms": [p for p in rest if p.ndim == 1]}
    scales = {"sign": options["head_scale"], "colnorm": options["embed_scale"], "bias_rms": options["vector_scale"]}
    groups = [{"params": ps, "norm": k, "scale": scales[k]} for k, ps in kinds.items() if ps]
    chosen = {id(p) for ps in kinds.values() for p in ps}
    other = [p for p in rest if id(p) not in chosen]
    return [ScionLMO(groups, lr=lr, momentum=options["momentum"], weight_decay=weight_decay) if groups else None,
            _adamw(other, lr, weight_decay, kept, **adam)]


def _build(model, direction, radial, scale, lr, radial_lr, rest_lr, weight_decay, hidden, rest, kept, options, adam,
           name, compile=False, shard=None, scion_rest=None):
    """The optimizers of one cell, its direction optimizer and its Hyperball hooks (or None); parametrizes
    ``model`` where the radial rule says, then shards it with ``shard`` (when given) before any optimizer
    exists."""
    mats, names = [p for _, p in hidden], [q for q, _ in hidden]
    if _plain(radial, scale):  # compile=True is one of these
        if shard is not None:
            undecayed = [p for p in mats + rest if id(p) in kept]
            mats, rest, undecayed = _resharded(model, shard, mats, rest, undecayed)
            kept = {id(p) for p in undecayed}
        others = ([_adamw(rest, rest_lr, weight_decay, kept, **adam)] if scion_rest is None
                  else _scion_rest(model, rest, rest_lr, weight_decay, kept, adam, scion_rest))
        if compile:  # Hyperball-AdamW fused: no hooks, the optimizer is the rule; the hooks' groups (checkpoints)
            groups, name_of = _decay_groups(mats, kept, 0.0), dict(zip(map(id, mats), names))
            base = HyperballAdamW(groups, [name_of[id(p)] for g in groups for p in g["params"]], lr=lr,
                                  **{**adam, **options})
            return [base, *others], base, None
        fixed = radial == "fixed"  # Hyperball on the plain weights: its norm is fixed, so nothing decays there
        base = _direction_optimizer(direction, _decay_groups(mats, kept, 0.0 if fixed else weight_decay), lr,
                                    options, adam)
        return [base, *others], base, Hyperball(mats, names) if fixed else None
    if radial == "multipliers":
        directions, factors = [], []
        for (q, p), module in zip(hidden, _weight_owners(model, hidden, name)):
            parametrize.register_parametrization(module, "weight", Multipliers(p.shape, p.dtype, p.device))
            _own_class_on_copy(module)  # a deepcopy gets its own parametrized class
            directions.append(module.parametrizations.weight.original)
            factors += [module.parametrizations.weight[0].r, module.parametrizations.weight[0].c]
        undecayed = [p for p in rest if id(p) in kept]
        directions, factors, rest, undecayed = _resharded(model, shard, directions, factors, rest, undecayed)
        kept = {id(p) for p in undecayed}
        if direction == "adamw":  # one AdamW, as the method's paper trains it
            groups = [{"params": directions, "weight_decay": weight_decay},
                      {"params": factors, "weight_decay": 0.0, "lr": radial_lr},
                      *_decay_groups(rest, kept, weight_decay, lr=rest_lr)]
            base = torch.optim.AdamW(groups, lr=lr, **adam)
            return [base], base, None
        base = _direction_optimizer(direction, [{"params": directions, "weight_decay": weight_decay}], lr, options, adam)
        return [base, torch.optim.AdamW([{"params": factors, "weight_decay": 0.0, "lr": radial_lr},
                                         *_decay_groups(rest, kept, weight_decay, lr=rest_lr)], lr=lr, **adam)], base, None
    mode = {"fixed": "project", "retract": "normalize"}.get(radial, radial)
    polarize_model(model, include=names, scale=scale, mode=mode, trainable_scale=radial != "fixed")
    if shard is not None:
        shard(model)  # param_groups and the polar tensors below read the sharded model's parameters
    groups = param_groups(model, weight_decay=weight_decay, scale={"lr": radial_lr}, rest={"lr": rest_lr})
    leaves = [p for g in groups if g["polar_role"] == "direction" for p in g["params"]]
    # a fixed radius per slice: the step on V normalized per tensor, then the renormalization projects each slice
    ball = (Hyperball(leaves, names, project=False) if radial == "fixed"
            else Retract([t for t in polar_tensors(model)]) if radial == "retract" else None)
    if direction == "adamw":
        base = torch.optim.AdamW(groups, lr=lr, **adam)
        return [base], base, ball
    base = _direction_optimizer(direction, [g for g in groups if g["polar_role"] == "direction"], lr, options, adam)
    others = [g for g in groups if g["polar_role"] != "direction"]
    return [base, torch.optim.AdamW(others, lr=lr, **adam) if others else None], base, ball


def recipe(name: str, model: nn.Module, *, lr: float, weight_decay: float = 0.0, include=None, exclude=None,
           **options) -> torch.optim.Optimizer:
    """The optimizer of the named method ``name`` for ``model``: one cell of :func:`compose`'s grid
    (:data:`NAMED`), or a plain baseline. ``optimizer.polar_handles`` (each ``.remove()``) and
    ``optimizer.polar_recipe`` (the name) are reachable from it.

    | name | cell: direction × radial × scale | the method |
    |---|---|---|
    | adamw | – | torch AdamW on everything |
    | adamw-weight-norm | – | torch ``weight_norm(dim=0)`` on hidden matrices; AdamW, decay on the direction only |
    | polar-normalize / -project / -absorb | adamw × normalize/project/absorb × out | polaropt's modes |
    | polar-absorb-rescale | adamw × absorb × out, ``state="rescale"`` | Adam's moments carried into the new coordinates |
    | muon | muon × none | ``torch.optim.Muon`` (bf16, ``match_rms_adamw``) bit for bit on 2-D matrices; conv kernels too |
    | normuon | normuon × none | NorMuon (per-row normalized Muon) |
    | hyperball-adamw / -muon | adamw/muon × fixed × tensor | Hyperball / MuonH: ``W ← R·N(W − η·R·N(u))`` |
    | multipliers | adamw × multipliers | ``W_ij = r_i·V_ij·c_j`` (Falcon), decay on V only |
    | absorb-muon | muon × absorb × tensor | Liu's absorb, Muon on the direction, AdamW on the scale |

    ``options``: ``betas`` and ``eps`` for the AdamW parts; ``rest_lr`` (all but ``adamw``: the lr of embeddings,
    head, biases and gains, as :func:`compose`); for the cells, ``radial_lr``, ``direction_options``, the NaN/Inf
    check's ``check``, ``check_every`` and ``restore`` and FSDP2's ``shard`` (as :func:`compose`), ``every`` for
    those that renormalize (:data:`ATTACHED`), ``compile`` for ``hyperball-adamw`` (:class:`HyperballAdamW`) and
    ``rest_options`` for ``scion`` (the radii of its head, embeddings and vectors). Unknown names and options are
    refused, naming the valid ones.
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; valid recipes are {', '.join(RECIPES)}")
    cell = NAMED.get(name, {})
    valid = ({"betas", "eps"} | ({"rest_lr"} if name != "adamw" else set())
             | ({"radial_lr", "direction_options", "check", "check_every", "restore", "shard"} if cell else set())
             | ({"rest_options"} if cell.get("rest") == "scion" else set())
             | ({"every"} if name in ATTACHED else set()) | ({"compile"} if name == "hyperball-adamw" else set()))
    bad = sorted(set(options) - valid)
    if bad:
        raise ValueError(f"recipe {name!r} takes no option {', '.join(map(repr, bad))}; its options are "
                         f"{', '.join(sorted(valid))}")
    adam = {k: options.pop(k) for k in ("betas", "eps") if k in options}
    if cell:
        given = options.pop("direction_options", None) or {}
        return compose(model, **{**cell, "direction_options": {**cell.get("direction_options", {}), **given},
                                 "adam_options": {**cell.get("adam_options", {}), **adam}},
                       lr=lr, weight_decay=weight_decay, include=include, exclude=exclude, name=name, **options)
    rest_lr = options.pop("rest_lr", lr)
    _check_rates(lr=lr, rest_lr=rest_lr, weight_decay=weight_decay)  # before the model is touched
    if any(parametrize.is_parametrized(m) for m in model.modules()):
        raise ValueError("recipe() takes a plain model and parametrizes it itself; this one is already "
                         "parametrized (polarized, weight_norm, or an earlier recipe): build it afresh")
    kept = kept_from_decay(model, _no_decay(model, "auto"))
    if name == "adamw":
        return _finish(name, [_adamw(model.parameters(), lr, weight_decay, kept, **adam)])
    # adamw-weight-norm: torch's weight_norm on each hidden matrix, which must be one module's own `weight`
    hidden, rest = _split(model, include, exclude)
    gains, directions = [], []
    for module in _weight_owners(model, hidden, name):
        torch.nn.utils.parametrizations.weight_norm(module, "weight", dim=0)
        _own_class_on_copy(module)
        gains.append(module.parametrizations.weight.original0)
        directions.append(module.parametrizations.weight.original1)
    groups = [{"params": directions, "weight_decay": weight_decay}, {"params": gains, "weight_decay": 0.0},
              *_decay_groups(rest, kept, weight_decay, lr=rest_lr)]
    return _finish(name, [torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, **adam)])
