// Schemas of the gru_torch ops and the argument checks every backend shares.
// Kernels register themselves beside their code (gru_cpu.cpp, gru_cuda.cpp, emu_ops.cpp).
#include <Python.h>
#include <torch/library.h>

#include "gru.h"

namespace gru_torch {

namespace {

void check_param(const at::Tensor& p, const at::Tensor& input, const char* name,
                 at::IntArrayRef expected, const char* where) {
  TORCH_CHECK(p.device() == input.device(), where, ": ", name, " is on ", p.device(),
              " but input is on ", input.device());
  TORCH_CHECK(p.scalar_type() == input.scalar_type(), where, ": ", name, " has dtype ",
              p.scalar_type(), " but input has dtype ", input.scalar_type());
  TORCH_CHECK(p.sizes() == expected, where, ": ", name, " must have shape ", expected,
              ", got ", p.sizes());
}

}  // namespace

void check_layer_args(const at::Tensor& input, const at::Tensor& hx,
                      const at::Tensor& w_ih, const at::Tensor& w_hh,
                      const std::optional<at::Tensor>& b_ih,
                      const std::optional<at::Tensor>& b_hh,
                      const std::optional<at::Tensor>& mask,
                      const std::optional<at::Tensor>& lengths,
                      bool reset_after, const char* where) {
  TORCH_CHECK(input.dim() == 3, where, ": input must be [T, B, I], got ", input.sizes());
  TORCH_CHECK(at::isFloatingType(input.scalar_type()), where,
              ": input must be a floating-point tensor, got ", input.scalar_type());
  TORCH_CHECK(w_ih.dim() == 3, where, ": w_ih must be [D, 3H, I], got ", w_ih.sizes());
  const int64_t T = input.size(0), B = input.size(1), I = input.size(2);
  const int64_t D = w_ih.size(0), G = w_ih.size(1), H = G / 3;
  TORCH_CHECK(T > 0, where, ": input has no time steps");
  TORCH_CHECK(D == 1 || D == 2, where, ": w_ih must hold 1 or 2 directions, got ", D);
  TORCH_CHECK(G > 0 && G % 3 == 0, where, ": w_ih.size(1) must be 3*hidden_size, got ", G);
  check_param(w_ih, input, "w_ih", {D, G, I}, where);
  check_param(w_hh, input, "w_hh", {D, G, H}, where);
  check_param(hx, input, "hx", {D, B, H}, where);
  if (b_ih) check_param(*b_ih, input, "b_ih", {D, G}, where);
  if (b_hh) {
    TORCH_CHECK(reset_after, where,
                ": b_hh must be None when reset_after=False (the cell has one bias)");
    check_param(*b_hh, input, "b_hh", {D, G}, where);
  }
  if (mask) check_param(*mask, input, "mask", {D, B, H}, where);
  if (lengths) {
    const auto& len = *lengths;
    TORCH_CHECK(len.scalar_type() == at::kLong, where, ": lengths must be int64, got ",
                len.scalar_type());
    TORCH_CHECK(len.dim() == 1 && len.size(0) == B, where,
                ": lengths must be 1-D with one entry per batch row (", B, "), got shape ",
                len.sizes());
    TORCH_CHECK(len.device() == input.device(), where, ": lengths is on ", len.device(),
                " but input is on ", input.device());
  }
}

TORCH_LIBRARY(gru_torch, m) {
  m.def(
      "gru_layer(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor? mask, Tensor? lengths, bool reset_after, bool need_reserve) "
      "-> (Tensor output, Tensor h_n, Tensor reserve)");
  m.def(
      "gru_layer_backward(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor hx, "
      "Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? mask, "
      "Tensor? lengths, bool reset_after, Tensor reserve, Tensor output) "
      "-> (Tensor grad_input, Tensor grad_hx, Tensor grad_w_ih, Tensor grad_w_hh, "
      "Tensor grad_b_ih, Tensor grad_b_hh)");
  // The same ops on CPU tensors, run by the CUDA kernels under the emulator
  // (gru_torch.testing.emulate_cuda): csrc/emu_ops.cpp.
  m.def(
      "gru_layer_emulated(Tensor input, Tensor hx, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor? mask, Tensor? lengths, bool reset_after, bool need_reserve) "
      "-> (Tensor output, Tensor h_n, Tensor reserve)");
  m.def(
      "gru_layer_backward_emulated(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor hx, "
      "Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? mask, "
      "Tensor? lengths, bool reset_after, Tensor reserve, Tensor output) "
      "-> (Tensor grad_input, Tensor grad_hx, Tensor grad_w_ih, Tensor grad_w_hh, "
      "Tensor grad_b_ih, Tensor grad_b_hh)");
  // The device self-tests (csrc/device/selftest_kernels.cuh): on CPU tensors through
  // the emulator, on CUDA tensors on the GPU.
  m.def("_device_selftest(str name, Tensor(a!)[] buffers, int[] ints) -> ()");
}

}  // namespace gru_torch

// `import gru_torch._C` loads this library, which registers the ops above.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
