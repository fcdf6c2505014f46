"""What happens to optimizer state when a polar tensor is renormalized.

Renormalization changes coordinates: ``V ← V/a`` and (for ``"absorb"``) ``s ← a·s``, with ``a`` the
norm of each slice. The optimizer's state was accumulated in the old coordinates. Policies:

- ``"keep"``: leave the state as it is (what Liu's notebooks do; see seed-findings).
- ``"reset"``: drop the state of the renormalized tensors (the optimizer re-initializes it lazily).
- ``"rescale"``: transport the moments into the new coordinates. Because ``W = s ⊙ V``,
  ``∂L/∂V = s ⊙ ∂L/∂W`` and ``∂L/∂s = Σ_slice V ⊙ ∂L/∂W``; in the new coordinates ``s' = a·s`` and
  ``V' = V/a`` give ``∂L/∂V' = a·∂L/∂V`` and ``∂L/∂s' = ∂L/∂s / a``. A moment of order ``k`` in the
  gradient (first moments: Adam/AdamW ``exp_avg``, SGD ``momentum_buffer``; second moments:
  ``exp_avg_sq``, ``max_exp_avg_sq``) therefore becomes ``a^k ·`` (for ``V``) and ``a^-k ·`` (for ``s``)
  what it was, exactly as if every past gradient had been taken in the new coordinates. For
  ``"project"`` ``s`` does not move, so only ``V``'s side applies. Step counters are not moments
  and are left alone.
"""

from __future__ import annotations

import torch

from .steepest import SteepestDescent

STATES = ("keep", "reset", "rescale")

# Order in the gradient of every per-parameter state tensor of the optimizers "rescale" supports;
# "step" is a counter, not a moment.
MOMENT_ORDER = {"momentum_buffer": 1, "exp_avg": 1, "exp_avg_sq": 2, "max_exp_avg_sq": 2}
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
