// What the nvcc-compiled kernel files export to the torch side (gru_cuda.cpp). The
// kernel files include no torch header, which keeps nvcc fast; the torch side passes
// raw pointers, sizes and the current stream.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "../device/gru_plan.h"
#include "../device/gru_raw.h"

namespace gru_torch::cuda {

void run_selftest(const std::string& name, const std::vector<void*>& data,
                  const std::vector<size_t>& bytes, const std::vector<int64_t>& ints,
                  cudaStream_t stream);

void persistent_forward_f32(const plan::Plan&, const raw::Forward&, cudaStream_t);
void persistent_forward_bf16(const plan::Plan&, const raw::Forward&, cudaStream_t);
void persistent_forward_f16(const plan::Plan&, const raw::Forward&, cudaStream_t);
void persistent_backward_f32(const plan::Plan&, const raw::Backward&, cudaStream_t);
void persistent_backward_bf16(const plan::Plan&, const raw::Backward&, cudaStream_t);
void persistent_backward_f16(const plan::Plan&, const raw::Backward&, cudaStream_t);
void step(plan::Dtype, const raw::Step&, cudaStream_t);

}  // namespace gru_torch::cuda
