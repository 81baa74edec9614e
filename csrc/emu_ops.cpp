// The emulator's torch face: its switch (gru_torch.testing.emulate_cuda) and the
// device self-tests on CPU tensors. The emulated GRU layer ops join them here.
#include <torch/library.h>

#include <ATen/ATen.h>

// After the torch headers: the port header defines CUDA's spellings for the host.
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

std::vector<gt::selftest::Buffer> buffers(const at::TensorList& bufs, const char* device) {
  std::vector<gt::selftest::Buffer> out;
  for (const auto& t : bufs) {
    TORCH_CHECK(t.is_contiguous(), "_device_selftest: buffers must be contiguous");
    TORCH_CHECK(t.device().type() == c10::Device(device).type(), "_device_selftest: every buffer must be on ", device);
    out.push_back({t.data_ptr(), size_t(t.nbytes())});
  }
  return out;
}

void device_selftest_cpu(const std::string& name, at::TensorList bufs, at::IntArrayRef ints) {
  gt::selftest::run(name, buffers(bufs, "cpu"), ints.vec(), nullptr);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gru_torch, m) {
  m.def("_emu_configure(bool enabled, str gpu, bool race_check, bool init_check, "
        "int shuffle_seed) -> ()", &emu_configure);
  m.def("_emu_last_stats() -> float[]", &emu_last_stats);
}

TORCH_LIBRARY_IMPL(gru_torch, CPU, m) {
  m.impl("_device_selftest", &device_selftest_cpu);
}

}  // namespace gru_torch
