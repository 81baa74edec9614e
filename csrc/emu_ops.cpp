// The emulator's torch face: its switch (gru_torch.testing.emulate_cuda), the device
// self-tests on CPU tensors, and the fused layer ops on CPU tensors run by the CUDA
// kernels (the same source nvcc builds) under the emulator.
#include <torch/library.h>

#include <ATen/ATen.h>

#include <map>

#include "device/entry.h"
#include "emu/emulator.h"
#include "gru_stepwise_op.h"

namespace gru_torch {
namespace {

// enabled, gpu, race_check, init_check, shuffle_seed (< 0: none)
void emu_configure(bool enabled, const std::string& gpu, bool race_check, bool init_check,
                   int64_t shuffle_seed) {
  gt_emu::Options o = gt_emu::options();
  o.enabled = enabled;
  o.gpu = gpu;
  o.race_check = race_check;
  o.init_check = init_check;
  o.shuffle_seed = shuffle_seed < 0 ? std::nullopt : std::optional<uint64_t>(uint64_t(shuffle_seed));
  gt_emu::set_options(o);
}

// seconds, fiber switches, __syncthreads, warp collectives, shared-memory accesses
std::vector<double> emu_last_stats() {
  const gt_emu::Stats s = gt_emu::last_stats();
  return {s.seconds, double(s.switches), double(s.barriers), double(s.warp_ops),
          double(s.smem_accesses)};
}

void device_selftest_cpu(const std::string& name, at::TensorList bufs, at::IntArrayRef ints) {
  std::vector<void*> data;
  std::vector<size_t> bytes;
  for (const auto& t : bufs) {
    TORCH_CHECK(t.is_contiguous() && t.is_cpu(), "_device_selftest: buffers must be contiguous CPU tensors");
    data.push_back(t.data_ptr());
    bytes.push_back(size_t(t.nbytes()));
  }
  emulated::run_selftest(name, data, bytes, ints.vec(), nullptr);
}

// The device the emulated ops run on: the emulator, with the limits of the GPU it is
// set to; outputs are NaN-poisoned so that anything a kernel fails to write shows.
struct Emulated {
  static size_t smem_optin(const at::Tensor&) {
    return gt_emu::gpu_props(gt_emu::options().gpu).smem_optin;
  }
  static int sm(const at::Tensor&) { return gt_emu::gpu_props(gt_emu::options().gpu).sm; }
  static bool poison() { return true; }
  static void forward(plan::Dtype dt, const plan::Plan& p, const raw::Forward& r) {
    switch (dt) {
      case plan::Dtype::F32: return emulated::persistent_forward_f32(p, r, nullptr);
      case plan::Dtype::BF16: return emulated::persistent_forward_bf16(p, r, nullptr);
      case plan::Dtype::F16: return emulated::persistent_forward_f16(p, r, nullptr);
      default: TORCH_CHECK(false, "gru_layer_emulated: no persistent kernel for this dtype");
    }
  }
  static void backward(plan::Dtype dt, const plan::Plan& p, const raw::Backward& r) {
    switch (dt) {
      case plan::Dtype::F32: return emulated::persistent_backward_f32(p, r, nullptr);
      case plan::Dtype::BF16: return emulated::persistent_backward_bf16(p, r, nullptr);
      case plan::Dtype::F16: return emulated::persistent_backward_f16(p, r, nullptr);
      default: TORCH_CHECK(false, "gru_layer_backward_emulated: no persistent kernel for this dtype");
    }
  }
  static void step(plan::Dtype dt, const raw::Step& s) { emulated::step(dt, s, nullptr); }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> gru_layer_emulated(
    const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih, const at::Tensor& w_hh,
    const std::optional<at::Tensor>& b_ih, const std::optional<at::Tensor>& b_hh,
    const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& lengths,
    bool reset_after, bool need_reserve) {
  return device_op::forward<Emulated>(input, hx, w_ih, w_hh, b_ih, b_hh, mask, lengths,
                                      reset_after, need_reserve);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
gru_layer_backward_emulated(const at::Tensor& grad_output, const at::Tensor& grad_h_n,
                            const at::Tensor& input, const at::Tensor& hx, const at::Tensor& w_ih,
                            const at::Tensor& w_hh, const std::optional<at::Tensor>& b_ih,
                            const std::optional<at::Tensor>& b_hh,
                            const std::optional<at::Tensor>& mask,
                            const std::optional<at::Tensor>& lengths, bool reset_after,
                            const at::Tensor& reserve,
                            const at::Tensor& /*output: the reserve keeps the states*/) {
  return device_op::backward<Emulated>(grad_output, grad_h_n, input, hx, w_ih, w_hh, b_ih, b_hh,
                                       mask, lengths, reset_after, reserve);
}

// The family op (csrc/cpu/family_layer.cpp's schema) on CPU tensors, run by the CUDA
// kernels under the emulator: the cells device_op::family_forward serves.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> family_layer_emulated(
    const at::Tensor& gx, const at::Tensor& hx, const std::optional<at::Tensor>& cx,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_hn,
    const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& lengths, int64_t cell,
    int64_t gate, bool need_reserve) {
  return device_op::family_forward<Emulated>(gx, hx, cx, w_hh, b_hn, mask, lengths, cell, gate,
                                             need_reserve);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> family_layer_backward_emulated(
    const at::Tensor& grad_output, const at::Tensor& grad_h_n, const std::optional<at::Tensor>& grad_c_n,
    const at::Tensor& gx, const at::Tensor& hx, const std::optional<at::Tensor>& cx,
    const at::Tensor& w_hh, const std::optional<at::Tensor>& b_hn,
    const std::optional<at::Tensor>& mask, const std::optional<at::Tensor>& lengths, int64_t cell,
    int64_t gate, const at::Tensor& reserve, const at::Tensor& output) {
  return device_op::family_backward<Emulated>(grad_output, grad_h_n, grad_c_n, gx, hx, cx, w_hh, b_hn,
                                              mask, lengths, cell, gate, reserve, output);
}

// The launches the CUDA op would make for a layer of this size and cell (the family
// op's code) on `gpu` ("a100", "h100"), each checked against that GPU's limits by the
// emulator (a refused one raises its gt_emu::Error); returns one line per distinct
// launch.
std::vector<std::string> gru_launch_check(const std::string& dtype, int64_t H, int64_t B, int64_t T,
                                          int64_t D, int64_t cell, bool allow_tf32,
                                          const std::string& gpu) {
  const std::map<std::string, plan::Dtype> dtypes = {
      {"float32", plan::Dtype::F32}, {"float64", plan::Dtype::F64},
      {"bfloat16", plan::Dtype::BF16}, {"float16", plan::Dtype::F16}};
  TORCH_CHECK(dtypes.count(dtype), "_gru_launch_check: unknown dtype ", dtype);
  const plan::Dtype dt = dtypes.at(dtype);
  const gt_emu::GpuProps& props = gt_emu::gpu_props(gpu);
  TORCH_CHECK(cell >= 0 && cell <= plan::kRnnRelu, "_gru_launch_check: unknown cell code ", cell);
  const plan::Plan p = plan::choose({dt, allow_tf32, int(H), int(B), int(T), int(D), int(cell),
                                     props.smem_optin, props.sm});
  std::vector<std::string> out = emulated::launch_check(dt, p, int(H), int(B), int(D), int(cell), gpu);
  return out;
}

bool tf32_for_rnn() { return at::globalContext().allowTF32CuDNN(at::Float32Op::RNN); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(gru_torch, m) {
  // Whether the fused float32 kernels take TF32 operands now (cuDNN's switch for RNNs).
  m.def("_tf32_for_rnn() -> bool", &tf32_for_rnn);
  m.def("_gru_launch_check(str dtype, int H, int B, int T, int D, int cell, "
        "bool allow_tf32, str gpu) -> str[]", &gru_launch_check);
  m.def("_emu_configure(bool enabled, str gpu, bool race_check, bool init_check, "
        "int shuffle_seed) -> ()", &emu_configure);
  m.def("_emu_last_stats() -> float[]", &emu_last_stats);
  // The family op on CPU tensors through the emulated CUDA kernels (family_layer's schema).
  m.def(
      "family_layer_emulated(Tensor gx, Tensor hx, Tensor? cx, Tensor w_hh, Tensor? b_hn, "
      "Tensor? mask, Tensor? lengths, int cell, int gate, bool need_reserve) "
      "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor reserve)");
  m.def(
      "family_layer_backward_emulated(Tensor grad_output, Tensor grad_h_n, Tensor? grad_c_n, "
      "Tensor gx, Tensor hx, Tensor? cx, Tensor w_hh, Tensor? b_hn, Tensor? mask, "
      "Tensor? lengths, int cell, int gate, Tensor reserve, Tensor output) "
      "-> (Tensor grad_gx, Tensor grad_hx, Tensor grad_cx)");
}

TORCH_LIBRARY_IMPL(gru_torch, CPU, m) {
  m.impl("_device_selftest", &device_selftest_cpu);
  m.impl("gru_layer_emulated", &gru_layer_emulated);
  m.impl("gru_layer_backward_emulated", &gru_layer_backward_emulated);
  m.impl("family_layer_emulated", &family_layer_emulated);
  m.impl("family_layer_backward_emulated", &family_layer_backward_emulated);
}

}  // namespace gru_torch
