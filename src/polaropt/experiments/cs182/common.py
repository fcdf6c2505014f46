"""What the CS182 experiments share: the source, the optimizers compared and their side-by-side training on
least-squares problems (``SteepestDescent`` for GD and ℓ∞ steepest descent, torch's SGD and Adam)."""

from __future__ import annotations

import math

import torch

import polaropt as po

from ..training import train as train_loop

SRC = "004 CS182 discussion"
LABELS = {"gd": "GD (SteepestDescent l2)", "sign": "sign descent, step η0/(t+1)^p", "linf": "SteepestDescent linf",
          "adam": "Adam, lr η/√(1 + t/100)", "sign_const": "sign descent, constant step"}


def _optimizer(method: str, params, cfg):
    """The optimizer and its schedule (or None) for one method; ``cfg`` gives the learning rates."""
    if method == "gd":
        return po.SteepestDescent(params, lr=cfg.gd_lr, norm="l2"), None
    if method == "linf":
        return po.SteepestDescent(params, lr=cfg.linf_lr, norm="linf"), None
    if method in ("sign", "sign_const"):
        for p in params:  # sign descent = SGD on sign(g): the hook replaces the gradient by its sign
            p.register_hook(torch.sign)
        opt = torch.optim.SGD(params, lr=cfg.sign_lr)
        if method == "sign":
            return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda t: (t + 1) ** -cfg.sign_power)
        return opt, None
    if method == "adam":
        opt = torch.optim.Adam(params, lr=cfg.adam_lr)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / math.sqrt(1 + t / 100))
    raise ValueError(f"unknown method {method!r}; valid choices are {', '.join(LABELS)}")


def train(A: torch.Tensor, y: torch.Tensor, methods, cfg, steps: int) -> dict:
    """Minimize Σ_k ‖A_k θ_k − y_k‖² from θ = 0 with every method side by side.

    Returns {method: (θ [copies, d] at the end, loss [steps + 1, copies])}. SteepestDescent's ℓ∞ step couples
    the entries of a tensor through ‖g‖₁, so under ℓ∞ every copy has its own parameter; the other methods act
    entrywise (GD, sign descent, Adam), so their copies share one [copies, d] tensor. Every optimizer treats
    parameters independently, so one loop serves all of them.
    """
    d = A.shape[-1]
    params = {m: ([torch.nn.Parameter(torch.zeros(d, dtype=A.dtype)) for _ in range(len(A))] if m == "linf"
                  else [torch.nn.Parameter(torch.zeros(len(A), d, dtype=A.dtype))]) for m in methods}
    opts = {m: _optimizer(m, params[m], cfg) for m in methods}
    losses = {m: [] for m in methods}

    def theta_of(m):
        return torch.stack(params[m]) if m == "linf" else params[m][0]

    def loss_at(t):
        total = 0
        for m in methods:
            loss = (torch.einsum("kmd,kd->km", A, theta_of(m)) - y).square().sum(-1)  # the source's squared loss
            losses[m].append(loss.detach())
            total = total + loss.sum()
        return total

    train_loop(loss_at, [opt for opt, _ in opts.values()], steps,
               schedulers=[sched for _, sched in opts.values() if sched is not None])
    return {m: (theta_of(m).detach(), torch.stack(losses[m])) for m in methods}
