// The persistent GRU kernels for f32 tensors, one file per dtype so the compiler
// builds them in parallel; for nvcc and, through csrc/emu/gru_persistent_f32.cpp, the emulator.
#include "../device/entry.h"
#include "../device/gru_dispatch.cuh"

namespace gru_torch::GT_ENTRY_NAMESPACE {

void persistent_forward_f32(const plan::Plan& p, const raw::Forward& r, void* stream) {
  gt::gru::run_forward<float>(p, r, stream);
}

void persistent_backward_f32(const plan::Plan& p, const raw::Backward& r, void* stream) {
  gt::gru::run_backward<float>(p, r, stream);
}

}  // namespace gru_torch::GT_ENTRY_NAMESPACE
