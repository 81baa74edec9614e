// The device self-test kernels' entry point (csrc/device/selftest_kernels.cuh), for
// nvcc and, through csrc/emu/selftest.cpp, the emulator.
#include "../device/entry.h"
#include "../device/selftest_kernels.cuh"

namespace gru_torch::GT_ENTRY_NAMESPACE {

void run_selftest(const std::string& name, const std::vector<void*>& data,
                  const std::vector<size_t>& bytes, const std::vector<int64_t>& ints, void* stream) {
  std::vector<gt::selftest::Buffer> bufs;
  for (size_t i = 0; i < data.size(); ++i) bufs.push_back({data[i], bytes[i]});
  gt::selftest::run(name, bufs, ints, stream);
}

}  // namespace gru_torch::GT_ENTRY_NAMESPACE
