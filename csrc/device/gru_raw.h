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

struct Forward {
  int steps, batch, hidden, dirs;
  bool reset_after;
  Buf<const void> gx, w_hh, b_hn, h0, mask;
  Buf<const int64_t> lengths;
  Buf<void> out, h_n, reserve;
};

struct Backward {
  int steps, batch, hidden, dirs;
  bool reset_after;
  Buf<const void> grad_out, grad_h_n, w_hh, mask, reserve;
  Buf<const int64_t> lengths;
  Buf<void> dgx, dghn, grad_hx;
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
