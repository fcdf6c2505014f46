"""Polar weights ``W = s ⊙ Ŵ``: a scale times a direction, registered with ``torch.nn.utils.parametrize``.

``polarize(module, "weight", ...)`` replaces ``module.weight`` by a parametrization whose two
leaves, ``s = module.parametrizations.weight.original0`` and
``V = module.parametrizations.weight.original1`` (the layout of torch's own ``weight_norm``), are
what the optimizer updates; ``module.weight`` keeps its shape and meaning and is recomputed from
them on every access.

Modes (how ``Ŵ`` is obtained from ``V``):

- ``"free"``: ``W = s ⊙ V``, ``V`` unconstrained (learnable multipliers; Liu 001 "learnable_scale").
- ``"normalize"``: ``W = s ⊙ V/‖V‖``, the gradient flows through the norm (weight normalization,
  Salimans & Kingma 2016; Wu et al. 2020 (seed 002) "WN"; Chou et al. 2023 (seed 003)).
- ``"project"``: ``W = s ⊙ V``; after each optimizer step ``V ← V/‖V‖`` (Wu et al. 2020 "rPGD": the
  radial part of the step is discarded, so ``W`` changes at the projection).
- ``"absorb"``: ``W = s ⊙ V``; after each optimizer step ``a = ‖V‖, V ← V/a, s ← a·s`` (Liu 001
  "re-parametrization": ``W`` is unchanged, the scale grows multiplicatively, so reaching a target
  of norm R takes O(log R) steps instead of O(R)).

``"project"`` and ``"absorb"`` act after the step, so they need :func:`polaropt.attach` (or a call of
:func:`polaropt.renormalize_` after every step). Forgetting it is an error, not a silent ``"free"``:
an optimizer step that moves their ``V`` with nothing renormalizing it makes the next forward raise
(see :mod:`polaropt.guard`). ``"free"`` and ``"normalize"`` work with ``polarize`` alone.

A Parameter shared by several modules (a tied embedding and output head) is polarized once: every
owner reads the same ``s`` and ``V`` (one ParametrizationList registered under each owner), so the
parameter count and the tie are kept. ``polarize`` on the second owner joins the first; an owner
left holding the replaced Parameter is refused by :func:`polaropt.param_groups`, :func:`polaropt.attach`
and at the optimizer's first step. :func:`polaropt.polarize_model` polarizes all owners at once.

Initialize first, then polarize: ``nn.init.*_(module.weight)``, ``reset_parameters()`` and
``module.weight.data.normal_()`` write into a recomputed ``W`` that is thrown away. Use
:func:`polaropt.reinitialize_` on a polarized model.
"""

from __future__ import annotations

import math
from typing import Iterator, NamedTuple

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import fold, guard
from .slices import SCALES, check_scale, reduce_dims, scale_shape, slice_norm

MODES = ("free", "normalize", "project", "absorb")
INITS = ("norm", "one")
DEFAULT_EPS = 1e-12
# the settings a checkpoint records and a load compares (init and eps only matter at polarize time)
CHECKPOINTED = ("mode", "scale", "trainable_scale", "batch_dims")
# A checkpoint stores them as one int64 tensor [version, mode, scale, trainable_scale, batch_dims] (codes
# index MODES and SCALES, which only ever grow at the end): a state dict then holds tensors only
# (safetensors, Hugging Face's save_pretrained, EMA helpers that treat every entry as a tensor), each of
# one fixed shape (a distributed checkpoint loads into it in place).
SETTINGS_VERSION = 1


def encode_settings(settings: dict) -> torch.Tensor:
    """``{"mode": ..., "scale": ..., ...}`` -> the int64 tensor a checkpoint holds."""
    return torch.tensor([SETTINGS_VERSION, MODES.index(settings["mode"]), SCALES.index(settings["scale"]),
                         int(settings["trainable_scale"]), settings["batch_dims"]], dtype=torch.int64)


def decode_settings(state) -> dict | None:
    """The settings a checkpoint entry holds (the tensor above, or the dict polaropt 0.2–0.3 wrote); None
    if it is neither."""
    if isinstance(state, dict):
        return {k: state.get(k) for k in CHECKPOINTED}
    if not (torch.is_tensor(state) and state.shape == (5,) and not state.is_complex() and not state.is_meta):
        return None
    values = state.tolist()
    if any(v != int(v) for v in values):  # a converter that cast every tensor to floating point keeps integers
        return None
    version, mode, scale, trainable, batch_dims = map(int, values)
    if version != SETTINGS_VERSION or not (0 <= mode < len(MODES) and 0 <= scale < len(SCALES)) or trainable not in (0, 1):
        return None
    return {"mode": MODES[mode], "scale": SCALES[scale], "trainable_scale": bool(trainable), "batch_dims": batch_dims}


def _choice(kind: str, value, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ValueError(f"unknown {kind} {value!r}; valid choices are {', '.join(map(repr, valid))}")
    return value


class Polar(nn.Module):
    """The parametrization ``(s, V) ↦ W``; ``right_inverse`` splits a weight into ``(s, V)``.

    ``forward(right_inverse(W)) == W`` for every mode (up to rounding). The configuration lives in
    plain attributes; ``get_extra_state`` puts ``mode``, ``scale``, ``trainable_scale`` and
    ``batch_dims`` into the model's ``state_dict`` (as a small int64 tensor, :func:`encode_settings`),
    and loading a checkpoint saved with other settings raises an error naming the tensor and both settings.
    """

    def __init__(self, ndim: int, *, scale: str, mode: str, trainable_scale: bool, init: str,
                 batch_dims: int, eps: float):
        super().__init__()
        self.scale = check_scale(scale)
        self.mode = _choice("mode", mode, MODES)
        self.init = _choice("init", init, INITS)
        if mode == "normalize" and scale == "element":
            raise ValueError(
                "mode='normalize' with scale='element' is refused: each slice is one entry, so "
                "V/‖V‖ = sign(V) and V gets zero gradient; use mode='absorb' or 'free' for "
                "element-wise scales, or a coarser scale ('tensor', 'row', 'column')"
            )
        if mode == "normalize" and init == "one":
            raise ValueError(
                "init='one' keeps V = W0 unnormalized, but mode='normalize' divides by ‖V‖, so W "
                "would change at polarize; use init='norm' (valid choices: 'norm', 'one')"
            )
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a positive finite float, got {eps!r}")
        self.dims = reduce_dims(ndim, scale, batch_dims)
        self.batch_dims = batch_dims
        kept = [d for d in range(ndim) if d not in self.dims]
        # torch._weight_norm(v, g, dim) is the fused kernel behind torch's weight_norm: the norm is
        # taken over every dim but `dim` (-1: over all). It applies when at most one dim is kept.
        self._fused_dim = None if len(kept) > 1 else (kept[0] if kept else -1)
        self.trainable_scale = bool(trainable_scale)
        self.eps = float(eps)
        self._label = "a polarized tensor"  # "Linear.weight" or the qualified name; for messages
        self._owners = 1  # modules that read this parametrization (tied weights: more than one)
        self._stale = False  # set by polaropt.guard: V was stepped and not renormalized
        self._pending = False  # polaropt.guard: armed when a step begins, cleared by a renormalization
        self._stepped_by = "an optimizer"
        self._loading = None  # the state_dict prefix while load_state_dict runs, for messages

    def forward(self, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self._stale:
            raise RuntimeError(self._stale_message())
        return compose(s, v, self)

    @torch.no_grad()
    def check(self, w: torch.Tensor) -> torch.Tensor:
        """Refuse a weight this parametrization cannot split; return its slice norms."""
        if not torch.is_floating_point(w):
            raise ValueError(f"polar weights must be floating point, got dtype {w.dtype} for {self._label}")
        if getattr(w, "placements", None) is not None:
            raise ValueError(
                f"{self._label} is a DTensor (its module was already sharded by FSDP2's fully_shard, or "
                "parallelized): polaropt splits plain weights into s and V, so polarize (and polarize_model) "
                "first, then call fully_shard (reinitialize_ and load_plain_state_dict also work before "
                "sharding); the polar leaves s and V are then sharded like any parameter"
            )
        if w.is_meta:
            raise ValueError(
                f"{self._label} is on the meta device, so it has no values to split into s and V; "
                "initialize first, then polarize: model.to_empty(device=...) and reset_parameters() "
                "(or your init), then polaropt.polarize"
            )
        if not torch.isfinite(w).all():
            raise ValueError(f"{self._label} holds NaN or Inf; a polar split of it would be meaningless")
        if self.mode == "normalize" and math.prod(w.shape[d] for d in self.dims) == 1:
            raise ValueError(
                f"mode='normalize' with scale={self.scale!r} on {self._label} of shape {tuple(w.shape)}: every slice of "
                "V has one entry, so V/‖V‖ = sign(V) and V gets zero gradient; use mode='absorb' or 'free', "
                "or a coarser scale"
            )
        n = slice_norm(w, self.dims)
        if self._splits_zeros() and not self.trainable_scale and bool((n == 0).any()):
            bad = int((n == 0).sum())
            raise ValueError(
                f"{bad} slice(s) of {self._label} (scale={self.scale!r}) are exactly zero: a zero slice gets s = 0, "
                "and with trainable_scale=False that scale (a fixed radius) stays 0, so those entries could never "
                "move; make the scale trainable, initialize the weight first, or leave it out with exclude="
            )
        return n

    def _splits_zeros(self) -> bool:
        """Whether this split divides by the slice norms (so an exactly zero slice needs its own rule)."""
        return self.init == "norm" or self.mode in ("normalize", "project", "absorb")

    @torch.no_grad()
    def right_inverse(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(s, V)`` with ``s ⊙ Ŵ = w``. A slice that is exactly zero (a zero-initialized output projection, an
        Embedding's padding row) gets ``s = 0`` and the deterministic unit direction of equal entries
        ``1/√n``: W stays exactly 0 and trains through ``s`` (``∂L/∂s = Σ V ⊙ ∂L/∂W``)."""
        n = self.check(w)
        if self._splits_zeros():
            zero = n == 0
            if bool(zero.any()):
                unit = torch.full_like(w, math.prod(w.shape[d] for d in self.dims) ** -0.5)
                if self.init == "norm":
                    s, v = n, w / torch.where(zero, torch.ones_like(n), n)
                else:  # "one": s = 1 and V = W0, but for the zero slices
                    s, v = torch.where(zero, torch.zeros_like(n), torch.ones_like(n)), w
                v = torch.where(zero, unit, v)
                return s.to(w.dtype), v.to(w.dtype)
        if self.init == "norm":
            return n.to(w.dtype), (w / n).to(w.dtype)
        return torch.ones(scale_shape(w.shape, self.scale, self.batch_dims), dtype=w.dtype, device=w.device), w.clone()

    def settings(self) -> dict:
        """The settings a checkpoint records: ``mode``, ``scale``, ``trainable_scale``, ``batch_dims``."""
        return {k: getattr(self, k) for k in CHECKPOINTED}

    def get_extra_state(self) -> torch.Tensor:
        return encode_settings(self.settings())

    def set_extra_state(self, state) -> None:
        if torch.is_tensor(state) and state.is_meta:
            return  # a model loaded on the meta device (to materialize later): there are no values to compare
        mine, saved = self.settings(), decode_settings(state)
        if saved != mine:
            where = _tensor_name(self._loading) if self._loading is not None else self._label
            saved = ", ".join(f"{k}={v!r}" for k, v in saved.items()) if saved is not None else repr(state)
            ours = ", ".join(f"{k}={v!r}" for k, v in mine.items())
            raise ValueError(f"the checkpoint's {where} was polarized with {saved}, but this model's has {ours}; "
                             "polarize the model as the checkpoint was (or load a plain checkpoint with "
                             "polaropt.load_plain_state_dict)")

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        if state.get("_plist") is not None:  # a deepcopy: watch the copy (a stale original stays stale)
            guard.track(state["_plist"], self)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._loading = prefix
        try:
            super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        finally:
            self._loading = None
            guard.touch(self)  # load_state_dict(assign=True) replaces the leaves: cached plans rebuild

    def _stale_message(self) -> str:
        return (f"{self._label} is polarized with mode={self.mode!r}, which renormalizes V after every optimizer "
                f"step, but {self._stepped_by}.step() updated V and nothing renormalized it after that step (it would "
                "silently train mode='free'). Call po.attach(optimizer, model) once, on the optimizer that "
                "updates V (attach(..., every=k) renormalizes every k steps), or po.renormalize_(model) after "
                "each step; use mode='free' for no renormalization")

    def extra_repr(self) -> str:
        return (f"scale={self.scale!r}, mode={self.mode!r}, trainable_scale={self.trainable_scale}, "
                f"init={self.init!r}, batch_dims={self.batch_dims}, eps={self.eps:g}")


def compose(s: torch.Tensor, v: torch.Tensor, polar: Polar) -> torch.Tensor:
    """``W = s ⊙ V`` (``free``/``project``/``absorb``) or ``s ⊙ V/‖V‖`` (``normalize``; see ``eps`` in polarize)."""
    if polar.mode != "normalize":
        return s * v
    if polar._fused_dim is not None and v.dtype in (torch.float32, torch.float64):
        # one fused kernel forward and backward (what torch's own weight_norm runs); about as fast
        # as the unnormalized product. It divides by ‖V‖ unclamped (eps does not apply here): a
        # slice of V that is exactly zero gives NaN, which attach's step guard reports by name.
        return torch._weight_norm(v, s, polar._fused_dim)
    # s / ‖V‖ is one small tensor; multiplying V by it is a single pass over V. The norm is taken
    # in float32 or better and clamped by eps, so a collapsed slice gives 0, not NaN.
    n = slice_norm(v, polar.dims).clamp_min(polar.eps)
    return v * (s / n).to(v.dtype)


def _tensor_name(prefix: str) -> str:
    """``"0.parametrizations.weight.0."`` (a Polar's state_dict prefix) -> ``"0.weight"``."""
    parts = prefix.rstrip(".").split(".")
    owner, name = parts[:-3], parts[-2]
    return ".".join(owner + [name])


def _is_fsdp_module(module: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch built without distributed
        return False
    return isinstance(module, FSDPModule)


def _polar_of(module: nn.Module, name: str) -> Polar | None:
    """The Polar of ``module.<name>``: the first parametrization (others may be stacked above it)."""
    if not parametrize.is_parametrized(module, name):
        return None
    plist = module.parametrizations[name]
    return plist[0] if isinstance(plist[0], Polar) else None


def _copied_with_own_class(self, memo):
    """``__deepcopy__`` of a parametrized module's class: copy as torch does, then give the copy a class of its own.

    ``torch.nn.utils.parametrize`` gives each parametrized module a generated class holding the property
    ``weight``; torch's deepcopy hands the copy that same class, and removing either module's
    parametrization deletes the property from both (the other's next ``.weight`` raises AttributeError).
    """
    cls = type(self)
    # an RNN keeps the weights of its last forward in _flat_weights: a parametrized weight is a computed
    # tensor there, which deepcopy refuses; the copy recomputes them at its first forward
    # (RNNBase._update_flat_weights sees that they changed)
    for w in self.__dict__.get("_flat_weights") or ():
        if isinstance(w, torch.Tensor) and not w.is_leaf:
            memo.setdefault(id(w), None)
    replica = cls._polaropt_deepcopy(self, memo)
    if type(replica) is cls:
        _give_own_class(replica)
    return replica


def _give_own_class(module: nn.Module) -> None:
    """Give the parametrized ``module`` a generated class of its own, with properties of its own (torch's
    property keys ``parametrize.cached()``'s cache by the module it was made for)."""
    cls = type(module)
    own = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = new = type(cls.__name__, cls.__bases__, own)
    for name in module.parametrizations.keys():
        if isinstance(new.__dict__.get(name), property):
            delattr(new, name)
            parametrize._inject_property(module, name)


def _own_class_on_copy(module: nn.Module) -> None:
    """Make a deepcopy of the parametrized ``module`` get its own generated class (see above); idempotent."""
    cls = type(module)
    if cls.__dict__.get("__deepcopy__") is not _copied_with_own_class:
        cls._polaropt_deepcopy = cls.__deepcopy__  # torch's default_deepcopy, or the model class's own
        cls.__deepcopy__ = _copied_with_own_class


# Scales named by the module's layout rather than by a dim: "out" is one scale per output unit (a
# Linear's output feature, a conv's output channel, an Embedding's token, whose row a tied head outputs),
# "in" one per input unit. They resolve to "row" or "column" when a tensor is polarized.
LAYOUT_SCALES = ("out", "in")


def _output_dim(module: nn.Module, tensor: torch.Tensor) -> int:
    """The dim of ``tensor`` (a weight of ``module``) that indexes output units: 1 for ``ConvTranspose*d``
    (``(in, out/groups, ...)``) and for transformers' ``Conv1D`` (GPT-2's ``(in, out)``), else 0."""
    cls = parametrize.type_before_parametrizations(module)
    if issubclass(cls, nn.modules.conv._ConvTransposeNd):
        return 1
    if cls.__name__ == "Conv1D" and tensor.ndim == 2 and tensor.shape[1] == getattr(module, "nf", None):
        return 1
    return 0


def resolve_scale(module: nn.Module, tensor: torch.Tensor, scale: str, batch_dims: int = 0) -> str:
    """``scale`` as a dim-based scale; unknown ones refused.

    ``"out"``/``"in"`` are read from the module's layout. With ``batch_dims`` they are the first and second dims
    after the batch dims; a 1-D tensor's ``"out"`` is its one dim. A grouped convolution has no dim that holds
    one output (or, for ``"in"``, input) unit per slice, unless it is depthwise: refused, naming the choices.
    Where the layout is unknown (a bare parameter, a fused expert tensor ``(E, out, in)``) ``"out"`` is dim 0.
    """
    if scale not in SCALES + LAYOUT_SCALES:
        raise ValueError(f"unknown scale {scale!r}; valid choices are {', '.join(map(repr, SCALES + LAYOUT_SCALES))}")
    if scale not in LAYOUT_SCALES:
        return scale
    if batch_dims or tensor.ndim < 2:
        if scale == "in" and tensor.ndim - batch_dims < 2:
            raise ValueError(f"scale='in' on a tensor of shape {tuple(tensor.shape)} with batch_dims={batch_dims}: "
                             "there is no input dim; use 'row', 'tensor' or 'element'")
        return "row" if scale == "out" else "column"
    out_dim, groups = _output_dim(module, tensor), getattr(module, "groups", 1)
    if isinstance(module, nn.modules.conv._ConvNd) and groups > 1 and (out_dim == 1 or scale == "in"):
        if groups == module.in_channels == module.out_channels:  # depthwise: dim 0 is one input = one output
            return "row"
        raise ValueError(  # a convolution with out_dim 1 is a transposed one
            f"scale={scale!r} on {type(module).__name__}(groups={groups}): its weight {tuple(tensor.shape)} holds "
            f"{'out' if out_dim == 1 else 'in'}_channels/groups per group, so no dim has one scale per "
            f"{'output' if scale == 'out' else 'input'} channel; use 'row' (dim 0), 'tensor' or 'element'")
    return ("row", "column")[out_dim ^ (scale == "in")]


def _join(module: nn.Module, name: str, plist, spec: dict) -> nn.Module:
    """Make ``module.<name>`` (still holding the Parameter that ``plist`` replaced) read ``plist``."""
    polar = plist[0]
    mine = polar.settings()
    asked = {k: spec[k] for k in mine}
    if asked != mine:
        raise ValueError(
            f"{type(module).__name__}.{name} shares its Parameter with {polar._label}, which is already polarized "
            f"with {mine}; a shared weight has one polar form, so polarize it with the same settings (asked: {asked})"
        )
    # register_parametrization installs the class and the property; its fresh leaves are then
    # replaced by the shared ParametrizationList, so every owner reads the same s and V
    parametrize.register_parametrization(module, name, polar, unsafe=True)
    _own_class_on_copy(module)
    module.parametrizations[name] = plist
    polar._owners += 1
    return module


def polarize(module: nn.Module, name: str = "weight", *, scale: str = "tensor", mode: str = "absorb",
             trainable_scale: bool = True, init: str = "norm", batch_dims: int = 0,
             eps: float = DEFAULT_EPS, **unknown) -> nn.Module:
    """Write ``module.<name>`` in polar form ``W = s ⊙ Ŵ`` and return ``module``.

    Args:
        scale: which entries share one scale: ``"tensor"``, ``"row"`` (dim 0: per output unit of a
            Linear, output channel of a Conv, token of an Embedding; for ``ConvTranspose*d``, whose
            weight is ``(in, out/groups, ...)``, and transformers' ``Conv1D`` (GPT-2, ``(in, out)``),
            dim 0 is the *input* unit), ``"column"`` (dim 1), ``"element"``, or by the layer's layout:
            ``"out"`` (one scale per output unit, whichever dim holds them) and ``"in"`` (per input
            unit). ``"out"``/``"in"`` are resolved to ``"row"``/``"column"`` here; the settings record that.
        mode: ``"free"``, ``"normalize"``, ``"project"`` or ``"absorb"`` (see the module docs);
            ``"project"`` and ``"absorb"`` need :func:`polaropt.attach`.
        trainable_scale: if False, ``s`` gets ``requires_grad=False`` (no gradient, no optimizer
            update) but ``"absorb"`` still multiplies it at renormalization: the seeds' "fixed scale".
        init: ``"norm"``: ``s = ‖W0‖`` per slice and ``V = W0/‖W0‖``; ``"one"``: ``s = 1, V = W0``
            (what Liu's notebooks do; not allowed with ``"normalize"``, which would change ``W``).
        batch_dims: the leading ``batch_dims`` dims index independent copies; norms never mix them.
        eps: renormalization divides by ``max(‖V‖, eps)``, so a slice whose norm collapsed to 0 stays 0
            instead of becoming NaN; so does ``"normalize"`` in bfloat16/float16 or with two or more
            kept dims. ``"normalize"`` in float32/float64 runs torch's fused weight-norm kernel, which
            does not clamp: there a slice of ``V`` that is exactly zero gives NaN, and the step guard of
            :func:`polaropt.attach` refuses the step, naming the tensor and the zero slice.

    A Parameter that another module also holds (a tied weight) is polarized once: call ``polarize``
    on every owner with the same settings (the later calls join the first), or use
    :func:`polaropt.polarize_model`, which finds them all.

    Raises:
        ValueError: an unknown choice, ``"normalize"`` with ``"element"``, a tensor already
            parametrized, a missing tensor, a buffer, a meta tensor, or an exactly zero slice with
            ``trainable_scale=False`` (its scale would stay 0). A zero slice with a trainable scale
            gets ``s = 0`` and the unit direction of equal entries: W stays 0 and trains through s.

    Example:
        >>> import torch, polaropt as po
        >>> layer = po.polarize(torch.nn.Linear(3, 2), "weight", scale="row", mode="absorb")
        >>> po.scale_of(layer).shape, po.direction_of(layer).shape
        (torch.Size([2, 1]), torch.Size([2, 3]))
    """
    if unknown:
        hint = " (renamed to mode= in polaropt 0.2.0)" if "direction" in unknown else ""
        raise TypeError(f"polarize() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}{hint}; "
                        "it takes scale, mode, trainable_scale, init, batch_dims, eps")
    if not isinstance(module, nn.Module):
        raise TypeError(f"polarize expects an nn.Module, got {type(module).__name__}")
    if _is_fsdp_module(module):
        raise ValueError(f"{type(module).__name__} is already sharded with FSDP2's fully_shard: polarize first, then "
                         "call fully_shard")
    if mode == "normalize" and getattr(module, "sparse", False):
        raise ValueError(f"mode='normalize' on {type(module).__name__}(sparse=True) is refused: torch's weight-norm "
                         "kernel has no sparse backward; use mode='free' or 'absorb', or sparse=False")
    if parametrize.is_parametrized(module, name):
        what = "polarized" if _polar_of(module, name) is not None else "parametrized"
        raise ValueError(f"{type(module).__name__}.{name} is already {what}; call polaropt.unpolarize first")
    if name in module._buffers:
        raise ValueError(f"{type(module).__name__}.{name} is a buffer, not a Parameter: polarize makes s and V "
                         "trainable leaves of the optimizer; polarize parameters only")
    tensor = module._parameters.get(name)
    if not isinstance(tensor, torch.Tensor):
        names = [n for n, p in module.named_parameters(recurse=False) if p is not None]
        raise ValueError(f"{type(module).__name__} has no parameter {name!r}; its parameters are {names}")
    shared = guard.replaced_by(tensor)
    scale = resolve_scale(module, tensor, scale, batch_dims)
    spec = dict(scale=scale, mode=mode, trainable_scale=bool(trainable_scale), batch_dims=batch_dims)
    if parametrize.is_parametrized(module) and type(module).__dict__.get("__deepcopy__") is not _copied_with_own_class:
        # parametrized by torch alone so far: a torch deepcopy of it may share its class, and adding our
        # property there would reach that copy too
        _give_own_class(module)
    polar = Polar(tensor.ndim, init=init, eps=eps, **spec)
    if shared is not None:
        _join(module, name, shared, spec)
    else:
        polar._label = f"{type(module).__name__}.{name}"
        # right_inverse checks the weight (Polar.check) before torch changes the module
        parametrize.register_parametrization(module, name, polar)
        _own_class_on_copy(module)
        plist = module.parametrizations[name]
        if not trainable_scale:
            plist.original0.requires_grad_(False)
        guard.register(tensor, plist, polar)
    if fold.foldable(module, name, polar):
        fold.install(module)
    return module


def unpolarize(module: nn.Module, name: str = "weight") -> nn.Module:
    """Bake ``module.<name>`` back into one plain ``nn.Parameter`` holding ``s ⊙ Ŵ``; return ``module``.

    The optimizer that held ``s`` and ``V`` no longer sees the weight: build a new one. A weight
    shared by several modules is refused here (it would be untied): use
    :func:`polaropt.unpolarize_model`, which gives all owners one new Parameter.
    """
    polar = _polar_of(module, name)
    if polar is None:
        raise ValueError(f"{type(module).__name__}.{name} is not polarized")
    if polar._owners > 1:
        raise ValueError(f"{type(module).__name__}.{name} is shared by {polar._owners} modules (a tied weight); "
                         "unpolarizing one owner would untie it: use po.unpolarize_model(model) instead")
    _remove(module, name)
    return module


def _remove(module: nn.Module, name: str) -> torch.Tensor:
    """Bake one owner's polar weight into a plain Parameter; return it."""
    plist = module.parametrizations[name]
    # bake first: it evaluates W and may raise (a stale direction); nothing else has changed then
    parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    fold.remove(module, name)
    plist[0]._owners -= 1
    if plist[0]._owners == 0:
        guard.forget(plist)
    return module._parameters[name]


def is_polarized(module: nn.Module, name: str = "weight") -> bool:
    """Whether ``module.<name>`` is written in polar form by :func:`polarize`."""
    return _polar_of(module, name) is not None


def polar_spec(module: nn.Module, name: str = "weight") -> Polar:
    """The :class:`Polar` parametrization of ``module.<name>`` (its scale, mode, ... settings)."""
    polar = _polar_of(module, name)
    if polar is None:
        raise ValueError(f"{type(module).__name__}.{name} is not polarized; call polaropt.polarize first")
    return polar


def scale_of(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The leaf ``s`` (``module.parametrizations.<name>.original0``) that the optimizer updates."""
    polar_spec(module, name)
    return module.parametrizations[name].original0


def direction_of(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The leaf ``V`` (``module.parametrizations.<name>.original1``) that the optimizer updates.

    With ``"project"``/``"absorb"`` it is ``Ŵ`` itself after every renormalization; with
    ``"normalize"`` the direction is ``V/‖V‖``.
    """
    polar_spec(module, name)
    return module.parametrizations[name].original1


class PolarTensor(NamedTuple):
    """One polarized tensor found in a model: where it lives, its settings and its two leaves.

    A shared (tied) tensor is found once, at its first owner; ``owners`` lists every distinct
    ``(qualname, module, name)`` that reads it, and ``paths`` every qualified name under which the
    model reaches it (a module used at two places has one owner and two paths).
    """

    qualname: str  # e.g. "0.weight"
    module: nn.Module
    name: str
    polar: Polar
    scale: torch.Tensor
    direction: torch.Tensor
    owners: tuple = ()
    paths: tuple = ()


def polar_tensors(model: nn.Module) -> Iterator[PolarTensor]:
    """Every polarized tensor of ``model`` (recursively, each shared tensor once), in module order."""
    found: dict[int, list] = {}
    # runs at every step (renormalization): plain dict lookups rather than getattr/is_parametrized
    for prefix, module in model.named_modules(remove_duplicate=False):
        plists = module._modules.get("parametrizations")
        if plists is None:
            continue
        for name, plist in plists._modules.items():
            polar = plist._modules.get("0")
            if type(polar) is not Polar:  # parametrizations stacked above a Polar do not matter here
                continue
            path = f"{prefix}.{name}" if prefix else name
            entry = found.get(id(plist))
            if entry is None:
                entry = found[id(plist)] = [plist, [], []]
            entry[2].append(path)
            if not any(m is module and n == name for _, m, n in entry[1]):
                entry[1].append((path, module, name))
    for plist, owners, paths in found.values():
        qualname, module, name = owners[0]
        yield PolarTensor(qualname, module, name, plist[0], plist.original0, plist.original1, tuple(owners),
                          tuple(paths))


def polar_paths(model: nn.Module) -> dict[str, PolarTensor]:
    """``{qualified name: PolarTensor}`` under every name the model reaches a polar tensor by (tied owners, a
    module used at two places)."""
    return {path: t for t in polar_tensors(model) for path in t.paths}


def leaf_prefix(path: str) -> str:
    """Where a polar tensor's leaves sit in a state dict: ``"blocks.0.fc.weight"`` ->
    ``"blocks.0.fc.parametrizations.weight."`` (then ``original0`` is ``s``, ``original1`` is ``V``)."""
    owner, _, name = path.rpartition(".")
    return (owner + "." if owner else "") + f"parametrizations.{name}."
