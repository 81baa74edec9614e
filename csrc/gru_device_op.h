// The fused layer op on a "device": a GPU (gru_cuda.cpp) or the CUDA emulator on the
// CPU (emu_ops.cpp). This is the torch half, written once for both: argument checks,
// the plan, the input projection before the kernel and the weight gradients after
// it (large GEMMs through ATen), and the buffers the kernels fill. The `Dev` policy
// supplies the device's limits and runs the kernels:
//
//   struct Dev {
//     static size_t smem_optin(const at::Tensor& like);  // opt-in shared memory per block
//     static int sm(const at::Tensor& like);             // compute capability x 10
//     static bool poison();                              // NaN-fill outputs before the kernels
//     static void forward(plan::Dtype, const plan::Plan&, const raw::Forward&);
//     static void backward(plan::Dtype, const plan::Plan&, const raw::Backward&);
//     static void step(plan::Dtype, const raw::Step&);  // the per-step path's pointwise kernels
//   };
// Users include gru_stepwise_op.h, which completes this file with the per-step path.
#pragma once

#include <ATen/ATen.h>

#include <limits>
#include <optional>
#include <tuple>

#include "device/gru_plan.h"
#include "device/gru_raw.h"
#include "gru.h"

namespace gru_torch::device_op {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

inline plan::Dtype dtype_of(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return plan::Dtype::F32;
    case at::kDouble: return plan::Dtype::F64;
    case at::kBFloat16: return plan::Dtype::BF16;
    case at::kHalf: return plan::Dtype::F16;
    default: TORCH_CHECK(false, "gru_layer: no fused CUDA kernel for dtype ", t.scalar_type());
  }
}

// The plan for a layer call: cuDNN's TF32 switch for RNNs decides float32's operands.
// cell: plan::Cell; input [T, B, ...].
inline plan::Plan plan_for(const Tensor& input, int64_t H, int64_t D, int cell,
                           size_t smem_optin, int sm) {
  const plan::Problem p{dtype_of(input), at::globalContext().allowTF32CuDNN(at::Float32Op::RNN),
                        int(H), int(input.size(1)), int(input.size(0)), int(D), cell,
                        smem_optin, sm};
  return plan::choose(p);
}

inline void check_lengths_values(const OptTensor& lengths, int64_t T, const char* where) {
  if (!lengths || lengths->numel() == 0) return;
  const int64_t lo = lengths->min().item<int64_t>(), hi = lengths->max().item<int64_t>();
  TORCH_CHECK(lo >= 1 && hi <= T, where, ": lengths must lie in [1, ", T,
              "] (the input's time steps), got values in [", lo, ", ", hi, "]");
}

inline raw::Buf<const void> cbuf(const Tensor& t) {
  return t.defined() ? raw::Buf<const void>{t.const_data_ptr(), size_t(t.numel())} : raw::Buf<const void>{};
}
inline raw::Buf<const void> cbuf(const OptTensor& t) { return t ? cbuf(*t) : raw::Buf<const void>{}; }
inline raw::Buf<void> mbuf(const Tensor& t) {
  return {t.defined() && t.numel() ? t.data_ptr() : nullptr, t.defined() ? size_t(t.numel()) : 0};
}
inline raw::Buf<const int64_t> lbuf(const OptTensor& t) {
  return t ? raw::Buf<const int64_t>{t->const_data_ptr<int64_t>(), size_t(t->numel())}
           : raw::Buf<const int64_t>{};
}

// The persistent kernels move two adjacent elements in one access, so a tensor they
// read that way must start on a pair boundary: a view that starts at an odd element
// (a slice of a larger tensor) is copied first.
inline Tensor pair_aligned(const Tensor& t) {
  const auto at = reinterpret_cast<uintptr_t>(t.const_data_ptr());
  return at % (2 * t.element_size()) ? t.clone() : t;
}

inline OptTensor contiguous(const OptTensor& t) {
  return t ? OptTensor(t->contiguous()) : std::nullopt;
}

inline void poison(std::initializer_list<Tensor> ts) {
  for (const Tensor& t : ts)
    if (t.defined() && t.numel()) t.fill_(std::numeric_limits<double>::quiet_NaN());
}

// x W_ih^T + b_ih (+ b_hr, b_hz) for every step, [D, T*B, 3*HP]: gate q's columns
// start at q*HP and the padded units' columns are 0, so the kernel reads aligned,
// in-bounds pairs for every unit it owns.
inline Tensor padded_input_projection(const Tensor& x2d, const Tensor& w_ih, const OptTensor& b_ih,
                                      const OptTensor& b_hh, bool reset_after, int64_t H, int64_t HP) {
  const int64_t D = w_ih.size(0), I = w_ih.size(2);
  Tensor w_pad = at::zeros({D, 3 * HP, I}, w_ih.options());
  Tensor bias = at::zeros({D, 3 * HP}, w_ih.options());
  for (int64_t q = 0; q < 3; ++q) {
    w_pad.narrow(1, q * HP, H).copy_(w_ih.narrow(1, q * H, H));
    if (b_ih) bias.narrow(1, q * HP, H).add_(b_ih->narrow(1, q * H, H));
    if (b_hh && reset_after && q < 2) bias.narrow(1, q * HP, H).add_(b_hh->narrow(1, q * H, H));
  }
  return at::baddbmm(bias.unsqueeze(1), x2d.unsqueeze(0).expand({D, x2d.size(0), I}),
                     w_pad.transpose(1, 2));
}

template <class Dev>
std::tuple<Tensor, Tensor, Tensor> stepwise_forward(const Tensor& input, const Tensor& hx,
                                                    const Tensor& w_ih, const Tensor& w_hh,
                                                    const OptTensor& b_ih, const OptTensor& b_hh,
                                                    const OptTensor& mask, const OptTensor& lengths,
                                                    bool reset_after, bool need_reserve);
template <class Dev>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> stepwise_backward(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input, const Tensor& hx,
    const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
    const OptTensor& mask, const OptTensor& lengths, bool reset_after, const Tensor& reserve);

template <class Dev>
std::tuple<Tensor, Tensor, Tensor> forward(const Tensor& input_, const Tensor& hx_,
                                           const Tensor& w_ih_, const Tensor& w_hh_,
                                           const OptTensor& b_ih, const OptTensor& b_hh,
                                           const OptTensor& mask_, const OptTensor& lengths_,
                                           bool reset_after, bool need_reserve) {
  check_layer_args(input_, hx_, w_ih_, w_hh_, b_ih, b_hh, mask_, lengths_, reset_after, "gru_layer");
  const int64_t T = input_.size(0), B = input_.size(1), I = input_.size(2);
  const int64_t D = w_ih_.size(0), H = w_ih_.size(1) / 3;
  check_lengths_values(lengths_, T, "gru_layer");
  const int cell = reset_after ? plan::kGruAfter : plan::kGruBefore;
  const plan::Plan pl = plan_for(input_, H, D, cell, Dev::smem_optin(input_), Dev::sm(input_));
  const Tensor input = input_.contiguous(), hx = hx_.contiguous(), w_ih = w_ih_.contiguous(),
               w_hh = w_hh_.contiguous();
  const OptTensor mask = contiguous(mask_), lengths = contiguous(lengths_);
  if (pl.path == plan::Path::Stepwise)
    return stepwise_forward<Dev>(input, hx, w_ih, w_hh, contiguous(b_ih), contiguous(b_hh), mask,
                                 lengths, reset_after, need_reserve);
  const auto opts = input.options();
  const Tensor gx = padded_input_projection(input.view({T * B, I}), w_ih, b_ih, b_hh, reset_after, H, pl.hp);
  const Tensor b_hn = (reset_after && b_hh) ? b_hh->narrow(1, 2 * H, H).contiguous() : Tensor();
  Tensor out = at::empty({T, B, D * H}, opts);
  Tensor h_n = at::empty({D, B, H}, opts);
  Tensor reserve = need_reserve ? at::empty({D, T, B, kReserveSlots * H}, opts) : at::empty({0}, opts);
  if (Dev::poison()) poison({out, h_n, reserve});
  if (B == 0) return {out, h_n, reserve};
  raw::Forward r;
  r.steps = int(T);
  r.batch = int(B);
  r.hidden = int(H);
  r.dirs = int(D);
  r.cell = cell;
  r.gx_at = {T * B * 3 * pl.hp, B * 3 * pl.hp, int(3 * pl.hp), int(pl.hp)};  // [D, T, B, 3*HP]
  r.gx = cbuf(gx);
  r.w_hh = cbuf(w_hh);
  r.b_hn = cbuf(b_hn);
  r.h0 = cbuf(hx);
  r.mask = cbuf(mask);
  r.lengths = lbuf(lengths);
  r.out = mbuf(out);
  r.h_n = mbuf(h_n);
  r.reserve = need_reserve ? mbuf(reserve) : raw::Buf<void>{};
  Dev::forward(dtype_of(input), pl, r);
  return {out, h_n, reserve};
}

// The weight gradients from the gate gradients, as GEMMs over all T*B rows of each
// direction. dgx [D, T*B, 3H]; dghn [D, T*B, H] (reset_after) is da_n * r, the
// candidate's recurrent gradient; rows past their length hold zeros everywhere.
inline std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> weight_grads(
    const Tensor& dgx, const Tensor& dghn, const Tensor& input, const Tensor& w_ih,
    const Tensor& reserve, const OptTensor& mask, bool reset_after, int64_t H) {
  const int64_t D = w_ih.size(0), I = w_ih.size(2), T = input.size(0), B = input.size(1);
  const Tensor x2d = input.view({T * B, I});
  const Tensor grad_input = at::bmm(dgx, w_ih).sum(0).view({T, B, I});
  const Tensor grad_w_ih = at::bmm(dgx.transpose(1, 2), x2d.unsqueeze(0).expand({D, T * B, I}));
  const Tensor grad_b_ih = dgx.sum(1);
  const Tensor res = reserve.view({D, T, B, kReserveSlots * H});
  Tensor hm = res.narrow(3, 4 * H, H);
  if (mask) hm = hm * mask->unsqueeze(1);
  hm = hm.reshape({D, T * B, H});
  Tensor grad_w_hh = at::empty({D, 3 * H, H}, w_ih.options());
  grad_w_hh.narrow(1, 0, 2 * H).copy_(at::bmm(dgx.narrow(2, 0, 2 * H).transpose(1, 2), hm));
  Tensor grad_b_hh = at::zeros({D, 3 * H}, w_ih.options());
  if (reset_after) {
    grad_w_hh.narrow(1, 2 * H, H).copy_(at::bmm(dghn.transpose(1, 2), hm));
    grad_b_hh.narrow(1, 0, 2 * H).copy_(grad_b_ih.narrow(1, 0, 2 * H));
    grad_b_hh.narrow(1, 2 * H, H).copy_(dghn.sum(1));
  } else {
    const Tensor q = res.narrow(3, 3 * H, H).reshape({D, T * B, H});
    grad_w_hh.narrow(1, 2 * H, H).copy_(at::bmm(dgx.narrow(2, 2 * H, H).transpose(1, 2), q));
  }
  return {grad_input, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh};
}

inline void check_backward_args(const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& hx,
                                const Tensor& reserve, int64_t T, int64_t B, int64_t D, int64_t H) {
  TORCH_CHECK(grad_output.sizes() == at::IntArrayRef({T, B, D * H}),
              "gru_layer_backward: grad_output must have shape ", at::IntArrayRef({T, B, D * H}),
              ", got ", grad_output.sizes());
  TORCH_CHECK(grad_h_n.sizes() == hx.sizes(), "gru_layer_backward: grad_h_n must have shape ",
              hx.sizes(), ", got ", grad_h_n.sizes());
  TORCH_CHECK(reserve.sizes() == at::IntArrayRef({D, T, B, kReserveSlots * H}),
              "gru_layer_backward: reserve has shape ", reserve.sizes(),
              "; it must be the one gru_layer returned with need_reserve=True");
}

template <class Dev>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> backward(
    const Tensor& grad_output_, const Tensor& grad_h_n_, const Tensor& input_, const Tensor& hx,
    const Tensor& w_ih_, const Tensor& w_hh_, const OptTensor& b_ih, const OptTensor& b_hh,
    const OptTensor& mask_, const OptTensor& lengths_, bool reset_after, const Tensor& reserve_) {
  check_layer_args(input_, hx, w_ih_, w_hh_, b_ih, b_hh, mask_, lengths_, reset_after,
                   "gru_layer_backward");
  const int64_t T = input_.size(0), B = input_.size(1);
  const int64_t D = w_ih_.size(0), H = w_ih_.size(1) / 3;
  check_backward_args(grad_output_, grad_h_n_, hx, reserve_, T, B, D, H);
  check_lengths_values(lengths_, T, "gru_layer_backward");
  const int cell = reset_after ? plan::kGruAfter : plan::kGruBefore;
  const plan::Plan pl = plan_for(input_, H, D, cell, Dev::smem_optin(input_), Dev::sm(input_));
  const Tensor input = input_.contiguous(), w_ih = w_ih_.contiguous(), w_hh = w_hh_.contiguous(),
               reserve = reserve_.contiguous(), grad_output = pair_aligned(grad_output_.contiguous()),
               grad_h_n = grad_h_n_.contiguous();
  const OptTensor mask = contiguous(mask_), lengths = contiguous(lengths_);
  if (pl.path == plan::Path::Stepwise)
    return stepwise_backward<Dev>(grad_output, grad_h_n, input, hx.contiguous(), w_ih, w_hh,
                                  contiguous(b_ih), contiguous(b_hh), mask, lengths, reset_after,
                                  reserve);
  const auto opts = input.options();
  Tensor dgx = at::empty({D, T * B, 3 * H}, opts);
  Tensor dghn = reset_after ? at::empty({D, T * B, H}, opts) : Tensor();
  Tensor grad_hx = at::empty({D, B, H}, opts);
  if (Dev::poison()) poison({dgx, dghn, grad_hx});
  if (B > 0) {
    raw::Backward r;
    r.steps = int(T);
    r.batch = int(B);
    r.hidden = int(H);
    r.dirs = int(D);
    r.cell = cell;
    r.dgx_at = {T * B * 3 * H, B * 3 * H, int(3 * H), int(H)};  // [D, T*B, 3H]
    r.grad_out = cbuf(grad_output);
    r.grad_h_n = cbuf(grad_h_n);
    r.w_hh = cbuf(w_hh);
    r.mask = cbuf(mask);
    r.lengths = lbuf(lengths);
    r.reserve = cbuf(reserve);
    r.dgx = mbuf(dgx);
    r.dghn = reset_after ? mbuf(dghn) : raw::Buf<void>{};
    r.grad_hx = mbuf(grad_hx);
    Dev::backward(dtype_of(input), pl, r);
  } else {
    grad_hx.copy_(grad_h_n);
  }
  auto [gi, gwi, gwh, gbi, gbh] = weight_grads(dgx, dghn, input, w_ih, reserve, mask, reset_after, H);
  return {gi, grad_hx, gwi, gwh, gbi, gbh};
}

// ---------------------------------------------------------------- the family op
// family_layer / family_layer_backward (schemas and shapes: csrc/cpu/family_layer.cpp)
// on a device: the recurrence alone, from the input projection gx [T, B, D, G*H]; the
// caller (gru_torch/ops.py) makes gx and turns grad_gx, the reserve and the output into
// the weights' gradients, as for the CPU family op. Every cell, with one recurrent mask
// for every gate (the GRU comes here for what the GRU op lacks: the hard sigmoids, input
// masks of two directions). The reserve holds the CPU family op's slots (csrc/cpu/family.h):
// GRU r, z, n, gh_n or q; LSTM i, f, g, o, c; RNN none. The GRU runs the GRU op's kernels,
// which keep h_prev after them (one kernel per GRU cell, not two); the other cells'
// backward reads h_prev from the output.

// Reserve values per (row, unit) a step (gru_torch/ops.py, DEVICE_FAMILY_RESERVE_SLOTS).
inline int64_t family_slots(int64_t cell) {
  return cell == plan::kLstm || plan::is_gru(int(cell)) ? 5 : 0;
}

// The shape of a family op call, from its checked arguments.
struct FamilyShape {
  int64_t T, B, H, D, G;
};

inline void check_family_tensor(const Tensor& t, const Tensor& gx, const char* name,
                                at::IntArrayRef shape, const char* where) {
  TORCH_CHECK(t.device() == gx.device(), where, ": ", name, " is on ", t.device(),
              " but gx is on ", gx.device());
  TORCH_CHECK(t.scalar_type() == gx.scalar_type(), where, ": ", name, " has dtype ",
              t.scalar_type(), " but gx has dtype ", gx.scalar_type());
  TORCH_CHECK(t.sizes() == shape, where, ": ", name, " must have shape ", shape, ", got ", t.sizes());
}

inline FamilyShape check_family_args(const Tensor& gx, const Tensor& hx, const OptTensor& cx,
                                     const Tensor& w_hh, const OptTensor& b_hn, const OptTensor& mask,
                                     const OptTensor& lengths, int64_t cell, int64_t gate,
                                     const char* where) {
  TORCH_CHECK(cell >= plan::kGruAfter && cell <= plan::kRnnRelu, where,
              ": cell must be 0 (GRU, reset_after), 1 (GRU), 2 (LSTM), 3 (RNN tanh) or 4 "
              "(RNN relu); got ", cell);
  TORCH_CHECK(gate >= 0 && gate <= 2, where,
              ": gate must be 0 (sigmoid), 1 (Keras 2's hard sigmoid) or 2 (Keras 3's); got ", gate);
  TORCH_CHECK(gx.dim() == 4, where, ": gx must be [T, B, D, G], got ", gx.sizes());
  const int64_t T = gx.size(0), B = gx.size(1), D = gx.size(2), G = gx.size(3);
  const int64_t gates = plan::gates_of(int(cell));
  TORCH_CHECK(D == 1 || D == 2, where, ": gx must hold 1 or 2 directions (its dim 2), got ", D);
  TORCH_CHECK(T > 0, where, ": gx has no time steps");
  TORCH_CHECK(G > 0 && G % gates == 0, where, ": gx.size(3) must be ", gates,
              " * hidden_size for this cell, got ", G);
  const int64_t H = G / gates;
  check_family_tensor(hx, gx, "hx", {D, B, H}, where);
  check_family_tensor(w_hh, gx, "w_hh", {D, G, H}, where);
  TORCH_CHECK(cx.has_value() == (cell == plan::kLstm), where,
              cell == plan::kLstm ? ": an LSTM needs cx" : ": cx is an LSTM's; this cell has none");
  if (cx) check_family_tensor(*cx, gx, "cx", {D, B, H}, where);
  if (b_hn) {
    TORCH_CHECK(cell == plan::kGruAfter, where, ": b_hn belongs to a GRU with reset_after=True");
    check_family_tensor(*b_hn, gx, "b_hn", {D, H}, where);
  }
  if (mask) {
    TORCH_CHECK(mask->dim() == 4 && mask->size(2) == 1, where,
                ": the CUDA kernels take one recurrent mask for every gate, [D, B, 1, H]; got ",
                mask->sizes(), " (per-gate masks run on the CPU family op)");
    check_family_tensor(*mask, gx, "mask", {D, B, 1, H}, where);
  }
  if (lengths) {
    TORCH_CHECK(lengths->scalar_type() == at::kLong && lengths->dim() == 1 && lengths->size(0) == B,
                where, ": lengths must be a 1-D int64 tensor of ", B, " entries, got ",
                lengths->scalar_type(), " ", lengths->sizes());
    check_lengths_values(lengths, T, where);
  }
  return {T, B, H, D, G};
}

// The persistent plan for a family op call, or an error naming why there is none.
template <class Dev>
plan::Plan family_plan(const Tensor& gx, const FamilyShape& s, int64_t cell, const char* where) {
  const plan::Plan pl = plan_for(gx, s.H, s.D, int(cell), Dev::smem_optin(gx), Dev::sm(gx));
  TORCH_CHECK(pl.path == plan::Path::Persistent, where,
              ": no CUDA kernel for this layer: the cell has the persistent kernel alone, which "
              "cannot run it (", pl.why, ")");
  return pl;
}

// Where gate q of unit u, row b, step t, direction d lies in gx [T, B, D, G*H].
inline raw::Layout family_layout(const FamilyShape& s) {
  return {s.G, s.B * s.D * s.G, int(s.D * s.G), int(s.H)};
}

// What a family call's kernel arguments (raw::Forward or raw::Backward) share: the
// sizes, the cell and its reserve layout, the gate function.
template <class Raw>
void set_family_call(Raw& r, const FamilyShape& s, int64_t cell, int64_t gate) {
  r.steps = int(s.T);
  r.batch = int(s.B);
  r.hidden = int(s.H);
  r.dirs = int(s.D);
  r.cell = int(cell);
  r.keep_prev = plan::is_gru(int(cell));
  r.gate = int(gate);
}

template <class Dev>
std::tuple<Tensor, Tensor, Tensor, Tensor> family_forward(
    const Tensor& gx_, const Tensor& hx_, const OptTensor& cx_, const Tensor& w_hh_,
    const OptTensor& b_hn, const OptTensor& mask_, const OptTensor& lengths_, int64_t cell,
    int64_t gate, bool need_reserve) {
  const char* where = "family_layer";
  const FamilyShape s = check_family_args(gx_, hx_, cx_, w_hh_, b_hn, mask_, lengths_, cell, gate, where);
  const plan::Plan pl = family_plan<Dev>(gx_, s, cell, where);
  const Tensor gx = gx_.contiguous(), hx = hx_.contiguous(), w_hh = w_hh_.contiguous();
  const OptTensor cx = contiguous(cx_), mask = contiguous(mask_), lengths = contiguous(lengths_),
                  b_rec = contiguous(b_hn);
  const auto opts = gx.options();
  Tensor out = at::empty({s.T, s.B, s.D * s.H}, opts);
  Tensor h_n = at::empty({s.D, s.B, s.H}, opts);
  Tensor c_n = cx ? at::empty({s.D, s.B, s.H}, opts) : at::empty({0}, opts);
  // The RNNs keep nothing: their backward reads the output (csrc/cpu/family.h).
  const int64_t slots = family_slots(cell);
  Tensor reserve = need_reserve ? at::empty({s.D, s.T, s.B, slots * s.H}, opts) : at::empty({0}, opts);
  if (Dev::poison()) poison({out, h_n, c_n, reserve});
  if (s.B == 0) return {out, h_n, c_n, reserve};
  raw::Forward r;
  set_family_call(r, s, cell, gate);
  r.gx_at = family_layout(s);
  r.gx = cbuf(gx);
  r.w_hh = cbuf(w_hh);
  r.h0 = cbuf(hx);
  r.b_hn = cbuf(b_rec);
  r.c0 = cbuf(cx);
  r.c_n = cx ? mbuf(c_n) : raw::Buf<void>{};
  r.reserve = need_reserve && slots ? mbuf(reserve) : raw::Buf<void>{};
  r.mask = cbuf(mask);
  r.lengths = lbuf(lengths);
  r.out = mbuf(out);
  r.h_n = mbuf(h_n);
  Dev::forward(dtype_of(gx), pl, r);
  return {out, h_n, c_n, reserve};
}

template <class Dev>
std::tuple<Tensor, Tensor, Tensor> family_backward(
    const Tensor& grad_output_, const Tensor& grad_h_n_, const OptTensor& grad_c_n_,
    const Tensor& gx_like, const Tensor& hx, const OptTensor& cx_, const Tensor& w_hh_,
    const OptTensor& b_hn, const OptTensor& mask_, const OptTensor& lengths_, int64_t cell,
    int64_t gate, const Tensor& reserve_, const Tensor& output_) {
  const char* where = "family_layer_backward";
  const FamilyShape s = check_family_args(gx_like, hx, cx_, w_hh_, b_hn, mask_, lengths_, cell, gate, where);
  const std::vector<int64_t> out_shape{s.T, s.B, s.D * s.H};
  check_family_tensor(grad_output_, gx_like, "grad_output", out_shape, where);
  check_family_tensor(output_, gx_like, "output", out_shape, where);
  check_family_tensor(grad_h_n_, gx_like, "grad_h_n", {s.D, s.B, s.H}, where);
  if (grad_c_n_) {
    TORCH_CHECK(cx_, where, ": grad_c_n is an LSTM's; this cell has none");
    check_family_tensor(*grad_c_n_, gx_like, "grad_c_n", {s.D, s.B, s.H}, where);
  }
  TORCH_CHECK(reserve_.sizes() == at::IntArrayRef({s.D, s.T, s.B, family_slots(cell) * s.H}), where,
              ": reserve has shape ",
              reserve_.sizes(), "; it must be the one family_layer returned with need_reserve=True");
  const plan::Plan pl = family_plan<Dev>(gx_like, s, cell, where);
  const Tensor grad_output = pair_aligned(grad_output_.contiguous()), grad_h_n = grad_h_n_.contiguous(),
               output = pair_aligned(output_.contiguous()), w_hh = w_hh_.contiguous(),
               h0 = hx.contiguous();
  const OptTensor cx = contiguous(cx_), mask = contiguous(mask_), lengths = contiguous(lengths_),
                  grad_c_n = grad_c_n_ ? OptTensor(pair_aligned(grad_c_n_->contiguous())) : std::nullopt;
  const Tensor reserve = reserve_.contiguous();
  const auto opts = gx_like.options();
  Tensor g_gx = at::empty({s.T, s.B, s.D, s.G}, opts);
  Tensor g_hx = at::empty({s.D, s.B, s.H}, opts);
  Tensor g_cx = cx ? at::empty({s.D, s.B, s.H}, opts) : at::empty({0}, opts);
  if (Dev::poison()) poison({g_gx, g_hx, g_cx});
  if (s.B == 0) return {g_gx, g_hx.zero_(), g_cx.zero_()};
  raw::Backward r;
  set_family_call(r, s, cell, gate);
  r.dgx_at = family_layout(s);
  r.grad_out = cbuf(grad_output);
  r.grad_h_n = cbuf(grad_h_n);
  r.grad_c_n = cbuf(grad_c_n);
  r.h0 = cbuf(h0);
  r.c0 = cbuf(cx);
  r.reserve = cbuf(reserve);
  r.w_hh = cbuf(w_hh);
  r.mask = cbuf(mask);
  r.lengths = lbuf(lengths);
  r.out = cbuf(output);
  r.dgx = mbuf(g_gx);
  r.grad_hx = mbuf(g_hx);
  r.grad_cx = cx ? mbuf(g_cx) : raw::Buf<void>{};
  Dev::backward(dtype_of(gx_like), pl, r);
  return {g_gx, g_hx, g_cx};
}

}  // namespace gru_torch::device_op
