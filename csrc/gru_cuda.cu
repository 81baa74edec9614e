// CUDA side of the fused GRU layer op.
//
// Status: a placeholder. The persistent whole-sequence kernel (csrc/README.md)
// is not written yet, so the CUDA
// registrations below raise a clear error, and gru_torch's "auto" backend never
// picks the fused op on CUDA. What is here is compiled on every CI run so the
// CUDA build stays healthy: the step's pointwise cell (reset_after=true) as a
// kernel, which no GPU has run yet and nothing calls.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "gru.h"

namespace gru_torch {
namespace {

template <typename T>
__device__ __forceinline__ T sigmoid(T x) {
  return T(1) / (T(1) + exp(-x));
}

// One step of the reset_after=true cell for B rows of H units.
// gx, gh: [B, G]; h: [B, H] in/out; out: [B, H].
template <typename scalar_t>
__global__ void pointwise_step_after(int64_t B, int64_t H, const scalar_t* __restrict__ gx,
                                     const scalar_t* __restrict__ gh, scalar_t* __restrict__ h,
                                     scalar_t* __restrict__ out) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= B * H) return;
  const int64_t b = i / H, j = i % H, G = 3 * H;
  const scalar_t r = sigmoid(gx[b * G + j] + gh[b * G + j]);
  const scalar_t z = sigmoid(gx[b * G + H + j] + gh[b * G + H + j]);
  const scalar_t n = tanh(gx[b * G + 2 * H + j] + r * gh[b * G + 2 * H + j]);
  const scalar_t hn = (scalar_t(1) - z) * n + z * h[i];
  h[i] = hn;
  out[i] = hn;
}

template __global__ void pointwise_step_after<float>(int64_t, int64_t, const float*,
                                                     const float*, float*, float*);

[[noreturn]] void not_built(const char* op) {
  TORCH_CHECK_NOT_IMPLEMENTED(false, "gru_torch::", op,
                              ": the fused CUDA kernel is not implemented yet; use "
                              "backend='cudnn' (or 'auto', which picks it) on CUDA");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_layer_cuda(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& mask,
    const std::optional<at::Tensor>& lengths, bool reset_after, bool /*need_reserve*/) {
  check_layer_args(input, hx, w_ih, w_hh, b_ih, b_hh, mask, lengths, reset_after, "gru_layer");
  not_built("gru_layer");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gru_layer_backward_cuda(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                        const at::Tensor&, const at::Tensor&, const at::Tensor&,
                        const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                        const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                        bool, const at::Tensor&) {
  not_built("gru_layer_backward");
}

}  // namespace

TORCH_LIBRARY_IMPL(gru_torch, CUDA, m) {
  m.impl("gru_layer", &gru_layer_cuda);
  m.impl("gru_layer_backward", &gru_layer_backward_cuda);
}

}  // namespace gru_torch
