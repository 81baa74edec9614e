// gru_torch: shared declarations of the fused GRU layer op.
//
// Letter legend (every shape below uses it):
//   T  time steps          B  batch rows        I  input features
//   H  hidden units        G  = 3H gates        D  directions (1 or 2)
//
// Gate order is r, z, n (nn.GRU's). One op runs one layer, all its directions,
// over the whole sequence:
//
//   input    [T, B, I]      hx       [D, B, H]
//   w_ih     [D, G, I]      w_hh     [D, G, H]
//   b_ih     [D, G]   opt   b_hh     [D, G]   opt (never with reset_after=false)
//   mask     [D, B, H] opt  recurrent-dropout mask, already scaled by 1/(1-p)
//   lengths  [B]       opt  int64, 1 <= len_b <= T; row b is active at t < len_b
//
//   output   [T, B, D*H]    zeros where a row is inactive
//   h_n      [D, B, H]      each row's state at its own length
//   reserve  [D, T, B, 5H]  what backward needs, per step and row (empty [0]
//            when need_reserve=false): r, z, n, aux, h_prev with
//            aux = gh_n (reset_after=true), aux = q = r * (h_prev*mask) (false).
//            h_prev is kept here, not read back from output, so that a caller
//            may modify the output in place, as nn.GRU allows. The CPU op keeps
//            [D, T, B, 3H] instead, r, z and aux: its backward reads the states
//            from `output` (cpu_layer.h says how), and the autograd formula
//            (gru_torch/ops.py) recomputes them if the output was modified.
//
// reset_after=true  (nn.GRU):  n = tanh(gx_n + r * (h~ W_hn^T + b_hn))
// reset_after=false (Keras 2): n = tanh(gx_n + (r * h~) W_hn^T)
// where h~ = h_prev * mask (or h_prev without a mask); h = (1-z) n + z h_prev.
#pragma once

#include <ATen/ATen.h>
#include <optional>
#include <tuple>

namespace gru_torch {

constexpr int64_t kReserveSlots = 5;  // r, z, n, aux, h_prev

// Validates the op's arguments against each other; `where` names the caller.
void check_layer_args(const at::Tensor& input, const at::Tensor& hx,
                      const at::Tensor& w_ih, const at::Tensor& w_hh,
                      const std::optional<at::Tensor>& b_ih,
                      const std::optional<at::Tensor>& b_hh,
                      const std::optional<at::Tensor>& mask,
                      const std::optional<at::Tensor>& lengths,
                      bool reset_after, const char* where);

}  // namespace gru_torch
