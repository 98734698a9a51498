// What the kernels in this folder share: one build for every x86 CPU, and rows of work split between
// the calling thread and XLA's intra-op thread pool (the FFI's ThreadPool).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// One build serves a machine with AVX-512, AVX2 or neither: the VM this runs on changes CPU between
// days, and an editable install is not rebuilt when it does.
#define JAXVGG_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define JAXVGG_CLONES
#endif

// Exports IMPL<D> as the FFI handlers jaxvgg_<KERNEL>_f32 and jaxvgg_<KERNEL>_f64, the names that
// jaxvgg/ops/native.py registers, bound by BINDING<D>() (its arguments, attributes and results).
#define JAXVGG_EXPORT_F32_F64(KERNEL, IMPL, BINDING)                                                 \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxvgg_##KERNEL##_f32, IMPL<xla::ffi::F32>, BINDING<xla::ffi::F32>()); \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(jaxvgg_##KERNEL##_f64, IMPL<xla::ffi::F64>, BINDING<xla::ffi::F64>());

namespace jaxvgg {

// A fixed number of chunks, whatever the number of threads: a kernel that sums per chunk and adds
// the chunks in order gives the same bits on any machine.
constexpr int64_t kMaxChunks = 64;

struct ChunkCounters {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
};

// Runs body(chunk, first row, end row) over `chunks` slices of `rows`, on the caller and XLA's pool.
// Helpers only take chunks that nobody has started; the caller works too and then waits only for
// chunks already begun, so a busy pool cannot leave it waiting on work no thread has started.
template <typename Body>
void InChunks(xla::ffi::ThreadPool& pool, int64_t rows, int64_t chunks, Body body) {
  // Shared with helper tasks, which may start after the caller has returned.
  auto counters = std::make_shared<ChunkCounters>();
  auto work = [=]() {
    for (int64_t ch; (ch = counters->next.fetch_add(1)) < chunks;) {
      body(ch, rows * ch / chunks, rows * (ch + 1) / chunks);
      counters->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), chunks - 1);
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([work] { work(); });
  work();
  while (counters->done.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
}

}  // namespace jaxvgg
