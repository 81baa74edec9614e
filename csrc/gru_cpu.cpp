// CPU kernels of the fused GRU layer op (forward and backward).
//
// Only the h-chain is sequential. Before the time loop: one GEMM for the input
// projection of every step. Each step: one recurrent GEMM (two for
// reset_after=false) into preallocated buffers, then the cell math in one pass
// over the rows (at::parallel_for, at::vec). After the backward loop: the input
// gradient and the weight gradients as GEMMs over all T*B rows.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "cpu_cell.h"
#include "gru.h"

namespace gru_torch {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// Rows per parallel task: enough work per task to pay for the fork.
int64_t row_grain(int64_t H) { return std::max<int64_t>(1, 4096 / std::max<int64_t>(H, 1)); }

template <typename F>
void for_rows(int64_t B, int64_t H, const F& f) {
  at::parallel_for(0, B, row_grain(H), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) f(b);
  });
}

void check_lengths_values(const OptTensor& lengths, int64_t T) {
  if (!lengths) return;
  if (lengths->numel() == 0) return;
  const int64_t lo = lengths->min().item<int64_t>(), hi = lengths->max().item<int64_t>();
  TORCH_CHECK(lo >= 1 && hi <= T, "gru_layer: lengths must lie in [1, ", T,
              "] (the input's time steps), got values in [", lo, ", ", hi, "]");
}

// Step s of direction d visits time t: forward walks 0..T-1, reverse T-1..0.
inline int64_t time_of(int64_t d, int64_t s, int64_t T) { return d == 0 ? s : T - 1 - s; }

std::tuple<Tensor, Tensor, Tensor> gru_layer_cpu(const Tensor& input_, const Tensor& hx_,
                                                 const Tensor& w_ih_, const Tensor& w_hh_,
                                                 const OptTensor& b_ih, const OptTensor& b_hh,
                                                 const OptTensor& mask_,
                                                 const OptTensor& lengths_, bool reset_after) {
  check_layer_args(input_, hx_, w_ih_, w_hh_, b_ih, b_hh, mask_, lengths_, reset_after,
                   "gru_layer");
  const int64_t T = input_.size(0), B = input_.size(1), I = input_.size(2);
  const int64_t D = w_ih_.size(0), G = w_ih_.size(1), H = G / 3;
  check_lengths_values(lengths_, T);
  const Tensor input = input_.contiguous(), w_ih = w_ih_.contiguous(),
               w_hh = w_hh_.contiguous();
  const OptTensor mask = mask_ ? OptTensor(mask_->contiguous()) : std::nullopt;
  const OptTensor lengths = lengths_ ? OptTensor(lengths_->contiguous()) : std::nullopt;

  Tensor output = at::empty({T, B, D * H}, input.options());
  Tensor h_n = hx_.clone(at::MemoryFormat::Contiguous);
  Tensor reserve = at::empty({D, T, B, kReserveSlots * H}, input.options());
  const Tensor x2d = input.view({T * B, I});
  const int64_t* len = lengths ? lengths->data_ptr<int64_t>() : nullptr;

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "gru_layer_cpu", [&] {
    for (int64_t d = 0; d < D; ++d) {
      // gx: [T*B, G] = x W_ih^T + b_ih, every step at once.
      Tensor gx = b_ih ? at::addmm((*b_ih)[d], x2d, w_ih[d].t()) : at::mm(x2d, w_ih[d].t());
      Tensor h = h_n[d];
      const scalar_t* m = mask ? (*mask)[d].data_ptr<scalar_t>() : nullptr;
      Tensor hm = mask ? h * (*mask)[d] : h;  // h~, the recurrent GEMM's operand
      Tensor gh = at::empty({B, reset_after ? G : 2 * H}, input.options());
      Tensor q, ghn;
      if (!reset_after) {
        q = at::empty({B, H}, input.options());
        ghn = at::empty({B, H}, input.options());
      }
      const Tensor w_hh_d = w_hh[d];
      const Tensor w_rz_t = w_hh_d.narrow(0, 0, 2 * H).t(), w_n_t = w_hh_d.narrow(0, 2 * H, H).t();
      scalar_t* hp = h.data_ptr<scalar_t>();
      scalar_t* hmp = hm.data_ptr<scalar_t>();
      scalar_t* res_d = reserve[d].data_ptr<scalar_t>();
      scalar_t* out = output.data_ptr<scalar_t>();
      const scalar_t* gxp = gx.data_ptr<scalar_t>();
      scalar_t* ghp = gh.data_ptr<scalar_t>();

      for (int64_t s = 0; s < T; ++s) {
        const int64_t t = time_of(d, s, T);
        auto row_ptrs = [&](int64_t b) {
          return std::make_tuple(gxp + (t * B + b) * G, out + (t * B + b) * D * H + d * H,
                                 res_d + (t * B + b) * kReserveSlots * H);
        };
        if (reset_after) {
          if (b_hh) at::addmm_out(gh, (*b_hh)[d], hm, w_hh_d.t());
          else at::mm_out(gh, hm, w_hh_d.t());
          for_rows(B, H, [&](int64_t b) {
            auto [gxr, o, res] = row_ptrs(b);
            if (len && t >= len[b]) return cpu::inactive_row(H, o, res);
            cpu::forward_row_after(H, gxr, ghp + b * G, m ? m + b * H : nullptr, hp + b * H,
                                   hmp + b * H, o, res);
          });
        } else {
          at::mm_out(gh, hm, w_rz_t);
          scalar_t* qp = q.data_ptr<scalar_t>();
          for_rows(B, H, [&](int64_t b) {
            auto [gxr, o, res] = row_ptrs(b);
            if (len && t >= len[b]) {
              std::memset(qp + b * H, 0, sizeof(scalar_t) * H);
              return;
            }
            cpu::forward_row_before_rz(H, gxr, ghp + b * 2 * H, hmp + b * H, qp + b * H, res);
          });
          at::mm_out(ghn, q, w_n_t);
          const scalar_t* ghnp = ghn.data_ptr<scalar_t>();
          for_rows(B, H, [&](int64_t b) {
            auto [gxr, o, res] = row_ptrs(b);
            if (len && t >= len[b]) return cpu::inactive_row(H, o, res);
            cpu::forward_row_before_n(H, gxr, ghnp + b * H, m ? m + b * H : nullptr,
                                      hp + b * H, hmp + b * H, o, res);
          });
        }
      }
    }
  });
  return {output, h_n, reserve};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_layer_backward_cpu(
    const Tensor& grad_output_, const Tensor& grad_h_n, const Tensor& input_,
    const Tensor& hx, const Tensor& w_ih_, const Tensor& w_hh_, const OptTensor& b_ih,
    const OptTensor& b_hh, const OptTensor& mask_, const OptTensor& lengths_,
    bool reset_after, const Tensor& reserve_) {
  check_layer_args(input_, hx, w_ih_, w_hh_, b_ih, b_hh, mask_, lengths_, reset_after,
                   "gru_layer_backward");
  const int64_t T = input_.size(0), B = input_.size(1), I = input_.size(2);
  const int64_t D = w_ih_.size(0), G = w_ih_.size(1), H = G / 3;
  TORCH_CHECK(grad_output_.sizes() == at::IntArrayRef({T, B, D * H}),
              "gru_layer_backward: grad_output must have shape [", T, ", ", B, ", ", D * H,
              "], got ", grad_output_.sizes());
  TORCH_CHECK(grad_h_n.sizes() == hx.sizes(), "gru_layer_backward: grad_h_n must have shape ",
              hx.sizes(), ", got ", grad_h_n.sizes());
  TORCH_CHECK(reserve_.sizes() == at::IntArrayRef({D, T, B, kReserveSlots * H}),
              "gru_layer_backward: reserve has shape ", reserve_.sizes(),
              "; it must be the one gru_layer returned for these arguments");
  check_lengths_values(lengths_, T);
  const Tensor input = input_.contiguous(), w_ih = w_ih_.contiguous(),
               w_hh = w_hh_.contiguous(), reserve = reserve_.contiguous(),
               grad_output = grad_output_.contiguous();
  const OptTensor mask = mask_ ? OptTensor(mask_->contiguous()) : std::nullopt;
  const OptTensor lengths = lengths_ ? OptTensor(lengths_->contiguous()) : std::nullopt;
  const int64_t* len = lengths ? lengths->data_ptr<int64_t>() : nullptr;
  const auto opts = input.options();

  Tensor grad_input = at::zeros({T * B, I}, opts);
  Tensor grad_hx = at::empty({D, B, H}, opts);
  Tensor grad_w_ih = at::empty({D, G, I}, opts);
  Tensor grad_w_hh = at::empty({D, G, H}, opts);
  Tensor grad_b_ih = at::empty({D, G}, opts);
  Tensor grad_b_hh = at::zeros({D, G}, opts);
  const Tensor x2d = input.view({T * B, I});

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "gru_layer_backward_cpu", [&] {
    for (int64_t d = 0; d < D; ++d) {
      Tensor dgx = at::empty({T, B, G}, opts), dgh = at::empty({T, B, G}, opts);
      Tensor dhz = grad_h_n[d].clone(at::MemoryFormat::Contiguous);  // dh carried as-is
      Tensor dhh = at::zeros({B, H}, opts);  // dh~ from the recurrent GEMM
      Tensor dq, dqr;
      if (!reset_after) {
        dq = at::empty({B, H}, opts);
        dqr = at::empty({B, H}, opts);
      }
      const Tensor w_hh_d = w_hh[d];
      const Tensor w_rz = w_hh_d.narrow(0, 0, 2 * H), w_n = w_hh_d.narrow(0, 2 * H, H);
      const scalar_t* m = mask ? (*mask)[d].data_ptr<scalar_t>() : nullptr;
      const scalar_t* res_d = reserve[d].data_ptr<scalar_t>();
      const scalar_t* gop = grad_output.data_ptr<scalar_t>();
      scalar_t* dhzp = dhz.data_ptr<scalar_t>();
      scalar_t* dhhp = dhh.data_ptr<scalar_t>();
      scalar_t* dgxp = dgx.data_ptr<scalar_t>();
      scalar_t* dghp = dgh.data_ptr<scalar_t>();

      for (int64_t s = T - 1; s >= 0; --s) {
        const int64_t t = time_of(d, s, T);
        const int64_t row0 = t * B;
        auto mrow = [&](int64_t b) { return m ? m + b * H : nullptr; };
        auto first_pass = [&](int64_t b) {
          scalar_t* gx_row = dgxp + (row0 + b) * G;
          scalar_t* gh_row = dghp + (row0 + b) * G;
          if (len && t >= len[b]) {
            return cpu::backward_inactive_row(H, mrow(b), dhzp + b * H, dhhp + b * H, gx_row,
                                              gh_row);
          }
          const scalar_t* res = res_d + (row0 + b) * kReserveSlots * H;
          const scalar_t* gout = gop + (row0 + b) * D * H + d * H;
          if (reset_after) {
            cpu::backward_row_after(H, res, gout, mrow(b), dhzp + b * H, dhhp + b * H, gx_row,
                                    gh_row);
          } else {
            cpu::backward_row_before_zn(H, res, gout, mrow(b), dhzp + b * H, dhhp + b * H,
                                        gx_row, gh_row);
          }
        };
        for_rows(B, H, first_pass);
        const Tensor dgh_t = dgh[t];
        if (reset_after) {
          at::mm_out(dhh, dgh_t, w_hh_d);
          continue;
        }
        at::mm_out(dq, dgh_t.narrow(1, 2 * H, H), w_n);
        const scalar_t* dqp = dq.data_ptr<scalar_t>();
        scalar_t* dqrp = dqr.data_ptr<scalar_t>();
        for_rows(B, H, [&](int64_t b) {
          if (len && t >= len[b]) {
            std::memset(dqrp + b * H, 0, sizeof(scalar_t) * H);
            return;
          }
          cpu::backward_row_before_r(H, res_d + (row0 + b) * kReserveSlots * H, mrow(b),
                                     dqp + b * H, dqrp + b * H, dgxp + (row0 + b) * G,
                                     dghp + (row0 + b) * G);
        });
        at::addmm_out(dhh, dqr, dgh_t.narrow(1, 0, 2 * H), w_rz);
      }
      // dh_0 = carried part + recurrent part through the mask.
      grad_hx[d].copy_(mask ? dhz + dhh * (*mask)[d] : dhz + dhh);

      const Tensor dgx2 = dgx.view({T * B, G}), dgh2 = dgh.view({T * B, G});
      grad_input.addmm_(dgx2, w_ih[d]);
      Tensor gw_ih = grad_w_ih[d], gb_ih = grad_b_ih[d], gw_hh = grad_w_hh[d];
      at::mm_out(gw_ih, dgx2.t(), x2d);
      at::sum_out(gb_ih, dgx2, {0});
      // h~ of every step, [T*B, H] (rows past their length hold zeros).
      Tensor h_prev = reserve[d].narrow(2, 4 * H, H);
      Tensor hm = (mask ? h_prev * (*mask)[d] : h_prev).reshape({T * B, H});
      if (reset_after) {
        Tensor gb_hh = grad_b_hh[d];
        at::mm_out(gw_hh, dgh2.t(), hm);
        at::sum_out(gb_hh, dgh2, {0});
      } else {
        const Tensor q = reserve[d].narrow(2, 3 * H, H).reshape({T * B, H});
        Tensor gw_rz = gw_hh.narrow(0, 0, 2 * H), gw_n = gw_hh.narrow(0, 2 * H, H);
        at::mm_out(gw_rz, dgh2.narrow(1, 0, 2 * H).t(), hm);
        at::mm_out(gw_n, dgh2.narrow(1, 2 * H, H).t(), q);
      }
    }
  });
  return {grad_input.view({T, B, I}), grad_hx, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh};
}

}  // namespace

TORCH_LIBRARY_IMPL(gru_torch, CPU, m) {
  m.impl("gru_layer", &gru_layer_cpu);
  m.impl("gru_layer_backward", &gru_layer_backward_cpu);
}

}  // namespace gru_torch
