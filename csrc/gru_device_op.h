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
inline plan::Plan plan_for(const Tensor& input, int64_t H, int64_t D, bool reset_after,
                           size_t smem_optin, int sm) {
  const plan::Problem p{dtype_of(input), at::globalContext().allowTF32CuDNN(at::Float32Op::RNN),
                        int(H), int(input.size(1)), int(input.size(0)), int(D), reset_after,
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
  const plan::Plan pl = plan_for(input_, H, D, reset_after, Dev::smem_optin(input_), Dev::sm(input_));
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
  r.reset_after = reset_after;
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
  const plan::Plan pl = plan_for(input_, H, D, reset_after, Dev::smem_optin(input_), Dev::sm(input_));
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
    r.reset_after = reset_after;
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

}  // namespace gru_torch::device_op
