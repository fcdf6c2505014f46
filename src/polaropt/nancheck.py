"""The NaN/Inf check around ``optimizer.step()`` (:func:`polaropt.attach`): immediate or lazy.

- ``check="step"``: before every step, the gradients are checked with one host sync, and a NaN or
  Inf refuses the step before the optimizer writes anything; the renormalization after the step
  checks ``s`` and ``V`` the same way before it writes. Nothing is ever touched by a bad value, at
  the price of a device sync and a pass over the gradients per step.
- ``check="lazy"`` (:class:`LazyCheck`): nothing at all on the step. A NaN or Inf that reaches a
  parameter or the optimizer's state stays there (every update, renormalization and moment
  propagates it: ``p − lr·NaN``, ``β·m + (1−β)·NaN``, ``V/NaN``), so the parameters themselves are
  the flag. They are read every ``check_every`` steps, whenever :func:`polaropt.check_finite` is
  called, and when the optimizer's ``state_dict()`` is taken (a checkpoint never holds an
  unnoticed NaN): one reduction over the parameters, their optimizer state and the attached models'
  ``s`` and ``V``, and one host sync. A read that finds them finite takes a *snapshot* (a copy of
  all of those); a read that finds a NaN or Inf copies the snapshot back and raises
  ``FloatingPointError``. So a bad value lives at most ``check_every`` steps (the steps after it
  run on it, and their losses show it), and when the error fires every parameter and optimizer
  state is as it was after the last clean read: a failure never leaves a corrupted parameter
  behind. The snapshot costs memory: one copy of the parameters and of the optimizer's state (for
  Adam/AdamW, three times the parameters). A bad gradient that never reaches a parameter (a step
  ``torch.amp.GradScaler`` skipped) is no failure and is not reported.

Under ``torch.compile`` the lazy check adds nothing to the graph. Its periodic read is a Python
decision on a step count, which a compiled step cannot make without recompiling, so it does not run
inside one: the read happens at :func:`polaropt.check_finite` (call it where you log) and at
``state_dict()``.
"""

from __future__ import annotations

import torch

from .slices import nonfinite, nonfinite_flag

CHECKS = ("lazy", "step")


def check_mode(check: str, check_every) -> None:
    if check not in CHECKS:
        raise ValueError(f"unknown check {check!r}; valid choices are {', '.join(map(repr, CHECKS))}")
    if not isinstance(check_every, int) or isinstance(check_every, bool) or check_every < 1:
        raise ValueError(f"check_every must be a positive int (read the lazy NaN/Inf flag every k steps), "
                         f"got {check_every!r}")


def _clone_state(state: dict) -> dict:
    return {k: v.detach().clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


class LazyCheck:
    """The periodic NaN/Inf read of one optimizer's parameters and state, and the snapshot it restores.

    ``tensors()`` gives the tensors beyond the optimizer's parameters that are read and restored
    (the attached models' ``s`` and ``V``); ``names(optimizer)`` maps ``id(tensor)`` to a name for
    the error.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, every: int, tensors, names):
        self.every, self._tensors, self._names = every, tensors, names
        self.since = 0      # eager steps since the last read
        self.steps = 0      # eager steps since attach
        self.good_at = 0    # the step of the last clean read (the snapshot's)
        self.snapshot = None
        self.read(optimizer)

    def stepped(self, optimizer) -> None:
        """After each step: count it (eagerly) and read every ``every`` steps."""
        if torch.compiler.is_compiling():
            return
        self.steps += 1
        self.since += 1
        if self.since >= self.every:
            self.read(optimizer)

    @torch.no_grad()
    def read(self, optimizer) -> None:
        """One reduction and one host sync (per device): snapshot when finite; restore and raise if not."""
        scope = self._scope(optimizer)
        state = [v for t in scope if t in optimizer.state for v in optimizer.state[t].values()
                 if isinstance(v, torch.Tensor) and v.is_floating_point()]
        self.since = 0
        if not any(bool(bad) for bad in nonfinite_flag(scope + state).values()):
            self.good_at = self.steps
            self._take(optimizer, scope)
            return
        if self.snapshot is None:  # non-finite at attach: nothing to go back to
            raise FloatingPointError(
                f"attach found NaN or Inf in {', '.join(self._named(optimizer, scope)) or 'the optimizer state'} "
                "before any step; there is no clean state to restore. Fix the initialization or the checkpoint")
        named = self._named(optimizer, scope)
        self._restore(optimizer)
        lost = self.steps - self.good_at
        shown = ", ".join(named[:4]) + (f" and {len(named) - 4} more" if len(named) > 4 else "")
        where = (f"{len(named)} of its {len(scope)} tensors hold one now ({shown}; the steps after it spread it, "
                 "so check='step' names where it entered)" if named else "it is in the optimizer state")
        raise FloatingPointError(
            f"NaN or Inf entered in the last {lost} step(s) of {type(optimizer).__name__} (steps {self.good_at + 1}–"
            f"{self.steps} since attach; check='lazy' reads every {self.every} steps): {where}. Every parameter it "
            f"steps, its state and the attached models' s and V are restored to step {self.good_at}, the last clean "
            "read. Lower the learning rate or check the loss and inputs")

    # the snapshot ---------------------------------------------------------------------------------
    def _scope(self, optimizer) -> list[torch.Tensor]:
        seen, out = set(), []
        for t in [p for g in optimizer.param_groups for p in g["params"]] + list(self._tensors()):
            if id(t) not in seen:
                seen.add(id(t))
                out.append(t)
        return out

    @torch.no_grad()
    def _take(self, optimizer, scope) -> None:
        self.snapshot = None  # free the old copy first: never two at once
        self.snapshot = (
            [(t, t.detach().clone()) for t in scope],
            {id(t): _clone_state(optimizer.state[t]) for t in scope if t in optimizer.state},
        )

    @torch.no_grad()
    def _restore(self, optimizer) -> None:
        tensors, states = self.snapshot
        for t, copy in tensors:
            t.copy_(copy)
            if t in optimizer.state or id(t) in states:
                saved = states.get(id(t))
                if saved is None:
                    del optimizer.state[t]
                else:
                    optimizer.state[t] = _clone_state(saved)

    def _named(self, optimizer, scope) -> list[str]:
        names = self._names(optimizer)
        return [names.get(id(scope[i]), f"a tensor of shape {tuple(scope[i].shape)}") for i in nonfinite(scope)]
