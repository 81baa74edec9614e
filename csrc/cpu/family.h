// The family op's cells and gate functions, as the schema's integers name them
// (gru_torch/ops.py has the same table), and what each keeps per row-step.
#pragma once

#include <cstdint>

#include "cpu/capability.h"

namespace gru_torch::cpu::family {

// The cell, a compile-time parameter of the time loops (family_layer.cpp).
enum Cell : int64_t {
  kGruAfter = 0,   // GRU, reset_after=True:  n = tanh(gx_n + r * (h~ W_hn^T + b_hn))
  kGruBefore = 1,  // GRU, reset_after=False: n = tanh(gx_n + (r * h~) W_hn^T)
  kLstm = 2,       // LSTM, gates i, f, g, o; c carried beside h
  kRnnTanh = 3,    // h' = tanh(gx + h~ W_hh^T)
  kRnnRelu = 4,    // h' = relu(gx + h~ W_hh^T)
};
constexpr int64_t kCells = 5;

// The GRU's and LSTM's gate function (`recurrent_activation`), a run-time switch in the
// cell's pointwise code.
enum Gate : int64_t {
  kSigmoid = 0,     // 1 / (1 + e^-x)
  kHardKeras2 = 1,  // clip(0.2 x + 0.5, 0, 1)
  kHardKeras3 = 2,  // clip(x / 6 + 0.5, 0, 1)
};
constexpr int64_t kGates = 3;

constexpr int64_t gates_of(int64_t cell) {
  return cell == kLstm ? 4 : (cell == kGruAfter || cell == kGruBefore) ? 3 : 1;
}

// Reserve slots (H values each) per row-step, gate outputs after their functions:
//   GRU reset_after=True   r, z, n, gh_n  (gh_n = h~ W_hn^T + b_hn, scaled by r)
//   GRU reset_after=False  r, z, n, q      (q = r * h~_n, W_hn's operand: its gradient's)
//   LSTM                   i, f, g, o, c
//   RNN                    none: the output h gives the derivative (1 - h^2, or h > 0)
// The states h_prev come from the output (hx at a row's first step), c_prev from the
// previous step's c slot (cx at a row's first step).
constexpr int64_t reserve_slots(int64_t cell) {
  return cell == kGruAfter ? 4 : cell == kGruBefore ? 4 : cell == kLstm ? 5 : 0;
}

// One call's shape: M recurrent masks per row (0 without them); I the input's width
// where the loop computes the input projection itself (0 where the caller gave gx).
struct Shape {
  int64_t T, B, H, D, M;
  int64_t cell, gate;
  int64_t I = 0;
  int64_t G() const { return gates_of(cell) * H; }
  int64_t S() const { return reserve_slots(cell); }
  // The columns of G whose recurrent product reads h~ (all but the GRU's n with
  // reset_after=False, whose operand is r * h~).
  int64_t G1() const { return cell == kGruBefore ? 2 * H : G(); }
  int64_t time_of(int64_t d, int64_t k) const { return d == 0 ? k : T - 1 - k; }
};

// One call's data; the backward's part is null in the forward, and gx in the backward.
// The forward takes gx, or (I > 0) x, w_ih and bias, from which each step computes its
// own rows of gx in the recurrent product's registers.
template <typename T>
struct Args {
  using value_type = T;
  const T* gx;          // [T, B, D, G], or null
  const T* x;           // [T, B, I] or null
  const T* w_ih;        // [D, G, I] (with x)
  const T* bias;        // [D, G] or null (with x): b_ih + b_hh
  const T* w_hh;        // [D, G, H]
  const T* b_hn;        // [D, H] or null
  const T* mask;        // [D, B, M, H] or null
  const int64_t* len;   // [B] or null
  const T* hx;          // [D, B, H]
  const T* cx;          // [D, B, H] or null
  T* out;               // [T, B, D*H]
  T* h_n;               // [D, B, H]
  T* c_n;               // [D, B, H] or null
  T* res;               // [D, T, B, S*H] or null
  // backward
  const T* gout;        // grad of output, strides gout_stride (the unit stride 0 or 1)
  int64_t gout_stride[3];
  const T* g_hn;        // [D, B, H]
  const T* g_cn;        // [D, B, H] or null
  T* g_gx;              // [T, B, D, G]
  T* g_hx;              // [D, B, H]
  T* g_cx;              // [D, B, H] or null
};

// The time loops, one copy per instruction set (cpu/capability.h): forward runs every
// direction of a.gx into a.out, h_n, c_n and the reserve; backward from the output's
// gradients into a.g_gx, g_hx, g_cx.
#define GRU_TORCH_FAMILY_LOOPS                        \
  template <typename T>                               \
  void forward(const Shape& s, const Args<T>& a);     \
  template <typename T>                               \
  void backward(const Shape& s, const Args<T>& a);

namespace CPU_CAPABILITY {
GRU_TORCH_FAMILY_LOOPS
}  // namespace CPU_CAPABILITY
#if defined(GRU_TORCH_CPU_AVX512)
namespace AVX512 {
GRU_TORCH_FAMILY_LOOPS
}  // namespace AVX512
#endif

}  // namespace gru_torch::cpu::family
