// The device self-test kernels on a real GPU (the emulator runs the same source on
// the CPU; see csrc/emu_ops.cpp).
#include "../device/selftest_kernels.cuh"
#include "cuda_entry.h"

namespace gru_torch::cuda {

void run_selftest(const std::string& name, const std::vector<void*>& data,
                  const std::vector<size_t>& bytes, const std::vector<int64_t>& ints,
                  cudaStream_t stream) {
  std::vector<gt::selftest::Buffer> bufs;
  for (size_t i = 0; i < data.size(); ++i) bufs.push_back({data[i], bytes[i]});
  gt::selftest::run(name, bufs, ints, stream);
}

}  // namespace gru_torch::cuda
