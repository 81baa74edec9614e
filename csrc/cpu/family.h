// The family op's cells and gate functions, as the schema's integers name them
// (gru_torch/ops.py has the same table), and what each keeps per row-step.
#pragma once

#include <cstdint>

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

}  // namespace gru_torch::cpu::family
