// Which CUDA path runs a recurrent layer, and with what launch: plain C++, shared by the
// torch side (to size buffers), the kernel dispatch (to pick the instantiation) and
// the emulator (to run it). Letters as in csrc/gru.h.
//
// Paths:
//   persistent  one launch for the whole sequence (csrc/device/gru_persistent.cuh; the
//               cell a policy, csrc/device/cells.cuh),
//               for 16-bit tensors and float32 with TF32 allowed, even H <= 128 (H
//               is padded to 32, 64 or 128), and 16-bit H <= 256 on sm_90 (padded
//               to 256, each tile on a cluster of two CTAs).
//   stepwise    per time step one GEMM (cuBLAS) and one fused pointwise kernel
//               (csrc/device/gru_stepwise.cuh): everything else (larger H, odd H,
//               exact float32 when TF32 is off, float64). The GRU only: the other
//               cells (the family op) have the persistent path alone, and a layer it
//               cannot run is refused with the plan's reason.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace gru_torch::plan {

enum class Dtype { F32, F64, BF16, F16 };
enum class Operand { BF16, F16, TF32, None };
enum class Path { Persistent, Stepwise };

// The cells, as the family op's codes (csrc/cpu/family.h; csrc/device/cells.cuh).
enum Cell : int { kGruAfter = 0, kGruBefore = 1, kLstm = 2, kRnnTanh = 3, kRnnRelu = 4 };
constexpr int gates_of(int cell) {
  return cell == kLstm ? 4 : (cell == kGruAfter || cell == kGruBefore) ? 3 : 1;
}
constexpr bool two_gemm(int cell) { return cell == kGruBefore; }
constexpr bool is_gru(int cell) { return cell == kGruAfter || cell == kGruBefore; }

// Padded sizes with a persistent kernel, and each one's shape: warps per CTA and
// how many k-tiles of W_hh stay in registers (forward, backward); the rest of W_hh
// sits in shared memory. 16-bit W_hh fits in registers whole up to H = 128
// (96 registers a thread at 8 warps); tf32 W_hh at H = 128 is twice that, so part
// of it moves to shared memory. The register tiles are the GRU's (3 gates). A cell of
// G gates gets as many W_hh registers a thread as the GRU has at this shape, and at
// least as many as the GRU has at HP = 128 (96 for 16-bit operands, 120 for tf32, 112 in its backward: what
// leaves room for the accumulators and the step's loads): all of W_hh for the RNN
// (a third of the GRU's), for the LSTM (4/3 of it) the first k-tiles, the rest from
// shared memory (reg_tiles below; for the GRU it gives this table back).
// HP = 256 (16-bit, sm_90 only) splits each 16-row tile's units over a cluster of two
// CTAs on two SMs, which swap their halves of h (or of the gate gradients) through
// distributed shared memory with one cluster barrier a step: W_hh (384 KB in 16-bit)
// does not fit one SM.
struct Shape {
  int hp, warps, reg_tiles_fwd, reg_tiles_bwd, cluster;
};
constexpr int kTileRows = 16;
constexpr int kPaddedSizes[4] = {32, 64, 128, 256};

constexpr Shape shape(Operand op, int hp) {
  if (op == Operand::TF32) {
    return hp == 32 ? Shape{32, 4, 4, 12, 1} : hp == 64 ? Shape{64, 4, 8, 24, 1} : Shape{128, 8, 10, 28, 1};
  }
  return hp == 32    ? Shape{32, 4, 2, 6, 1}
         : hp == 64  ? Shape{64, 4, 4, 12, 1}
         : hp == 128 ? Shape{128, 8, 8, 24, 1}
                     : Shape{256, 8, 10, 28, 2};
}
// W_hh registers a thread of the GRU's kernel at a shape (two a fragment).
constexpr int gru_w_regs(Operand op, int hp, bool backward) {
  const Shape s = shape(op, hp);
  const int nj = hp / s.cluster / s.warps / 8;
  return backward ? s.reg_tiles_bwd * nj * 2 : s.reg_tiles_fwd * 3 * nj * 2;
}
// k-tiles of W_hh in registers for a cell of `gates` gates (see above).
constexpr int reg_tiles(Operand op, int hp, int gates, bool backward) {
  const Shape s = shape(op, hp);
  const int k_tiles = (backward ? gates * hp : hp) / (op == Operand::TF32 ? 8 : 16);
  const int own = gru_w_regs(op, hp, backward), at128 = gru_w_regs(op, 128, backward);
  // The tf32 LSTM's backward carries dc and c_prev beside the GRU's state: 16 fewer (with
  // 112 or 104, its step loop at HP = 128 spilled; nvcc 13.0, scripts/sass_report.py).
  const int budget = (own > at128 ? own : at128) - (backward && gates == 4 && op == Operand::TF32 ? 16 : 0);
  const int per_tile = 2 * (backward ? 1 : gates) * (hp / s.cluster / s.warps / 8);
  return budget / per_tile < k_tiles ? budget / per_tile : k_tiles;
}
constexpr int max_padded(Operand op) { return op == Operand::TF32 ? 128 : 256; }

constexpr int k_of(Operand op) { return op == Operand::TF32 ? 8 : 16; }
constexpr int pad_of(Operand op) { return op == Operand::TF32 ? 4 : 8; }
constexpr size_t elem_bytes(Operand op) { return op == Operand::TF32 ? 4 : 2; }

// Dynamic shared memory of the persistent kernel (mirrors gru::Config::kSmemBytes).
constexpr size_t persistent_smem(Operand op, int hp, int cell, bool backward) {
  const Shape s = shape(op, hp);
  const int G = gates_of(cell);
  const int K = backward ? G * hp : hp;
  const int kt = K / k_of(op);
  const int cols = (backward ? 1 : G) * (hp / s.cluster / s.warps / 8);
  const int reg = reg_tiles(op, hp, G, backward);
  const int tiles = (backward && two_gemm(cell)) ? 1 : 2;
  const size_t tile = size_t(kTileRows) * (K + pad_of(op)) * elem_bytes(op);
  return tiles * tile + size_t(s.warps) * (kt - reg) * cols * 32 * 8;
}

struct Problem {
  Dtype dtype;
  bool allow_tf32;  // float32 only: torch.backends.cudnn.allow_tf32
  int H, B, T, D;
  int cell;  // Cell
  size_t smem_optin;  // the device's opt-in shared memory per block
  int sm;             // compute capability x 10 (clusters need 90)
};

struct Plan {
  Path path = Path::Stepwise;
  Operand op = Operand::None;
  int hp = 0, warps = 0, cluster = 1;
  size_t smem_fwd = 0, smem_bwd = 0;
  std::string why;  // why this path (for error messages and the benchmark report)
};

inline Operand operand_for(Dtype dt, bool allow_tf32) {
  switch (dt) {
    case Dtype::BF16: return Operand::BF16;
    case Dtype::F16: return Operand::F16;
    case Dtype::F32: return allow_tf32 ? Operand::TF32 : Operand::None;
    default: return Operand::None;
  }
}

inline Plan choose(const Problem& p) {
  Plan plan;
  plan.op = operand_for(p.dtype, p.allow_tf32);
  if (plan.op == Operand::None) {
    plan.why = p.dtype == Dtype::F32 ? "float32 with TF32 off needs exact fp32 FMA"
                                      : "float64 has no tensor-core path";
    if (is_gru(p.cell)) plan.why += ": per-step GEMMs";
    return plan;
  }
  if (p.H % 2) {
    plan.op = Operand::None;
    plan.why = is_gru(p.cell) ? "odd H: the persistent kernels move units in pairs: per-step GEMMs"
                              : "odd H: the persistent kernels move units in pairs";
    return plan;
  }
  const char* tail = is_gru(p.cell) ? ": per-step GEMMs" : "";
  for (int hp : kPaddedSizes) {
    if (p.H > hp) continue;
    if (hp > max_padded(plan.op) || (shape(plan.op, hp).cluster > 1 && p.sm < 90)) break;
    const size_t fwd = persistent_smem(plan.op, hp, p.cell, false);
    const size_t bwd = persistent_smem(plan.op, hp, p.cell, true);
    if (fwd > p.smem_optin || bwd > p.smem_optin) {
      plan.op = Operand::None;
      plan.why = "H = " + std::to_string(p.H) + " pads to " + std::to_string(hp) + ", whose kernels need " +
                 std::to_string(fwd > bwd ? fwd : bwd) + " bytes of shared memory, more than this GPU's " +
                 std::to_string(p.smem_optin) + tail;
      return plan;
    }
    plan.path = Path::Persistent;
    plan.hp = hp;
    plan.warps = shape(plan.op, hp).warps;
    plan.cluster = shape(plan.op, hp).cluster;
    plan.smem_fwd = fwd;
    plan.smem_bwd = bwd;
    plan.why = plan.cluster > 1 ? "W_hh fits on a cluster of two SMs" : "W_hh fits on one SM";
    return plan;
  }
  const int top = (plan.op == Operand::TF32 || p.sm < 90) ? 128 : 256;
  plan.op = Operand::None;
  plan.why = "H = " + std::to_string(p.H) + " exceeds the persistent kernels' " + std::to_string(top) +
             " here" + tail;
  return plan;
}

}  // namespace gru_torch::plan
