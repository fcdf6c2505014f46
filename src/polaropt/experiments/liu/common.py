"""What the Liu experiments share: the four modes of seed 001, their polarize options, and the toy
training run that trains several modes side by side.

Implementation details the posts leave out are taken from ``shared/notes/seed-findings.md``:
``s = 1, Ŵ = W0`` at the start (``init="one"``), Adam's state kept across re-parametrizations
(``state="keep"``), the plotted loss is the mean over elements, and a "fixed scale" is not given to
the optimizer but still absorbs the norm. Mode names say what the modes do; the sources' names
(whose descriptions in 001 are swapped) are mapped in ``SOURCE_NAMES``.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

import polaropt as po

from ..toys import Weights
from ..training import train

MODES = ("no_scale", "learnable_scale", "absorb_learnable_scale", "absorb_fixed_scale")
SOURCE_NAMES = {
    "no_scale": "no_scale",
    "learnable_scale": "learnable_scale",
    "absorb_learnable_scale": "reparametrized_learnable_scale (001 describes it as 'fix s = 1 during the update step')",
    "absorb_fixed_scale": "reparametrized_fixed_scale (001 describes it as 'allow s to update')",
}
POLAR = {  # mode -> polarize options (None: a plain parameter)
    "no_scale": None,
    "learnable_scale": dict(mode="free", trainable_scale=True),
    "absorb_learnable_scale": dict(mode="absorb", trainable_scale=True),
    "absorb_fixed_scale": dict(mode="absorb", trainable_scale=False),
}
SRC_001 = "001 Optimization 1 (Liu), Experiment"
SRC_000 = "000 Optimization 2 (Liu)"
NOTES = "polaropt's own re-simulation of the source's setup (float64)"


def attach(opt, model, state: str) -> None:
    """``po.attach``; ``state="reset"`` after every step is one of the policies compared on purpose (the
    notes explain why it is worse), so attach's warning about it is silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"attach\(state='reset', every=1\)")
        po.attach(opt, model, state=state)


def check_states(states) -> None:
    """The Adam-state policies an experiment compares: ``keep`` (the source's) and others of ``po.STATES``,
    each once."""
    if "keep" not in states or any(s not in po.STATES for s in states) or len(set(states)) != len(states):
        raise ValueError(f"states must include 'keep' and be distinct values among {po.STATES}, got {states}")


def mode_names() -> str:
    """Markdown mapping our mode names to the sources'."""
    return "\n".join(["Mode names and the source's names:", ""]
                     + [f"- `{m}` = source's {SOURCE_NAMES[m]}" for m in MODES])


def run_label(mode: str, state: str) -> str:
    return mode if state == "keep" else f"{mode}+{state}"


def polar_modes(modes, w0: torch.Tensor, *, scale="tensor", init="one", batch_dims=0) -> nn.ModuleDict:
    """One ``Weights(w0)`` per mode, polarized as the mode says (``POLAR``), in one ModuleDict."""
    model = nn.ModuleDict()
    for mode in modes:
        model[mode] = Weights(w0)
        if POLAR[mode] is not None:
            po.polarize(model[mode], "weight", scale=scale, init=init, batch_dims=batch_dims, **POLAR[mode])
    return model


def adam(model: nn.Module, lr: float, state: str = "keep"):
    """Adam over the trainable parameters; a model with an absorb tensor is renormalized after every step
    (``po.attach``); one without (``no_scale``, ``learnable_scale`` alone) gets plain Adam, as a user
    would write it."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    if any(pt.polar.mode == "absorb" for pt in po.polar_tensors(model)):
        attach(opt, model, state)
    return opt


def train_toys(w0, target, modes, *, lr, steps, state="keep", batch_dims=0, init="one"):
    """Train several modes side by side; return {mode: (loss [T+1, copies], W [T+1, copies, N], s, V)}.

    The modes' weights live in one model with one Adam: the parameters are independent and Adam is
    elementwise, so this is the same arithmetic as separate runs, with one step loop instead of several.
    The loss is the mean over elements (what the sources plot), summed over copies and modes.
    """
    model = polar_modes(modes, w0, init=init, batch_dims=batch_dims)
    opt = adam(model, lr, state)
    hist = {m: ([], [], [], []) for m in modes}

    def loss_at(t):
        total = 0
        for mode in modes:
            w = model[mode].weight
            per_copy = (w - target).square().mean(-1)
            loss, ws, ss, vs = hist[mode]
            loss.append(per_copy.detach().clone())
            ws.append(w.detach().clone())
            if POLAR[mode] is not None:
                ss.append(po.scale_of(model[mode]).detach().reshape(w.shape[0] if batch_dims else 1, -1)[:, 0].clone())
                vs.append(po.direction_of(model[mode]).detach().clone())
            total = total + per_copy.sum()  # copies and modes are independent: a sum keeps their gradients apart
        return total

    train(loss_at, opt, steps)
    return {m: (torch.stack(h[0]), torch.stack(h[1]), torch.stack(h[2]) if h[2] else None,
                torch.stack(h[3]) if h[3] else None) for m, h in hist.items()}
