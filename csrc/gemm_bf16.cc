// A bfloat16 GEMM for the dense convolutions' im2col route under --precision bf16 (jaxvgg/ops/conv.py,
// through jaxvgg/ops/native.py), on CPUs with AVX-512 BF16. XLA:CPU has no bfloat16 GEMM: it converts
// both operands to float32 and multiplies those, so bf16 ran slower than fp32. Here each
// VDPBF16PS multiplies 32 bfloat16 pairs and adds them into 16 float32 sums, twice the float32 FMA's
// work per instruction (measured: 230 against 113 GFLOP/s on one core of an AMD EPYC).
//
// C (M x N, bfloat16) = A (M x K, bfloat16, row-major) @ B (K x N), summed in float32 and rounded to
// bfloat16 once, as XLA's float32 dot of the converted operands and its conversion back.
// B is packed first: for each panel of 32 columns, the K rows as (k, k + 1) pairs side by side, the
// layout VDPBF16PS reads; A needs no packing, since a row-major row holds each (k, k + 1) pair together.

// GCC 10 and clang 9 were the first with the AVX-512 BF16 intrinsics; an older compiler builds the
// other kernels without this one.
#if defined(__x86_64__) && ((defined(__clang__) && __clang_major__ >= 9) || \
                            (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 10))
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>

#include "xla/ffi/api/ffi.h"
#include "common.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kPanel = 32;  // columns of B per packed panel: two 16-float accumulators per row
constexpr int64_t kRows = 8;    // rows of A per micro-tile: 16 accumulators, 2 B loads, 8 broadcasts per pair
constexpr int64_t kBlock = 64;  // rows of A per task
constexpr int64_t kDepth = 1024;  // K per block: a panel's block is 64 KiB, in L2 across a task's tiles

using bf16 = uint16_t;

// packed[panel][k / 2][column][k % 2]: the panel's 32 columns, two K rows interleaved.
void PackPanel(const bf16* b, bf16* packed, int64_t k, int64_t n, int64_t panel) {
  for (int64_t kk = 0; kk < k; kk += 2) {
    const bf16* r0 = b + kk * n + panel * kPanel;
    const bf16* r1 = r0 + n;
    bf16* dst = packed + (panel * k + kk) * kPanel;
    for (int64_t col = 0; col < kPanel; ++col) {
      dst[2 * col] = r0[col];
      dst[2 * col + 1] = r1[col];
    }
  }
}

// R rows of A (row stride lda, from column k0) times one packed panel, over `depth` of K: C's R x 32
// tile. Long contractions come in blocks of kDepth, their float32 sums kept between blocks in `sums`
// (row stride n) and rounded to bfloat16 into c after the last.
template <int R>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void Tile(const bf16* a, int64_t lda, const bf16* panel,
                                                                 int64_t depth, float* sums, bf16* c, int64_t n,
                                                                 bool first, bool last) {
  __m512 acc[R][2];
  for (int r = 0; r < R; ++r) {
    acc[r][0] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(sums + r * n);
    acc[r][1] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(sums + r * n + 16);
  }
  for (int64_t kk = 0; kk < depth; kk += 2, panel += 2 * kPanel) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(panel);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(panel + kPanel);
    for (int r = 0; r < R; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * lda + kk, sizeof pair);
      const __m512bh ar = (__m512bh)_mm512_set1_epi32(pair);
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], ar, b0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], ar, b1);
    }
  }
  for (int r = 0; r < R; ++r) {
    if (last) {
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * n), (__m256i)_mm512_cvtneps_pbh(acc[r][0]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c + r * n + 16), (__m256i)_mm512_cvtneps_pbh(acc[r][1]));
    } else {
      _mm512_storeu_ps(sums + r * n, acc[r][0]);
      _mm512_storeu_ps(sums + r * n + 16, acc[r][1]);
    }
  }
}

template <int R>
void Tiles(int64_t rows, const bf16* a, int64_t lda, const bf16* panel, int64_t depth, float* sums, bf16* c,
           int64_t n, bool first, bool last) {
  if constexpr (R > 0) {
    if (rows == R) return Tile<R>(a, lda, panel, depth, sums, c, n, first, last);
    return Tiles<R - 1>(rows, a, lda, panel, depth, sums, c, n, first, last);
  }
}

ffi::Error MatmulBf16(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> a, ffi::Buffer<ffi::BF16> b,
                      ffi::ResultBuffer<ffi::BF16> out) {
  if (!__builtin_cpu_supports("avx512bf16")) return ffi::Error::Internal("matmul_bf16: this CPU has no AVX-512 BF16");
  auto ad = a.dimensions(), bd = b.dimensions(), od = out->dimensions();
  if (ad.size() != 2 || bd.size() != 2 || od.size() != 2) return ffi::Error::InvalidArgument("matmul_bf16: 2-D arrays");
  const int64_t m = ad[0], k = ad[1], n = bd[1];
  if (bd[0] != k || od[0] != m || od[1] != n) return ffi::Error::InvalidArgument("matmul_bf16: shapes do not match");
  if (k == 0 || k % 2 != 0 || n % kPanel != 0)
    return ffi::Error::InvalidArgument("matmul_bf16: K must be even and positive, N a multiple of 32");
  const bf16* ap = reinterpret_cast<const bf16*>(a.untyped_data());
  const bf16* bp = reinterpret_cast<const bf16*>(b.untyped_data());
  bf16* cp = reinterpret_cast<bf16*>(out->untyped_data());
  const int64_t panels = n / kPanel;
  // B packed whole, once per call (for the weight gradient B is the patch matrix: as large again)
  std::unique_ptr<bf16[]> packed(new (std::nothrow) bf16[k * n]);
  if (!packed) return ffi::Error(ffi::ErrorCode::kResourceExhausted, "matmul_bf16: no memory to pack B");
  bf16* pp = packed.get();
  jaxvgg::InChunks(pool, panels, panels, [=](int64_t, int64_t begin, int64_t end) {
    for (int64_t panel = begin; panel < end; ++panel) PackPanel(bp, pp, k, n, panel);
  });
  // Float32 sums between K blocks, for contractions longer than one (the weight gradient's, over
  // every output position).
  const int64_t depths = std::max<int64_t>(1, (k + kDepth - 1) / kDepth);
  std::unique_ptr<float[]> scratch(depths > 1 ? new (std::nothrow) float[m * n] : nullptr);
  if (depths > 1 && !scratch) return ffi::Error(ffi::ErrorCode::kResourceExhausted, "matmul_bf16: no memory");
  float* sp = scratch.get();
  // One task per (block of rows, panel): the panel's K block stays in L2 across the block's tiles.
  const int64_t blocks = (m + kBlock - 1) / kBlock, tasks = blocks * panels;
  jaxvgg::InChunks(pool, tasks, tasks, [=](int64_t, int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t row0 = task / panels * kBlock, row1 = std::min(m, row0 + kBlock), col = task % panels * kPanel;
      for (int64_t k0 = 0; k0 < k; k0 += kDepth) {
        const int64_t depth = std::min(kDepth, k - k0);
        const bf16* panel = pp + (col * k) + k0 * kPanel;
        for (int64_t r = row0; r < row1; r += kRows)
          Tiles<kRows>(std::min(kRows, row1 - r), ap + r * k + k0, k, panel, depth, sp ? sp + r * n + col : nullptr,
                       cp + r * n + col, n, k0 == 0, k0 + depth == k);
      }
    }
  });
  return ffi::Error::Success();
}

}  // namespace

// Whether this CPU runs the kernel: native.py asks before it registers it.
extern "C" __attribute__((visibility("default"))) int jaxvgg_matmul_bf16_runs_here() {
  return __builtin_cpu_supports("avx512bf16");
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxvgg_matmul_bf16, MatmulBf16,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::BF16>>());
#endif  // x86-64 and a compiler with the intrinsics: elsewhere the library has no bfloat16 GEMM and native.py does without it
