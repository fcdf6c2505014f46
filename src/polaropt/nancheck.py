"""The NaN/Inf check around ``optimizer.step()`` (:func:`polaropt.attach`): immediate or lazy.

- ``check="step"``: before every step, the gradients are checked with one host sync, and a NaN or
  Inf refuses the step before the optimizer writes anything; the renormalization after the step
  checks ``s`` and ``V`` the same way before it writes. Nothing is ever touched by a bad value, at
  the price of a device sync per step (which also breaks a ``torch.compile`` graph).
- ``check="lazy"`` (:class:`LazyCheck`): the same tests only OR a bool flag **on the device**; no
  host sync. The flag is read every ``check_every`` steps (one sync), and whenever
  :func:`check_now` is called or the optimizer's ``state_dict()`` is taken (a checkpoint never holds
  an unnoticed NaN). A read that finds it clean takes a *snapshot*: a copy of every parameter the
  optimizer steps, its state, and the ``s`` and ``V`` of the attached models. A read that finds it
  set copies the snapshot back and raises ``FloatingPointError``. So a bad value lives at most
  ``check_every`` steps (the steps after it run on it, and their losses show it), and when the error
  fires every parameter and optimizer state is as it was after the last clean read: a failure never
  leaves a corrupted parameter behind. The snapshot costs memory: one copy of the parameters and
  of the optimizer's state (for Adam/AdamW, three times the parameters).

Under ``torch.compile`` the lazy check adds nothing to the graph but the flag's reductions: the
periodic read is a Python decision on a step count, which the compiled step cannot make without
recompiling, so it is skipped there and the flag is read at :func:`check_now` (call it where you
log) and at ``state_dict()``.
"""

from __future__ import annotations

import torch

from .slices import nonfinite

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
    """The device-side NaN/Inf flag of one optimizer, its periodic read, and the snapshot it restores.

    ``tensors()`` gives the tensors a failure must restore beyond the optimizer's parameters (the
    attached models' ``s`` and ``V``); ``names(optimizer)`` maps ``id(tensor)`` to a name for the error.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, every: int, tensors, names):
        self.every, self._tensors, self._names = every, tensors, names
        self.flags: dict[torch.device, torch.Tensor] = {}  # one persistent bool per device, ORed in place
        self.since = 0      # eager steps since the last read
        self.steps = 0      # eager steps since attach
        self.good_at = 0    # the step of the last clean read (the snapshot's)
        self.snapshot = None
        for t in self._scope(optimizer):
            if t.device not in self.flags:
                self._flag(t.device)
        self._take(optimizer)

    def add(self, flags: dict) -> None:
        """OR ``{device: 0-d bool tensor}`` into the persistent flags, in place (under CUDA graphs a
        flag is a static buffer the graph mutates, not a graph output kept across replays)."""
        for device, bad in flags.items():
            flag = self.flags.get(device)
            if flag is None:  # a device not seen at attach (the model moved)
                flag = self._flag(device)
            flag.logical_or_(bad)

    def _flag(self, device) -> torch.Tensor:
        flag = self.flags[device] = torch.zeros((), dtype=torch.bool, device=device)
        mark = getattr(torch._dynamo, "mark_static_address", None)  # as torch's compiled optimizers mark
        if mark is not None and not torch.compiler.is_compiling():  # their state: a fixed address
            mark(flag)
        return flag

    def stepped(self, optimizer) -> None:
        """After each step: count it (eagerly) and read the flag every ``every`` steps."""
        if torch.compiler.is_compiling():
            return
        self.steps += 1
        self.since += 1
        if self.since >= self.every:
            self.read(optimizer)

    def read(self, optimizer) -> None:
        """Read the flag (one host sync per device): snapshot when clean; restore and raise when set."""
        bad = any(bool(f) for f in self.flags.values())
        self.since = 0
        if not bad:
            self.good_at = self.steps
            self._take(optimizer)
            return
        named, total = self._nonfinite_now(optimizer), len(self._scope(optimizer))
        self._restore(optimizer)
        for f in self.flags.values():
            f.zero_()
        lost = self.steps - self.good_at
        shown = ", ".join(named[:4]) + (f" and {len(named) - 4} more" if len(named) > 4 else "")
        where = (f"{len(named)} tensors (of {total} and their gradients) hold one now: {shown}; the steps after it spread "
                 "it, so check='step' names where it entered" if named else
                 "no tensor holds one now (a gradient or a norm was non-finite, or its sum beyond float32's range, "
                 "at one of these steps)")
        raise FloatingPointError(
            f"NaN or Inf entered in the last {lost} step(s) of {type(optimizer).__name__} (steps {self.good_at + 1}–"
            f"{self.steps} since attach; check='lazy' reads its flag every {self.every} steps): {where}. Every "
            f"parameter it steps, its state and the attached models' s and V are restored to step {self.good_at}, "
            "the last clean check. Lower the learning rate or check the loss and inputs")

    # the snapshot ---------------------------------------------------------------------------------
    def _scope(self, optimizer) -> list[torch.Tensor]:
        seen, out = set(), []
        for t in [p for g in optimizer.param_groups for p in g["params"]] + list(self._tensors()):
            if id(t) not in seen:
                seen.add(id(t))
                out.append(t)
        return out

    @torch.no_grad()
    def _take(self, optimizer) -> None:
        self.snapshot = None  # free the old copy first: never two at once
        scope = self._scope(optimizer)
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

    def _nonfinite_now(self, optimizer) -> list[str]:
        scope = self._scope(optimizer)
        names = self._names(optimizer)
        grads = [t.grad for t in scope if t.grad is not None]
        holders = [t for t in scope if t.grad is not None]
        bad = [names.get(id(scope[i]), f"a tensor of shape {tuple(scope[i].shape)}") for i in nonfinite(scope)]
        bad += [f"the gradient of {names.get(id(holders[i]), f'a tensor of shape {tuple(holders[i].shape)}')}"
                for i in nonfinite(grads)]
        return bad

