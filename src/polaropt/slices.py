"""Which entries of a weight share one scale, and the norm of each such slice.

A polar weight is ``W = s ⊙ V``. The *granularity* of the scale decides which entries of ``W``
share one entry of ``s``:

==========  ===========================================  ======================================
scale       one ``s`` per                                ``s`` shape for ``W`` of shape (o, i, k)
==========  ===========================================  ======================================
"tensor"    whole tensor                                  (1, 1, 1)
"row"       output unit (slice along dim 0; conv channel) (o, 1, 1)
"column"    input unit (slice along dim 1)                (1, i, 1)
"element"   entry (learnable multipliers, Liu 000)        (o, i, k)
==========  ===========================================  ======================================

With ``batch_dims=k`` the leading ``k`` dims index independent copies of the weight (several
configs or seeds stored in one tensor); they are never reduced over, so every copy has its own
scales. ``s`` always keeps ``W``'s number of dims (size 1 on reduced dims) so ``s * V``
broadcasts, as ``torch.nn.utils.parametrizations.weight_norm`` stores its ``g``.
"""

from __future__ import annotations

import torch

SCALES = ("tensor", "row", "column", "element")


def check_scale(scale: str) -> str:
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; valid choices are {', '.join(map(repr, SCALES))}")
    return scale


def reduce_dims(ndim: int, scale: str, batch_dims: int = 0) -> tuple[int, ...]:
    """The dims a slice norm reduces over for a tensor of ``ndim`` dims.

    >>> reduce_dims(2, "row"), reduce_dims(4, "column"), reduce_dims(3, "tensor", batch_dims=1)
    ((1,), (0, 2, 3), (1, 2))
    """
    check_scale(scale)
    if not isinstance(batch_dims, int) or isinstance(batch_dims, bool) or batch_dims < 0:
        raise ValueError(f"batch_dims must be a non-negative int, got {batch_dims!r}")
    own = ndim - batch_dims  # dims of one copy of the weight
    need = 2 if scale == "column" else 1
    if own < need:
        raise ValueError(
            f"scale={scale!r} with batch_dims={batch_dims} needs a tensor with at least "
            f"{batch_dims + need} dims, got {ndim}"
        )
    dims = range(batch_dims, ndim)
    if scale == "tensor":
        return tuple(dims)
    if scale == "row":
        return tuple(d for d in dims if d != batch_dims)
    if scale == "column":
        return tuple(d for d in dims if d != batch_dims + 1)
    return ()  # "element": every entry is its own slice


def scale_shape(shape: torch.Size | tuple[int, ...], scale: str, batch_dims: int = 0) -> tuple[int, ...]:
    """Shape of ``s`` for a weight of ``shape``: size 1 on every reduced dim."""
    dims = set(reduce_dims(len(shape), scale, batch_dims))
    return tuple(1 if d in dims else n for d, n in enumerate(shape))


def norm_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype norms are computed in: float32 or better (bfloat16/float16 norms overflow or lose
    most of their digits when summing many squares)."""
    return torch.promote_types(dtype, torch.float32)


def slice_norm(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Euclidean norm of every slice of ``x`` (``keepdim=True``), in ``norm_dtype(x.dtype)``.

    With ``dims == ()`` (element scale) the slice is one entry and its norm is ``|x|``.
    """
    return _replicated(_unfinished_norm(x, dims))


def slice_norms(xs: list[torch.Tensor], dims: list[tuple[int, ...]]) -> list[torch.Tensor]:
    """:func:`slice_norm` of each of ``xs``. The FSDP2 norms that span the shards (``tensor`` and
    ``column`` scales of dim-0 shards) are finished together: concatenated (still partial), one
    redistribution, so one all-reduce per (mesh, dtype) for all of them instead of one per tensor.
    DTensor's own arithmetic either way (``x^p``, sum, ``x^(1/p)``); the cross-rank sum is bitwise
    the per-tensor one on 2 ranks, and may round differently in the last bit on more (the same on
    every rank)."""
    norms = [_unfinished_norm(x, d) for x, d in zip(xs, dims)]
    groups: dict = {}
    for i, n in enumerate(norms):
        placements = getattr(n, "placements", None)
        if placements is not None and any(p.is_partial() for p in placements):
            groups.setdefault((n.device_mesh, n.dtype, tuple(placements)), []).append(i)
    for idx in groups.values():
        if len(idx) == 1:
            continue
        flat = _replicated(torch.cat([norms[i].reshape(-1) for i in idx]))
        start = 0
        for i in idx:
            size = norms[i].numel()
            norms[i] = flat[start:start + size].view(norms[i].shape)
            start += size
    return [_replicated(n) for n in norms]


def _unfinished_norm(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    if not dims:
        return x.abs().to(norm_dtype(x.dtype))
    return torch.linalg.vector_norm(x, dim=dims, keepdim=True, dtype=norm_dtype(x.dtype))


def has_nonfinite(x: torch.Tensor) -> bool:
    """Whether ``x`` holds a NaN or Inf, decided over the whole tensor: for an FSDP2 DTensor shard the
    count is all-reduced, so every rank gets the same answer (``bool()`` of a DTensor reduction would
    read the local shard only, and the ranks could disagree)."""
    count = (~torch.isfinite(x)).sum()
    if hasattr(count, "full_tensor"):
        count = count.full_tensor()
    return bool(count > 0)


def any_nonfinite(tensors: list[torch.Tensor]) -> bool:
    """Whether any of ``tensors`` may hold a NaN or Inf: one reduction per tensor, summed per
    (device, dtype), one host sync per such group. Every reduction is in float32 or better (a
    float16 sum of finite values overflows at 65504; a float32 one only past 3.4e38).

    The reduction is a plain sum on CPU (a C++ loop has no launch cost, and a sum is the cheapest full
    reduction: 4× cheaper than ``_foreach_norm`` there) and for DTensors (a sum is defined on the empty
    shard FSDP2 gives a small tensor; the total is all-reduced, so every rank gets the same answer);
    on an accelerator it is ``torch._foreach_norm(·, 1)``, a few multi-tensor kernels whatever the
    number of tensors. NaN reaches both; Inf does too (a sum of Inf and −Inf is NaN). Their only
    false alarm is a finite tensor whose sum (of magnitudes) passes float32's range, so a True is
    to be confirmed (:func:`nonfinite`).
    """
    groups: dict = {}
    for x in tensors:
        groups.setdefault((x.device, x.dtype), []).append(x)
    for (device, dtype), xs in groups.items():
        acc = norm_dtype(dtype)
        if device.type == "cpu" or hasattr(xs[0], "placements"):
            reduced = [x.sum(dtype=acc) for x in xs]
        else:
            reduced = torch._foreach_norm(xs, 1, dtype=acc)
        total = torch.stack(reduced).sum()
        if hasattr(total, "full_tensor"):
            total = total.full_tensor()
        if not bool(torch.isfinite(total)):
            return True
    return False


def nonfinite(tensors: list[torch.Tensor]) -> list[int]:
    """The indices of the tensors that hold a NaN or Inf; one host sync per (device, dtype) when
    there are none.

    The fast test is :func:`any_nonfinite`. An alarm is confirmed tensor by tensor
    (:func:`has_nonfinite`), so a finite tensor is never named. On DTensors every decision is
    global, so every rank gets the same answer.
    """
    if not any_nonfinite(tensors):
        return []
    return [i for i, x in enumerate(tensors) if has_nonfinite(x)]


def _replicated(n: torch.Tensor) -> torch.Tensor:
    """A norm over a dim that FSDP2 shards comes back from DTensor *partial* (each rank holds the norm
    of its shard); finish it here, one all-reduce, so that it divides V and multiplies s like a plain
    tensor. Row and element norms of dim-0 shards are local and pass through untouched."""
    placements = getattr(n, "placements", None)
    if placements is None or not any(p.is_partial() for p in placements):
        return n
    from torch.distributed.tensor import Replicate

    return n.redistribute(n.device_mesh, [Replicate() if p.is_partial() else p for p in placements])
