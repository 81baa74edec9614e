// CPU kernels of the fused GRU layer op (forward and backward): argument handling,
// outputs, and the dispatcher registration. The time loops are in cpu_forward.cpp and
// cpu_backward.cpp, their thread split in cpu_split.h.
#include <cstdlib>
#include <cstring>
#include <string>
#include <torch/library.h>
#include <vector>

#include "cpu_denormals.h"
#include "cpu_layer.h"
#include "cpu_pool.h"
#include "gru.h"

namespace gru_torch {

namespace cpu {

Split layer_split(const LayerShape& s) {
  const double step_flops_per_row = 2.0 * (s.I + s.H) * s.G();
  const int64_t panels = (s.H + 7) / 8;
  const int64_t threads = available_threads();
  const char* env = std::getenv("GRU_TORCH_CPU_SPLIT");
  const std::string force = env ? env : "";
  // "rows:N" also fixes the rows of a chunk (for measuring the choice).
  const bool rows_n = force.rfind("rows:", 0) == 0;
  const int64_t chunk_rows = rows_n ? std::atoll(force.c_str() + 5) : 0;
  TORCH_CHECK(force.empty() || force == "auto" || force == "rows" || force == "columns" ||
                  (rows_n && chunk_rows > 0),
              "GRU_TORCH_CPU_SPLIT must be auto, rows, rows:N (N > 0 rows a chunk) or "
              "columns, got '", force, "'");
  if (force == "columns") {
    Split c;
    c.by_rows = false;
    c.threads = std::max<int64_t>(1, std::min(threads, panels));
    c.chunk_rows = s.B;
    return c;
  }
  if (rows_n) {
    Split r;
    r.chunk_rows = std::min(chunk_rows, std::max<int64_t>(s.B, 1));
    r.chunks = std::max<int64_t>(1, (s.B + r.chunk_rows - 1) / r.chunk_rows);
    r.threads = std::max<int64_t>(1, std::min(threads, r.chunks));
    return r;
  }
  if (force == "rows") return choose_split(s.B, step_flops_per_row, threads, /*panels=*/1);
  return choose_split(s.B, step_flops_per_row, threads, panels);
}

}  // namespace cpu

namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

void check_lengths_values(const OptTensor& lengths, int64_t T) {
  if (!lengths) return;
  if (lengths->numel() == 0) return;
  const int64_t lo = lengths->min().item<int64_t>(), hi = lengths->max().item<int64_t>();
  TORCH_CHECK(lo >= 1 && hi <= T, "gru_layer: lengths must lie in [1, ", T,
              "] (the input's time steps), got values in [", lo, ", ", hi, "]");
}

// The input as it is when its features are contiguous (batch_first input arrives
// transposed): the kernels read rows through strides, which spares a [T, B, I] copy.
Tensor rows_in_place(const Tensor& input) {
  return input.stride(2) == 1 ? input : input.contiguous();
}

template <typename scalar_t>
const scalar_t* ptr_or_null(const OptTensor& t, int64_t d) {
  return t ? (*t)[d].const_data_ptr<scalar_t>() : nullptr;
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
  const Tensor input = rows_in_place(input_), w_ih = w_ih_.contiguous(),
               w_hh = w_hh_.contiguous();
  const OptTensor mask = mask_ ? OptTensor(mask_->contiguous()) : std::nullopt;
  const OptTensor lengths = lengths_ ? OptTensor(lengths_->contiguous()) : std::nullopt;
  const auto opts = input.options();

  Tensor output = cpu::pooled_empty({T, B, D * H}, opts);
  Tensor h_n = hx_.clone(at::MemoryFormat::Contiguous);
  Tensor reserve = need_reserve ? cpu::pooled_empty({D, T, B, cpu::kSlots * H}, opts)
                                : at::empty({0}, opts);
  if (B == 0) return {output, h_n, reserve};
  // The r and z parts of b_hh add to the pre-activation like b_ih does, so they join it
  // in the input projection; only b_hn (scaled by r) stays in the cell.
  OptTensor bias;
  if (b_ih) bias = b_ih->contiguous();
  if (b_hh) {
    Tensor rz = at::zeros({D, G}, opts);
    rz.narrow(1, 0, 2 * H).copy_(b_hh->narrow(1, 0, 2 * H));
    bias = bias ? *bias + rz : rz;
  }
  const OptTensor b_hn = b_hh ? OptTensor(b_hh->narrow(1, 2 * H, H).contiguous()) : std::nullopt;
  const cpu::LayerShape shape{T, B, I, H, D, reset_after};

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "gru_layer_cpu", [&] {
    const cpu::DenormalModeGuard mode(cpu::op_denormal_mode<scalar_t>());
    std::vector<cpu::ForwardArgs<scalar_t>> args;
    for (int64_t d = 0; d < D; ++d) {
      args.push_back({input.const_data_ptr<scalar_t>(), {input.stride(0), input.stride(1)},
                      w_ih[d].const_data_ptr<scalar_t>(),
                      w_hh[d].const_data_ptr<scalar_t>(), ptr_or_null<scalar_t>(bias, d),
                      ptr_or_null<scalar_t>(b_hn, d), ptr_or_null<scalar_t>(mask, d),
                      lengths ? lengths->const_data_ptr<int64_t>() : nullptr,
                      output.data_ptr<scalar_t>(),
                      need_reserve ? reserve[d].data_ptr<scalar_t>() : nullptr,
                      h_n[d].data_ptr<scalar_t>()});
    }
    GRU_TORCH_CPU_PICK(cpu, forward_layer<scalar_t>)(shape, args.data());
  });
  return {output, h_n, reserve};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_layer_backward_cpu(
    const Tensor& grad_output_, const Tensor& grad_h_n_, const Tensor& input_,
    const Tensor& hx, const Tensor& w_ih_, const Tensor& w_hh_, const OptTensor& b_ih,
    const OptTensor& b_hh, const OptTensor& mask_, const OptTensor& lengths_,
    bool reset_after, const Tensor& reserve_, const Tensor& output_) {
  check_layer_args(input_, hx, w_ih_, w_hh_, b_ih, b_hh, mask_, lengths_, reset_after,
                   "gru_layer_backward");
  const int64_t T = input_.size(0), B = input_.size(1), I = input_.size(2);
  const int64_t D = w_ih_.size(0), G = w_ih_.size(1), H = G / 3;
  const std::vector<int64_t> out_shape{T, B, D * H};  // grad_output's
  TORCH_CHECK(grad_output_.sizes() == at::IntArrayRef(out_shape),
              "gru_layer_backward: grad_output must have shape ", at::IntArrayRef(out_shape),
              ", got ", grad_output_.sizes());
  TORCH_CHECK(grad_h_n_.sizes() == hx.sizes(), "gru_layer_backward: grad_h_n must have shape ",
              hx.sizes(), ", got ", grad_h_n_.sizes());
  TORCH_CHECK(reserve_.sizes() == at::IntArrayRef({D, T, B, cpu::kSlots * H}),
              "gru_layer_backward: reserve has shape ", reserve_.sizes(),
              "; it must be the one gru_layer returned with need_reserve=True");
  TORCH_CHECK(output_.sizes() == at::IntArrayRef(out_shape) &&
                  output_.scalar_type() == input_.scalar_type() &&
                  output_.device() == input_.device(),
              "gru_layer_backward: output must be the forward's output, ", at::IntArrayRef(out_shape),
              " ", input_.scalar_type(), " on ", input_.device(), "; got ", output_.sizes(), " ",
              output_.scalar_type(), " on ", output_.device());
  check_lengths_values(lengths_, T);
  const Tensor input = rows_in_place(input_), w_ih = w_ih_.contiguous(),
               w_hh = w_hh_.contiguous(), reserve = reserve_.contiguous(),
               grad_h_n = grad_h_n_.contiguous(), output = output_.contiguous(),
               h0 = hx.contiguous();
  // The output's gradient is read in place when its units are contiguous or expanded (as
  // loss = out.sum() gives), which spares materializing a [T, B, D*H] tensor.
  const int64_t unit_stride = grad_output_.stride(2);
  const Tensor grad_output = unit_stride == 0 || unit_stride == 1 ? grad_output_
                                                                   : grad_output_.contiguous();
  const OptTensor mask = mask_ ? OptTensor(mask_->contiguous()) : std::nullopt;
  const OptTensor lengths = lengths_ ? OptTensor(lengths_->contiguous()) : std::nullopt;
  const auto opts = input.options();

  Tensor grad_input = cpu::pooled_empty({T, B, I}, opts);
  Tensor grad_hx = at::empty({D, B, H}, opts);
  Tensor grad_w_ih = cpu::serial_zeros({D, G, I}, opts);
  Tensor grad_w_hh = cpu::serial_zeros({D, G, H}, opts);
  Tensor grad_b_ih = cpu::serial_zeros({D, G}, opts);
  Tensor grad_b_hh = cpu::serial_zeros({D, G}, opts);
  if (B == 0) {
    grad_input.zero_();
    grad_hx.zero_();
    return {grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh};
  }
  const cpu::LayerShape shape{T, B, I, H, D, reset_after};

  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "gru_layer_backward_cpu", [&] {
    const cpu::DenormalModeGuard mode(cpu::op_denormal_mode<scalar_t>());
    for (int64_t d = 0; d < D; ++d) {
      const cpu::BackwardArgs<scalar_t> args{
          input.const_data_ptr<scalar_t>(), {input.stride(0), input.stride(1)}, w_ih[d],
          w_hh[d].const_data_ptr<scalar_t>(),
          ptr_or_null<scalar_t>(mask, d),
          lengths ? lengths->const_data_ptr<int64_t>() : nullptr,
          reserve[d].const_data_ptr<scalar_t>(), output.const_data_ptr<scalar_t>(),
          h0[d].const_data_ptr<scalar_t>(), grad_output.const_data_ptr<scalar_t>(),
          {grad_output.stride(0), grad_output.stride(1), grad_output.stride(2)},
          grad_h_n[d].const_data_ptr<scalar_t>(), grad_input.data_ptr<scalar_t>(),
          grad_hx[d].data_ptr<scalar_t>(), grad_w_ih[d], grad_w_hh[d], grad_b_ih[d],
          grad_b_hh[d]};
      GRU_TORCH_CPU_PICK(cpu, backward_direction<scalar_t>)(shape, d, args);
    }
  });
  return {grad_input, grad_hx, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh};
}

// The split a layer call of this size would use now: (by_rows, threads, chunk_rows,
// chunks); by columns, chunk_rows is the batch and chunks 1.
std::tuple<bool, int64_t, int64_t, int64_t> cpu_split(int64_t batch, int64_t input_size,
                                                      int64_t hidden_size) {
  TORCH_CHECK(batch >= 0 && input_size >= 0 && hidden_size > 0,
              "cpu_split: sizes must be >= 0 (hidden_size > 0), got batch=", batch,
              ", input_size=", input_size, ", hidden_size=", hidden_size);
  const cpu::Split s = cpu::layer_split({1, batch, input_size, hidden_size, 1, true});
  return {s.by_rows, s.threads, s.chunk_rows, s.by_rows ? s.chunks : 1};
}

// The denormal mode (cpu_denormals.h: bit 0 flush-to-zero, bit 1 denormals-are-zero) of
// the calling thread, then of each of torch's intra-op threads (under OpenMP the first
// of those is the calling thread itself).
std::vector<int64_t> denormal_modes() {
  std::vector<int64_t> modes{cpu::denormal_mode()};
  const int64_t threads = cpu::available_threads();
  std::vector<int64_t> workers(threads, -1);
  // One index per thread: ATen's OpenMP parallel_for gives each thread of the team
  // a chunk of ceil(n / threads) = 1.
  at::parallel_for(0, threads, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) workers[i] = cpu::denormal_mode();
  });
  modes.insert(modes.end(), workers.begin(), workers.end());
  return modes;
}

// Sets the denormal modes that denormal_modes() reads: modes[0] for the calling thread and
// modes[1 + i] for intra-op thread i, or one mode for all of them (what
// gru_torch.flush_denormal() uses, so that every op of a training step flushes).
void set_denormal_modes(std::vector<int64_t> modes) {
  const int64_t threads = cpu::available_threads();
  TORCH_CHECK(modes.size() == 1 || static_cast<int64_t>(modes.size()) == 1 + threads,
              "_set_denormal_modes: give one mode, or one for the calling thread and one for "
              "each of the ", threads, " intra-op threads; got ", modes.size());
  for (const int64_t m : modes) {
    TORCH_CHECK(m >= 0 && m <= cpu::kFlushDenormals,
                "_set_denormal_modes: a mode is in [0, 3] (bit 0 flush-to-zero, bit 1 "
                "denormals-are-zero), got ", m);
  }
  auto mode_of = [&](int64_t i) { return static_cast<int>(modes[modes.size() == 1 ? 0 : i]); };
  at::parallel_for(0, threads, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) cpu::set_denormal_mode(mode_of(1 + i));
  });
  // Last: under OpenMP the calling thread is also the region's thread 0.
  cpu::set_denormal_mode(mode_of(0));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gru_torch, m) {
  m.def("cpu_split(int batch, int input_size, int hidden_size) -> (bool, int, int, int)",
        &cpu_split);
  m.def("_denormal_modes() -> int[]", &denormal_modes);
  m.def("_set_denormal_modes(int[] modes) -> ()", &set_denormal_modes);
}

TORCH_LIBRARY_IMPL(gru_torch, CPU, m) {
  m.impl("gru_layer", &gru_layer_cpu);
  m.impl("gru_layer_backward", &gru_layer_backward_cpu);
}

}  // namespace gru_torch
