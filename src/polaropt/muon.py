"""Muon for any matrix, and NorMuon: the orthogonalized-momentum direction rule.

Per parameter, with momentum β and the group's lr γ, weight decay λ (Keller Jordan's Muon, as
``torch.optim.Muon`` writes it):

    B ← lerp(B, g, 1 − β);   U = lerp(g, B, β) with Nesterov, else B
    O = orthogonalize(U)                        (:mod:`polaropt.orthogonalize`, any backend)
    W ← W·(1 − γλ) − γ·adjust(shape)·O

``adjust`` is torch's ``adjust_lr_fn``: ``None``/``"original"`` √max(1, rows/cols) (Keller Jordan),
``"match_rms_adamw"`` 0.2·√max(rows, cols) (Moonshot: the update gets AdamW's RMS, so AdamW's lr and
decay carry over), or ``"spectral"`` √(rows/cols) (Scion's normalized Spectral LMO, Pethick et al. 2025).
``scale`` multiplies the update and not the decay (Scion's radius ρ: W ← W·(1 − γλ) − γ·ρ·adjust·O). Beyond ``torch.optim.Muon``:

- any parameter of ndim ≥ 2: a conv kernel (out, in, kh, kw) is the matrix out × (in·kh·kw), as the
  CIFAR-10 speedrun and HeavyBall flatten it; ``batch_dims=k`` takes the first k dims as a batch of
  matrices (per head, per expert), each orthogonalized alone;
- the same-shaped matrices of a group are orthogonalized as one stack (one batched matmul chain);
- the backend (``"torch"``, ``"polar-express"``, ``"newton-schulz"``, ``"svd"``), its steps and its
  precision (``dtype=None``: bfloat16 on CUDA and on CPUs that multiply it natively, else float32).
- ``normuon=True`` (NorMuon, Li et al. 2025, ``zichongli5/NorMuon``): after orthogonalizing, each row
  is divided by the root of its own running mean square, v ← lerp(v, mean_row(O²), 1 − β₂),
  O ← O/(√v + 10⁻¹⁰), then O is rescaled to its Frobenius norm before that division.

With ``backend="torch"``, ``dtype=torch.bfloat16`` and 2-D parameters it is ``torch.optim.Muon`` bit for
bit on CPU (tested; on CUDA the batched matmuls of a stack may round differently from torch's one at a
time), and its state (``momentum_buffer``) loads from torch's. NorMuon adds
``second_momentum_buffer`` (one entry per row). Under FSDP2 (DTensor parameters sharded along dim 0) each
update is gathered whole on every rank and orthogonalized there, and each rank keeps its shard of the result:
a shard orthogonalized alone would not be Muon (Megatron-LM #5961). That costs one all-gather of every
update per step and the whole Newton–Schulz on every rank (Dion and muon-fsdp2 also spread that work over the
ranks, which this does not yet); NorMuon's row statistics are then kept whole on every rank.
"""

from __future__ import annotations

import math

import torch

from .orthogonalize import BACKENDS, orthogonalize_many

ADJUST = (None, "original", "match_rms_adamw", "spectral")


def adjusted_lr(lr: float, adjust: str | None, rows: int, cols: int) -> float:
    if adjust is None or adjust == "original":
        return lr * math.sqrt(max(1, rows / cols))
    if adjust == "spectral":  # Scion's Spectral LMO, normalized: the update has spectral norm √(d_out/d_in)
        return lr * math.sqrt(rows / cols)
    return lr * (0.2 * math.sqrt(max(rows, cols)))  # torch's order of the products (bitwise)


def as_matrices(t: torch.Tensor, batch_dims: int) -> torch.Tensor:
    """``t`` viewed as ``(*batch, rows, cols)``: the first ``batch_dims`` dims a batch, the next the rows,
    the rest the columns."""
    return t.reshape(*t.shape[:batch_dims + 1], -1)


def _whole(t: torch.Tensor) -> torch.Tensor:
    """The whole matrix of a sharded (FSDP2 DTensor) update, gathered on every rank (a collective, the same on
    every rank that steps this optimizer); a plain tensor as it is."""
    return t.full_tensor() if hasattr(t, "placements") else t


def _like(O: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``O`` (whole, the same on every rank) as ``p`` is laid out: each rank keeps its own shard, no
    communication."""
    if not hasattr(p, "placements"):
        return O
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(O, p.device_mesh, p.placements, src_data_rank=None)


class Muon(torch.optim.Optimizer):
    """Muon (and NorMuon) on parameters of any ndim ≥ 2; the module docstring gives the update. Defaults are
    ``torch.optim.Muon``'s; ``dtype=None`` is bfloat16 (torch's) on CUDA and on CPUs with native bfloat16.

    Example:
        >>> import torch, polaropt as po
        >>> conv = torch.nn.Conv2d(3, 8, 3)
        >>> opt = po.Muon([conv.weight], lr=0.02, backend="polar-express")
        >>> conv(torch.randn(2, 3, 8, 8)).square().mean().backward(); opt.step()
    """

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, *, backend: str = "torch", ns_steps: int = 5, dtype: torch.dtype | None = None,
                 eps: float = 1e-7, adjust_lr_fn: str | None = None, batch_dims: int = 0, normuon: bool = False,
                 beta2: float = 0.95, scale: float = 1.0):
        for name, value in (("lr", lr), ("weight_decay", weight_decay), ("momentum", momentum), ("eps", eps),
                            ("scale", scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not 0 <= beta2 < 1:
            raise ValueError(f"beta2 must be in [0, 1), got {beta2!r}")
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; valid choices are {', '.join(map(repr, BACKENDS))}")
        if adjust_lr_fn not in ADJUST:
            raise ValueError(f"unknown adjust_lr_fn {adjust_lr_fn!r}; valid choices are {', '.join(map(repr, ADJUST))}")
        if isinstance(ns_steps, bool) or not isinstance(ns_steps, int) or ns_steps < 1:
            raise ValueError(f"ns_steps must be a positive int, got {ns_steps!r}")
        if isinstance(batch_dims, bool) or not isinstance(batch_dims, int) or batch_dims < 0:
            raise ValueError(f"batch_dims must be an int >= 0, got {batch_dims!r}")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, backend=backend,
                        ns_steps=ns_steps, dtype=dtype, eps=eps, adjust_lr_fn=adjust_lr_fn, batch_dims=batch_dims,
                        normuon=normuon, beta2=beta2, scale=scale)
        super().__init__(params, defaults)

    def __setstate__(self, state: dict) -> None:
        # a state dict of torch.optim.Muon has none of the options it lacks: they take this optimizer's defaults
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)

    def add_param_group(self, param_group: dict) -> None:
        """torch's, after checking the group (a refused group is not added)."""
        params = param_group["params"]
        params = [params] if isinstance(params, torch.Tensor) else list(params)
        k = param_group.get("batch_dims", self.defaults["batch_dims"])
        for p in params:
            if p.ndim < k + 2:
                raise ValueError(f"Muon steps matrices: a parameter of shape {tuple(p.shape)} has no matrix after "
                                 f"batch_dims={k} batch dims (give vectors and scalars to AdamW)")
            if p.is_complex():
                raise ValueError("Muon does not step complex parameters")
        super().add_param_group({**param_group, "params": params})

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
                raise RuntimeError("Muon does not support sparse gradients")
            beta, k = group["momentum"], group["batch_dims"]
            updates = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - beta)
                u = p.grad.lerp(buf, beta) if group["nesterov"] else buf
                updates.append(as_matrices(_whole(u), k))
            ortho = orthogonalize_many(updates, group["backend"], group["ns_steps"], group["dtype"], group["eps"])
            for p, O in zip(params, ortho):
                if group["normuon"]:
                    O = self._normuon(self.state[p], O, group["beta2"])
                rows, cols = O.shape[-2:]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                step = adjusted_lr(group["lr"], group["adjust_lr_fn"], rows, cols) * group["scale"]  # ×1.0 is exact
                p.add_(_like(O.reshape(p.shape), p), alpha=-step)
        return loss

    @staticmethod
    def _normuon(state: dict, O: torch.Tensor, beta2: float) -> torch.Tensor:
        if "second_momentum_buffer" not in state:
            state["second_momentum_buffer"] = O.new_zeros(*O.shape[:-1], 1)
        v = state["second_momentum_buffer"]
        before = torch.linalg.matrix_norm(O, keepdim=True)
        v.lerp_(O.square().mean(dim=-1, keepdim=True), 1 - beta2)
        O = O / (v.sqrt() + 1e-10)
        return O * (before / (torch.linalg.matrix_norm(O, keepdim=True) + 1e-10))
