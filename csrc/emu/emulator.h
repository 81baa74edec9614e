// gt_emu: runs CUDA kernels on the CPU, one fiber per CUDA thread, with the checks
// a GPU would not give us for free.
//
// Host-only. Kernel code never includes this file directly: it includes
// csrc/device/port.cuh, which maps the CUDA device API onto these functions when
// the host compiler builds it and onto real CUDA under nvcc.
//
// Model
//   * A launch is split into groups: a group is one block, or one thread-block
//     cluster, or (for a cooperative launch) the whole grid. One OS thread runs a
//     group; its fibers are resumed in turn (in a seeded random order when
//     Options::shuffle_seed is set) until each blocks at a barrier, a warp
//     collective, a yield, or exits. Groups run on a small pool of OS threads.
//   * Shared memory is an arena per block, reached only through sptr<T>, which
//     carries the bounds of its allocation. Every access is checked:
//     bounds, alignment, never-written reads (initcheck), and races: a shadow
//     record per 2-byte cell keeps the last writer and the last reader(s) with the
//     barrier epoch and warp clock at the time; an access by another thread that no
//     __syncthreads, cluster/grid barrier or __syncwarp orders after it is a race.
//   * Global memory is reached through gptr<T>, which carries the bounds of the
//     tensor it points into: an access outside them is an error, not a corrupted
//     host heap.
//   * Warp collectives (__shfl*_sync, __ballot_sync, __syncwarp, mma, ldmatrix)
//     meet on their mask: it is an error when the mask names an exited lane or a
//     lane not calling, when lanes of a warp disagree on the op or mask, or when a
//     shuffle reads a lane outside the mask. mma and ldmatrix are .aligned: their
//     lanes must also come from one call site (file:line).
//   * cp.async reads its global source at the issue and writes shared memory at
//     the wait that completes it; from the issue to that wait its destination
//     counts as written, so any access to it in between is a race, and a source
//     changed in between is one too (the GPU may read it at any time until then).
//     ldmatrix and cp.async take only the block's own shared memory, not a
//     map_shared_rank pointer.
//   * A round in which no fiber can run while some are alive is a deadlock,
//     reported with where each waiting thread waits (file:line).
//   * Launches are checked against an A100's or an H100's limits (threads, block
//     and grid dimensions, shared memory against the opt-in limit, registers from
//     __launch_bounds__, co-residency of cooperative launches, clusters).
//
// Every failure is a gt_emu::Error whose what() starts with "cuda_emu[<kind>]:"
// and names the block, the thread and, for memory errors, the address.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace gt_emu {

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr unsigned count() const { return x * y * z; }
};

// ---------------------------------------------------------------- errors
enum class ErrorKind {
  Deadlock,     // no thread can make progress
  Barrier,      // threads of a block at different __syncthreads, or a barrier misuse
  Warp,         // a warp collective with a bad mask, exited lanes, or disagreeing lanes
  Race,         // a shared-memory access not ordered after another thread's
  SharedBounds, // shared memory outside its allocation
  GlobalBounds, // global memory outside its tensor
  Uninit,       // a read of shared memory never written in this launch
  Misaligned,   // an access not aligned to its size
  Launch,       // a launch the GPU would refuse
  Kernel,       // anything else the kernel raised (a trap, an assert)
};
const char* kind_name(ErrorKind k);

struct Error : std::runtime_error {
  ErrorKind kind;
  Error(ErrorKind k, const std::string& msg);
};

// ---------------------------------------------------------------- GPU limits
struct GpuProps {
  const char* name;            // "a100", "h100"
  int sm;                      // 80, 90
  int num_sms;                 // 108, 132
  int max_threads_per_block;   // 1024
  int max_block_dim[3];        // 1024, 1024, 64
  long max_grid_dim[3];        // 2^31-1, 65535, 65535
  int max_threads_per_sm;      // 2048
  int max_blocks_per_sm;       // 32
  int regs_per_sm;             // 65536
  int max_regs_per_thread;     // 255
  size_t smem_default;         // 48 KiB without the opt-in attribute
  size_t smem_optin;           // per block, with cudaFuncAttributeMaxDynamicSharedMemorySize
  size_t smem_per_sm;          // usable per SM
  size_t smem_reserved;        // per block, reserved by the system (1 KiB)
  int max_cluster_size;        // 0: no clusters; 8 portable on sm_90
};
const GpuProps& gpu_props(const std::string& name);  // "a100" or "h100"

// What a launch knows about its kernel (what the GPU reads from the cubin).
struct KernelInfo {
  const char* name = "kernel";
  unsigned max_threads = 0;  // __launch_bounds__ max threads; 0: none given
  unsigned min_blocks = 1;   // __launch_bounds__ min blocks per SM
  unsigned regs = 0;         // registers per thread; 0: the most __launch_bounds__ allows
  size_t static_smem = 0;    // bytes of static __shared__ (GT_SHARED_ARRAY)
};

struct LaunchConfig {
  dim3 grid, block;
  size_t dyn_smem = 0;
  bool cooperative = false;
  dim3 cluster{1, 1, 1};
  size_t max_dyn_smem = 48 * 1024;  // the cudaFuncAttributeMaxDynamicSharedMemorySize set
};

// Registers per thread the launch check assumes for k.
unsigned assumed_regs(const GpuProps& p, const KernelInfo& k, unsigned threads);
// Blocks of k that fit on one SM (cudaOccupancyMaxActiveBlocksPerMultiprocessor).
int max_blocks_per_sm(const GpuProps& p, const KernelInfo& k, unsigned threads, size_t smem);
// Throws Error(Launch) with the reason the GPU would give.
void check_launch(const GpuProps& p, const KernelInfo& k, const LaunchConfig& c);

// ---------------------------------------------------------------- options
struct Options {
  bool enabled = false;      // set by gru_torch.testing.emulate_cuda
  std::string gpu = "h100";
  bool race_check = true;
  bool init_check = true;
  std::optional<uint64_t> shuffle_seed;  // resume fibers in a seeded random order
  size_t stack_kb = 128;
};
Options options();              // a copy of the current options
void set_options(const Options& o);

struct Stats {
  double seconds = 0;
  uint64_t switches = 0, barriers = 0, warp_ops = 0, smem_accesses = 0;
};
Stats launch(const KernelInfo& k, const LaunchConfig& c, std::function<void()> body);
Stats last_stats();

// ================================================================ device side
struct Block;
struct Fiber;

struct ThreadCtx {  // what kernel code reads through threadIdx & co.
  dim3 tid, bid, bdim, gdim, cluster_dim, cluster_idx;
  unsigned linear;  // linear thread index in the block
};
const ThreadCtx& ctx();

[[noreturn]] void fail(ErrorKind k, const std::string& msg);  // from inside a kernel

void syncthreads(const char* file, int line);
void syncwarp(unsigned mask, const char* file, int line);
void cluster_sync(const char* file, int line);
void grid_sync(const char* file, int line);
void yield();
unsigned cluster_block_rank();

enum ShflKind { SHFL_IDX, SHFL_UP, SHFL_DOWN, SHFL_XOR };
// Exchanges n <= 16 bytes; returns the bytes of the source lane in out.
void shfl_bytes(unsigned mask, const void* in, void* out, size_t n, ShflKind kind, int arg,
                int width, const char* file, int line);
unsigned ballot(unsigned mask, bool pred, const char* file, int line);

// Tensor-core ops: D = A*B + C with the PTX ISA fragment layouts.
enum class MmaType { F16, BF16, TF32 };
void mma_m16n8k16(MmaType t, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                  const float (&c)[4], const char* file, int line);
void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                      const float (&c)[4], const char* file, int line);

// ---- shared memory
struct Span {  // an allocation in a block's shared arena
  Block* blk = nullptr;
  uint32_t lo = 0, hi = 0;  // byte offsets [lo, hi)
};

// Reads or writes `bytes` at byte offset `off` of s's block arena, checked.
void smem_access(const Span& s, int64_t off, size_t bytes, bool write, void* data);
void smem_atomic_add_f32(const Span& s, int64_t off, float v, float* old);
Span dynamic_smem();
Span static_smem(const void* site, size_t bytes, size_t align);
Span map_shared_rank(const Span& s, unsigned rank);  // distributed shared memory

// ldmatrix.m8n8.x{1,2,4}.shared.b16 [.trans]: `row` is this lane's row address.
void ldmatrix(unsigned count, bool trans, const Span& s, int64_t row_off, uint32_t* out,
              const char* file, int line);
// cp.async: the source is read here; the destination is written at the wait that
// covers its group, and counts as written (for the race check) from here to there.
void cp_async(const Span& s, int64_t off, const void* src, size_t bytes, size_t src_bytes);
void cp_async_commit();
void cp_async_wait(int pending);

[[noreturn]] void global_oob(const char* what, const void* p, size_t bytes, const void* lo,
                             const void* hi);

}  // namespace gt_emu
