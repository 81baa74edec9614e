// The CPU time loops of one layer direction, forward and backward (cpu_forward.cpp,
// cpu_backward.cpp). gru_cpu.cpp checks the arguments, allocates the outputs and calls
// these once per direction. Shapes follow gru.h; every pointer is to contiguous memory.
#pragma once

#include <ATen/ATen.h>
#include <cstdint>

#include "cpu/capability.h"
#include "cpu_split.h"

namespace gru_torch::cpu {

// The reserve of one direction, [T, B, kSlots * H]. Step t's row for batch row b holds,
// H values each: r, z and aux (gh_n = h~ W_hn^T + b_hn, or q = r * h~ with
// reset_after=false). The states are not kept: a row's output at a step it is active in
// is the state that step wrote, so the backward reads h_prev and h from the output (h_prev
// from hx at a row's first step), which the autograd formula keeps for it (ops.py). n is
// not kept either: the backward recovers it from h = (1-z) n + z h_prev, and every use of
// n there is scaled by 1-z (cpu_cell.h, recover_n). A step past a row's length keeps 0 in
// every slot.
constexpr int64_t kSlots = 3;
constexpr int64_t kSlotR = 0, kSlotZ = 1, kSlotAux = 2;

struct LayerShape {
  int64_t T, B, I, H, D;
  bool reset_after;
  int64_t G() const { return 3 * H; }
};

// How this call's loop is split between threads (cpu_split.h), from the shape, the thread
// count and GRU_TORCH_CPU_SPLIT ("rows" or "columns" force a split; tests use them).
Split layer_split(const LayerShape& s);

template <typename scalar_t>
struct ForwardArgs {
  const scalar_t* x;      // input [T, B, I]: row (t, b) at x + t * x_stride[0] + b * x_stride[1]
  int64_t x_stride[2];
  const scalar_t* w_ih;   // [G, I] of this direction
  const scalar_t* w_hh;   // [G, H]
  const scalar_t* bias;   // [G]: b_ih plus the r, z parts of b_hh; or null
  const scalar_t* b_hn;   // [H]: the n part of b_hh; or null
  const scalar_t* mask;   // [B, H] or null
  const int64_t* len;     // [B] or null
  scalar_t* out;          // output [T, B, D*H]
  scalar_t* res;          // reserve [T, B, kSlots * H] of this direction, or null
  scalar_t* h;            // [B, H]: hx on entry, h_n on return
};


template <typename scalar_t>
struct BackwardArgs {
  const scalar_t* x;      // input [T, B, I], rows as in ForwardArgs
  int64_t x_stride[2];
  const at::Tensor w_ih;  // [G, I] of this direction (for the input gradient's GEMMs)
  const scalar_t* w_hh;   // [G, H]
  const scalar_t* mask;   // [B, H] or null
  const int64_t* len;     // [B] or null
  const scalar_t* res;    // reserve [T, B, kSlots * H] of this direction
  const scalar_t* out;    // the forward's output [T, B, D*H]: the states, at active steps
  const scalar_t* hx;     // [B, H]: the initial state of this direction
  const scalar_t* gout;   // grad of output [T, B, D*H], with strides gout_stride
  int64_t gout_stride[3];  // the unit stride is 1, or 0 for a gradient expanded along it
  const scalar_t* gh_n;   // grad of h_n [B, H] of this direction
  scalar_t* grad_x;       // [T, B, I]: written by direction 0, added to by direction 1
  scalar_t* grad_hx;      // [B, H]
  at::Tensor grad_w_ih;   // [G, I]
  at::Tensor grad_w_hh;   // [G, H]
  at::Tensor grad_b_ih;   // [G]
  at::Tensor grad_b_hh;   // [G]
};

}  // namespace gru_torch::cpu

// The loops, one copy per instruction set (cpu/capability.h): forward_layer runs every
// direction d of the layer (args[d] for d < shape.D); backward_direction one direction.
#define GRU_TORCH_LAYER_LOOPS                                                          \
  template <typename scalar_t>                                                         \
  void forward_layer(const LayerShape& shape, const ForwardArgs<scalar_t>* args);      \
  template <typename scalar_t>                                                         \
  void backward_direction(const LayerShape& shape, int64_t d, const BackwardArgs<scalar_t>& a);

namespace gru_torch::cpu::CPU_CAPABILITY {
GRU_TORCH_LAYER_LOOPS
}  // namespace gru_torch::cpu::CPU_CAPABILITY
#if defined(GRU_TORCH_CPU_AVX512)
namespace gru_torch::cpu::AVX512 {
GRU_TORCH_LAYER_LOOPS
}  // namespace gru_torch::cpu::AVX512
#endif
