// The per-step path's pointwise kernels, every dtype; for nvcc and, through
// csrc/emu/gru_step.cpp, the emulator.
#include "../device/entry.h"
#include "../device/gru_stepwise.cuh"

namespace gru_torch::GT_ENTRY_NAMESPACE {

void step(plan::Dtype dt, const raw::Step& s, void* stream) {
  switch (dt) {
    case plan::Dtype::F32: return gt::gru::run_step<float>(s, stream);
    case plan::Dtype::F64: return gt::gru::run_step<double>(s, stream);
    case plan::Dtype::BF16: return gt::gru::run_step<gt::bf16>(s, stream);
    case plan::Dtype::F16: return gt::gru::run_step<gt::f16>(s, stream);
  }
}

}  // namespace gru_torch::GT_ENTRY_NAMESPACE
