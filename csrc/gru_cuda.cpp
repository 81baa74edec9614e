// The CUDA side of the gru_torch ops (the GRU op and the family op's RNNs), torch
// half: the device guard, the current
// stream, the device's limits, and the layer op written once for every device
// (gru_device_op.h, gru_stepwise_op.h). The kernels are compiled by nvcc in
// csrc/kernels/*.cu, which include no torch header; this file reaches them through
// device/entry.h.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>

#include "device/entry.h"
#include "gru_stepwise_op.h"

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
  cuda::run_selftest(name, data, bytes, ints.vec(), at::cuda::getCurrentCUDAStream().stream());
}

// The GPU as a device_op policy.
struct Cuda {
  static size_t smem_optin(const at::Tensor& like) {
    return at::cuda::getDeviceProperties(like.device().index())->sharedMemPerBlockOptin;
  }
  static int sm(const at::Tensor& like) {
    const cudaDeviceProp* p = at::cuda::getDeviceProperties(like.device().index());
    return p->major * 10 + p->minor;
  }
  // GRU_TORCH_POISON=1 NaN-fills outputs before the kernels (the tests set it), so a
  // value a kernel fails to write shows instead of passing as stale memory.
  static bool poison() {
    static const bool on = [] {
      const char* v = std::getenv("GRU_TORCH_POISON");
      return v && std::strcmp(v, "1") == 0;
    }();
    return on;
  }
  static void* stream() { return at::cuda::getCurrentCUDAStream().stream(); }
  static void forward(plan::Dtype dt, const plan::Plan& p, const raw::Forward& r) {
    switch (dt) {
      case plan::Dtype::F32: return cuda::persistent_forward_f32(p, r, stream());
      case plan::Dtype::BF16: return cuda::persistent_forward_bf16(p, r, stream());
      case plan::Dtype::F16: return cuda::persistent_forward_f16(p, r, stream());
      default: TORCH_CHECK(false, "gru_layer: no persistent CUDA kernel for this dtype");
    }
  }
  static void backward(plan::Dtype dt, const plan::Plan& p, const raw::Backward& r) {
    switch (dt) {
      case plan::Dtype::F32: return cuda::persistent_backward_f32(p, r, stream());
      case plan::Dtype::BF16: return cuda::persistent_backward_bf16(p, r, stream());
      case plan::Dtype::F16: return cuda::persistent_backward_f16(p, r, stream());
      default: TORCH_CHECK(false, "gru_layer_backward: no persistent CUDA kernel for this dtype");
    }
  }
  static void step(plan::Dtype dt, const raw::Step& s) { cuda::step(dt, s, stream()); }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_layer_cuda(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
    const std::optional<at::Tensor>& b_hh, const std::optional<at::Tensor>& mask,
    const std::optional<at::Tensor>& lengths, bool reset_after, bool need_reserve) {
  const c10::cuda::CUDAGuard guard(input.device());
  return device_op::forward<Cuda>(input, hx, w_ih, w_hh, b_ih, b_hh, mask, lengths, reset_after,
                                  need_reserve);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gru_layer_backward_cuda(const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                        const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
                        const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                        const std::optional<at::Tensor>& b_hh,
                        const std::optional<at::Tensor>& mask,
                        const std::optional<at::Tensor>& lengths, bool reset_after,
                        const at::Tensor& reserve,
                        const at::Tensor& /*output: the reserve keeps the states*/) {
  const c10::cuda::CUDAGuard guard(input.device());
  return device_op::backward<Cuda>(grad_output, grad_h_n, input, hx, w_ih, w_hh, b_ih, b_hh, mask,
                                   lengths, reset_after, reserve);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> family_layer_cuda(
    const at::Tensor& gx, const at::Tensor& hx, const std::optional<at::Tensor>& cx,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_hn,
    const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& lengths, int64_t cell,
    int64_t gate, bool need_reserve) {
  const c10::cuda::CUDAGuard guard(gx.device());
  return device_op::family_forward<Cuda>(gx, hx, cx, w_hh, b_hn, mask, lengths, cell, gate,
                                         need_reserve);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> family_layer_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& grad_h_n, const std::optional<at::Tensor>& grad_c_n,
    const at::Tensor& gx, const at::Tensor& hx, const std::optional<at::Tensor>& cx,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_hn,
    const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& lengths, int64_t cell,
    int64_t gate, const at::Tensor& reserve, const at::Tensor& output) {
  const c10::cuda::CUDAGuard guard(gx.device());
  return device_op::family_backward<Cuda>(grad_output, grad_h_n, grad_c_n, gx, hx, cx, w_hh, b_hn,
                                          mask, lengths, cell, gate, reserve, output);
}

}  // namespace

TORCH_LIBRARY_IMPL(gru_torch, CUDA, m) {
  m.impl("family_layer", &family_layer_cuda);
  m.impl("family_layer_backward", &family_layer_backward_cuda);
  m.impl("gru_layer", &gru_layer_cuda);
  m.impl("gru_layer_backward", &gru_layer_backward_cuda);
  m.impl("_device_selftest", &device_selftest_cuda);
}

}  // namespace gru_torch
