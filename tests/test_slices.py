import itertools

import pytest
import torch

from polaropt.slices import SCALES, norm_dtype, reduce_dims, scale_shape, slice_norm


@pytest.mark.parametrize("scale,ndim,batch_dims,expected", [
    ("tensor", 2, 0, (0, 1)), ("row", 2, 0, (1,)), ("column", 2, 0, (0,)), ("element", 2, 0, ()),
    ("row", 4, 0, (1, 2, 3)), ("column", 4, 0, (0, 2, 3)), ("tensor", 3, 1, (1, 2)), ("row", 3, 1, (2,)),
    ("column", 3, 1, (1,)), ("row", 1, 0, ()), ("tensor", 1, 0, (0,)),
])
def test_reduce_dims(scale, ndim, batch_dims, expected):
    assert reduce_dims(ndim, scale, batch_dims) == expected


def test_scale_shape():
    assert scale_shape((4, 3, 2, 2), "row") == (4, 1, 1, 1)
    assert scale_shape((4, 3, 2, 2), "column") == (1, 3, 1, 1)
    assert scale_shape((5, 4, 3), "tensor", 1) == (5, 1, 1)
    assert scale_shape((5, 4, 3), "element", 1) == (5, 4, 3)


@pytest.mark.parametrize("scale,ndim,batch_dims", [("column", 1, 0), ("row", 1, 1), ("tensor", 2, 2)])
def test_too_few_dims_refused(scale, ndim, batch_dims):
    with pytest.raises(ValueError, match="at least"):
        reduce_dims(ndim, scale, batch_dims)


def test_bad_scale_and_batch_dims_refused():
    with pytest.raises(ValueError, match="'tensor', 'row', 'column', 'element'"):
        reduce_dims(2, "channel")
    with pytest.raises(ValueError, match="batch_dims"):
        reduce_dims(2, "row", -1)


def per_slice_norms(x, dims):
    """Reference: a Python loop over slices, each norm taken on its own."""
    out = torch.empty([1 if d in dims else k for d, k in enumerate(x.shape)], dtype=x.dtype)
    for idx in itertools.product(*(range(k) for k in out.shape)):
        piece = x[tuple(slice(None) if d in dims else i for d, i in enumerate(idx))]
        out[idx] = piece.square().sum().sqrt()
    return out


@pytest.mark.parametrize("scale,batch_dims", list(itertools.product(SCALES, (0, 1))))
def test_slice_norm_against_per_slice_loop(scale, batch_dims):
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    dims = reduce_dims(x.ndim, scale, batch_dims)
    n = slice_norm(x, dims)
    assert n.shape == scale_shape(x.shape, scale, batch_dims)
    torch.testing.assert_close(n, per_slice_norms(x, dims), rtol=1e-14, atol=0)


@pytest.mark.parametrize("scale", SCALES)
def test_slice_norm_every_slice(scale):
    x = torch.randn(3, 4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    dims = reduce_dims(x.ndim, scale)
    n = slice_norm(x, dims)
    # x / n has unit norm on every slice, whatever the slice is
    unit = slice_norm(x / n, dims)
    assert torch.allclose(unit, torch.ones_like(unit), atol=1e-14)


def test_norm_dtype_is_float32_or_better():
    assert norm_dtype(torch.bfloat16) == torch.float32
    assert norm_dtype(torch.float16) == torch.float32
    assert norm_dtype(torch.float64) == torch.float64
    x = torch.full((4096,), 16.0, dtype=torch.bfloat16)  # Σx² = 2^20: exact in float32
    assert slice_norm(x, (0,)).dtype == torch.float32
    assert float(slice_norm(x, (0,))) == 1024.0
