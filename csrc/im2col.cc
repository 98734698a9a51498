// im2col for the dense convolutions' GEMM route (jaxvgg/ops/conv.py, called through jaxvgg/ops/native.py):
// every output position's KxK input patch laid side by side, (N, OH, OW, K*K*C), in one pass that
// writes each patch row once. XLA:CPU builds the same array as K*K strided slices, each written out,
// and then a concatenation that copies them again (docs/performance.md, "im2col by hand").

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "xla/ffi/api/ffi.h"
#include "common.h"

namespace ffi = xla::ffi;

namespace {

template <ffi::DataType D>
ffi::Error Patches(ffi::ThreadPool pool, ffi::Buffer<D> x, int64_t kernel_size, int64_t stride, int64_t padding,
                   ffi::ResultBuffer<D> out) {
  using T = ffi::NativeType<D>;
  auto xd = x.dimensions(), od = out->dimensions();
  if (xd.size() != 4 || od.size() != 4) return ffi::Error::InvalidArgument("im2col: NHWC arrays");
  const int64_t n = xd[0], h = xd[1], w = xd[2], c = xd[3], k = kernel_size, s = stride, p = padding;
  const int64_t oh = od[1], ow = od[2];
  // Python's floor division: a map smaller than the filter has no output rows.
  auto out_size = [=](int64_t in) { return in + 2 * p >= k ? (in + 2 * p - k) / s + 1 : int64_t{0}; };
  if (od[0] != n || od[3] != k * k * c || oh != out_size(h) || ow != out_size(w))
    return ffi::Error::InvalidArgument("im2col: output shape does not match kernel, stride and padding");
  const T* xp = x.typed_data();
  T* op = out->typed_data();
  const int64_t rows = n * oh, row_len = ow * k * k * c;
  jaxvgg::InChunks(pool, rows, std::max<int64_t>(1, std::min<int64_t>(rows, jaxvgg::kMaxChunks)),
                   [=](int64_t, int64_t begin, int64_t end) {
                     for (int64_t r = begin; r < end; ++r) {
                       const int64_t img = r / oh, oy = r % oh;
                       T* dst = op + r * row_len;
                       for (int64_t ox = 0; ox < ow; ++ox) {
                         // For each filter row, the taps j = 0..k-1 read consecutive input pixels
                         // (ix = ox * s + j - p), so the in-bounds ones are one contiguous copy.
                         const int64_t j_lo = std::clamp<int64_t>(p - ox * s, 0, k);
                         const int64_t j_hi = std::clamp<int64_t>(w + p - ox * s, j_lo, k);
                         for (int64_t i = 0; i < k; ++i, dst += k * c) {
                           const int64_t iy = oy * s + i - p;
                           if (iy < 0 || iy >= h) {
                             std::fill(dst, dst + k * c, T(0));
                             continue;
                           }
                           std::fill(dst, dst + j_lo * c, T(0));
                           std::memcpy(dst + j_lo * c, xp + ((img * h + iy) * w + ox * s + j_lo - p) * c,
                                       (j_hi - j_lo) * c * sizeof(T));
                           std::fill(dst + j_hi * c, dst + k * c, T(0));
                         }
                       }
                     }
                   });
  return ffi::Error::Success();
}

template <ffi::DataType D>
auto PatchesBinding() {
  return ffi::Ffi::Bind()
      .template Ctx<ffi::ThreadPool>()
      .template Arg<ffi::Buffer<D>>()
      .template Attr<int64_t>("kernel_size")
      .template Attr<int64_t>("stride")
      .template Attr<int64_t>("padding")
      .template Ret<ffi::Buffer<D>>();
}

}  // namespace

JAXVGG_EXPORT_F32_F64(im2col, Patches, PatchesBinding)
// Patches only move numbers: bfloat16's (two bytes each, zero the same bits) go the same way.
XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxvgg_im2col_bf16, Patches<ffi::BF16>, PatchesBinding<ffi::BF16>());
