// The persistent GRU kernels for f32 tensors (one file per dtype, so nvcc builds them in parallel).
#include "../device/gru_dispatch.cuh"
#include "cuda_entry.h"

namespace gru_torch::cuda {

void persistent_forward_f32(const plan::Plan& p, const raw::Forward& r, cudaStream_t st) {
  gt::gru::run_forward<float>(p, r, st);
}

void persistent_backward_f32(const plan::Plan& p, const raw::Backward& r, cudaStream_t st) {
  gt::gru::run_backward<float>(p, r, st);
}

}  // namespace gru_torch::cuda
