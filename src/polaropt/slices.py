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
    if not dims:
        return x.abs().to(norm_dtype(x.dtype))
    return _replicated(torch.linalg.vector_norm(x, dim=dims, keepdim=True, dtype=norm_dtype(x.dtype)))


def has_nonfinite(x: torch.Tensor) -> bool:
    """Whether ``x`` holds a NaN or Inf, decided over the whole tensor: for an FSDP2 DTensor shard the
    count is all-reduced, so every rank gets the same answer (``bool()`` of a DTensor reduction would
    read the local shard only, and the ranks could disagree)."""
    count = (~torch.isfinite(x)).sum()
    if hasattr(count, "full_tensor"):
        count = count.full_tensor()
    return bool(count > 0)


def is_finite_total(total: torch.Tensor) -> bool:
    """``bool(isfinite(total))`` for a sum of sums, taken over every rank when it is a DTensor."""
    if hasattr(total, "full_tensor"):
        total = total.full_tensor()
    return bool(torch.isfinite(total))


def nonfinite(tensors: list[torch.Tensor]) -> list[int]:
    """The indices of the tensors that hold a NaN or Inf; one host sync when there are none.

    The fast test is the sum of each tensor, stacked per (device, dtype): a NaN or an Inf always
    reaches the sum (NaN propagates; Inf stays Inf or meets −Inf and gives NaN), a sum is the
    cheapest full reduction (on CPU about 10× cheaper than ``_foreach_norm(·, inf)``), and unlike an
    inf-norm it is defined on the empty shard a small tensor gets under FSDP2. Its only false alarm
    is a finite sum that overflows, so an alarm is confirmed tensor by tensor (:func:`has_nonfinite`).
    On DTensors every decision is global, so every rank gets the same answer.
    """
    sums: dict = {}
    for x in tensors:
        sums.setdefault((x.device, x.dtype), []).append(x.sum())
    if all(is_finite_total(torch.stack(xs).sum()) for xs in sums.values()):
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
