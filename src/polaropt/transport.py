"""What happens to optimizer state when a polar tensor is renormalized.

Renormalization changes coordinates: ``V ← V/a`` and (for ``"absorb"``) ``s ← a·s``, with ``a`` the
norm of each slice. The optimizer's state was accumulated in the old coordinates. Policies:

- ``"keep"``: leave the state as it is (what Liu's notebooks do; see seed-findings).
- ``"reset"``: drop the state of the renormalized tensors (the optimizer re-initializes it lazily).
- ``"rescale"``: transport the state into the new coordinates, each tensor as what it is. Because
  ``W = s ⊙ V``, ``∂L/∂V = s ⊙ ∂L/∂W`` and ``∂L/∂s = Σ_slice V ⊙ ∂L/∂W``; in the new coordinates
  ``s' = a·s`` and ``V' = V/a`` give ``∂L/∂V' = a·∂L/∂V`` and ``∂L/∂s' = ∂L/∂s / a`` (a gradient scales
  by ``a`` on V's side), while a displacement ``δV' = δV/a``, ``δs' = a·δs`` scales the other way.

  * Adam/AdamW: ``exp_avg`` (order 1) and ``exp_avg_sq``/``max_exp_avg_sq`` (order 2) are gradient
    statistics, multiplied by ``a^k`` (V) and ``a^-k`` (s): exactly the state Adam would hold had every
    past gradient been taken in the new coordinates. Preserved: the next step ``m̂/√v̂`` is the step the
    run without the renormalization takes (tested, with eps = 0).
  * SGD with momentum: ``momentum_buffer`` is the heavy ball's velocity, a displacement, so it is
    multiplied by ``a^-1`` (V) and ``a`` (s). Preserved: the displacement of ``W`` that the momentum
    makes at the next step is exactly the one it makes without the renormalization (absorb; for
    project, the same relative to ``‖V‖``). Transported as a gradient sum (``a^+1``, polaropt ≤ 0.3),
    that velocity grew by ``a²`` at every renormalization, which compounds once ``a > 1`` and diverged
    (`benchmarks/sgd_rescale.py`: the benchmark's Fashion-MNIST CNN, SGD(0.05, momentum 0.9), column
    scales: the largest scale 9.2e13 by step 70, where ``keep`` peaks at 4.39 and the velocity rule at 4.23).
  * Not preserved by any policy: SGD's own step on the new coordinates. Its gradient term moves ``W``
    by ``a²`` times as much along the direction and ``a^-2`` times along the scale as it would have;
    with absorb, SGD's effective step on a direction is ``lr·s²`` (Adam's ``lr·s``), so large scales
    with plain SGD can diverge under any policy (a tensor scale of 3 at lr 0.05 did): prefer row
    scales, Adam/AdamW, or a smaller lr for SGD on absorb.

  For ``"project"`` ``s`` does not move, so only ``V``'s side applies. Step counters are not state
  to transport and are left alone.
"""

from __future__ import annotations

import torch

from .steepest import SteepestDescent

STATES = ("keep", "reset", "rescale")

# How every per-parameter state tensor of the optimizers "rescale" supports transforms: V's entry is
# multiplied by a^k and s's by a^-k. Adam's moments are gradient statistics (order 1 and 2); SGD's
# momentum buffer is a velocity, a displacement (-1). "step" is a counter.
MOMENT_ORDER = {"momentum_buffer": -1, "exp_avg": 1, "exp_avg_sq": 2, "max_exp_avg_sq": 2}
# SteepestDescent keeps no state: rescaling it is exact because there is nothing to rescale
RESCALABLE = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, SteepestDescent)
_COUNTERS = ("step",)


def check_state_policy(state: str, optimizer: torch.optim.Optimizer | None) -> str:
    """Validate a state policy against the optimizer it will act on; return it."""
    if state not in STATES:
        raise ValueError(f"unknown state policy {state!r}; valid choices are {', '.join(map(repr, STATES))}")
    if state != "keep" and optimizer is None:
        raise ValueError(f"state={state!r} acts on optimizer state, so pass optimizer=...")
    if state == "rescale" and not isinstance(optimizer, RESCALABLE):
        names = ", ".join(c.__name__ for c in RESCALABLE)
        raise ValueError(
            f"state='rescale' knows how to transport the moments of {names}, not of "
            f"{type(optimizer).__name__}; use state='keep' or state='reset' with it"
        )
    return state


def moment_orders(param_state: dict, qualname: str) -> list[tuple[torch.Tensor, int]]:
    """The (tensor, order) pairs of one parameter's optimizer state that ``"rescale"`` multiplies.

    Raises ``ValueError`` on a state entry whose order is unknown, rather than guessing.
    """
    out = []
    for key, value in param_state.items():
        if key in _COUNTERS or value is None:
            continue
        if key not in MOMENT_ORDER:
            raise ValueError(
                f"state='rescale' does not know how the optimizer state {key!r} of {qualname} transforms "
                f"(known: {', '.join(sorted(MOMENT_ORDER))}); use state='keep' or 'reset'"
            )
        if torch.is_tensor(value):
            out.append((value, MOMENT_ORDER[key]))
    return out
