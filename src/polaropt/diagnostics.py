"""What each step did to each weight matrix, opt-in: its radius, the size of the update against the weight,
and the update split into its radial and angular parts (:class:`UpdateStats`).

For a matrix W before the step and W' after it (W the weight the layer uses: s ⊙ V̂ for a polar tensor,
r_i·V_ij·c_j for multipliers, g·V/‖V‖ for torch's weight_norm):

- ``radius``: ‖W'‖_F;
- ``update``: ‖W' − W‖_F / ‖W‖_F, the relative step size (the field's "update/weight ratio");
- ``radial``: ‖W'‖/‖W‖ − 1, how much the step changed the norm (0 under a fixed radius);
- ``angular``: the angle between W and W' in radians, arccos(⟨W, W'⟩/(‖W‖‖W'‖)), how far it turned.

Cheap by construction: nothing happens on the steps not recorded (``every``); a recorded step copies the
watched matrices once before the step (transient memory: one copy of them) and makes a few reductions after
it, and the results stay on the device as 0-d tensors (no host sync) until :meth:`UpdateStats.floats` is
called, where you log.
"""

from __future__ import annotations

import weakref

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook


def weight_matrices(model: nn.Module) -> dict[str, callable]:
    """``{name: () -> W}`` for every weight the layers of ``model`` use as a matrix: a parametrized one (polar,
    multipliers, weight_norm) as the layer computes it, a plain ≥2-D ``*weight*`` parameter as it is; each shared
    one once, under its first name."""
    out, seen = {}, set()
    for prefix, module in model.named_modules():
        plists = module._modules.get("parametrizations")
        for name, plist in (plists._modules.items() if plists is not None else ()):
            if id(plist) not in seen:
                seen.add(id(plist))
                out[f"{prefix}.{name}" if prefix else name] = (lambda m=module, n=name: getattr(m, n))
        for name, p in module._parameters.items():
            if p is not None and p.ndim >= 2 and id(p) not in seen and "weight" in name:
                seen.add(id(p))
                out[f"{prefix}.{name}" if prefix else name] = (lambda p=p: p)
    return out


def update_stats(before: torch.Tensor, after: torch.Tensor) -> dict[str, torch.Tensor]:
    """The four numbers of the module's docstring for one matrix, as 0-d tensors on its device (float32, or
    float64 for float64 weights). Written from the step D = W' − W so that small steps lose no digits:
    ‖W'‖ − ‖W‖ = ⟨D, W' + W⟩/(‖W'‖ + ‖W‖), and the angle is atan2(‖D_⊥‖, ‖W‖ + ⟨D, Ŵ⟩) with D_⊥ the part of D
    orthogonal to W (arccos of a cosine near 1 would resolve nothing below ~3·10⁻⁴ rad in float32)."""
    dtype = torch.promote_types(before.dtype, torch.float32)
    w0, w1 = before.detach().to(dtype), after.detach().to(dtype)
    d = w1 - w0
    r0, r1 = torch.linalg.vector_norm(w0), torch.linalg.vector_norm(w1)
    unit = w0 / r0
    along = (d * unit).sum()
    return {"radius": r1, "update": torch.linalg.vector_norm(d) / r0, "radial": (d * (w1 + w0)).sum() / (r0 * (r1 + r0)),
            "angular": torch.atan2(torch.linalg.vector_norm(d - along * unit), r0 + along)}


class UpdateStats:
    """Record :func:`update_stats` of every weight matrix of ``model`` at every ``every``-th step of
    ``optimizer`` (after all of the step's hooks: renormalization included, so ``radial`` is what the layer
    sees). ``latest`` is ``{name: {stat: 0-d tensor}}`` of the last recorded step and ``step`` its number;
    :meth:`floats` reads them to the host (one sync); :meth:`remove` detaches.

    Example:
        >>> import torch, polaropt as po
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
        >>> opt = po.recipe("hyperball-adamw", model, lr=0.1)
        >>> stats = po.UpdateStats(opt, model, every=1)
        >>> model(torch.randn(3, 4)).square().mean().backward(); opt.step()
        >>> round(stats.floats()["0.weight"]["radial"], 6)
        0.0
        >>> stats.remove()
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module, every: int = 1):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int (record every k steps), got {every!r}")
        self.model, self.every = model, every
        self.steps, self.step = 0, None
        self.latest: dict[str, dict[str, torch.Tensor]] = {}
        self._before: dict[str, torch.Tensor] | None = None
        # a global post-hook runs after every optimizer's own hooks (the renormalization): it sees W as the layer will
        # (weakly: the optimizer's pre-hook keeps this object alive as long as the optimizer, and no longer)
        me = weakref.ref(self)
        self._handles = [optimizer.register_step_pre_hook(self._pre),
                         register_optimizer_step_post_hook(lambda opt, args, kwargs: me() and me()._post(opt, args, kwargs))]
        self._optimizer = weakref.ref(optimizer)

    @torch.no_grad()
    def _pre(self, optimizer, args, kwargs) -> None:
        self.steps += 1
        if (self.steps - 1) % self.every == 0:
            self._before = {name: w.detach().clone() for name, get in weight_matrices(self.model).items()
                            for w in [get()] if w.ndim >= 2}

    @torch.no_grad()
    def _post(self, optimizer, args, kwargs) -> None:
        if self._before is None or optimizer is not self._optimizer():
            return
        now = weight_matrices(self.model)
        self.latest = {name: update_stats(w, now[name]()) for name, w in self._before.items() if name in now}
        self.step, self._before = self.steps, None

    def floats(self) -> dict[str, dict[str, float]]:
        """``latest`` as Python floats (one host sync per tensor; call it where you log)."""
        return {name: {k: float(v) for k, v in stats.items()} for name, stats in self.latest.items()}

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

