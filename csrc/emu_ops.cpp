// The emulator's torch face: its switch (gru_torch.testing.emulate_cuda), the device
// self-tests on CPU tensors, and the fused layer ops on CPU tensors run by the CUDA
// kernels (the same source nvcc builds) under the emulator.
#include <torch/library.h>

#include <ATen/ATen.h>

#include <map>

#include "gru_stepwise_op.h"
// After the torch headers: the port header defines CUDA's spellings for the host.
#include "device/gru_dispatch.cuh"
#include "device/gru_stepwise.cuh"
#include "device/selftest_kernels.cuh"

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
  std::vector<gt::selftest::Buffer> out;
  for (const auto& t : bufs) {
    TORCH_CHECK(t.is_contiguous() && t.is_cpu(), "_device_selftest: buffers must be contiguous CPU tensors");
    out.push_back({t.data_ptr(), size_t(t.nbytes())});
  }
  gt::selftest::run(name, out, ints.vec(), nullptr);
}

// The device the emulated ops run on: the emulator, with the limits of the GPU it is
// set to; outputs are NaN-poisoned so that anything a kernel fails to write shows.
struct Emulated {
  static size_t smem_optin(const at::Tensor&) {
    return gt_emu::gpu_props(gt_emu::options().gpu).smem_optin;
  }
  static bool poison() { return true; }
  static void forward(plan::Dtype dt, const plan::Plan& p, const raw::Forward& r) {
    switch (dt) {
      case plan::Dtype::F32: return gt::gru::run_forward<float>(p, r, nullptr);
      case plan::Dtype::BF16: return gt::gru::run_forward<gt::bf16>(p, r, nullptr);
      case plan::Dtype::F16: return gt::gru::run_forward<gt::f16>(p, r, nullptr);
      default: TORCH_CHECK(false, "gru_layer_emulated: no persistent kernel for this dtype");
    }
  }
  static void backward(plan::Dtype dt, const plan::Plan& p, const raw::Backward& r) {
    switch (dt) {
      case plan::Dtype::F32: return gt::gru::run_backward<float>(p, r, nullptr);
      case plan::Dtype::BF16: return gt::gru::run_backward<gt::bf16>(p, r, nullptr);
      case plan::Dtype::F16: return gt::gru::run_backward<gt::f16>(p, r, nullptr);
      default: TORCH_CHECK(false, "gru_layer_backward_emulated: no persistent kernel for this dtype");
    }
  }
  static void step(plan::Dtype dt, const raw::Step& s) {
    switch (dt) {
      case plan::Dtype::F32: return gt::gru::run_step<float>(s, nullptr);
      case plan::Dtype::F64: return gt::gru::run_step<double>(s, nullptr);
      case plan::Dtype::BF16: return gt::gru::run_step<gt::bf16>(s, nullptr);
      case plan::Dtype::F16: return gt::gru::run_step<gt::f16>(s, nullptr);
    }
  }
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
                            const at::Tensor& reserve) {
  return device_op::backward<Emulated>(grad_output, grad_h_n, input, hx, w_ih, w_hh, b_ih, b_hh,
                                       mask, lengths, reset_after, reserve);
}

// The launches the CUDA op would make for a layer of this size on `gpu` ("a100",
// "h100"), each checked against that GPU's limits by the emulator (a refused one
// raises its gt_emu::Error); returns one line per distinct launch.
std::vector<std::string> gru_launch_check(const std::string& dtype, int64_t H, int64_t B, int64_t T,
                                          int64_t D, bool reset_after, bool allow_tf32,
                                          const std::string& gpu) {
  const std::map<std::string, plan::Dtype> dtypes = {
      {"float32", plan::Dtype::F32}, {"float64", plan::Dtype::F64},
      {"bfloat16", plan::Dtype::BF16}, {"float16", plan::Dtype::F16}};
  TORCH_CHECK(dtypes.count(dtype), "_gru_launch_check: unknown dtype ", dtype);
  const plan::Dtype dt = dtypes.at(dtype);
  const plan::Plan p = plan::choose({dt, allow_tf32, int(H), int(B), int(T), int(D), reset_after,
                                     gt_emu::gpu_props(gpu).smem_optin});
  std::vector<gt::LaunchSpec> specs;
  if (p.path == plan::Path::Persistent) {
    for (bool backward : {false, true}) {
      switch (dt) {
        case plan::Dtype::F32: specs.push_back(gt::gru::persistent_spec<float>(p, reset_after, backward, int(B), int(D))); break;
        case plan::Dtype::BF16: specs.push_back(gt::gru::persistent_spec<gt::bf16>(p, reset_after, backward, int(B), int(D))); break;
        default: specs.push_back(gt::gru::persistent_spec<gt::f16>(p, reset_after, backward, int(B), int(D))); break;
      }
    }
  } else {
    specs.push_back(gt::gru::step_spec(int(B), int(H)));
  }
  std::vector<std::string> out;
  for (const auto& s : specs) {
    gt::check_launch(s, gpu);
    out.push_back(std::string(s.name) + " grid (" + std::to_string(s.grid.x) + "," +
                  std::to_string(s.grid.y) + ") block " + std::to_string(s.block.x) + " smem " +
                  std::to_string(s.smem) + " [" + p.why + "]");
  }
  return out;
}

bool tf32_for_rnn() { return at::globalContext().allowTF32CuDNN(at::Float32Op::RNN); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(gru_torch, m) {
  // Whether the fused float32 kernels take TF32 operands now (cuDNN's switch for RNNs).
  m.def("_tf32_for_rnn() -> bool", &tf32_for_rnn);
  m.def("_gru_launch_check(str dtype, int H, int B, int T, int D, bool reset_after, "
        "bool allow_tf32, str gpu) -> str[]", &gru_launch_check);
  m.def("_emu_configure(bool enabled, str gpu, bool race_check, bool init_check, "
        "int shuffle_seed) -> ()", &emu_configure);
  m.def("_emu_last_stats() -> float[]", &emu_last_stats);
}

TORCH_LIBRARY_IMPL(gru_torch, CPU, m) {
  m.impl("_device_selftest", &device_selftest_cpu);
  m.impl("gru_layer_emulated", &gru_layer_emulated);
  m.impl("gru_layer_backward_emulated", &gru_layer_backward_emulated);
}

}  // namespace gru_torch
