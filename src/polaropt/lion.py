"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv 2302.06675): the sign of
an interpolated momentum, the sign-descent row of the direction-rule grid.

    c = lerp(m, g, 1 − β₁);   W ← W·(1 − lr·λ) − lr·sign(c);   m ← lerp(m, g, 1 − β₂)

Every entry moves by exactly ``lr`` (its size is the lr's, not the gradient's), so Lion's lr is usually
3–10× below AdamW's and its decay λ as much above. One state tensor per parameter (``exp_avg``).
"""

from __future__ import annotations

import math

import torch


class Lion(torch.optim.Optimizer):
    """Lion on any parameters (the module docstring gives the update).

    Example:
        >>> import torch, polaropt as po
        >>> w = torch.nn.Parameter(torch.zeros(3))
        >>> w.grad = torch.tensor([1.0, -2.0, 0.0])
        >>> po.Lion([w], lr=0.1).step()
        >>> w.detach()
        tensor([-0.1000,  0.1000,  0.0000])
    """

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0):
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (lr >= 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a finite number >= 0, got {lr!r}")
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        if not weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("Lion does not support sparse gradients")
            beta1, beta2 = group["betas"]
            grads = [p.grad for p in params]
            moments = []
            for p in params:
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                moments.append(state["exp_avg"])
            signs = torch._foreach_lerp(moments, grads, 1 - beta1)
            torch._foreach_sign_(signs)
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            torch._foreach_add_(params, signs, alpha=-group["lr"])
            torch._foreach_lerp_(moments, grads, 1 - beta2)
        return loss
