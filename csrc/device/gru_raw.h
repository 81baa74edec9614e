// The persistent kernels' arguments as raw pointers with element counts: what the
// torch side hands the kernel side (which includes no torch header). The counts
// become gptr bounds under the emulator. Shapes as in gru_persistent.cuh.
#pragma once

#include <cstddef>
#include <cstdint>

#include "gru_plan.h"

namespace gru_torch::raw {

template <class P>
struct Buf {
  P* ptr = nullptr;
  size_t numel = 0;
};

// Where gate q of unit u, row b, step t, direction d lies in gx or dgx (elements):
// d * dir + t * step + b * row + q * gate + u.
struct Layout {
  int64_t dir = 0, step = 0;
  int row = 0, gate = 0;
};

// cell: plan::Cell. keep_prev: the cell's slots, then h_prev (the GRU's kernels, in either
// op); else the cell's slots only (the LSTM's and the RNNs').
struct Forward {
  int steps, batch, hidden, dirs;
  int cell;
  bool keep_prev = true;
  Layout gx_at;
  int gate = 0;  // the gate function's code (the family op's)
  Buf<const void> gx, w_hh, b_hn, h0, c0, mask;
  Buf<const int64_t> lengths;
  Buf<void> out, h_n, c_n, reserve;
};

struct Backward {
  int steps, batch, hidden, dirs;
  int cell;
  bool keep_prev = true;
  Layout dgx_at;
  int gate = 0;
  Buf<const void> grad_out, grad_h_n, grad_c_n, h0, c0, w_hh, mask, reserve, out;
  Buf<const int64_t> lengths;
  Buf<void> dgx, dghn, grad_hx, grad_cx;
};

}  // namespace gru_torch::raw

namespace gru_torch::raw {

// One time step of the per-step path (gru_stepwise.cuh): the pointwise kernel of
// `phase` over the B x H elements of one direction. Unused buffers stay empty.
enum class Phase { FwdAfter, FwdBeforeRZ, FwdBeforeN, BwdAfter, BwdBeforeZN, BwdBeforeR, BwdFinal };

struct Step {
  Phase phase;
  int batch, hidden, t, out_stride;  // out_stride: D*H, the row stride of out / grad_out
  Buf<const void> gx, gh, mask, gout, dhh;
  Buf<const int64_t> lengths;
  Buf<void> out, res, h, hm, rz, dgx, dgh, dghn, dqr;
};

}  // namespace gru_torch::raw
