// Small kernels that check the emulator (and, on a GPU, the same tests on hardware):
// tensor-core fragment layouts, ldmatrix, warp collectives, cp.async, a clean block
// reduction, and kernels that each contain one bug class the emulator must report.
// gru_torch.testing runs them by name through the op gru_torch::_device_selftest.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "launch.h"
#include "port.cuh"

GT_BEGIN_NAMESPACE
namespace selftest {

struct Buffer {
  void* data;
  size_t bytes;
};
template <class T> gptr<T> buf(const Buffer& b) {
  return make_gptr(static_cast<T*>(b.data), b.bytes / sizeof(T));
}

constexpr unsigned kThreads = 128;

// ---------------------------------------------------------------- tensor cores
// D [16, N] = A [16, K] * B [K, N], B given transposed (Bt [N, K]); one warp per 8
// columns. kind: 0 bf16, 1 f16 (m16n8k16, operands as 16-bit bits), 2 tf32
// (m16n8k8, fp32 operands rounded in the kernel). swap != 0 swaps two A registers:
// the deliberate layout bug the comparison must catch.
template <int kKind>
__global__ void __launch_bounds__(kThreads) mma_gemm(gptr<const uint32_t> A, gptr<const uint32_t> Bt,
                                                     gptr<float> D, int K, int N, int swap) {
  const int lane = int(threadIdx.x & 31u), warp = int(threadIdx.x >> 5);
  const int n0 = (int(blockIdx.x) * int(kThreads / 32) + warp) * 8;
  if (n0 >= N) return;  // the whole warp leaves together
  const int g = lane >> 2, t = lane & 3;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  if constexpr (kKind == 2) {
    for (int k0 = 0; k0 < K; k0 += 8) {
      auto f = [&](gptr<const uint32_t> p, int i) { return tf32_bits(bits_to_float(p[i])); };
      uint32_t a[4] = {f(A, g * K + k0 + t), f(A, (g + 8) * K + k0 + t), f(A, g * K + k0 + t + 4),
                       f(A, (g + 8) * K + k0 + t + 4)};
      if (swap) { const uint32_t x = a[1]; a[1] = a[2]; a[2] = x; }
      const uint32_t b[2] = {f(Bt, (n0 + g) * K + k0 + t), f(Bt, (n0 + g) * K + k0 + t + 4)};
      const float c[4] = {acc[0], acc[1], acc[2], acc[3]};
      mma_m16n8k8_tf32(acc, a, b, c);
    }
  } else {
    // 16-bit operands: A and Bt hold two values per 32-bit word along K.
    const int Kw = K / 2;
    for (int k0 = 0; k0 < K; k0 += 16) {
      const int kw = k0 / 2 + t;
      uint32_t a[4] = {A[g * Kw + kw], A[(g + 8) * Kw + kw], A[g * Kw + kw + 4], A[(g + 8) * Kw + kw + 4]};
      if (swap) { const uint32_t x = a[1]; a[1] = a[2]; a[2] = x; }
      const uint32_t b[2] = {Bt[(n0 + g) * Kw + kw], Bt[(n0 + g) * Kw + kw + 4]};
      const float c[4] = {acc[0], acc[1], acc[2], acc[3]};
      mma_m16n8k16<std::conditional_t<kKind == 0, bf16, f16>>(acc, a, b, c);
    }
  }
  D[g * N + n0 + t * 2] = acc[0];
  D[g * N + n0 + t * 2 + 1] = acc[1];
  D[(g + 8) * N + n0 + t * 2] = acc[2];
  D[(g + 8) * N + n0 + t * 2 + 1] = acc[3];
}

// The same GEMM with operands staged in shared memory and fragments loaded with
// ldmatrix: A with .x4, B with .x2 from Bt rows (kTrans = 0) or with .x2.trans from
// B [K, N] rows (kTrans = 1). One block, K, N <= 64, 16-bit operands.
template <int kKind, int kTrans>
__global__ void __launch_bounds__(kThreads) ldmatrix_gemm(gptr<const uint16_t> A, gptr<const uint16_t> Bsrc,
                                                          gptr<float> D, int K, int N) {
  GT_DYNAMIC_SMEM(smem);
  sptr<uint16_t> As = smem_carve<uint16_t>(smem, 0, size_t(16) * K);
  sptr<uint16_t> Bs = smem_carve<uint16_t>(smem, size_t(16) * K * 2, size_t(K) * N);
  for (int i = int(threadIdx.x); i < 16 * K; i += int(blockDim.x)) As[i] = A[i];
  for (int i = int(threadIdx.x); i < K * N; i += int(blockDim.x)) Bs[i] = Bsrc[i];
  __syncthreads();
  const int lane = int(threadIdx.x & 31u), warp = int(threadIdx.x >> 5);
  for (int n0 = warp * 8; n0 < N; n0 += int(kThreads / 32) * 8) {
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    for (int k0 = 0; k0 < K; k0 += 16) {
      // x4: matrices (rows 0-7, k0..k0+7), (rows 8-15, k0..), (rows 0-7, k0+8..), (rows 8-15, k0+8..)
      const int m = lane >> 3, r = lane & 7;
      uint32_t a[4], b[2];
      ldmatrix_x4(a, As + ((m & 1) * 8 + r) * K + k0 + (m >> 1) * 8);
      if constexpr (kTrans) {
        // B [K, N] row-major: matrix 0 = rows k0..k0+7, matrix 1 = rows k0+8..; lanes 0-15 give rows.
        ldmatrix_x2_trans(b, Bs + (k0 + (lane & 15)) * N + n0);
      } else {
        // Bt [N, K]: matrix 0 = cols n0..n0+7 at k0..k0+7, matrix 1 at k0+8..
        ldmatrix_x2(b, Bs + (n0 + (lane & 7)) * K + k0 + ((lane >> 3) & 1) * 8);
      }
      const float c[4] = {acc[0], acc[1], acc[2], acc[3]};
      mma_m16n8k16<std::conditional_t<kKind == 0, bf16, f16>>(acc, a, b, c);
    }
    const int g = lane >> 2, t = lane & 3;
    D[g * N + n0 + t * 2] = acc[0];
    D[g * N + n0 + t * 2 + 1] = acc[1];
    D[(g + 8) * N + n0 + t * 2] = acc[2];
    D[(g + 8) * N + n0 + t * 2 + 1] = acc[3];
  }
}

// ---------------------------------------------------------------- warp collectives
// out [blockDim.x, 10] int32. half = 0: every op with the full mask. half = 1: lanes
// 0-15 and 16-31 run the ops as two groups with their own 16-lane masks.
constexpr int kWarpSlots = 10;
__global__ void __launch_bounds__(kThreads) warp_ops(gptr<int> out, int half) {
  const int lane = int(threadIdx.x & 31u);
  const unsigned mask = half ? (lane < 16 ? 0x0000ffffu : 0xffff0000u) : 0xffffffffu;
  const int v = int(threadIdx.x) * 3 + 1;
  const int w = half ? 16 : 32;
  gptr<int> o = out + int(threadIdx.x) * kWarpSlots;
  o[0] = __shfl_sync(mask, v, (lane * 7 + 3) % w, w);
  o[1] = __shfl_up_sync(mask, v, 3, w);
  o[2] = __shfl_down_sync(mask, v, 5, w);
  o[3] = __shfl_xor_sync(mask, v, 9 % w, w);
  o[4] = __shfl_xor_sync(mask, v, 2, 8);
  o[5] = int(__ballot_sync(mask, lane % 3 == 0));
  o[6] = __any_sync(mask, lane == 7);
  o[7] = __all_sync(mask, lane < 40);
  o[8] = __all_sync(mask, lane != 20);
  const float f = __shfl_xor_sync(mask, float(v) * 0.5f, 1);
  o[9] = int(f * 2.0f);
}

// ---------------------------------------------------------------- cp.async
// Copies n floats (n % 4 == 0) into shared memory in 16-byte cp.async chunks; chunks
// at or past `zfill_from` are zero-filled instead of read. Then back out to dst.
__global__ void __launch_bounds__(kThreads) cp_async_copy(gptr<const float> src, gptr<float> dst, int n,
                                                          int zfill_from) {
  GT_DYNAMIC_SMEM(smem);
  sptr<float> s = smem_carve<float>(smem, 0, size_t(n));
  for (int c = int(threadIdx.x); c < n / 4; c += int(blockDim.x))
    cp_async<16>(s + 4 * c, src + 4 * c, c < zfill_from);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();
  for (int i = int(threadIdx.x); i < n; i += int(blockDim.x)) dst[(i + 4) % n] = s[(i + 4) % n];
}

// ---------------------------------------------------------------- a clean kernel
// Block sum of x (blockDim.x values per block) with shuffles, a warp-level exchange
// through shared memory ordered by __syncwarp, and a block stage ordered by
// __syncthreads. Must pass the race checker.
__global__ void __launch_bounds__(kThreads) block_sum(gptr<const float> x, gptr<float> out) {
  GT_SHARED_ARRAY(float, warp_sums, kThreads / 32);
  GT_SHARED_ARRAY(float, lanes, kThreads);
  const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const float v = x[int(blockIdx.x) * int(blockDim.x) + tid];
  lanes[tid] = v;
  __syncwarp();
  // Each lane adds its mirror lane's value, read through shared memory: ordered by the __syncwarp.
  float s = v + float(lanes[warp * 32 + (31 - lane)]);
  __syncwarp();
  lanes[tid] = 0.f;  // rewrite after every lane of the warp has read: ordered again
  for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
  if (lane == 0) warp_sums[warp] = s * 0.5f;
  __syncthreads();
  if (warp == 0) {
    float t = lane < int(blockDim.x / 32) ? float(warp_sums[lane]) : 0.f;
    for (int off = 16; off > 0; off >>= 1) t += __shfl_xor_sync(0xffffffffu, t, off);
    if (lane == 0) out[blockIdx.x] = t;
  }
}

// Counts with shared-memory atomics: every thread adds 1 to bin tid % 8 (no race:
// atomics do not race with each other), then, after a barrier, 8 threads write out.
__global__ void __launch_bounds__(kThreads) shared_atomics(gptr<float> out, int racy) {
  GT_SHARED_ARRAY(float, bins, 8);
  if (threadIdx.x < 8) bins[threadIdx.x] = 0.f;
  __syncthreads();
  atomic_add_shared(bins + int(threadIdx.x % 8), 1.f);
  if (!racy) __syncthreads();  // racy: a plain read of bins no barrier orders after the atomics
  if (threadIdx.x < 8) out[threadIdx.x] = bins[threadIdx.x];
}

// ---------------------------------------------------------------- deliberate bugs
// Reads a neighbour's slot with no barrier between the write and the read.
// (The slots are written once before a barrier, so the race, not an uninitialized
// read, is what the checker reports; with the checker off the result depends on the
// order in which threads run.)
__global__ void __launch_bounds__(kThreads) missing_syncthreads(gptr<float> out) {
  GT_SHARED_ARRAY(float, s, kThreads);
  const int tid = int(threadIdx.x);
  s[tid] = -1.f;
  __syncthreads();
  s[tid] = float(tid);
  out[tid] = s[(tid + 1) % int(blockDim.x)];
}

// Two halves of the block at two different __syncthreads.
__global__ void __launch_bounds__(kThreads) divergent_barrier(gptr<int> out) {
  if (threadIdx.x < 32) {
    __syncthreads();
    out[threadIdx.x] = 1;
  } else {
    __syncthreads();
    out[threadIdx.x] = 2;
  }
}

// Lanes 1-31 of warp 2 wait at __syncwarp for lane 0, which went on to the block's
// barrier, where everyone else waits for them.
__global__ void __launch_bounds__(kThreads) deadlock(gptr<int> out) {
  if (threadIdx.x > 64 && threadIdx.x < 96) __syncwarp();
  __syncthreads();
  out[threadIdx.x] = 1;
}

// Lane 5 returns; the others shuffle with a mask that still names it.
__global__ void __launch_bounds__(kThreads) shfl_after_exit(gptr<float> out) {
  if ((threadIdx.x & 31u) == 5) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

// Lanes 0-15 shuffle while lanes 16-31 vote, both naming the whole warp.
__global__ void __launch_bounds__(kThreads) lanes_disagree(gptr<int> out) {
  int r;
  if ((threadIdx.x & 31u) < 16) r = __shfl_xor_sync(0xffffffffu, int(threadIdx.x), 1);
  else r = int(__ballot_sync(0xffffffffu, 1));
  out[threadIdx.x] = r;
}

// A 64-float shared array written by 128 threads.
__global__ void __launch_bounds__(kThreads) smem_out_of_bounds(gptr<float> out) {
  GT_SHARED_ARRAY(float, s, 64);
  s[threadIdx.x] = 1.f;
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x % 64];
}

// Reads n floats past the end of x.
__global__ void __launch_bounds__(kThreads) gmem_out_of_bounds(gptr<const float> x, gptr<float> out, int n) {
  out[threadIdx.x] = x[int(threadIdx.x) + n];
}

// Reads dynamic shared memory that nothing wrote.
__global__ void __launch_bounds__(kThreads) uninit_read(gptr<float> out) {
  GT_DYNAMIC_SMEM(smem);
  sptr<float> s = smem_carve<float>(smem, 0, kThreads);
  out[threadIdx.x] = s[threadIdx.x];
}

// cp.async hazards. Each thread copies 16 bytes (4 floats) of src into its chunk of
// shared memory; after the wait and a barrier, it writes its right neighbour's chunk
// to dst and negates its own source (dst[4t + i] = src[4((t+1) % n) + i], src = -src).
// bug 0 is that correct kernel; each other value adds one access a GPU does not order
// after the copy, which may land at any time from the issue to the wait:
//   1 the issuing thread reads its own destination before its wait;
//   2 a neighbour reads it after a barrier, before the issuing thread's wait;
//   3 a neighbour writes it there;
//   4 the issuing thread overwrites its source before its wait (the copy may read the
//     source at any time until it completes).
__global__ void __launch_bounds__(kThreads) cp_async_hazard(gptr<float> src, gptr<float> dst, int bug) {
  GT_DYNAMIC_SMEM(smem);
  const int tid = int(threadIdx.x), n = int(blockDim.x);
  sptr<float> s = smem_carve<float>(smem, 0, size_t(4) * n);
  const int mine = 4 * tid, next = 4 * ((tid + 1) % n);
  for (int i = 0; i < 4; ++i) s[mine + i] = -1.f;  // written, so no read below is of garbage
  __syncthreads();
  const gptr<const float> from = src;
  cp_async<16>(s + mine, from + mine, true);
  cp_async_commit();
  float early = 0.f;
  if (bug == 1) early = s[mine];
  __syncthreads();  // a barrier orders accesses, not the copy: it is not complete here
  if (bug == 2) early = s[next];
  if (bug == 3) s[next] = 0.f;
  if (bug == 4) src[mine] = 0.f;
  __syncthreads();
  cp_async_wait<0>();
  __syncthreads();
  for (int i = 0; i < 4; ++i) dst[mine + i] = float(s[next + i]) + early;
  for (int i = 0; i < 4; ++i) src[mine + i] = -src[mine + i];  // the source is free after the wait
}

// ldmatrix and mma are .aligned: every lane of the warp must execute the same
// instruction. out [warps, 16, 8] = A [16, 16] * ones, A[r][k] = r + k / 16 as bf16,
// A loaded with ldmatrix.x4. bug 0: warp 0 takes one branch, warp 1 the other, each
// with its own ldmatrix and mma (a warp-uniform branch: correct). bug 1: lanes 0-15 and
// 16-31 of each warp reach ldmatrix from two branches; bug 2: the same for mma.
__global__ void __launch_bounds__(kThreads) aligned_call_sites(gptr<float> out, int bug) {
  GT_SHARED_ARRAY(uint16_t, tile, 16 * 16);
  const int tid = int(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  for (int i = tid; i < 16 * 16; i += int(blockDim.x))
    tile[i] = float_to_bf16_bits(float(i / 16) + float(i % 16) / 16.f);
  __syncthreads();
  const bool other = bug == 0 ? warp == 1 : lane >= 16;  // the second branch
  const int m = lane >> 3, r = lane & 7;
  const sptr<uint16_t> row = tile + ((m & 1) * 8 + r) * 16 + (m >> 1) * 8;
  uint32_t a[4];
  if (bug == 2 || !other) ldmatrix_x4(a, row);
  else ldmatrix_x4(a, row);
  const uint32_t b[2] = {pack2<bf16>(1.f, 1.f), pack2<bf16>(1.f, 1.f)};
  const float c[4] = {0.f, 0.f, 0.f, 0.f};
  float d[4];
  if (bug == 1 || !other) mma_m16n8k16<bf16>(d, a, b, c);
  else mma_m16n8k16<bf16>(d, a, b, c);
  const int g = lane >> 2, t = lane & 3;
  gptr<float> o = out + warp * 16 * 8;
  o[g * 8 + t * 2] = d[0];
  o[g * 8 + t * 2 + 1] = d[1];
  o[(g + 8) * 8 + t * 2] = d[2];
  o[(g + 8) * 8 + t * 2 + 1] = d[3];
}

// Distributed shared memory on a cluster of two blocks of one warp. Plain stores reach
// the other block's shared memory through map_rank; ldmatrix and cp.async take only the
// block's own (.shared::cta). Block `rank` writes rows 4 rank .. 4 rank + 3 of an 8x8
// bf16 tile (row r holds r) into both blocks' tiles; after the cluster barrier each
// reads its own tile with ldmatrix.x1 and copies src[32 rank .. 32 rank + 31] into its
// own buffer with cp.async. out [2, 96]: per block, lane L's two tile values (both
// L / 4), then the 32 copied floats. bug 1: ldmatrix reads the other block's tile;
// bug 2: cp.async writes into the other block's buffer. (The two tiles are equal, so
// bug 1 reads the right values, and bug 2 only swaps the blocks' copies.)
__global__ void __launch_bounds__(32) remote_shared(gptr<const float> src, gptr<float> out, int bug) {
  GT_SHARED_ARRAY(uint16_t, tile, 8 * 8);
  GT_SHARED_ARRAY(float, copied, 32);
  const int lane = int(threadIdx.x & 31u);
  const unsigned rank = cluster_rank(), peer = rank ^ 1u;
  for (unsigned to = 0; to < 2; ++to)
    map_rank(tile, to)[32 * int(rank) + lane] = float_to_bf16_bits(float(4 * int(rank) + lane / 8));
  cluster_sync();
  uint32_t v[1];
  ldmatrix_x1(v, (bug == 1 ? map_rank(tile, peer) : tile) + (lane & 7) * 8);
  const sptr<float> buf = bug == 2 ? map_rank(copied, peer) : copied;
  if (lane < 8) cp_async<16>(buf + 4 * lane, src + 32 * int(rank) + 4 * lane, true);
  cp_async_commit();
  cp_async_wait<0>();
  cluster_sync();  // the copies complete and are seen before any block reads them or exits
  gptr<float> o = out + int(rank) * 96;
  o[2 * lane] = bf16_bits_to_float(uint16_t(v[0]));
  o[2 * lane + 1] = bf16_bits_to_float(uint16_t(v[0] >> 16));
  o[64 + lane] = copied[lane];
}

// A kernel that does nothing, for launch-limit checks.
constexpr unsigned kBigThreads = 1024;
__global__ void __launch_bounds__(kBigThreads) empty_kernel(gptr<int> out) {
  if (threadIdx.x == 0 && blockIdx.x == 0) out[0] = 1;
}

// ---------------------------------------------------------------- dispatch
// ints: the kernel's integer arguments; for "launch", (threads, smem, cooperative, blocks).
inline void run(const std::string& name, const std::vector<Buffer>& b, const std::vector<int64_t>& v,
                Stream st) {
  auto spec = [&](const char* n, unsigned blocks, unsigned threads, size_t smem = 0) {
    LaunchSpec s;
    s.name = n;
    s.grid = dim3(blocks);
    s.block = dim3(threads);
    s.smem = smem;
    s.max_threads = kThreads;
    return s;
  };
  auto need = [&](size_t nb, size_t ni) {
    if (b.size() != nb || v.size() != ni)
      throw std::invalid_argument("selftest '" + name + "' takes " + std::to_string(nb) +
                                  " buffers and " + std::to_string(ni) + " ints");
  };
  if (name == "mma_bf16" || name == "mma_f16" || name == "mma_tf32") {
    need(3, 3);  // A, Bt, D; K, N, swap
    const int K = int(v[0]), N = int(v[1]), swap = int(v[2]);
    const unsigned blocks = unsigned((N / 8 + kThreads / 32 - 1) / (kThreads / 32));
    auto s = spec("mma_gemm", blocks, kThreads);
    if (name == "mma_bf16") launch(s, st, mma_gemm<0>, buf<const uint32_t>(b[0]), buf<const uint32_t>(b[1]), buf<float>(b[2]), K, N, swap);
    else if (name == "mma_f16") launch(s, st, mma_gemm<1>, buf<const uint32_t>(b[0]), buf<const uint32_t>(b[1]), buf<float>(b[2]), K, N, swap);
    else launch(s, st, mma_gemm<2>, buf<const uint32_t>(b[0]), buf<const uint32_t>(b[1]), buf<float>(b[2]), K, N, swap);
  } else if (name.rfind("ldmatrix_", 0) == 0) {
    need(3, 2);  // A, B (Bt or B), D; K, N
    const int K = int(v[0]), N = int(v[1]);
    auto s = spec("ldmatrix_gemm", 1, kThreads, size_t(16 * K + K * N) * 2);
    auto A = buf<const uint16_t>(b[0]), B = buf<const uint16_t>(b[1]);
    auto D = buf<float>(b[2]);
    if (name == "ldmatrix_bf16") launch(s, st, ldmatrix_gemm<0, 0>, A, B, D, K, N);
    else if (name == "ldmatrix_f16") launch(s, st, ldmatrix_gemm<1, 0>, A, B, D, K, N);
    else if (name == "ldmatrix_bf16_trans") launch(s, st, ldmatrix_gemm<0, 1>, A, B, D, K, N);
    else if (name == "ldmatrix_f16_trans") launch(s, st, ldmatrix_gemm<1, 1>, A, B, D, K, N);
    else throw std::invalid_argument("unknown selftest " + name);
  } else if (name == "warp_ops") {
    need(1, 1);
    launch(spec("warp_ops", 1, kThreads), st, warp_ops, buf<int>(b[0]), int(v[0]));
  } else if (name == "cp_async") {
    need(2, 2);
    const int n = int(v[0]);
    launch(spec("cp_async_copy", 1, kThreads, size_t(n) * 4), st, cp_async_copy, buf<const float>(b[0]),
           buf<float>(b[1]), n, int(v[1]));
  } else if (name == "block_sum") {
    need(2, 1);
    launch(spec("block_sum", unsigned(v[0]), kThreads), st, block_sum, buf<const float>(b[0]), buf<float>(b[1]));
  } else if (name == "shared_atomics") {
    need(1, 1);
    launch(spec(name.c_str(), 1, kThreads), st, shared_atomics, buf<float>(b[0]), int(v[0]));
  } else if (name == "missing_syncthreads") {
    need(1, 0);
    launch(spec(name.c_str(), 1, kThreads), st, missing_syncthreads, buf<float>(b[0]));
  } else if (name == "divergent_barrier") {
    need(1, 0);
    launch(spec(name.c_str(), 1, kThreads), st, divergent_barrier, buf<int>(b[0]));
  } else if (name == "deadlock") {
    need(1, 0);
    launch(spec(name.c_str(), 1, kThreads), st, deadlock, buf<int>(b[0]));
  } else if (name == "shfl_after_exit") {
    need(1, 0);
    launch(spec(name.c_str(), 1, 64), st, shfl_after_exit, buf<float>(b[0]));
  } else if (name == "lanes_disagree") {
    need(1, 0);
    launch(spec(name.c_str(), 1, 32), st, lanes_disagree, buf<int>(b[0]));
  } else if (name == "smem_out_of_bounds") {
    need(1, 0);
    launch(spec(name.c_str(), 1, kThreads), st, smem_out_of_bounds, buf<float>(b[0]));
  } else if (name == "gmem_out_of_bounds") {
    need(2, 1);
    launch(spec(name.c_str(), 1, kThreads), st, gmem_out_of_bounds, buf<const float>(b[0]), buf<float>(b[1]),
           int(v[0]));
  } else if (name == "uninit_read") {
    need(1, 0);
    launch(spec(name.c_str(), 1, kThreads, kThreads * 4), st, uninit_read, buf<float>(b[0]));
  } else if (name == "cp_async_hazard") {
    need(2, 1);  // src, dst [4 * kThreads]; bug
    launch(spec(name.c_str(), 1, kThreads, kThreads * 16), st, cp_async_hazard, buf<float>(b[0]),
           buf<float>(b[1]), int(v[0]));
  } else if (name == "aligned_call_sites") {
    need(1, 1);  // out [2, 16, 8]; bug
    launch(spec(name.c_str(), 1, 64), st, aligned_call_sites, buf<float>(b[0]), int(v[0]));
  } else if (name == "remote_shared") {
    need(2, 1);  // src [64], out [2, 96]; bug
    LaunchSpec s = spec(name.c_str(), 2, 32);
    s.cluster = dim3(2);
    s.max_threads = 32;
    launch(s, st, remote_shared, buf<const float>(b[0]), buf<float>(b[1]), int(v[0]));
  } else if (name == "launch") {
    need(1, 4);  // threads, dynamic smem, cooperative, blocks
    LaunchSpec s = spec("empty_kernel", unsigned(v[3]), unsigned(v[0]), size_t(v[1]));
    s.max_threads = kBigThreads;
    s.cooperative = v[2] != 0;
    launch(s, st, empty_kernel, buf<int>(b[0]));
  } else {
    throw std::invalid_argument("unknown selftest " + name);
  }
}

}  // namespace selftest
GT_END_NAMESPACE
