// gt_emu's runtime: fibers, the scheduler, barriers, warp collectives, the
// shared-memory arena with its shadow (race, bounds and init checks), tensor-core
// ops and the launch checks. See emulator.h for the model.
#include "emulator.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <memory>
#include <mutex>
#include <thread>
#include <tuple>

#if defined(__x86_64__) && !defined(GT_EMU_UCONTEXT)
#define GT_EMU_ASM_SWITCH 1
#else
#define GT_EMU_ASM_SWITCH 0
#include <ucontext.h>
#endif

#if GT_EMU_ASM_SWITCH
// Saves the callee-saved registers and the SSE/x87 control words on the current
// stack, stores the stack pointer in *save, loads `load` and returns into the
// context saved there. A switch is a few nanoseconds; swapcontext makes a system
// call (sigprocmask) per switch.
extern "C" void gt_emu_switch(void** save, void* load);
__asm__(R"(
  .text
  .p2align 4
  .globl gt_emu_switch
  .hidden gt_emu_switch
  .type gt_emu_switch,@function
gt_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  stmxcsr 8(%rsp)
  fnstcw 12(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr 8(%rsp)
  fldcw 12(%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size gt_emu_switch,.-gt_emu_switch
)");
#endif

namespace gt_emu {

// ================================================================ errors
const char* kind_name(ErrorKind k) {
  switch (k) {
    case ErrorKind::Deadlock: return "deadlock";
    case ErrorKind::Barrier: return "barrier";
    case ErrorKind::Warp: return "warp";
    case ErrorKind::Race: return "race";
    case ErrorKind::SharedBounds: return "shared-bounds";
    case ErrorKind::GlobalBounds: return "global-bounds";
    case ErrorKind::Uninit: return "uninit";
    case ErrorKind::Misaligned: return "misaligned";
    case ErrorKind::Launch: return "launch";
    case ErrorKind::Kernel: return "kernel";
  }
  return "?";
}

Error::Error(ErrorKind k, const std::string& msg)
    : std::runtime_error(std::string("cuda_emu[") + kind_name(k) + "]: " + msg), kind(k) {}

namespace {
std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  return buf;
}
std::string str(const dim3& d) { return format("(%u,%u,%u)", d.x, d.y, d.z); }
}  // namespace

// ================================================================ GPU limits
const GpuProps& gpu_props(const std::string& name) {
  static const GpuProps a100{"a100", 80, 108, 1024, {1024, 1024, 64}, {2147483647L, 65535, 65535},
                             2048, 32, 65536, 255, 48 * 1024, 166912, 167936, 1024, 0};
  static const GpuProps h100{"h100", 90, 132, 1024, {1024, 1024, 64}, {2147483647L, 65535, 65535},
                             2048, 32, 65536, 255, 48 * 1024, 232448, 233472, 1024, 8};
  if (name == "a100") return a100;
  if (name == "h100") return h100;
  throw Error(ErrorKind::Launch, "unknown GPU '" + name + "' (the emulator knows 'a100' and 'h100')");
}

unsigned assumed_regs(const GpuProps& p, const KernelInfo& k, unsigned threads) {
  if (k.regs) return k.regs;
  // ptxas keeps a kernel with __launch_bounds__(N, M) within regs_per_sm / (M * N),
  // in steps of 8 per thread; without bounds, assume the block just fits.
  const unsigned n = ((k.max_threads ? k.max_threads : threads) + 31) / 32 * 32;
  const unsigned m = k.max_threads ? std::max(1u, k.min_blocks) : 1u;
  unsigned r = unsigned(p.regs_per_sm) / (m * std::max(32u, n));
  r = std::min<unsigned>(r, unsigned(p.max_regs_per_thread)) / 8 * 8;
  return std::max(r, 8u);
}

int max_blocks_per_sm(const GpuProps& p, const KernelInfo& k, unsigned threads, size_t smem) {
  const unsigned warps = (threads + 31) / 32;
  if (warps == 0) return 0;
  const int by_threads = p.max_threads_per_sm / int(warps * 32);
  const unsigned regs_per_warp = (assumed_regs(p, k, threads) * 32 + 255) / 256 * 256;
  const int by_regs = int(unsigned(p.regs_per_sm) / (regs_per_warp * warps));
  const size_t per_block = k.static_smem + smem + p.smem_reserved;
  const int by_smem = int(p.smem_per_sm / per_block);
  return std::max(0, std::min({p.max_blocks_per_sm, by_threads, by_regs, by_smem}));
}

void check_launch(const GpuProps& p, const KernelInfo& k, const LaunchConfig& c) {
  auto refuse = [&](const std::string& why) {
    throw Error(ErrorKind::Launch, format("%s <<<%s, %s, %zu>>> on the %s (sm_%d): ", k.name,
                                          str(c.grid).c_str(), str(c.block).c_str(), c.dyn_smem,
                                          p.name, p.sm) + why);
  };
  const unsigned g[3] = {c.grid.x, c.grid.y, c.grid.z}, b[3] = {c.block.x, c.block.y, c.block.z};
  for (int i = 0; i < 3; ++i) {
    if (g[i] == 0 || b[i] == 0) refuse("invalid configuration argument: a zero grid or block dimension");
    if (b[i] > unsigned(p.max_block_dim[i]))
      refuse(format("invalid configuration argument: block dimension %c = %u exceeds %d", "xyz"[i], b[i],
                    p.max_block_dim[i]));
    if (long(g[i]) > p.max_grid_dim[i])
      refuse(format("invalid configuration argument: grid dimension %c = %u exceeds %ld", "xyz"[i], g[i],
                    p.max_grid_dim[i]));
  }
  const unsigned threads = c.block.count();
  if (threads > unsigned(p.max_threads_per_block))
    refuse(format("invalid configuration argument: %u threads per block exceed %d", threads,
                  p.max_threads_per_block));
  if (k.max_threads && threads > k.max_threads)
    refuse(format("too many resources requested for launch: %u threads per block exceed the "
                  "kernel's __launch_bounds__ (%u)", threads, k.max_threads));
  const unsigned regs = assumed_regs(p, k, threads);
  const unsigned block_regs = (regs * 32 + 255) / 256 * 256 * ((threads + 31) / 32);
  if (block_regs > unsigned(p.regs_per_sm))
    refuse(format("too many resources requested for launch: %u registers a thread x %u threads "
                  "need %u registers, an SM has %d", regs, threads, block_regs, p.regs_per_sm));
  if (c.max_dyn_smem + k.static_smem > p.smem_optin)
    refuse(format("invalid argument: cudaFuncAttributeMaxDynamicSharedMemorySize %zu plus %zu bytes "
                  "of static shared memory exceed the opt-in limit of %zu bytes",
                  c.max_dyn_smem, k.static_smem, p.smem_optin));
  if (c.dyn_smem > c.max_dyn_smem)
    refuse(format("invalid argument: %zu bytes of dynamic shared memory exceed the kernel's "
                  "cudaFuncAttributeMaxDynamicSharedMemorySize (%zu); raise it with "
                  "cudaFuncSetAttribute (at most %zu)", c.dyn_smem, c.max_dyn_smem,
                  p.smem_optin - k.static_smem));
  const int occupancy = max_blocks_per_sm(p, k, threads, c.dyn_smem);
  if (occupancy == 0)
    refuse("too many resources requested for launch: one block does not fit on an SM");
  const unsigned nblocks = c.grid.count();
  if (c.cooperative && nblocks > unsigned(occupancy * p.num_sms))
    refuse(format("cooperative launch too large: %u blocks, but only %d per SM x %d SMs = %d can "
                  "be resident at once", nblocks, occupancy, p.num_sms, occupancy * p.num_sms));
  const unsigned cl = c.cluster.count();
  if (cl > 1) {
    if (!p.max_cluster_size) refuse("thread-block clusters need sm_90 or newer");
    if (cl > unsigned(p.max_cluster_size))
      refuse(format("cluster of %u blocks exceeds the portable limit of %d", cl, p.max_cluster_size));
    if (c.grid.x % c.cluster.x || c.grid.y % c.cluster.y || c.grid.z % c.cluster.z)
      refuse("invalid argument: the grid is not a whole number of clusters " + str(c.cluster));
    if (c.cooperative) refuse("a cooperative launch cannot have clusters here");
  }
}

// ================================================================ options
namespace {
std::mutex g_opt_mu;
Options g_opt;
std::mutex g_stats_mu;
Stats g_last_stats;
}  // namespace

Options options() {
  std::lock_guard<std::mutex> l(g_opt_mu);
  return g_opt;
}
void set_options(const Options& o) {
  gpu_props(o.gpu);  // validates the name
  std::lock_guard<std::mutex> l(g_opt_mu);
  g_opt = o;
}
Stats last_stats() {
  std::lock_guard<std::mutex> l(g_stats_mu);
  return g_last_stats;
}

// ================================================================ runtime state
namespace {

constexpr uint32_t kNone = 0xffffffffu, kMany = 0xfffffffeu;

// Shadow of one 2-byte cell of shared memory.
struct Cell {
  uint32_t w_tid = kNone, w_bep = 0, w_gep = 0, w_clk = 0;  // last write
  uint32_t r_tid = kNone, r_bep = 0, r_gep = 0, r_clk = 0;  // last plain read(s); kMany: several
  bool w_atomic = false;                                     // the last write was an atomic
  bool w_async = false;  // the last write is a cp.async its thread has not waited for yet
};

enum class Wait : uint8_t { None, Bar, Warp, Cluster, Grid, Yield };
const char* wait_name(Wait w) {
  switch (w) {
    case Wait::Bar: return "__syncthreads";
    case Wait::Warp: return "a warp collective";
    case Wait::Cluster: return "a cluster barrier";
    case Wait::Grid: return "grid.sync()";
    default: return "nothing";
  }
}

struct Group;
struct LaunchState;

struct Copy {  // a cp.async in flight
  Span s;
  int64_t off;
  const void* src;
  size_t bytes, src_bytes;
  int group;
  unsigned char data[16];  // the source as read at the issue, zero-filled past src_bytes
};

// How access_as treats an access: a plain one, an atomic, or one half of a cp.async:
// its issue (checked and recorded as a write that stays in flight: any access to the
// cells before the wait is a race) and its landing at the wait (the write, stamped then).
enum class Mode : uint8_t { Plain, Atomic, CopyIssue, CopyLand };

}  // namespace

struct Fiber {
#if GT_EMU_ASM_SWITCH
  void* sp = nullptr;
#else
  ucontext_t uc;
#endif
  char* stack = nullptr;
  ThreadCtx tc;
  Block* blk = nullptr;
  uint32_t gid = 0;  // index in the group: block index * threads + linear
  bool done = false;
  Wait wait = Wait::None;
  const char* wfile = "";
  int wline = 0;
  std::vector<Copy> copies;
  int open_group = 0;  // cp.async group being filled
};

namespace {
struct Pending {  // a warp collective some lanes have reached
  uint32_t mask, arrived;
  int op;
  const char* file;
  int line;
};
struct WarpState {
  std::vector<Pending> pending;
  alignas(16) unsigned char in[32][48];
  alignas(16) unsigned char out[32][32];
  uint32_t clock[32] = {};
  uint32_t vc[32][32] = {};
};
}  // namespace

struct Block {
  Group* grp = nullptr;
  dim3 bid;
  unsigned index = 0;  // in the group
  unsigned rank = 0;   // in the cluster
  std::vector<Fiber> fibers;
  std::vector<WarpState> warps;
  unsigned live = 0, bar_arrived = 0;
  uint32_t epoch = 0;  // completed __syncthreads
  const char* bar_file = nullptr;
  int bar_line = 0;
  std::vector<unsigned char> arena;
  std::vector<Cell> shadow;
  size_t dyn_bytes = 0;
  std::vector<std::pair<const void*, Span>> static_sites;
};

namespace {

struct Group {
  LaunchState* L = nullptr;
  std::vector<std::unique_ptr<Block>> blocks;
  unsigned live = 0, arrived = 0;  // group barrier (cluster or grid)
  Wait barrier_kind = Wait::None;
  uint32_t epoch = 0;  // completed group barriers
  uint64_t rng = 0;
  bool in_hook = false;
#if GT_EMU_ASM_SWITCH
  void* sched_sp = nullptr;
#else
  ucontext_t sched_uc;
#endif
  uint64_t switches = 0;
  uint64_t next_rand() {  // splitmix64
    uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
};

struct LaunchState {
  GpuProps props;
  KernelInfo k;
  LaunchConfig c;
  Options opt;
  std::function<void()> body;
  unsigned threads = 0;
  std::mutex mu;
  std::atomic<bool> failed{false};
  std::unique_ptr<Error> err;
  std::atomic<uint64_t> barriers{0}, warp_ops{0}, smem_accesses{0}, switches{0};
  void record(const Error& e) {
    std::lock_guard<std::mutex> l(mu);
    if (!err) err = std::make_unique<Error>(e);
    failed = true;
  }
};

thread_local Fiber* t_fiber = nullptr;
thread_local Group* t_group = nullptr;

Fiber& cur_fiber() {
  if (!t_fiber) throw Error(ErrorKind::Kernel, "a device function was called outside a kernel");
  return *t_fiber;
}

std::string who(const Fiber& f) {
  return format("block %s thread %s", str(f.tc.bid).c_str(), str(f.tc.tid).c_str());
}

void to_scheduler() {
  Fiber* f = t_fiber;
  Group* g = t_group;
#if GT_EMU_ASM_SWITCH
  gt_emu_switch(&f->sp, g->sched_sp);
#else
  swapcontext(&f->uc, &g->sched_uc);
#endif
}

[[noreturn]] void leave_forever() {
  to_scheduler();
  std::abort();  // a failed or finished fiber is never resumed
}

void check_abort() {
  if (t_group->L->failed.load(std::memory_order_relaxed)) leave_forever();
}

void block_until_woken(Wait w, const char* file, int line) {
  Fiber& f = *t_fiber;
  f.wait = w;
  f.wfile = file;
  f.wline = line;
  to_scheduler();
  check_abort();
}

}  // namespace

[[noreturn]] void fail(ErrorKind k, const std::string& msg) {
  Fiber* f = t_fiber;
  if (!f) throw Error(k, msg);
  t_group->L->record(Error(k, msg + " [" + who(*f) + "]"));
  leave_forever();
}

const ThreadCtx& ctx() { return cur_fiber().tc; }

// ================================================================ barriers
namespace {
void release_block_barrier(Block& b) {
  b.bar_arrived = 0;
  b.bar_file = nullptr;
  ++b.epoch;
  b.grp->L->barriers.fetch_add(1, std::memory_order_relaxed);
  for (auto& o : b.fibers)
    if (o.wait == Wait::Bar) o.wait = Wait::None;
}

void release_group_barrier(Group& g) {
  g.arrived = 0;
  ++g.epoch;
  for (auto& b : g.blocks)
    for (auto& o : b->fibers)
      if (o.wait == g.barrier_kind) o.wait = Wait::None;
  g.barrier_kind = Wait::None;
}
}  // namespace

void syncthreads(const char* file, int line) {
  Fiber& f = cur_fiber();
  Block& b = *f.blk;
  if (b.bar_arrived == 0) {
    b.bar_file = file;
    b.bar_line = line;
  } else if (b.bar_line != line || std::strcmp(b.bar_file, file) != 0) {
    fail(ErrorKind::Barrier,
         format("threads of one block wait at different __syncthreads: %s:%d and %s:%d "
                "(a divergent barrier hangs or corrupts the block on a GPU)",
                b.bar_file, b.bar_line, file, line));
  }
  if (++b.bar_arrived == b.live) {
    release_block_barrier(b);
    return;
  }
  block_until_woken(Wait::Bar, file, line);
}

namespace {
void group_barrier(Wait kind, const char* file, int line) {
  Fiber& f = cur_fiber();
  Group& g = *t_group;
  if (g.barrier_kind != Wait::None && g.barrier_kind != kind)
    fail(ErrorKind::Barrier, format("%s while other threads wait in %s", wait_name(kind),
                                    wait_name(g.barrier_kind)));
  g.barrier_kind = kind;
  (void)f;
  if (++g.arrived == g.live) {
    release_group_barrier(g);
    return;
  }
  block_until_woken(kind, file, line);
}
}  // namespace

void cluster_sync(const char* file, int line) {
  // Outside a cluster launch the group is one block: a cluster of one, as on sm_90.
  if (t_group->L->c.cooperative)
    fail(ErrorKind::Barrier, "a cluster barrier in a cooperative launch (not emulated)");
  group_barrier(Wait::Cluster, file, line);
}

void grid_sync(const char* file, int line) {
  if (!t_group->L->c.cooperative)
    fail(ErrorKind::Barrier, "grid.sync() in a launch that is not cooperative (it hangs or is "
                             "undefined on a GPU)");
  group_barrier(Wait::Grid, file, line);
}

void yield() {
  block_until_woken(Wait::Yield, "", 0);
}

unsigned cluster_block_rank() { return cur_fiber().blk->rank; }

// ================================================================ warp collectives
namespace {
enum Op { OP_SYNCWARP = 1, OP_SHFL, OP_VOTE, OP_MMA_F16, OP_MMA_BF16, OP_MMA_TF32_K16,
          OP_MMA_TF32_K8, OP_LDMATRIX };
// An op code is a base (low 4 bits) and a variant (the shuffle kind and width, the
// ldmatrix shape) that lanes must also agree on.
const char* op_name(int op) {
  switch (op & 15) {
    case OP_SYNCWARP: return "__syncwarp";
    case OP_SHFL: return "__shfl*_sync";
    case OP_VOTE: return "__ballot_sync/__any_sync/__all_sync";
    case OP_MMA_F16: return "mma.m16n8k16.f16";
    case OP_MMA_BF16: return "mma.m16n8k16.bf16";
    case OP_MMA_TF32_K16: return "mma.m16n8k16.tf32";
    case OP_MMA_TF32_K8: return "mma.m16n8k8.tf32";
    case OP_LDMATRIX: return "ldmatrix";
  }
  return "?";
}

// mma and ldmatrix are .aligned: every lane of the warp must execute the same
// instruction, so lanes must also agree on the call site (file:line).
bool is_aligned(int op) { return (op & 15) >= OP_MMA_F16 && (op & 15) <= OP_LDMATRIX; }

using Hook = void (*)(WarpState&, Block&, unsigned warp, uint32_t mask, const void* extra);

// Arrives at a warp collective. Returns once every lane of `mask` has arrived; the
// hook has then run once (in the last lane to arrive) over every lane's input.
void collective(uint32_t mask, int op, const void* in, size_t n, Hook hook, const void* extra,
                const char* file, int line) {
  Fiber& f = cur_fiber();
  Block& b = *f.blk;
  const unsigned lane = f.tc.linear & 31u, wi = f.tc.linear >> 5;
  WarpState& w = b.warps[wi];
  if (!((mask >> lane) & 1u))
    fail(ErrorKind::Warp, format("%s at %s:%d by lane %u, which its mask 0x%08x does not name",
                                 op_name(op), file, line, lane, mask));
  const unsigned lanes = std::min<unsigned>(32u, unsigned(b.fibers.size()) - wi * 32);
  for (unsigned l = 0; l < 32; ++l) {
    if (!((mask >> l) & 1u)) continue;
    if (l >= lanes)
      fail(ErrorKind::Warp, format("%s at %s:%d: mask 0x%08x names lane %u, which does not exist "
                                   "(the block has %zu threads)", op_name(op), file, line, mask, l,
                                   b.fibers.size()));
    if (b.fibers[wi * 32 + l].done)
      fail(ErrorKind::Warp, format("%s at %s:%d: mask 0x%08x names lane %u, which has exited",
                                   op_name(op), file, line, mask, l));
  }
  int gi = -1;
  for (size_t i = 0; i < w.pending.size(); ++i) {
    const Pending& p = w.pending[i];
    if (p.mask == mask && p.op == op) {
      if (is_aligned(op) && (p.line != line || std::strcmp(p.file, file) != 0))
        fail(ErrorKind::Warp,
             format("lanes of warp %u reach %s from two call sites: lane %u at %s:%d while lanes "
                    "0x%08x wait at %s:%d (.aligned: every lane of the warp must execute the same "
                    "instruction; undefined on a GPU)", wi, op_name(op), lane, file, line,
                    p.arrived, p.file, p.line));
      gi = int(i);
    } else if (p.mask & mask) {
      fail(ErrorKind::Warp,
           format("lanes of warp %u disagree: lane %u calls %s with mask 0x%08x at %s:%d while "
                  "lanes 0x%08x wait in %s with mask 0x%08x at %s:%d", wi, lane, op_name(op), mask,
                  file, line, p.arrived, op_name(p.op), p.mask, p.file, p.line));
    }
  }
  if (gi < 0) {
    w.pending.push_back({mask, 0u, op, file, line});
    gi = int(w.pending.size()) - 1;
  }
  if (n) std::memcpy(w.in[lane], in, n);
  w.pending[gi].arrived |= 1u << lane;
  if (w.pending[gi].arrived != mask) {
    block_until_woken(Wait::Warp, file, line);
    return;
  }
  w.pending.erase(w.pending.begin() + gi);
  if (hook) {
    t_group->in_hook = true;
    hook(w, b, wi, mask, extra);
    t_group->in_hook = false;
  }
  b.grp->L->warp_ops.fetch_add(1, std::memory_order_relaxed);
  for (unsigned l = 0; l < lanes; ++l)
    if (((mask >> l) & 1u) && b.fibers[wi * 32 + l].wait == Wait::Warp)
      b.fibers[wi * 32 + l].wait = Wait::None;
}

// __syncwarp orders the shared-memory accesses of its lanes: join their clocks.
void syncwarp_hook(WarpState& w, Block&, unsigned, uint32_t mask, const void*) {
  uint32_t joined[32] = {};
  for (unsigned l = 0; l < 32; ++l)
    if ((mask >> l) & 1u) ++w.clock[l];
  for (unsigned l = 0; l < 32; ++l) {
    if (!((mask >> l) & 1u)) continue;
    for (unsigned k = 0; k < 32; ++k) joined[k] = std::max(joined[k], w.vc[l][k]);
    joined[l] = std::max(joined[l], w.clock[l]);
  }
  for (unsigned l = 0; l < 32; ++l)
    if ((mask >> l) & 1u) std::memcpy(w.vc[l], joined, sizeof joined);
}

struct ShflArgs {
  ShflKind kind;
  int arg, width;
  size_t n;
};
struct ShflIn {
  unsigned char v[16];
  int arg;
};

void shfl_hook(WarpState& w, Block&, unsigned, uint32_t mask, const void* extra) {
  const ShflArgs& a = *static_cast<const ShflArgs*>(extra);
  for (unsigned lane = 0; lane < 32; ++lane) {
    if (!((mask >> lane) & 1u)) continue;
    ShflIn in;
    std::memcpy(&in, w.in[lane], sizeof in);
    const int seg = int(lane) & ~(a.width - 1);
    int src = int(lane);
    switch (a.kind) {
      case SHFL_IDX: src = seg + (in.arg & (a.width - 1)); break;
      case SHFL_UP: src = int(lane) - in.arg; if (src < seg) src = int(lane); break;
      case SHFL_DOWN: src = int(lane) + in.arg; if (src >= seg + a.width) src = int(lane); break;
      case SHFL_XOR: src = int(lane) ^ in.arg; if (src >= seg + a.width) src = int(lane); break;
    }
    if (!((mask >> src) & 1u))
      fail(ErrorKind::Warp, format("shuffle: lane %u reads lane %d, which the mask 0x%08x does not "
                                   "name (undefined on a GPU)", lane, src, mask));
    std::memcpy(w.out[lane], w.in[src], a.n);
  }
}

void vote_hook(WarpState& w, Block&, unsigned, uint32_t mask, const void*) {
  uint32_t bits = 0;
  for (unsigned l = 0; l < 32; ++l)
    if (((mask >> l) & 1u) && w.in[l][0]) bits |= 1u << l;
  for (unsigned l = 0; l < 32; ++l)
    if ((mask >> l) & 1u) std::memcpy(w.out[l], &bits, 4);
}
}  // namespace

void syncwarp(unsigned mask, const char* file, int line) {
  collective(mask, OP_SYNCWARP, nullptr, 0, syncwarp_hook, nullptr, file, line);
}

void shfl_bytes(unsigned mask, const void* in, void* out, size_t n, ShflKind kind, int arg,
                int width, const char* file, int line) {
  if (n > 16) fail(ErrorKind::Kernel, "shuffle of more than 16 bytes");
  if (width <= 0 || width > 32 || (width & (width - 1)))
    fail(ErrorKind::Warp, format("shuffle width %d at %s:%d is not a power of 2 <= 32", width, file, line));
  ShflIn v{};
  std::memcpy(v.v, in, n);
  v.arg = arg;
  const ShflArgs a{kind, arg, width, n};
  // Lanes must agree on the kind and width; the op code carries both.
  collective(mask, OP_SHFL + 16 * (int(kind) * 64 + width), &v, sizeof v, shfl_hook, &a, file, line);
  std::memcpy(out, t_fiber->blk->warps[t_fiber->tc.linear >> 5].out[t_fiber->tc.linear & 31u], n);
}

unsigned ballot(unsigned mask, bool pred, const char* file, int line) {
  const unsigned char v = pred ? 1 : 0;
  collective(mask, OP_VOTE, &v, 1, vote_hook, nullptr, file, line);
  uint32_t r;
  std::memcpy(&r, t_fiber->blk->warps[t_fiber->tc.linear >> 5].out[t_fiber->tc.linear & 31u], 4);
  return r;
}

// ================================================================ tensor cores
namespace {
float bf16_to_float(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
float f16_to_float(uint16_t h) {
  _Float16 v;
  std::memcpy(&v, &h, 2);
  return float(v);
}
// The tensor cores read a .tf32 operand's sign, exponent and top 10 mantissa bits
// and ignore the low 13 (callers round with cvt.rna.tf32.f32 first).
float tf32_operand(uint32_t bits) {
  bits &= 0xffffe000u;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

struct MmaIn {
  uint32_t a[4], b[2];
  float c[4];
};

// m16n8k16 (.f16, .bf16): A 16x16 row-major in 4 regs of 2 halves, B 16x8
// column-major in 2 regs, C/D 16x8 in 4 floats. groupID g = lane >> 2, t = lane & 3.
//   a_i (i = 0..7, low half first): row g (+8 for i in {2,3,6,7}), col 2t + (i&1) (+8 for i >= 4)
//   b_i (i = 0..3): row (k) 2t + (i&1) (+8 for i >= 2), col (n) g
//   c_i (i = 0..3): row g (+8 for i >= 2), col 2t + (i&1)
// m16n8k8 (.tf32): a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4);
//   b0 (k = t, n = g), b1 (k = t+4, n = g); C/D as above.
// The products of the rounded inputs are exact in fp32; they are summed in fp32, in
// k order, onto C.
template <int K>
void mma_compute(WarpState& w, const float (&A)[16][16], const float (&B)[16][8],
                 const float (&C)[16][8]) {
  for (unsigned lane = 0; lane < 32; ++lane) {
    const unsigned g = lane >> 2, t = lane & 3u;
    float d[4];
    for (unsigned i = 0; i < 4; ++i) {
      const unsigned row = g + (i >= 2 ? 8u : 0u), col = t * 2 + (i & 1u);
      float acc = C[row][col];
      for (unsigned k = 0; k < unsigned(K); ++k) acc += A[row][k] * B[k][col];
      d[i] = acc;
    }
    std::memcpy(w.out[lane], d, sizeof d);
  }
}

void mma16_hook(WarpState& w, Block&, unsigned, uint32_t, const void* extra) {
  const MmaType type = *static_cast<const MmaType*>(extra);
  float A[16][16], B[16][8], C[16][8];
  for (unsigned lane = 0; lane < 32; ++lane) {
    MmaIn in;
    std::memcpy(&in, w.in[lane], sizeof in);
    const unsigned g = lane >> 2, t = lane & 3u;
    if (type == MmaType::TF32) {  // m16n8k16 does not exist for tf32
      fail(ErrorKind::Kernel, "mma.m16n8k16 has no .tf32 form; use m16n8k8");
    }
    auto cvt = [&](uint16_t v) { return type == MmaType::BF16 ? bf16_to_float(v) : f16_to_float(v); };
    for (unsigned i = 0; i < 8; ++i) {
      const uint16_t bits = uint16_t(in.a[i >> 1] >> (16 * (i & 1u)));
      A[g + ((i & 2u) ? 8u : 0u)][t * 2 + (i & 1u) + (i >= 4 ? 8u : 0u)] = cvt(bits);
    }
    for (unsigned i = 0; i < 4; ++i) {
      const uint16_t bits = uint16_t(in.b[i >> 1] >> (16 * (i & 1u)));
      B[t * 2 + (i & 1u) + (i >= 2 ? 8u : 0u)][g] = cvt(bits);
    }
    for (unsigned i = 0; i < 4; ++i) C[g + (i >= 2 ? 8u : 0u)][t * 2 + (i & 1u)] = in.c[i];
  }
  mma_compute<16>(w, A, B, C);
}

void mma_tf32_hook(WarpState& w, Block&, unsigned, uint32_t, const void*) {
  float A[16][16] = {}, B[16][8] = {}, C[16][8];
  for (unsigned lane = 0; lane < 32; ++lane) {
    MmaIn in;
    std::memcpy(&in, w.in[lane], sizeof in);
    const unsigned g = lane >> 2, t = lane & 3u;
    A[g][t] = tf32_operand(in.a[0]);
    A[g + 8][t] = tf32_operand(in.a[1]);
    A[g][t + 4] = tf32_operand(in.a[2]);
    A[g + 8][t + 4] = tf32_operand(in.a[3]);
    B[t][g] = tf32_operand(in.b[0]);
    B[t + 4][g] = tf32_operand(in.b[1]);
    for (unsigned i = 0; i < 4; ++i) C[g + (i >= 2 ? 8u : 0u)][t * 2 + (i & 1u)] = in.c[i];
  }
  mma_compute<8>(w, A, B, C);
}

void mma_run(int op, Hook hook, const void* extra, float (&d)[4], const uint32_t (&a)[4],
             const uint32_t (&b)[2], const float (&c)[4], const char* file, int line) {
  MmaIn in;
  std::memcpy(in.a, a, sizeof in.a);
  std::memcpy(in.b, b, sizeof in.b);
  std::memcpy(in.c, c, sizeof in.c);
  collective(0xffffffffu, op, &in, sizeof in, hook, extra, file, line);
  std::memcpy(d, t_fiber->blk->warps[t_fiber->tc.linear >> 5].out[t_fiber->tc.linear & 31u], 16);
}
}  // namespace

void mma_m16n8k16(MmaType t, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                  const float (&c)[4], const char* file, int line) {
  static const MmaType types[3] = {MmaType::F16, MmaType::BF16, MmaType::TF32};
  const int op = t == MmaType::F16 ? OP_MMA_F16 : t == MmaType::BF16 ? OP_MMA_BF16 : OP_MMA_TF32_K16;
  mma_run(op, mma16_hook, &types[int(t)], d, a, b, c, file, line);
}

void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                      const float (&c)[4], const char* file, int line) {
  mma_run(OP_MMA_TF32_K8, mma_tf32_hook, nullptr, d, a, b, c, file, line);
}

// ================================================================ shared memory
namespace {

Block& block_of(const Group& g, uint32_t tid) { return *g.blocks[tid / g.L->threads]; }

// Whether an access recorded as (tid, bep, gep, clk) to a cell of block `owner`'s
// arena happens before fiber f's access now: the same thread, or a barrier of the
// group, of the block, or a __syncwarp between them. For several readers (kMany), clk
// is 1 when one of them was in another block (distributed shared memory): then only
// a group barrier orders them.
bool ordered(uint32_t tid, uint32_t bep, uint32_t gep, uint32_t clk, const Fiber& f,
             const Block& owner) {
  const Group& g = *f.blk->grp;
  if (tid == f.gid) return true;
  if (g.epoch > gep) return true;
  if (tid == kMany) return clk == 0 && f.blk == &owner && owner.epoch > bep;
  const Block& ba = block_of(g, tid);
  if (&ba != f.blk) return false;
  if (f.blk->epoch > bep) return true;
  const unsigned lin = tid % g.L->threads;
  if (lin / 32 != f.tc.linear / 32) return false;
  return f.blk->warps[f.tc.linear >> 5].vc[f.tc.linear & 31u][lin & 31u] > clk;
}

std::string thread_name(const Group& g, uint32_t tid) {
  const Block& b = block_of(g, tid);
  return format("thread %s of block %s", str(b.fibers[tid % g.L->threads].tc.tid).c_str(),
                str(b.bid).c_str());
}

void maybe_yield(Group& g) {
  if (g.L->opt.shuffle_seed && !g.in_hook && (g.next_rand() & 3u) == 0) yield();
}

void access_as(Fiber& f, const Span& s, int64_t off, size_t bytes, bool write, void* data,
               Mode mode = Mode::Plain) {
  Group& g = *f.blk->grp;
  if (!s.blk) fail(ErrorKind::SharedBounds, "access through a null shared-memory pointer");
  Block& ob = *s.blk;
  const bool atomic = mode == Mode::Atomic;
  const char* what = mode == Mode::CopyIssue ? "cp.async write" : write ? "write" : "read";
  if (off < int64_t(s.lo) || off + int64_t(bytes) > int64_t(s.hi))
    fail(ErrorKind::SharedBounds,
         format("shared-memory %s of %zu bytes at offset 0x%llx is outside its allocation "
                "[0x%x, 0x%x) of block %s", what, bytes, (long long)off, s.lo, s.hi,
                str(ob.bid).c_str()));
  const size_t align = std::min<size_t>(bytes, 16);
  if ((off % int64_t(align)) != 0)
    fail(ErrorKind::Misaligned, format("shared-memory %s of %zu bytes at offset 0x%llx is not "
                                       "%zu-byte aligned", what, bytes, (long long)off, align));
  if (ob.live == 0 && &ob != f.blk)
    fail(ErrorKind::SharedBounds, format("shared-memory %s in block %s, whose threads have all "
                                         "exited", what, str(ob.bid).c_str()));
  g.L->smem_accesses.fetch_add(1, std::memory_order_relaxed);
  const Options& o = g.L->opt;
  if (o.race_check || o.init_check) {
    WarpState& w = f.blk->warps[f.tc.linear >> 5];
    const uint32_t clk = w.clock[f.tc.linear & 31u];
    for (int64_t c = off / 2; c < (off + int64_t(bytes) + 1) / 2; ++c) {
      Cell& cell = ob.shadow[size_t(c)];
      auto race = [&](const char* prev, uint32_t tid) {
        fail(ErrorKind::Race,
             format("shared-memory %s at offset 0x%llx of block %s races with %s by %s: no "
                    "__syncthreads or __syncwarp orders them", what, (long long)(c * 2),
                    str(ob.bid).c_str(), prev,
                    tid == kMany ? "several threads" : thread_name(g, tid).c_str()));
      };
      // A cp.async may write its destination at any time from its issue until the wait
      // that completes it: no barrier orders an access in between, not even its own thread's.
      if (cell.w_async && mode != Mode::CopyLand && o.race_check)
        fail(ErrorKind::Race,
             format("shared-memory %s at offset 0x%llx of block %s races with a cp.async by %s "
                    "still in flight: it may land at any time until its thread's cp_async_wait",
                    what, (long long)(c * 2), str(ob.bid).c_str(), thread_name(g, cell.w_tid).c_str()));
      const bool w_unordered =
          cell.w_tid != kNone && !ordered(cell.w_tid, cell.w_bep, cell.w_gep, cell.w_clk, f, ob);
      // Atomics do not race with each other, only with plain accesses.
      const bool w_conflicts = w_unordered && !(atomic && cell.w_atomic);
      if (!write) {
        if (o.init_check && cell.w_tid == kNone)
          fail(ErrorKind::Uninit, format("shared-memory read at offset 0x%llx of block %s, which "
                                         "nothing wrote in this launch", (long long)(c * 2),
                                         str(ob.bid).c_str()));
        if (!o.race_check) continue;
        if (w_conflicts) race(cell.w_atomic ? "an atomic update" : "a write", cell.w_tid);
        if (atomic) continue;  // the read half of an atomic is not a plain read
        if (cell.r_tid == kNone || ordered(cell.r_tid, cell.r_bep, cell.r_gep, cell.r_clk, f, ob)) {
          cell.r_tid = f.gid;
          cell.r_clk = clk;
        } else if (cell.r_tid != f.gid) {
          const bool remote = (cell.r_tid == kMany && cell.r_clk) || f.blk != &ob ||
                              (cell.r_tid != kMany && &block_of(g, cell.r_tid) != &ob);
          cell.r_tid = kMany;
          cell.r_clk = remote ? 1u : 0u;
        }
        cell.r_bep = f.blk->epoch;
        cell.r_gep = g.epoch;
        continue;
      }
      if (o.race_check) {
        if (cell.r_tid != kNone && !ordered(cell.r_tid, cell.r_bep, cell.r_gep, cell.r_clk, f, ob))
          race("a read", cell.r_tid);
        if (w_conflicts) race(cell.w_atomic ? "an atomic update" : "a write", cell.w_tid);
      }
      cell.w_tid = f.gid;
      cell.w_bep = f.blk->epoch;
      cell.w_gep = g.epoch;
      cell.w_clk = clk;
      cell.w_atomic = atomic;
      cell.w_async = mode == Mode::CopyIssue;
      cell.r_tid = kNone;
    }
  }
  if (mode == Mode::CopyIssue) return;  // the data lands at the wait
  unsigned char* p = ob.arena.data() + off;
  if (write) std::memcpy(p, data, bytes);
  else std::memcpy(data, p, bytes);
}
}  // namespace

void smem_access(const Span& s, int64_t off, size_t bytes, bool write, void* data) {
  Fiber& f = cur_fiber();
  maybe_yield(*f.blk->grp);
  access_as(f, s, off, bytes, write, data);
}

void smem_atomic_add_f32(const Span& s, int64_t off, float v, float* old) {
  // Atomics do not race with each other; they do with plain accesses (checked as a
  // read then a write, with the atomic flag relaxing atomic-vs-atomic pairs).
  Fiber& f = cur_fiber();
  float x;
  access_as(f, s, off, 4, false, &x, Mode::Atomic);
  if (old) *old = x;
  x += v;
  access_as(f, s, off, 4, true, &x, Mode::Atomic);
}

Span dynamic_smem() {
  Fiber& f = cur_fiber();
  return Span{f.blk, 0, uint32_t(f.blk->dyn_bytes)};
}

Span static_smem(const void* site, size_t bytes, size_t align) {
  Fiber& f = cur_fiber();
  Block& b = *f.blk;
  for (auto& s : b.static_sites)
    if (s.first == site) return s.second;
  const size_t lo = (b.arena.size() + align - 1) / align * align;
  const size_t total = lo + bytes;
  const GpuProps& p = b.grp->L->props;
  if (total > p.smem_optin)
    fail(ErrorKind::Launch, format("static and dynamic shared memory reach %zu bytes, over the "
                                   "%s's limit of %zu", total, p.name, p.smem_optin));
  // On a GPU the static layout is fixed before the launch, the same in every block, so
  // another block of the cluster may be reached through map_rank before it runs this
  // declaration: allocate it in every block of the group at once (their arenas grow in
  // step and stay alike). The arena only grows at a declaration, which every thread
  // reaches before using it, and an access never spans a fiber switch, so no pointer
  // into an arena is held across the reallocation.
  for (auto& ob : b.grp->blocks) {
    ob->arena.resize(total, 0xff);
    ob->shadow.resize((total + 1) / 2);
    ob->static_sites.emplace_back(site, Span{ob.get(), uint32_t(lo), uint32_t(total)});
  }
  return b.static_sites.back().second;
}

Span map_shared_rank(const Span& s, unsigned rank) {
  Fiber& f = cur_fiber();
  Group& g = *f.blk->grp;
  if (g.L->c.cluster.count() <= 1 && rank != 0)
    fail(ErrorKind::SharedBounds, "map_shared_rank outside a cluster launch");
  if (rank >= g.blocks.size())
    fail(ErrorKind::SharedBounds, format("map_shared_rank(%u) in a cluster of %zu blocks", rank,
                                         g.blocks.size()));
  Span r = s;
  r.blk = g.blocks[rank].get();
  return r;
}

// ================================================================ ldmatrix, cp.async
namespace {
struct LdmIn {
  Span s;
  int64_t off;
};
struct LdmArgs {
  unsigned count;
  bool trans;
};
void ldmatrix_hook(WarpState& w, Block& b, unsigned wi, uint32_t, const void* extra) {
  const LdmArgs& a = *static_cast<const LdmArgs*>(extra);
  uint16_t m[4][8][8];
  for (unsigned i = 0; i < a.count; ++i)
    for (unsigned r = 0; r < 8; ++r) {
      const unsigned lane = i * 8 + r;
      LdmIn in;
      std::memcpy(&in, w.in[lane], sizeof in);
      if (in.s.blk && in.s.blk != &b)
        fail(ErrorKind::SharedBounds,
             format("ldmatrix: lane %u's row address is in another block's shared memory (block %s, "
                    "through map_rank): ldmatrix reads only its own block's (.shared::cta)", lane,
                    str(in.s.blk->bid).c_str()));
      if (in.off % 16)
        fail(ErrorKind::Misaligned, format("ldmatrix: lane %u's row address 0x%llx is not 16-byte "
                                           "aligned", lane, (long long)in.off));
      access_as(b.fibers[wi * 32 + lane], in.s, in.off, 16, false, m[i][r]);
    }
  for (unsigned lane = 0; lane < 32; ++lane) {
    uint32_t out[4] = {};
    for (unsigned i = 0; i < a.count; ++i) {
      const unsigned row = lane >> 2, col = (lane & 3u) * 2;
      const uint16_t lo = a.trans ? m[i][col][row] : m[i][row][col];
      const uint16_t hi = a.trans ? m[i][col + 1][row] : m[i][row][col + 1];
      out[i] = uint32_t(lo) | (uint32_t(hi) << 16);
    }
    std::memcpy(w.out[lane], out, sizeof out);
  }
}
}  // namespace

void ldmatrix(unsigned count, bool trans, const Span& s, int64_t row_off, uint32_t* out,
              const char* file, int line) {
  if (count != 1 && count != 2 && count != 4) fail(ErrorKind::Kernel, "ldmatrix .x1, .x2 or .x4");
  const LdmIn in{s, row_off};
  const LdmArgs a{count, trans};
  collective(0xffffffffu, OP_LDMATRIX + 16 * int(count * 2 + trans), &in, sizeof in, ldmatrix_hook,
             &a, file, line);
  std::memcpy(out, t_fiber->blk->warps[t_fiber->tc.linear >> 5].out[t_fiber->tc.linear & 31u],
              4 * count);
}

void cp_async(const Span& s, int64_t off, const void* src, size_t bytes, size_t src_bytes) {
  Fiber& f = cur_fiber();
  if (bytes != 4 && bytes != 8 && bytes != 16)
    fail(ErrorKind::Kernel, format("cp.async copies 4, 8 or 16 bytes, not %zu", bytes));
  if (src_bytes > bytes) fail(ErrorKind::Kernel, "cp.async: src-size larger than cp-size");
  if (off % int64_t(bytes) || (src_bytes && reinterpret_cast<uintptr_t>(src) % bytes))
    fail(ErrorKind::Misaligned, format("cp.async of %zu bytes: misaligned address", bytes));
  if (off < int64_t(s.lo) || off + int64_t(bytes) > int64_t(s.hi))
    fail(ErrorKind::SharedBounds, format("cp.async destination 0x%llx+%zu outside [0x%x, 0x%x)",
                                         (long long)off, bytes, s.lo, s.hi));
  if (s.blk && s.blk != f.blk)
    fail(ErrorKind::SharedBounds,
         format("cp.async destination 0x%llx is in another block's shared memory (block %s, through "
                "map_rank): cp.async writes only its own block's (.shared::cta)", (long long)off,
                str(s.blk->bid).c_str()));
  // The GPU may read the source at any time until the wait: read it now, and at the wait
  // check that it has not changed since. The destination counts as written from now on.
  Copy c{s, off, src, bytes, src_bytes, f.open_group, {}};
  if (src_bytes) std::memcpy(c.data, src, src_bytes);
  access_as(f, s, off, bytes, true, nullptr, Mode::CopyIssue);
  f.copies.push_back(c);
}

void cp_async_commit() { ++cur_fiber().open_group; }

void cp_async_wait(int pending) {
  // Completes every committed group but the newest `pending` ones.
  Fiber& f = cur_fiber();
  const int done_below = f.open_group - std::max(0, pending);
  std::vector<Copy> keep;
  for (const Copy& c : f.copies) {
    if (c.group >= done_below) {
      keep.push_back(c);
      continue;
    }
    if (c.src_bytes && f.blk->grp->L->opt.race_check && std::memcmp(c.data, c.src, c.src_bytes))
      fail(ErrorKind::Race,
           format("the global source of a cp.async (%zu bytes at %p, to shared offset 0x%llx) "
                  "changed between its issue and the cp_async_wait that completes it: the copy "
                  "may read its source at any time until then", c.src_bytes, c.src,
                  (long long)c.off));
    unsigned char buf[16];
    std::memcpy(buf, c.data, sizeof buf);
    access_as(f, c.s, c.off, c.bytes, true, buf, Mode::CopyLand);
  }
  f.copies.swap(keep);
}

[[noreturn]] void global_oob(const char* what, const void* p, size_t bytes, const void* lo,
                             const void* hi) {
  fail(ErrorKind::GlobalBounds,
       format("global-memory %s of %zu bytes at %p is outside its tensor [%p, %p) (%lld bytes "
              "past the start)", what, bytes, p, lo, hi,
              (long long)(static_cast<const char*>(p) - static_cast<const char*>(lo))));
}

// ================================================================ scheduler
namespace {

// Fiber stacks, per OS thread, reused from launch to launch. They are mapped in
// slabs; the first kGuarded stacks get a guard page each (an overflow then faults
// instead of corrupting a neighbour), the rest none: each guard splits the mapping,
// and the kernel caps a process's mappings (vm.max_map_count, about 65k).
struct StackPool {
  static constexpr size_t kSlab = 64, kGuarded = 8192;
  size_t bytes = 0, guarded = 0;
  std::vector<std::pair<char*, size_t>> slabs;
  std::vector<char*> free;
  ~StackPool() { clear(); }
  void clear() {
    for (auto& s : slabs) munmap(s.first, s.second);
    slabs.clear();
    free.clear();
    guarded = 0;
  }
  char* get(size_t want) {
    if (want != bytes) {
      clear();
      bytes = want;
    }
    if (free.empty()) {
      const size_t page = size_t(sysconf(_SC_PAGESIZE)), each = bytes + page;
      void* m = mmap(nullptr, kSlab * each, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (m == MAP_FAILED)
        throw Error(ErrorKind::Launch, format("could not map %zu fiber stacks of %zu KiB (the launch "
                                              "has too many threads for this machine's memory)",
                                              kSlab, bytes / 1024));
      char* base = static_cast<char*>(m);
      slabs.emplace_back(base, kSlab * each);
      for (size_t i = kSlab; i-- > 0;) {
        char* s = base + i * each;  // [guard page][stack]
        if (guarded < kGuarded) {
          mprotect(s, page, PROT_NONE);
          ++guarded;
        }
        free.push_back(s);
      }
    }
    char* s = free.back();
    free.pop_back();
    return s;
  }
  void put(char* s) { free.push_back(s); }
};
thread_local StackPool t_stacks;

void fiber_exit(Fiber& f) {
  Block& b = *f.blk;
  Group& g = *b.grp;
  f.done = true;
  --b.live;
  --g.live;
  if (!f.copies.empty())
    fail(ErrorKind::Kernel, "thread exited with cp.async copies it never waited for");
  if (b.bar_arrived && b.bar_arrived == b.live) release_block_barrier(b);  // exited = arrived
  if (g.arrived && g.arrived == g.live) release_group_barrier(g);
  const WarpState& w = b.warps[f.tc.linear >> 5];
  for (const Pending& p : w.pending)
    if ((p.mask >> (f.tc.linear & 31u)) & 1u)
      fail(ErrorKind::Warp, format("thread exited while lanes 0x%08x wait for it in %s with mask "
                                   "0x%08x at %s:%d", p.arrived, op_name(p.op), p.mask, p.file,
                                   p.line));
}

[[noreturn]] void trampoline() {
  Fiber& f = *t_fiber;
  LaunchState& L = *t_group->L;
  try {
    L.body();
  } catch (const Error& e) {
    L.record(e);
    leave_forever();
  } catch (const std::exception& e) {
    fail(ErrorKind::Kernel, std::string("exception in kernel: ") + e.what());
  }
  fiber_exit(*t_fiber);
  (void)f;
  leave_forever();
}

std::string describe_deadlock(const Group& g) {
  std::string m = "no thread can make progress:";
  for (const auto& b : g.blocks) {
    unsigned exited = 0;
    std::vector<std::pair<std::string, unsigned>> where;
    for (const Fiber& f : b->fibers) {
      if (f.done) {
        ++exited;
        continue;
      }
      const std::string w = format("%s at %s:%d", wait_name(f.wait), f.wfile, f.wline);
      auto it = std::find_if(where.begin(), where.end(), [&](auto& p) { return p.first == w; });
      if (it == where.end()) where.emplace_back(w, 1u);
      else ++it->second;
    }
    m += format(" block %s:", str(b->bid).c_str());
    for (auto& p : where) m += format(" %u threads wait in %s;", p.second, p.first.c_str());
    if (exited) m += format(" %u exited;", exited);
  }
  return m;
}

void run_group(LaunchState& L, const std::vector<dim3>& bids, const std::vector<unsigned>& ranks,
               uint64_t seed) {
  Group g;
  g.L = &L;
  g.rng = seed;
  const unsigned nt = L.threads;
  const size_t stack_bytes = L.opt.stack_kb * 1024;
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  for (size_t bi = 0; bi < bids.size(); ++bi) {
    auto b = std::make_unique<Block>();
    b->grp = &g;
    b->bid = bids[bi];
    b->index = unsigned(bi);
    b->rank = ranks[bi];
    b->fibers.resize(nt);
    b->warps.resize((nt + 31) / 32);
    b->live = nt;
    b->dyn_bytes = L.c.dyn_smem;
    b->arena.assign(L.c.dyn_smem, 0xff);  // NaN floats, -1 ints: garbage looks like garbage
    b->shadow.assign((L.c.dyn_smem + 1) / 2, Cell{});
    unsigned i = 0;
    for (unsigned z = 0; z < L.c.block.z; ++z)
      for (unsigned y = 0; y < L.c.block.y; ++y)
        for (unsigned x = 0; x < L.c.block.x; ++x, ++i) {
          Fiber& f = b->fibers[i];
          f.tc = ThreadCtx{dim3(x, y, z), b->bid, L.c.block, L.c.grid, L.c.cluster,
                           dim3(b->bid.x / L.c.cluster.x, b->bid.y / L.c.cluster.y,
                                b->bid.z / L.c.cluster.z), i};
          f.blk = b.get();
          f.gid = unsigned(bi) * nt + i;
          f.stack = t_stacks.get(stack_bytes);
#if GT_EMU_ASM_SWITCH
          // The frame gt_emu_switch pops: control words (16), r15..rbp (48), return
          // address (8); the trampoline then starts with rsp = 8 mod 16, as after a call.
          const uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack) + page + stack_bytes) & ~uintptr_t(15);
          uint64_t* sp = reinterpret_cast<uint64_t*>(top - 80);
          std::memset(sp, 0, 80);
          uint32_t mxcsr;
          uint16_t fcw;
          __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
          __asm__ volatile("fnstcw %0" : "=m"(fcw));
          std::memcpy(reinterpret_cast<char*>(sp) + 8, &mxcsr, 4);
          std::memcpy(reinterpret_cast<char*>(sp) + 12, &fcw, 2);
          sp[8] = reinterpret_cast<uint64_t>(&trampoline);
          f.sp = sp;
#else
          getcontext(&f.uc);
          f.uc.uc_stack.ss_sp = f.stack + page;
          f.uc.uc_stack.ss_size = stack_bytes;
          f.uc.uc_link = nullptr;
          makecontext(&f.uc, reinterpret_cast<void (*)()>(&trampoline), 0);
#endif
        }
    g.live += nt;
    g.blocks.push_back(std::move(b));
  }
  t_group = &g;
  std::vector<Fiber*> runnable;
  const bool shuffle = L.opt.shuffle_seed.has_value();
  while (g.live && !L.failed.load(std::memory_order_relaxed)) {
    runnable.clear();
    bool only_yield = true;
    for (auto& b : g.blocks)
      for (Fiber& f : b->fibers)
        if (!f.done && (f.wait == Wait::None || f.wait == Wait::Yield)) {
          runnable.push_back(&f);
          if (f.wait == Wait::None) only_yield = false;
        }
    if (runnable.empty()) {
      L.record(Error(ErrorKind::Deadlock, describe_deadlock(g)));
      break;
    }
    if (shuffle)
      for (size_t i = runnable.size(); i > 1; --i) std::swap(runnable[i - 1], runnable[g.next_rand() % i]);
    for (Fiber* f : runnable) {
      if (f->done || (f->wait != Wait::None && f->wait != Wait::Yield)) continue;
      f->wait = Wait::None;
      t_fiber = f;
#if GT_EMU_ASM_SWITCH
      gt_emu_switch(&g.sched_sp, f->sp);
#else
      swapcontext(&g.sched_uc, &f->uc);
#endif
      ++g.switches;
      if (L.failed.load(std::memory_order_relaxed)) break;
    }
    if (only_yield) std::this_thread::yield();  // spinning on another group's progress
  }
  t_fiber = nullptr;
  t_group = nullptr;
  L.switches.fetch_add(2 * g.switches, std::memory_order_relaxed);
  for (auto& b : g.blocks)
    for (Fiber& f : b->fibers) t_stacks.put(f.stack);
}

}  // namespace

Stats launch(const KernelInfo& k, const LaunchConfig& c, std::function<void()> body) {
  LaunchState L;
  L.opt = options();
  L.props = gpu_props(L.opt.gpu);
  L.k = k;
  L.c = c;
  L.body = std::move(body);
  L.threads = c.block.count();
  check_launch(L.props, k, c);

  // Groups: a block, a cluster, or (cooperative) the whole grid.
  struct GroupSpec {
    std::vector<dim3> bids;
    std::vector<unsigned> ranks;
  };
  std::vector<GroupSpec> groups;
  const dim3 cl = c.cluster;
  const dim3 ncl(c.grid.x / cl.x, c.grid.y / cl.y, c.grid.z / cl.z);
  if (c.cooperative) groups.emplace_back();
  for (unsigned cz = 0; cz < ncl.z; ++cz)
    for (unsigned cy = 0; cy < ncl.y; ++cy)
      for (unsigned cx = 0; cx < ncl.x; ++cx) {
        if (!c.cooperative) groups.emplace_back();
        GroupSpec& gs = groups.back();
        for (unsigned rz = 0; rz < cl.z; ++rz)
          for (unsigned ry = 0; ry < cl.y; ++ry)
            for (unsigned rx = 0; rx < cl.x; ++rx) {
              gs.bids.emplace_back(cx * cl.x + rx, cy * cl.y + ry, cz * cl.z + rz);
              gs.ranks.push_back(c.cooperative ? unsigned(gs.ranks.size())
                                               : rx + cl.x * (ry + cl.y * rz));
            }
      }
  if (c.cooperative) {  // block order x fastest, as blockIdx enumerates them
    auto& gs = groups[0];
    std::vector<size_t> idx(gs.bids.size());
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
    std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) {
      const dim3 &p = gs.bids[a], &q = gs.bids[b];
      return std::tie(p.z, p.y, p.x) < std::tie(q.z, q.y, q.x);
    });
    GroupSpec sorted;
    for (size_t i : idx) {
      sorted.bids.push_back(gs.bids[i]);
      sorted.ranks.push_back(unsigned(sorted.ranks.size()));
    }
    gs = sorted;
  }
  std::vector<size_t> order(groups.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  uint64_t seed = L.opt.shuffle_seed.value_or(0);
  if (L.opt.shuffle_seed) {  // a seeded order, run on one OS thread: repeatable
    uint64_t s = seed ^ 0x5851f42d4c957f2dull;
    for (size_t i = order.size(); i > 1; --i) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      std::swap(order[i - 1], order[(s >> 33) % i]);
    }
  }
  const auto t0 = std::chrono::steady_clock::now();
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i; (i = next.fetch_add(1)) < order.size() && !L.failed.load();) {
      const GroupSpec& gs = groups[order[i]];
      try {
        run_group(L, gs.bids, gs.ranks, seed + 0x9e3779b97f4a7c15ull * (order[i] + 1));
      } catch (const Error& e) {
        L.record(e);
      }
    }
  };
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  const size_t nworkers = L.opt.shuffle_seed ? 1 : std::min<size_t>(groups.size(), hw);
  if (nworkers <= 1) {
    worker();
  } else {
    std::vector<std::thread> th;
    for (size_t i = 0; i < nworkers; ++i) th.emplace_back(worker);
    for (auto& t : th) t.join();
  }
  Stats s;
  s.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  s.switches = L.switches.load();
  s.barriers = L.barriers.load();
  s.warp_ops = L.warp_ops.load();
  s.smem_accesses = L.smem_accesses.load();
  {
    std::lock_guard<std::mutex> l(g_stats_mu);
    g_last_stats = s;
  }
  if (L.failed.load()) throw *L.err;
  return s;
}

}  // namespace gt_emu
