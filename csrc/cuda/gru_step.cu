// The per-step path's pointwise kernels, every dtype.
#include "../device/gru_stepwise.cuh"
#include "cuda_entry.h"

namespace gru_torch::cuda {

void step(plan::Dtype dt, const raw::Step& s, cudaStream_t st) {
  switch (dt) {
    case plan::Dtype::F32: return gt::gru::run_step<float>(s, st);
    case plan::Dtype::F64: return gt::gru::run_step<double>(s, st);
    case plan::Dtype::BF16: return gt::gru::run_step<gt::bf16>(s, st);
    case plan::Dtype::F16: return gt::gru::run_step<gt::f16>(s, st);
  }
}

}  // namespace gru_torch::cuda
