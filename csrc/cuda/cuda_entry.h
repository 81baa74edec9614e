// What the nvcc-compiled kernel files export to the torch side (gru_cuda.cpp). The
// kernel files include no torch header, which keeps nvcc fast; the torch side passes
// raw pointers, sizes and the current stream.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace gru_torch::cuda {

void run_selftest(const std::string& name, const std::vector<void*>& data,
                  const std::vector<size_t>& bytes, const std::vector<int64_t>& ints,
                  cudaStream_t stream);

}  // namespace gru_torch::cuda
