// How one layer call shares its time loop between threads, and the two ways to run it.
//
// By rows (the rule): the batch is cut into chunks of rows, and a thread takes a chunk
// and runs every time step of it: its own small GEMMs against the packed weights, which
// stay hot in its core's cache, with the cell right behind them. No thread waits for
// another until the call ends. There are several chunks per thread, handed out one at a
// time, so on a busy machine the thread that keeps its core runs the chunks that a
// descheduled one would have run, instead of waiting for it.
//
// By columns (the fallback for batches too small to give every thread a chunk): each
// step's panels of hidden units are divided between the threads, and every phase of a
// step waits until all threads have finished the previous one.
//
// Both run inside one at::parallel_for region per call (no nested parallelism: a call
// made from inside a parallel region runs on its caller's thread alone). The region's
// threads take the caller's thread-local state (grad mode, dispatch keys), so the ATen
// ops they call behave as they would on the caller's thread, and its denormal mode
// (cpu_denormals.h), each restoring its own when the region ends.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

#include "cpu_denormals.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace gru_torch::cpu {

// Rows below which a chunk's GEMMs lose too much to the micro-kernel's edges.
constexpr int64_t kMinChunkRows = 8;
// Rows above which a chunk's buffers stop fitting in its core's L2 cache beside the weights.
constexpr int64_t kMaxChunkRows = 32;
// Chunks per thread when rows allow: enough for a busy machine to rebalance.
constexpr int64_t kChunksPerThread = 4;
// Batch rows * FLOPs of one row's step below which a second thread costs more in waiting
// than it saves (a wait is about a microsecond on an idle core).
constexpr double kMinColumnStepFlops = 1e6;

struct Split {
  bool by_rows = true;
  int64_t threads = 1;     // participants asked for
  int64_t chunk_rows = 0;  // by rows: rows of every chunk but the last
  int64_t chunks = 1;      // by rows: number of chunks

  int64_t chunk_begin(int64_t c) const { return c * chunk_rows; }
  int64_t chunk_size(int64_t c, int64_t B) const {
    return std::min(chunk_rows, B - c * chunk_rows);
  }
};

// The split for a batch of B rows whose step costs step_flops_per_row each.
// threads: at::get_num_threads(), or 1 inside a parallel region.
inline Split choose_split(int64_t B, double step_flops_per_row, int64_t threads,
                          int64_t panels) {
  Split s;
  s.threads = std::max<int64_t>(1, threads);
  if (s.threads > 1 && B < s.threads * kMinChunkRows) {
    if (B * step_flops_per_row >= kMinColumnStepFlops && panels > 1) {
      s.by_rows = false;
      s.threads = std::min(s.threads, panels);
      s.chunk_rows = B;
      return s;
    }
    s.threads = 1;  // too little work a step to share
  }
  // One thread has no one to rebalance with: its chunks only need to fit its cache.
  const int64_t pieces = s.threads * (s.threads > 1 ? kChunksPerThread : 1);
  const int64_t want = (B + pieces - 1) / pieces;
  int64_t rows = std::clamp<int64_t>(want, kMinChunkRows, kMaxChunkRows);
  rows = std::min<int64_t>(std::max<int64_t>(B, 1), (rows + 3) / 4 * 4);
  s.chunk_rows = rows;
  s.chunks = std::max<int64_t>(1, (B + rows - 1) / rows);
  s.threads = std::min(s.threads, s.chunks);
  return s;
}

inline int64_t available_threads() {
  return at::in_parallel_region() ? 1 : at::get_num_threads();
}

// Runs task(i, slot) for every i in [0, n), the tasks claimed one at a time by up to
// `threads` threads. slot, in [0, threads), is unique among the threads running at once,
// so it can index per-thread workspaces.
template <typename F>
void run_tasks(int64_t n, int64_t threads, const F& task) {
  std::atomic<int64_t> next{0};
  const at::ThreadLocalState caller;
  const int mode = denormal_mode();
  at::parallel_for(0, threads, 1, [&](int64_t slot, int64_t) {
    at::ThreadLocalStateGuard same_state(caller);
    DenormalModeGuard same_mode(mode);
    for (int64_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) task(i, slot);
  });
}

// Gives every intra-op thread the calling thread's denormal mode for the object's
// lifetime, and each its own back afterwards: for ATen calls made between the regions of
// run_groups (MKL's GEMMs), which run on those threads outside any task of ours. Under
// OpenMP a region's thread i is the same thread in every region of the same size.
class ThreadsDenormalMode {
 public:
  ThreadsDenormalMode() : mode_(denormal_mode()), saved_(at::get_num_threads(), -1) {
    at::parallel_for(0, static_cast<int64_t>(saved_.size()), 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) saved_[i] = denormal_mode(), set_denormal_mode(mode_);
    });
  }
  ~ThreadsDenormalMode() {
    at::parallel_for(0, static_cast<int64_t>(saved_.size()), 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        if (saved_[i] >= 0) set_denormal_mode(saved_[i]);
      }
    });
    set_denormal_mode(mode_);  // the calling thread is thread 0 of the regions
  }
  ThreadsDenormalMode(const ThreadsDenormalMode&) = delete;
  ThreadsDenormalMode& operator=(const ThreadsDenormalMode&) = delete;

 private:
  int mode_;
  std::vector<int> saved_;
};

// Spins until `value` reaches `target` or `failed` is set: pause first, then give the core
// away, since on a busy machine the thread being waited for may need this very core.
inline void wait_for(const std::atomic<int64_t>& value, int64_t target,
                     const std::atomic<bool>& failed) {
  for (int spins = 0; value.load(std::memory_order_acquire) < target; ++spins) {
    if (failed.load(std::memory_order_relaxed)) return;
    if (spins < 2000) {
#if defined(__x86_64__) || defined(_M_X64)
      _mm_pause();
#endif
    } else {
      std::this_thread::yield();
    }
  }
}

// By columns: for each group g in [0, groups) in order, task(g, p, slot) for every panel p
// in [0, panels(g)); no panel of group g starts before every panel of group g-1 has
// finished. Each thread owns a fixed share of every group's panels (the same weights
// every step, so they stay in its cache).
template <typename PanelsOf, typename F>
void run_groups(int64_t groups, int64_t threads, const PanelsOf& panels_of, const F& task) {
  std::atomic<int64_t> done{0};
  std::atomic<bool> failed{false};
  const at::ThreadLocalState caller;
  const int mode = denormal_mode();
  at::parallel_for(0, threads, 1, [&](int64_t s0, int64_t s1) {
    at::ThreadLocalStateGuard same_state(caller);
    DenormalModeGuard same_mode(mode);
    int64_t target = 0;  // panels finished by every thread when group g may start
    try {
      for (int64_t g = 0; g < groups; ++g) {
        wait_for(done, target, failed);
        if (failed.load()) return;
        const int64_t np = panels_of(g);
        const int64_t p0 = s0 * np / threads, p1 = s1 * np / threads;
        for (int64_t p = p0; p < p1; ++p) task(g, p, s0);
        done.fetch_add(p1 - p0, std::memory_order_acq_rel);
        target += np;
      }
    } catch (...) {
      failed.store(true);  // releases the other threads' waits; parallel_for rethrows
      throw;
    }
  });
}

}  // namespace gru_torch::cpu
