// Winograd's F(2x2, 3x3) transforms of the input and of the output (jaxvgg/ops/winograd.py, through
// jaxvgg/ops/native.py), and their transposes for the gradients: each in one pass over its arrays.
// In XLA the input transform reads 16 strided slices of the padded input and the output transform
// 16 slices of the GEMMs' products, as loop fusions that took most of a 64-channel layer's time
// (docs/performance.md, "Winograd's F(2x2, 3x3)", the transforms by hand).
//
// Layouts: x and y are NHWC; V and M are (16, tiles, channels), position a * 4 + b of the 4x4 tile,
// tiles in (image, tile row, tile column) order. Tile (t, u) reads input rows 2t - p .. 2t - p + 3 and
// columns 2u - p .. 2u - p + 3 (zeros outside), and makes outputs 2t .. 2t + 1, 2u .. 2u + 1 (the
// last row and column are cut where the output size is odd).

#include <algorithm>
#include <cstdint>
#include <memory>
#include <new>
#include <string>

#include "xla/ffi/api/ffi.h"
#include "common.h"

namespace ffi = xla::ffi;

namespace {

struct Tiling {
  int64_t n, h, w, oh, ow, th, tw, p;
  int64_t tiles() const { return n * th * tw; }
};

Tiling MakeTiling(int64_t n, int64_t h, int64_t w, int64_t p) {
  const int64_t oh = std::max<int64_t>(h + 2 * p - 2, 0), ow = std::max<int64_t>(w + 2 * p - 2, 0);
  return {n, h, w, oh, ow, (oh + 1) / 2, (ow + 1) / 2, p};
}

// The output side needs only the output's size.
Tiling OutputTiling(int64_t n, int64_t oh, int64_t ow) { return {n, 0, 0, oh, ow, (oh + 1) / 2, (ow + 1) / 2, 0}; }

// V = B^T d B for every tile; B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]].
template <typename T>
JAXVGG_CLONES void InputTiles(const T* __restrict x, T* __restrict v, const T* zeros, Tiling g, int64_t c,
                              int64_t row_begin, int64_t row_end) {
  const int64_t tiles = g.tiles();
  for (int64_t row = row_begin; row < row_end; ++row) {  // row = image * th + tile row
    const int64_t img = row / g.th, t = row % g.th;
    for (int64_t u = 0; u < g.tw; ++u) {
      const T* src[16];
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) {
          const int64_t y = 2 * t - g.p + i, xx = 2 * u - g.p + j;
          src[i * 4 + j] = (y >= 0 && y < g.h && xx >= 0 && xx < g.w) ? x + ((img * g.h + y) * g.w + xx) * c : zeros;
        }
      T* dst = v + (row * g.tw + u) * c;
#pragma GCC ivdep
      for (int64_t k = 0; k < c; ++k) {
        T r[4][4];
        for (int j = 0; j < 4; ++j) {
          const T d0 = src[j][k], d1 = src[4 + j][k], d2 = src[8 + j][k], d3 = src[12 + j][k];
          r[0][j] = d0 - d2;
          r[1][j] = d1 + d2;
          r[2][j] = d2 - d1;
          r[3][j] = d1 - d3;
        }
        for (int a = 0; a < 4; ++a) {
          dst[(a * 4 + 0) * tiles * c + k] = r[a][0] - r[a][2];
          dst[(a * 4 + 1) * tiles * c + k] = r[a][1] + r[a][2];
          dst[(a * 4 + 2) * tiles * c + k] = r[a][2] - r[a][1];
          dst[(a * 4 + 3) * tiles * c + k] = r[a][1] - r[a][3];
        }
      }
    }
  }
}

// The transpose: dx = the sum over tiles of B dV B^T, added where each tile was read. Tiles of one
// row overlap those of the next, so callers add rows of one parity at a time.
template <typename T>
JAXVGG_CLONES void InputTilesTransposed(const T* __restrict dv, T* __restrict dx, Tiling g, int64_t c,
                                        int64_t parity, int64_t row_begin, int64_t row_end) {
  const int64_t tiles = g.tiles();
  const int64_t half = (g.th + 1 - parity) / 2;  // tile rows of this parity per image
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t img = r / half, t = 2 * (r % half) + parity;
    for (int64_t u = 0; u < g.tw; ++u) {
      const T* src = dv + ((img * g.th + t) * g.tw + u) * c;
      T* dst[16];  // where each of the tile's 16 inputs came from; null where it was padding
      for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) {
          const int64_t y = 2 * t - g.p + i, xx = 2 * u - g.p + j;
          dst[i * 4 + j] = (y >= 0 && y < g.h && xx >= 0 && xx < g.w) ? dx + ((img * g.h + y) * g.w + xx) * c : nullptr;
        }
      // In blocks of channels through a buffer on the stack: the transform's loop and the adds vectorise.
      constexpr int64_t kBlock = 64;
      T out[16][kBlock];
      for (int64_t k0 = 0; k0 < c; k0 += kBlock) {
        const int64_t len = std::min(kBlock, c - k0);
#pragma GCC ivdep
        for (int64_t kk = 0; kk < len; ++kk) {
          const int64_t k = k0 + kk;
          T s[4][4];
          for (int a = 0; a < 4; ++a) {
            const T g0 = src[(a * 4 + 0) * tiles * c + k], g1 = src[(a * 4 + 1) * tiles * c + k];
            const T g2 = src[(a * 4 + 2) * tiles * c + k], g3 = src[(a * 4 + 3) * tiles * c + k];
            s[a][0] = g0;
            s[a][1] = g1 - g2 + g3;
            s[a][2] = g1 + g2 - g0;
            s[a][3] = -g3;
          }
          for (int j = 0; j < 4; ++j) {
            out[0 * 4 + j][kk] = s[0][j];
            out[1 * 4 + j][kk] = s[1][j] - s[2][j] + s[3][j];
            out[2 * 4 + j][kk] = s[1][j] + s[2][j] - s[0][j];
            out[3 * 4 + j][kk] = -s[3][j];
          }
        }
        for (int q = 0; q < 16; ++q) {
          if (dst[q] == nullptr) continue;
          T* to = dst[q] + k0;
#pragma GCC ivdep
          for (int64_t kk = 0; kk < len; ++kk) to[kk] += out[q][kk];
        }
      }
    }
  }
}

// y = A^T M A for every tile; A^T = [[1, 1, 1, 0], [0, 1, -1, -1]].
template <typename T>
JAXVGG_CLONES void OutputTiles(const T* __restrict m, T* __restrict y, Tiling g, int64_t o, int64_t row_begin,
                               int64_t row_end) {
  const int64_t tiles = g.tiles();
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t img = row / g.th, t = row % g.th;
    const bool second_row = 2 * t + 1 < g.oh;
    for (int64_t u = 0; u < g.tw; ++u) {
      const T* src = m + (row * g.tw + u) * o;
      const bool second_col = 2 * u + 1 < g.ow;
      T* y00 = y + ((img * g.oh + 2 * t) * g.ow + 2 * u) * o;
      T* y10 = second_row ? y00 + g.ow * o : y00;  // not past the array's end on an odd last row
#pragma GCC ivdep
      for (int64_t k = 0; k < o; ++k) {
        T s[2][4];
        for (int b = 0; b < 4; ++b) {
          const T m0 = src[(0 * 4 + b) * tiles * o + k], m1 = src[(1 * 4 + b) * tiles * o + k];
          const T m2 = src[(2 * 4 + b) * tiles * o + k], m3 = src[(3 * 4 + b) * tiles * o + k];
          s[0][b] = m0 + m1 + m2;
          s[1][b] = m1 - m2 - m3;
        }
        y00[k] = s[0][0] + s[0][1] + s[0][2];
        if (second_col) y00[o + k] = s[0][1] - s[0][2] - s[0][3];
        if (second_row) {
          y10[k] = s[1][0] + s[1][1] + s[1][2];
          if (second_col) y10[o + k] = s[1][1] - s[1][2] - s[1][3];
        }
      }
    }
  }
}

// The transpose: dM = A dy A^T per tile, the cut outputs' gradient zero.
template <typename T>
JAXVGG_CLONES void OutputTilesTransposed(const T* __restrict dy, T* __restrict dm, const T* zeros, Tiling g,
                                         int64_t o, int64_t row_begin, int64_t row_end) {
  const int64_t tiles = g.tiles();
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t img = row / g.th, t = row % g.th;
    for (int64_t u = 0; u < g.tw; ++u) {
      const T* src[2][2];
      for (int p = 0; p < 2; ++p)
        for (int q = 0; q < 2; ++q)
          src[p][q] = (2 * t + p < g.oh && 2 * u + q < g.ow)
                          ? dy + ((img * g.oh + 2 * t + p) * g.ow + 2 * u + q) * o
                          : zeros;
      T* dst = dm + (row * g.tw + u) * o;
#pragma GCC ivdep
      for (int64_t k = 0; k < o; ++k) {
        T s[4][2];  // along p -> a
        for (int q = 0; q < 2; ++q) {
          const T g0 = src[0][q][k], g1 = src[1][q][k];
          s[0][q] = g0;
          s[1][q] = g0 + g1;
          s[2][q] = g0 - g1;
          s[3][q] = -g1;
        }
        for (int a = 0; a < 4; ++a) {
          dst[(a * 4 + 0) * tiles * o + k] = s[a][0];
          dst[(a * 4 + 1) * tiles * o + k] = s[a][0] + s[a][1];
          dst[(a * 4 + 2) * tiles * o + k] = s[a][0] - s[a][1];
          dst[(a * 4 + 3) * tiles * o + k] = -s[a][1];
        }
      }
    }
  }
}

int64_t Chunks(int64_t rows) { return std::max<int64_t>(1, std::min<int64_t>(rows, jaxvgg::kMaxChunks)); }

// Every handler's shape check: `nhwc` and the (16, tiles, channels) array `tiled` of its transform,
// whose tiles are counted from the input's size and padding (input side) or the output's (output side).
template <typename Dims>
ffi::Error TilingOf(const char* kernel, const Dims& nhwc, const Dims& tiled, const int64_t* padding, Tiling* g) {
  if (nhwc.size() != 4 || tiled.size() != 3)
    return ffi::Error::InvalidArgument(std::string(kernel) + ": an NHWC array and a 3-D one");
  *g = padding ? MakeTiling(nhwc[0], nhwc[1], nhwc[2], *padding) : OutputTiling(nhwc[0], nhwc[1], nhwc[2]);
  if (tiled[0] != 16 || tiled[1] != g->tiles() || tiled[2] != nhwc[3])
    return ffi::Error::InvalidArgument(std::string(kernel) + ": the 3-D array is not (16, tiles, channels)");
  return ffi::Error::Success();
}

// A row of `n` zeros, standing for the padding's pixels; null where memory ran out.
template <typename T>
std::unique_ptr<T[]> Zeros(int64_t n) {
  return std::unique_ptr<T[]>(new (std::nothrow) T[std::max<int64_t>(n, 1)]());
}

template <ffi::DataType D>
ffi::Error Input(ffi::ThreadPool pool, ffi::Buffer<D> x, int64_t padding, ffi::ResultBuffer<D> v) {
  using T = ffi::NativeType<D>;
  Tiling g;
  if (ffi::Error e = TilingOf("winograd_input", x.dimensions(), v->dimensions(), &padding, &g); e.failure()) return e;
  const int64_t c = x.dimensions()[3];
  auto zeros = Zeros<T>(c);
  if (!zeros) return ffi::Error(ffi::ErrorCode::kResourceExhausted, "winograd_input: out of memory");
  const T *xp = x.typed_data(), *zp = zeros.get();
  T* vp = v->typed_data();
  const int64_t rows = g.n * g.th;
  jaxvgg::InChunks(pool, rows, Chunks(rows), [=](int64_t, int64_t b, int64_t e) { InputTiles<T>(xp, vp, zp, g, c, b, e); });
  return ffi::Error::Success();
}

template <ffi::DataType D>
ffi::Error InputGrad(ffi::ThreadPool pool, ffi::Buffer<D> dv, int64_t padding, ffi::ResultBuffer<D> dx) {
  using T = ffi::NativeType<D>;
  Tiling g;
  if (ffi::Error e = TilingOf("winograd_input_grad", dx->dimensions(), dv.dimensions(), &padding, &g); e.failure())
    return e;
  const int64_t c = dx->dimensions()[3];
  const T* vp = dv.typed_data();
  T* xp = dx->typed_data();
  const int64_t pixel_rows = g.n * g.h;
  jaxvgg::InChunks(pool, pixel_rows, Chunks(pixel_rows), [=](int64_t, int64_t b, int64_t e) {
    std::fill(xp + b * g.w * c, xp + e * g.w * c, T(0));
  });
  for (int64_t parity = 0; parity < 2; ++parity) {
    const int64_t rows = g.n * ((g.th + 1 - parity) / 2);
    if (rows == 0) continue;
    jaxvgg::InChunks(pool, rows, Chunks(rows), [=](int64_t, int64_t b, int64_t e) {
      InputTilesTransposed<T>(vp, xp, g, c, parity, b, e);
    });
  }
  return ffi::Error::Success();
}

template <ffi::DataType D>
ffi::Error Output(ffi::ThreadPool pool, ffi::Buffer<D> m, ffi::ResultBuffer<D> y) {
  using T = ffi::NativeType<D>;
  Tiling g;
  if (ffi::Error e = TilingOf("winograd_output", y->dimensions(), m.dimensions(), nullptr, &g); e.failure()) return e;
  const int64_t o = y->dimensions()[3];
  const T* mp = m.typed_data();
  T* yp = y->typed_data();
  const int64_t rows = g.n * g.th;
  jaxvgg::InChunks(pool, rows, Chunks(rows), [=](int64_t, int64_t b, int64_t e) { OutputTiles<T>(mp, yp, g, o, b, e); });
  return ffi::Error::Success();
}

template <ffi::DataType D>
ffi::Error OutputGrad(ffi::ThreadPool pool, ffi::Buffer<D> dy, ffi::ResultBuffer<D> dm) {
  using T = ffi::NativeType<D>;
  Tiling g;
  if (ffi::Error e = TilingOf("winograd_output_grad", dy.dimensions(), dm->dimensions(), nullptr, &g); e.failure())
    return e;
  const int64_t o = dy.dimensions()[3];
  auto zeros = Zeros<T>(o);
  if (!zeros) return ffi::Error(ffi::ErrorCode::kResourceExhausted, "winograd_output_grad: out of memory");
  const T *yp = dy.typed_data(), *zp = zeros.get();
  T* mp = dm->typed_data();
  const int64_t rows = g.n * g.th;
  jaxvgg::InChunks(pool, rows, Chunks(rows),
                   [=](int64_t, int64_t b, int64_t e) { OutputTilesTransposed<T>(yp, mp, zp, g, o, b, e); });
  return ffi::Error::Success();
}

template <ffi::DataType D>
auto InputSideBinding() {
  return ffi::Ffi::Bind()
      .template Ctx<ffi::ThreadPool>()
      .template Arg<ffi::Buffer<D>>()
      .template Attr<int64_t>("padding")
      .template Ret<ffi::Buffer<D>>();
}

template <ffi::DataType D>
auto OutputSideBinding() {
  return ffi::Ffi::Bind().template Ctx<ffi::ThreadPool>().template Arg<ffi::Buffer<D>>().template Ret<ffi::Buffer<D>>();
}

}  // namespace

JAXVGG_EXPORT_F32_F64(winograd_input, Input, InputSideBinding)
JAXVGG_EXPORT_F32_F64(winograd_input_grad, InputGrad, InputSideBinding)
JAXVGG_EXPORT_F32_F64(winograd_output, Output, OutputSideBinding)
JAXVGG_EXPORT_F32_F64(winograd_output_grad, OutputGrad, OutputSideBinding)
