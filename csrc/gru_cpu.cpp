// CPU kernels of the fused GRU layer op (forward and backward).
//
// Only the h-chain is sequential. Before the time loop: one GEMM for the input
// projection of every step. Each step: one recurrent GEMM (two for
// reset_after=false) into preallocated buffers, then the cell math in one pass
// over the rows (at::parallel_for, at::vec). After the backward loop: the input
// gradient and the weight gradients as GEMMs over all T*B rows.
#include <ATen/Parallel.h>
#include <vector>
#include <torch/library.h>

#include "cpu_cell.h"
#include "cpu_pool.h"
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

// Time steps are handled in blocks of about kBlockRows batch rows: the input
// projection of a block (forward) and the weight-gradient GEMMs of a block
// (backward) run on buffers reused from block to block, which stay in cache and
// spare the page faults of [T, B, 3H] temporaries.
constexpr int64_t kBlockRows = 2048;

struct Block {
  int64_t t_lo, t_hi;  // times [t_lo, t_hi)
};

// The blocks of direction d in the order the forward visits them: forward walks
// t = 0..T-1, reverse t = T-1..0.
int64_t block_steps(int64_t T, int64_t B) {
  const int64_t rows = std::max<int64_t>(B, 1);  // an empty batch is one (empty) block
  return std::max<int64_t>(1, std::min<int64_t>(T, (kBlockRows + rows - 1) / rows));
}

std::vector<Block> blocks_of(int64_t d, int64_t T, int64_t B) {
  const int64_t K = block_steps(T, B);
  std::vector<Block> out;
  for (int64_t i = 0; i * K < T; ++i) {
    const int64_t lo = i * K, hi = std::min(T, lo + K);
    out.push_back(d == 0 ? Block{lo, hi} : Block{T - hi, T - lo});
  }
  return out;
}

std::tuple<Tensor, Tensor, Tensor> gru_layer_cpu(const Tensor& input_, const Tensor& hx_,
                                                 const Tensor& w_ih_, const Tensor& w_hh_,
                                                 const OptTensor& b_ih, const OptTensor& b_hh,
                                                 const OptTensor& mask_,
                                                 const OptTensor& lengths_, bool reset_after,
                                                 bool need_reserve) {
  check_layer_args(input_, hx_, w_ih_, w_hh_, b_ih, b_hh, mask_, lengths_, reset_after,
                   "gru_layer");
  const int64_t T = input_.size(0), B = input_.size(1), I = input_.size(2);
  const int64_t D = w_ih_.size(0), G = w_ih_.size(1), H = G / 3;
  check_lengths_values(lengths_, T);
  const Tensor input = input_.contiguous(), w_ih = w_ih_.contiguous(),
               w_hh = w_hh_.contiguous();
  const OptTensor mask = mask_ ? OptTensor(mask_->contiguous()) : std::nullopt;
  const OptTensor lengths = lengths_ ? OptTensor(lengths_->contiguous()) : std::nullopt;
  const auto opts = input.options();

  Tensor output = cpu::pooled_empty({T, B, D * H}, opts);
  Tensor h_n = hx_.clone(at::MemoryFormat::Contiguous);
  // Without a reserve, each step's r, z, n, aux go to one reused [B, 4H] scratch.
  Tensor reserve = need_reserve ? cpu::pooled_empty({D, T, B, kReserveSlots * H}, opts)
                                : at::empty({0}, opts);
  Tensor scratch = need_reserve ? Tensor() : at::empty({B, kReserveSlots * H}, opts);
  const Tensor x2d = input.view({T * B, I});
  const int64_t* len = lengths ? lengths->data_ptr<int64_t>() : nullptr;
  const int64_t K = block_steps(T, B);
  Tensor gx_buf = cpu::pooled_empty({K * B, G}, opts);
  Tensor gh = at::empty({B, reset_after ? G : 2 * H}, opts);
  Tensor q = at::empty({B, H}, opts), ghn = at::empty({B, H}, opts);

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "gru_layer_cpu", [&] {
    for (int64_t d = 0; d < D; ++d) {
      Tensor h = h_n[d];
      const scalar_t* m = mask ? (*mask)[d].data_ptr<scalar_t>() : nullptr;
      Tensor hm = mask ? h * (*mask)[d] : h;  // h~, the recurrent GEMM's operand
      const Tensor w_hh_d = w_hh[d];
      const Tensor w_rz_t = w_hh_d.narrow(0, 0, 2 * H).t(), w_n_t = w_hh_d.narrow(0, 2 * H, H).t();
      scalar_t* hp = h.data_ptr<scalar_t>();
      scalar_t* hmp = hm.data_ptr<scalar_t>();
      scalar_t* res_base = need_reserve ? reserve[d].data_ptr<scalar_t>() : scratch.data_ptr<scalar_t>();
      scalar_t* out = output.data_ptr<scalar_t>();
      const scalar_t* ghp = gh.data_ptr<scalar_t>();
      scalar_t* qp = q.data_ptr<scalar_t>();
      const scalar_t* ghnp = ghn.data_ptr<scalar_t>();

      // The r and z parts of b_hh add to the pre-activation like b_ih does, so they
      // join it in the input GEMM; only b_hn (scaled by r) stays in the step.
      std::optional<Tensor> gx_bias;
      if (b_ih) gx_bias = (*b_ih)[d];
      if (b_hh) {
        Tensor rz = at::zeros({G}, opts);
        rz.narrow(0, 0, 2 * H).copy_((*b_hh)[d].narrow(0, 0, 2 * H));
        gx_bias = gx_bias ? *gx_bias + rz : rz;
      }
      const Tensor b_hn = b_hh ? (*b_hh)[d].narrow(0, 2 * H, H).contiguous() : Tensor();
      const scalar_t* b_hnp = b_hh ? b_hn.data_ptr<scalar_t>() : nullptr;

      for (const Block& blk : blocks_of(d, T, B)) {
        // gx of the block: [(t_hi - t_lo) * B, G] = x W_ih^T + bias.
        const int64_t rows = (blk.t_hi - blk.t_lo) * B;
        Tensor gx = gx_buf.narrow(0, 0, rows);
        const Tensor x_blk = x2d.narrow(0, blk.t_lo * B, rows);
        if (gx_bias) at::addmm_out(gx, *gx_bias, x_blk, w_ih[d].t());
        else at::mm_out(gx, x_blk, w_ih[d].t());
        const scalar_t* gxp = gx.data_ptr<scalar_t>();

        for (int64_t k = 0; k < blk.t_hi - blk.t_lo; ++k) {
          const int64_t t = d == 0 ? blk.t_lo + k : blk.t_hi - 1 - k;
          const scalar_t* gx_t = gxp + (t - blk.t_lo) * B * G;
          scalar_t* res_t = need_reserve ? res_base + t * B * kReserveSlots * H : res_base;
          auto active = [&](int64_t b) { return !len || t < len[b]; };
          auto out_row = [&](int64_t b) { return out + (t * B + b) * D * H + d * H; };
          auto res_row = [&](int64_t b) { return res_t + b * kReserveSlots * H; };
          if (reset_after) {
            at::mm_out(gh, hm, w_hh_d.t());
            for_rows(B, H, [&](int64_t b) {
              if (!active(b)) return cpu::inactive_row(H, out_row(b), res_row(b));
              cpu::forward_row_after(H, gx_t + b * G, ghp + b * G, b_hnp,
                                     m ? m + b * H : nullptr, hp + b * H, hmp + b * H,
                                     out_row(b), res_row(b));
            });
            continue;
          }
          at::mm_out(gh, hm, w_rz_t);
          for_rows(B, H, [&](int64_t b) {
            if (!active(b)) {
              std::memset(qp + b * H, 0, sizeof(scalar_t) * H);
              return;
            }
            cpu::forward_row_before_rz(H, gx_t + b * G, ghp + b * 2 * H, hmp + b * H,
                                       qp + b * H, res_row(b));
          });
          at::mm_out(ghn, q, w_n_t);
          for_rows(B, H, [&](int64_t b) {
            if (!active(b)) return cpu::inactive_row(H, out_row(b), res_row(b));
            cpu::forward_row_before_n(H, gx_t + b * G, ghnp + b * H, m ? m + b * H : nullptr,
                                      hp + b * H, hmp + b * H, out_row(b), res_row(b));
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
  const std::vector<int64_t> out_shape{T, B, D * H};  // grad_output's
  TORCH_CHECK(grad_output_.sizes() == at::IntArrayRef(out_shape),
              "gru_layer_backward: grad_output must have shape ", at::IntArrayRef(out_shape),
              ", got ", grad_output_.sizes());
  TORCH_CHECK(grad_h_n.sizes() == hx.sizes(), "gru_layer_backward: grad_h_n must have shape ",
              hx.sizes(), ", got ", grad_h_n.sizes());
  TORCH_CHECK(reserve_.sizes() == at::IntArrayRef({D, T, B, kReserveSlots * H}),
              "gru_layer_backward: reserve has shape ", reserve_.sizes(),
              "; it must be the one gru_layer returned with need_reserve=True");
  check_lengths_values(lengths_, T);
  const Tensor input = input_.contiguous(), w_ih = w_ih_.contiguous(),
               w_hh = w_hh_.contiguous(), reserve = reserve_.contiguous(),
               grad_output = grad_output_.contiguous();
  const OptTensor mask = mask_ ? OptTensor(mask_->contiguous()) : std::nullopt;
  const OptTensor lengths = lengths_ ? OptTensor(lengths_->contiguous()) : std::nullopt;
  const int64_t* len = lengths ? lengths->data_ptr<int64_t>() : nullptr;
  const auto opts = input.options();

  Tensor grad_input = cpu::pooled_empty({T * B, I}, opts);
  Tensor grad_hx = at::empty({D, B, H}, opts);
  Tensor grad_w_ih = at::zeros({D, G, I}, opts);
  Tensor grad_w_hh = at::zeros({D, G, H}, opts);
  Tensor grad_b_ih = at::zeros({D, G}, opts);
  Tensor grad_b_hh = at::zeros({D, G}, opts);
  const Tensor x2d = input.view({T * B, I});
  const int64_t K = block_steps(T, B);
  Tensor dgx_buf = cpu::pooled_empty({K * B, G}, opts);
  Tensor dgh_buf = cpu::pooled_empty({K * B, G}, opts);
  Tensor hm_buf = mask ? cpu::pooled_empty({K * B, H}, opts) : Tensor();  // h~ with a mask
  Tensor dhh = at::empty({B, H}, opts);  // dh~ from the recurrent GEMM
  Tensor dq = at::empty({B, H}, opts), dqr = at::empty({B, H}, opts);

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "gru_layer_backward_cpu", [&] {
    for (int64_t d = 0; d < D; ++d) {
      Tensor dhz = grad_h_n[d].clone(at::MemoryFormat::Contiguous);  // dh carried as-is
      dhh.zero_();
      const Tensor w_hh_d = w_hh[d];
      const Tensor w_rz = w_hh_d.narrow(0, 0, 2 * H), w_n = w_hh_d.narrow(0, 2 * H, H);
      Tensor gw_ih = grad_w_ih[d], gw_hh = grad_w_hh[d], gb_ih = grad_b_ih[d],
             gb_hh = grad_b_hh[d];
      Tensor gw_rz = gw_hh.narrow(0, 0, 2 * H), gw_n = gw_hh.narrow(0, 2 * H, H);
      const scalar_t* m = mask ? (*mask)[d].data_ptr<scalar_t>() : nullptr;
      auto mrow = [&](int64_t b) { return m ? m + b * H : nullptr; };
      const scalar_t* res_d = reserve[d].data_ptr<scalar_t>();
      const scalar_t* gop = grad_output.data_ptr<scalar_t>();
      scalar_t* dhzp = dhz.data_ptr<scalar_t>();
      scalar_t* dhhp = dhh.data_ptr<scalar_t>();
      scalar_t* dgxp = dgx_buf.data_ptr<scalar_t>();
      scalar_t* dghp = dgh_buf.data_ptr<scalar_t>();
      scalar_t* hmp = mask ? hm_buf.data_ptr<scalar_t>() : nullptr;
      const scalar_t* dqp = dq.data_ptr<scalar_t>();
      scalar_t* dqrp = dqr.data_ptr<scalar_t>();
      auto hprev = [&](int64_t t, int64_t b) {
        return res_d + (t * B + b) * kReserveSlots * H + 4 * H;
      };

      auto blocks = blocks_of(d, T, B);
      for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) {
        const Block& blk = *it;
        const int64_t nt = blk.t_hi - blk.t_lo, rows = nt * B;
        for (int64_t k = 0; k < nt; ++k) {
          const int64_t t = d == 0 ? blk.t_hi - 1 - k : blk.t_lo + k;
          const int64_t row0 = (t - blk.t_lo) * B;  // into the block buffers
          auto active = [&](int64_t b) { return !len || t < len[b]; };
          auto res_row = [&](int64_t b) { return res_d + (t * B + b) * kReserveSlots * H; };
          auto gout_row = [&](int64_t b) { return gop + (t * B + b) * D * H + d * H; };
          for_rows(B, H, [&](int64_t b) {
            scalar_t* gx_row = dgxp + (row0 + b) * G;
            scalar_t* gh_row = dghp + (row0 + b) * G;
            if (!active(b)) {
              return cpu::backward_inactive_row(H, mrow(b), dhzp + b * H, dhhp + b * H, gx_row,
                                                gh_row);
            }
            if (reset_after) {
              cpu::backward_row_after(H, res_row(b), hprev(t, b), gout_row(b), mrow(b),
                                      dhzp + b * H, dhhp + b * H, gx_row, gh_row);
            } else {
              cpu::backward_row_before_zn(H, res_row(b), hprev(t, b), gout_row(b), mrow(b),
                                          dhzp + b * H, dhhp + b * H, gx_row, gh_row);
            }
          });
          const Tensor dgh_t = dgh_buf.narrow(0, row0, B);
          if (reset_after) {
            at::mm_out(dhh, dgh_t, w_hh_d);
            continue;
          }
          at::mm_out(dq, dgh_t.narrow(1, 2 * H, H), w_n);
          for_rows(B, H, [&](int64_t b) {
            if (!active(b)) {
              std::memset(dqrp + b * H, 0, sizeof(scalar_t) * H);
              return;
            }
            cpu::backward_row_before_r(H, res_row(b), hprev(t, b), mrow(b), dqp + b * H,
                                       dqrp + b * H, dgxp + (row0 + b) * G, dghp + (row0 + b) * G);
          });
          at::addmm_out(dhh, dqr, dgh_t.narrow(1, 0, 2 * H), w_rz);
        }

        // The block's share of the input and weight gradients, as GEMMs over its rows.
        const Tensor dgx = dgx_buf.narrow(0, 0, rows), dgh = dgh_buf.narrow(0, 0, rows);
        const Tensor x_blk = x2d.narrow(0, blk.t_lo * B, rows);
        Tensor dx_blk = grad_input.narrow(0, blk.t_lo * B, rows);
        if (d == 0) at::mm_out(dx_blk, dgx, w_ih[d]);
        else dx_blk.addmm_(dgx, w_ih[d]);
        gw_ih.addmm_(dgx.t(), x_blk);
        gb_ih.add_(dgx.sum(0));
        // h~ of the block's rows, [rows, H] (rows past their length hold zeros).
        Tensor hm = reserve[d].narrow(0, blk.t_lo, nt).narrow(2, 4 * H, H).reshape({rows, H});
        if (m) {
          for_rows(rows, H, [&](int64_t r) {
            const int64_t t = blk.t_lo + r / B, b = r % B;
            cpu::masked_copy_row(H, hprev(t, b), mrow(b), hmp + r * H);
          });
          hm = hm_buf.narrow(0, 0, rows);
        }
        if (reset_after) {
          gw_hh.addmm_(dgh.t(), hm);
          gb_hh.narrow(0, 2 * H, H).add_(dgh.narrow(1, 2 * H, H).sum(0));
        } else {
          const Tensor q = reserve[d].narrow(0, blk.t_lo, nt).narrow(2, 3 * H, H).reshape({rows, H});
          gw_rz.addmm_(dgh.narrow(1, 0, 2 * H).t(), hm);
          gw_n.addmm_(dgh.narrow(1, 2 * H, H).t(), q);
        }
      }
      // dgh and dgx agree on the r and z gates, and so do their bias gradients.
      if (reset_after) gb_hh.narrow(0, 0, 2 * H).copy_(gb_ih.narrow(0, 0, 2 * H));
      // dh_0 = carried part + recurrent part through the mask.
      grad_hx[d].copy_(mask ? dhz + dhh * (*mask)[d] : dhz + dhh);
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
