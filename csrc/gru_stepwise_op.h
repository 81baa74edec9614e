// The per-step path on a device, torch half: per time step one GEMM through ATen
// (cuBLAS on a GPU) and one fused pointwise kernel (csrc/device/gru_stepwise.cuh),
// run through Dev::step. The same structure as the CPU op (csrc/gru_cpu.cpp); the
// weight gradients come from device_op::weight_grads, as on the persistent path.
#pragma once

#include "gru_device_op.h"

namespace gru_torch::device_op {

inline at::ScalarType acc_type(const Tensor& t) {
  return t.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

template <class Dev>
std::tuple<Tensor, Tensor, Tensor> stepwise_forward(const Tensor& input, const Tensor& hx,
                                                    const Tensor& w_ih, const Tensor& w_hh,
                                                    const OptTensor& b_ih, const OptTensor& b_hh,
                                                    const OptTensor& mask, const OptTensor& lengths,
                                                    bool reset_after, bool need_reserve) {
  const int64_t T = input.size(0), B = input.size(1), I = input.size(2);
  const int64_t D = w_ih.size(0), H = w_ih.size(1) / 3;
  const auto opts = input.options();
  Tensor out = at::empty({T, B, D * H}, opts);
  Tensor h_n = at::empty({D, B, H}, opts);
  Tensor reserve = need_reserve ? at::empty({D, T, B, kReserveSlots * H}, opts) : at::empty({0}, opts);
  if (Dev::poison()) poison({out, h_n, reserve});
  if (B == 0) return {out, h_n, reserve};
  const Tensor bias = b_ih ? *b_ih : at::zeros({D, 3 * H}, opts);
  const Tensor gx = at::baddbmm(bias.unsqueeze(1), input.view({T * B, I}).unsqueeze(0).expand({D, T * B, I}),
                                w_ih.transpose(1, 2));
  Tensor gh = at::empty({B, reset_after ? 3 * H : 2 * H}, opts), ghn = at::empty({B, H}, opts);
  Tensor h = at::empty({B, H}, opts.dtype(acc_type(input))), hm = at::empty({B, H}, opts);
  Tensor rz = at::empty({B, 2 * H}, opts.dtype(acc_type(input)));
  for (int64_t d = 0; d < D; ++d) {
    h.copy_(hx[d]);
    hm.copy_(mask ? hx[d] * (*mask)[d] : hx[d]);
    const Tensor W = w_hh[d];
    auto step = [&](raw::Phase phase, int64_t t, const Tensor& gemm) {
      raw::Step s{};
      s.phase = phase;
      s.batch = int(B);
      s.hidden = int(H);
      s.t = int(t);
      s.out_stride = int(D * H);
      s.gx = cbuf(gx[d].narrow(0, t * B, B));
      s.gh = cbuf(gemm);
      s.mask = mask ? cbuf((*mask)[d]) : raw::Buf<const void>{};
      s.lengths = lbuf(lengths);
      s.out = mbuf(out[t].narrow(1, d * H, H));  // row stride D*H: the bounds cover the rows
      s.out.numel = size_t((B - 1) * D * H + H);
      s.res = need_reserve ? mbuf(reserve[d][t]) : raw::Buf<void>{};
      s.h = mbuf(h);
      s.hm = mbuf(hm);
      s.rz = mbuf(rz);
      Dev::step(dtype_of(input), s);
    };
    for (int64_t k = 0; k < T; ++k) {
      const int64_t t = d == 0 ? k : T - 1 - k;
      if (reset_after) {
        if (b_hh) at::addmm_out(gh, (*b_hh)[d], hm, W.t());
        else at::mm_out(gh, hm, W.t());
        step(raw::Phase::FwdAfter, t, gh);
      } else {
        at::mm_out(gh, hm, W.narrow(0, 0, 2 * H).t());
        step(raw::Phase::FwdBeforeRZ, t, gh);  // hm <- q = r * h~
        at::mm_out(ghn, hm, W.narrow(0, 2 * H, H).t());
        step(raw::Phase::FwdBeforeN, t, ghn);  // hm <- the new h~
      }
    }
    h_n[d].copy_(h);
  }
  return {out, h_n, reserve};
}

template <class Dev>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> stepwise_backward(
    const Tensor& grad_output, const Tensor& grad_h_n, const Tensor& input, const Tensor& hx,
    const Tensor& w_ih, const Tensor& w_hh, const OptTensor&, const OptTensor&,
    const OptTensor& mask, const OptTensor& lengths, bool reset_after, const Tensor& reserve) {
  const int64_t T = input.size(0), B = input.size(1);
  const int64_t D = w_ih.size(0), H = w_ih.size(1) / 3;
  const auto opts = input.options();
  Tensor dgx = at::empty({D, T * B, 3 * H}, opts);
  Tensor dghn = reset_after ? at::empty({D, T * B, H}, opts) : Tensor();
  Tensor grad_hx = at::empty({D, B, H}, opts);
  if (Dev::poison()) poison({dgx, dghn, grad_hx});
  if (B == 0) {
    grad_hx.copy_(grad_h_n);
  } else {
    Tensor dhz = at::empty({B, H}, opts.dtype(acc_type(input)));
    Tensor dhh = at::empty({B, H}, opts), dgh = at::empty({B, 3 * H}, opts);
    Tensor dq = at::empty({B, H}, opts), dqr = at::empty({B, H}, opts);
    for (int64_t d = 0; d < D; ++d) {
      dhz.copy_(grad_h_n[d]);
      dhh.zero_();
      const Tensor W = w_hh[d];
      auto step = [&](raw::Phase phase, int64_t t, const Tensor& gemm, const Tensor& out_dh) {
        raw::Step s{};
        s.phase = phase;
        s.batch = int(B);
        s.hidden = int(H);
        s.t = int(t);
        s.out_stride = int(D * H);
        s.gh = cbuf(gemm);
        s.mask = mask ? cbuf((*mask)[d]) : raw::Buf<const void>{};
        s.lengths = lbuf(lengths);
        s.dhh = cbuf(dhh);
        s.gout = cbuf(grad_output[t].narrow(1, d * H, H));
        s.gout.numel = size_t((B - 1) * D * H + H);
        s.res = mbuf(reserve[d][t]);
        s.h = mbuf(dhz);
        s.hm = mbuf(out_dh);
        s.dgx = mbuf(dgx[d].narrow(0, t * B, B));
        s.dgh = mbuf(dgh);
        s.dghn = reset_after ? mbuf(dghn[d].narrow(0, t * B, B)) : raw::Buf<void>{};
        s.dqr = mbuf(dqr);
        Dev::step(dtype_of(input), s);
      };
      for (int64_t k = 0; k < T; ++k) {
        const int64_t t = d == 0 ? T - 1 - k : k;
        if (reset_after) {
          step(raw::Phase::BwdAfter, t, Tensor(), Tensor());
          at::mm_out(dhh, dgh, W);
        } else {
          step(raw::Phase::BwdBeforeZN, t, Tensor(), Tensor());
          at::mm_out(dq, dgh.narrow(1, 2 * H, H), W.narrow(0, 2 * H, H));
          step(raw::Phase::BwdBeforeR, t, dq, Tensor());
          at::addmm_out(dhh, dqr, dgh.narrow(1, 0, 2 * H), W.narrow(0, 0, 2 * H));
        }
      }
      Tensor g = grad_hx[d];
      step(raw::Phase::BwdFinal, 0, Tensor(), g);
    }
  }
  auto [gi, gwi, gwh, gbi, gbh] = weight_grads(dgx, dghn, input, w_ih, reserve, mask, reset_after, H);
  return {gi, grad_hx, gwi, gwh, gbi, gbh};
}

}  // namespace gru_torch::device_op
