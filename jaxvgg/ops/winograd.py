"""3x3 stride-1 convolution by Winograd's minimal filtering, F(2x2, 3x3).

Each 2x2 block of outputs is computed from a 4x4 tile of the input with 16 multiplications per
input/output channel pair, where the direct convolution (and im2col's GEMM) makes 36: the tiles
and filters are transformed (additions and halvings: exact in float64 to its rounding), the 16
tile positions become 16 GEMMs of (tiles x C_in) by (C_in x C_out), and the products are
transformed back. Autodiff of these linear steps gives both gradients, each again 16 GEMMs of the
same reduced size, so a training step does 2.25x fewer multiply-adds in these layers.

What it costs: the transformed input is 4x the input (im2col's patches are 9x) and the filters
4x4 instead of 3x3 (16/9 of the weights to read: a loss where few tiles share them, as on 7x7 and
smaller maps). Which layers take it is measured per shape (:mod:`jaxvgg.ops.conv_choice`); the
rounding differs from the direct sum's by about 1e-6 relative in float32 (tests/test_ops.py). The
transforms are written by hand where the kernels are built (csrc/winograd.cc).
Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016, give the matrices.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxvgg.ops import native


def supported(x: jax.Array, kernel: jax.Array, stride: int, groups: int) -> bool:
    """A dense 3x3 stride-1 convolution of float32 input (bfloat16 keeps its GEMM kernel)."""
    return groups == 1 and stride == 1 and kernel.shape[:2] == (3, 3) and x.dtype == jnp.float32


def _input_rows(d: list) -> list:
    # B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]] applied along one axis
    return [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]


def _filter_rows(g: list) -> list:
    # G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    half_sum = (g[0] + g[2]) * 0.5
    return [g[0], half_sum + g[1] * 0.5, half_sum - g[1] * 0.5, g[2]]


def _output_rows(m: list) -> list:
    # A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]
    return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def transform_filters(kernel: jax.Array) -> jax.Array:
    """(3, 3, C, O) HWIO filters -> (16, C, O): G g G^T for each of the 16 tile positions."""
    rows = _filter_rows([kernel[i] for i in range(3)])  # 4 x (3, C, O)
    return jnp.stack([u for r in rows for u in _filter_rows([r[j] for j in range(3)])])


def conv3x3(x: jax.Array, kernel: jax.Array, padding: int) -> jax.Array:
    """NHWC x (3, 3, C, O) -> NHWC, stride 1, ``padding`` zeros on every side: torch's ``Conv2d``."""
    n, h, w, _ = x.shape
    oh, ow = h + 2 * padding - 2, w + 2 * padding - 2
    m = jnp.matmul(_tiles(x, padding), transform_filters(kernel))
    return _untile(m, (n, oh, ow, kernel.shape[-1]))


def _tile_counts(oh: int, ow: int) -> tuple[int, int]:
    return -(-oh // 2), -(-ow // 2)  # an odd size computes one row/column more, then cuts it


# Both transforms are linear, so each one's VJP is its transpose: by hand in one pass where the
# kernels are built (csrc/winograd.cc), else by jax.linear_transpose of the slices below.
@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _tiles(x: jax.Array, padding: int) -> jax.Array:
    """(16, tiles, C): B^T d B of every 4x4 input tile d, tile position a * 4 + b first."""
    n, h, w, c = x.shape
    th, tw = _tile_counts(h + 2 * padding - 2, w + 2 * padding - 2)
    return _by_kernel("input", x, (16, n * th * tw, c), padding, lambda: _tiles_by_slices(x, padding))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _untile(m: jax.Array, out_shape: tuple[int, int, int, int]) -> jax.Array:
    """NHWC of ``out_shape``: A^T m A of every tile's (16, O) products, the odd edge cut."""
    return _by_kernel("output", m, out_shape, None, lambda: _untile_by_slices(m, out_shape))


def _by_kernel(kind: str, a: jax.Array, out_shape: tuple[int, ...], padding: int | None, by_slices) -> jax.Array:
    if not native.winograd_supported(a):
        return by_slices()
    return native.winograd_transform(kind, a, out_shape, padding, by_slices)


def _with_shape_of(y: jax.Array, a: jax.Array) -> tuple[jax.Array, jax.Array]:
    # The transpose needs the input's shape and dtype only: a zero-sized residual carries them.
    return y, jnp.zeros((0, *a.shape), a.dtype)


def _transposed(kind: str, by_slices, padding: int | None, like: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    """The VJP of a transform: ``kind``'s kernel, or the transpose of the transform ``by_slices``."""
    shape = like.shape[1:]
    transpose = jax.linear_transpose(by_slices, jax.ShapeDtypeStruct(shape, like.dtype))
    return (_by_kernel(kind, g, shape, padding, lambda: transpose(g)[0]),)


def _tiles_fwd(x, padding):
    return _with_shape_of(_tiles(x, padding), x)


def _tiles_bwd(padding, like, g):
    return _transposed("input_grad", lambda a: _tiles_by_slices(a, padding), padding, like, g)


def _untile_fwd(m, out_shape):
    return _with_shape_of(_untile(m, out_shape), m)


def _untile_bwd(out_shape, like, g):
    return _transposed("output_grad", lambda a: _untile_by_slices(a, out_shape), None, like, g)


_tiles.defvjp(_tiles_fwd, _tiles_bwd)
_untile.defvjp(_untile_fwd, _untile_bwd)


def _tiles_by_slices(x: jax.Array, padding: int) -> jax.Array:
    n, h, w, c = x.shape
    th, tw = _tile_counts(h + 2 * padding - 2, w + 2 * padding - 2)
    xp = jnp.pad(x, ((0, 0), (padding, 2 * th + 2 - h - padding), (padding, 2 * tw + 2 - w - padding), (0, 0)))
    # the 4x4 input tiles, overlapping by 2: element (i, j) of every tile is a stride-2 slice
    d = [[xp[:, i : i + 2 * th : 2, j : j + 2 * tw : 2] for j in range(4)] for i in range(4)]
    cols = [_input_rows([d[i][j] for i in range(4)]) for j in range(4)]
    v = jnp.stack([t for a in range(4) for t in _input_rows([cols[j][a] for j in range(4)])])
    return v.reshape(16, n * th * tw, c)


def _untile_by_slices(m: jax.Array, out_shape: tuple[int, int, int, int]) -> jax.Array:
    n, oh, ow, out_c = out_shape
    th, tw = _tile_counts(oh, ow)
    m = m.reshape(4, 4, n, th, tw, out_c)
    cols_out = [_output_rows([m[a, b] for a in range(4)]) for b in range(4)]
    y = [_output_rows([cols_out[b][p] for b in range(4)]) for p in range(2)]
    # y[p][q] holds outputs (2 * tile_row + p, 2 * tile_col + q)
    tiles = jnp.stack([jnp.stack(y[p], axis=3) for p in range(2)], axis=2)  # (n, th, 2, tw, 2, O)
    return tiles.reshape(n, 2 * th, 2 * tw, out_c)[:, :oh, :ow]
