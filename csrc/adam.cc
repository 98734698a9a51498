// Adam and AdamW's step for one weight array, in one pass (jaxvgg/train/optim.py, through
// jaxvgg/ops/native.py): reads the weight, its gradient and both moments once and writes the weight
// and the moments in place. XLA:CPU makes three loop fusions of optax's chain, one per output, each
// re-reading the gradient and the weight (docs/performance.md, "Adam in one pass").
//
// hyper = [lr, b1, 1 - b1, b2, 1 - b2, eps, weight decay, 1 - b1^t, 1 - b2^t], optax's and torch's
// semantics: Adam adds wd * w to the gradient before the moments, AdamW to the update after them.
// 1 - b comes in rounded from double, as optax and torch have it: 1 - 0.999f is 1.3e-5 off 0.001f,
// which ten float32 steps of student_cnn carried to 1.2e-4 of the weights.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>

#include "xla/ffi/api/ffi.h"
#include "common.h"

namespace ffi = xla::ffi;

namespace {

// In place: w, mu and nu are read and overwritten; four distinct arrays, so the loop vectorises.
template <typename T>
JAXVGG_CLONES void AdamRange(T* __restrict w, const T* __restrict g, T* __restrict mu, T* __restrict nu,
                             const T* __restrict h, bool decoupled, int64_t begin, int64_t end) {
  const T lr = h[0], b1 = h[1], one_minus_b1 = h[2], b2 = h[3], one_minus_b2 = h[4], eps = h[5], wd = h[6];
  const T bc1 = h[7], bc2 = h[8];
  const T l2 = decoupled ? T(0) : wd, dec = decoupled ? wd : T(0);
  for (int64_t i = begin; i < end; ++i) {
    const T wi = w[i], gi = g[i] + l2 * wi;
    const T m = one_minus_b1 * gi + b1 * mu[i];
    const T v = one_minus_b2 * (gi * gi) + b2 * nu[i];
    const T update = (m / bc1) / (std::sqrt(v / bc2) + eps) + dec * wi;
    w[i] = wi - lr * update;
    mu[i] = m;
    nu[i] = v;
  }
}

template <ffi::DataType D>
ffi::Error Adam(ffi::ThreadPool pool, ffi::Buffer<D> w, ffi::Buffer<D> g, ffi::Buffer<D> mu, ffi::Buffer<D> nu,
                ffi::Buffer<D> hyper, int64_t decoupled, ffi::ResultBuffer<D> w_out, ffi::ResultBuffer<D> mu_out,
                ffi::ResultBuffer<D> nu_out) {
  using T = ffi::NativeType<D>;
  const int64_t n = w.element_count();
  if (g.element_count() != n || mu.element_count() != n || nu.element_count() != n || hyper.element_count() != 9)
    return ffi::Error::InvalidArgument("adam: weight, gradient and moments of one size, and 9 hyperparameters");
  T *wo = w_out->typed_data(), *mo = mu_out->typed_data(), *vo = nu_out->typed_data();
  const T* gp = g.typed_data();
  const T* hp = hyper.typed_data();
  // The outputs alias the inputs (input_output_aliases in native.py); should XLA ever give fresh
  // buffers, the step starts from copies.
  for (auto [from, to] : {std::pair{w.typed_data(), wo}, {mu.typed_data(), mo}, {nu.typed_data(), vo}})
    if (from != to) std::copy(from, from + n, to);
  // Blocks of 16 Ki elements (64 KiB of float32 per array): small weights take one chunk, no threads.
  constexpr int64_t kBlock = 16384;
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  jaxvgg::InChunks(pool, blocks, std::max<int64_t>(1, std::min(blocks, jaxvgg::kMaxChunks)),
                   [=](int64_t, int64_t begin, int64_t end) {
                     AdamRange<T>(wo, gp, mo, vo, hp, decoupled != 0, begin * kBlock, std::min(n, end * kBlock));
                   });
  return ffi::Error::Success();
}

template <ffi::DataType D>
auto AdamBinding() {
  return ffi::Ffi::Bind()
      .template Ctx<ffi::ThreadPool>()
      .template Arg<ffi::Buffer<D>>()
      .template Arg<ffi::Buffer<D>>()
      .template Arg<ffi::Buffer<D>>()
      .template Arg<ffi::Buffer<D>>()
      .template Arg<ffi::Buffer<D>>()
      .template Attr<int64_t>("decoupled")
      .template Ret<ffi::Buffer<D>>()
      .template Ret<ffi::Buffer<D>>()
      .template Ret<ffi::Buffer<D>>();
}

}  // namespace

JAXVGG_EXPORT_F32_F64(adam, Adam, AdamBinding)
