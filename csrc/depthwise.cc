// A stride-1 depthwise convolution with "same" padding (NHWC, one KxK filter per channel, 2p = K - 1),
// forward and weight gradient, called from JAX through its FFI (jaxvgg/ops/native.py). XLA:CPU
// computes the weight gradient as K*K column reductions, each a pass over the input and the output
// gradient, and the forward as several fusions of shifted products; here each is one pass.
// Measured in docs/performance.md ("The depthwise convolution by hand").
//
// y[n, r, q, c]  = sum over i, j of  x[n, r + i - p, q + j - p, c] * w[i, j, c]
// dW[i, j, c]    = sum over n, r, q of  x[n, r + i - p, q + j - p, c] * g[n, r, q, c]
// The input gradient is the forward of g with the filters flipped (the caller flips them).
//
// Work is split into a fixed number of row chunks. The weight gradient sums each chunk into its own
// partial array and adds the partials in chunk order: the same result whatever the number of threads.

#include <algorithm>
#include <cstdint>
#include <vector>

#include "xla/ffi/api/ffi.h"
#include "common.h"

namespace ffi = xla::ffi;

namespace {

// One output row (image n, row r) of the K*K shifted input rows. The forward writes that row of the
// output: out[w*C], the sum of the shifted rows times their filter taps (`other` the K*K*C filters).
// The weight gradient adds the row's share to acc[K*K*C]: each shifted row times the row's output
// gradient (`other` the whole output gradient), summed over the row.
template <typename T, bool kWeightGrad>
JAXVGG_CLONES void Row(const T* __restrict x, const T* __restrict other, T* __restrict out, int64_t n, int64_t r,
                       int64_t h, int64_t w, int64_t c, int64_t k, int64_t p) {
  // stride 1 and "same" padding: the output is h x w, as the input
  const T* grow = kWeightGrad ? other + (n * h + r) * w * c : nullptr;
  if constexpr (!kWeightGrad) std::fill(out, out + w * c, T(0));
  for (int64_t i = 0; i < k; ++i) {
    const int64_t xr = r + i - p;
    if (xr < 0 || xr >= h) continue;
    const T* xrow = x + (n * h + xr) * w * c;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t tap = (i * k + j) * c;
      const int64_t lo = std::max<int64_t>(0, p - j), hi = std::min<int64_t>(w, w + p - j);
      for (int64_t col = lo; col < hi; ++col) {
        const T* __restrict xs = xrow + (col + j - p) * c;
        if constexpr (kWeightGrad) {
          T* __restrict a = out + tap;
          const T* __restrict gs = grow + col * c;
          for (int64_t ch = 0; ch < c; ++ch) a[ch] += xs[ch] * gs[ch];
        } else {
          const T* __restrict f = other + tap;
          T* __restrict o = out + col * c;
          for (int64_t ch = 0; ch < c; ++ch) o[ch] += xs[ch] * f[ch];
        }
      }
    }
  }
}

template <ffi::DataType D>
ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<D> x, ffi::Buffer<D> wts, int64_t padding,
                   ffi::ResultBuffer<D> out) {
  using T = ffi::NativeType<D>;
  auto xd = x.dimensions(), wd = wts.dimensions();
  if (xd.size() != 4 || wd.size() != 3) return ffi::Error::InvalidArgument("depthwise forward: NHWC and KKC arrays");
  const int64_t n = xd[0], h = xd[1], w = xd[2], c = xd[3], k = wd[0], p = padding;
  if (wd[1] != k || wd[2] != c || 2 * p != k - 1 || out->element_count() != x.element_count())
    return ffi::Error::InvalidArgument("depthwise forward: needs a square filter per channel and padding (k - 1) / 2");
  const T* xp = x.typed_data();
  const T* kp = wts.typed_data();
  T* o = out->typed_data();
  const int64_t rows = n * h;
  jaxvgg::InChunks(pool, rows, std::max<int64_t>(1, std::min(rows, jaxvgg::kMaxChunks)), [=](int64_t, int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) Row<T, false>(xp, kp, o + r * w * c, r / h, r % h, h, w, c, k, p);
  });
  return ffi::Error::Success();
}

template <ffi::DataType D>
ffi::Error WeightGrad(ffi::ThreadPool pool, ffi::Buffer<D> x, ffi::Buffer<D> g, int64_t kernel_size, int64_t padding,
                      ffi::ResultBuffer<D> out) {
  using T = ffi::NativeType<D>;
  auto xd = x.dimensions(), gd = g.dimensions();
  if (xd.size() != 4 || gd.size() != 4) return ffi::Error::InvalidArgument("depthwise weight grad: NHWC arrays");
  const int64_t n = xd[0], h = xd[1], w = xd[2], c = xd[3], k = kernel_size, p = padding;
  if (gd[0] != n || gd[1] != h || gd[2] != w || gd[3] != c || 2 * p != k - 1 || out->element_count() != k * k * c)
    return ffi::Error::InvalidArgument("depthwise weight grad: needs stride 1 and padding (k - 1) / 2");
  const int64_t rows = n * h, taps = k * k * c;
  const int64_t chunks = std::max<int64_t>(1, std::min(rows, jaxvgg::kMaxChunks));
  std::vector<T> partial(chunks * taps, T(0));
  T* parts = partial.data();
  const T* xp = x.typed_data();
  const T* gp = g.typed_data();

  jaxvgg::InChunks(pool, rows, chunks, [=](int64_t ch, int64_t begin, int64_t end) {
    T* acc = parts + ch * taps;
    for (int64_t r = begin; r < end; ++r) Row<T, true>(xp, gp, acc, r / h, r % h, h, w, c, k, p);
  });

  T* o = out->typed_data();
  std::fill(o, o + taps, T(0));
  for (int64_t ch = 0; ch < chunks; ++ch) {
    const T* acc = parts + ch * taps;
    for (int64_t t = 0; t < taps; ++t) o[t] += acc[t];
  }
  return ffi::Error::Success();
}

template <ffi::DataType D>
auto WeightGradBinding() {
  return ffi::Ffi::Bind()
      .template Ctx<ffi::ThreadPool>()
      .template Arg<ffi::Buffer<D>>()
      .template Arg<ffi::Buffer<D>>()
      .template Attr<int64_t>("kernel_size")
      .template Attr<int64_t>("padding")
      .template Ret<ffi::Buffer<D>>();
}

template <ffi::DataType D>
auto ForwardBinding() {
  return ffi::Ffi::Bind()
      .template Ctx<ffi::ThreadPool>()
      .template Arg<ffi::Buffer<D>>()
      .template Arg<ffi::Buffer<D>>()
      .template Attr<int64_t>("padding")
      .template Ret<ffi::Buffer<D>>();
}

}  // namespace

JAXVGG_EXPORT_F32_F64(depthwise_weight_grad, WeightGrad, WeightGradBinding)
JAXVGG_EXPORT_F32_F64(depthwise_forward, Forward, ForwardBinding)
