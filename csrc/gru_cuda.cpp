// The CUDA side of the gru_torch ops, torch half: argument checks, allocation, the
// current stream and device guard. The kernels are compiled by nvcc in csrc/cuda/*.cu,
// which include no torch header; this file reaches them through cuda/cuda_entry.h.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cuda/cuda_entry.h"
#include "gru.h"

namespace gru_torch {
namespace {

void device_selftest_cuda(const std::string& name, at::TensorList bufs, at::IntArrayRef ints) {
  TORCH_CHECK(!bufs.empty(), "_device_selftest: no buffers");
  const c10::cuda::CUDAGuard guard(bufs[0].device());
  std::vector<void*> data;
  std::vector<size_t> bytes;
  for (const auto& t : bufs) {
    TORCH_CHECK(t.is_cuda() && t.is_contiguous(), "_device_selftest: buffers must be contiguous CUDA tensors");
    data.push_back(t.data_ptr());
    bytes.push_back(size_t(t.nbytes()));
  }
  cuda::run_selftest(name, data, bytes, ints.vec(), at::cuda::getCurrentCUDAStream());
}

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
  m.impl("_device_selftest", &device_selftest_cuda);
}

}  // namespace gru_torch
