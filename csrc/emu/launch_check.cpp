// The emulator's launch check of the CUDA op's launches (for the tests: every
// notebook shape passes an A100's and an H100's limits).
#include "../device/entry.h"
#include "../device/gru_dispatch.cuh"
#include "../device/gru_stepwise.cuh"

namespace gru_torch::emulated {

std::vector<std::string> launch_check(plan::Dtype dt, const plan::Plan& p, int H, int B, int D,
                                      int cell, const std::string& gpu) {
  std::vector<gt::LaunchSpec> specs;
  const bool keep_prev = plan::is_gru(cell);
  if (p.path == plan::Path::Persistent) {
    for (bool backward : {false, true}) {
      switch (dt) {
        case plan::Dtype::F32: specs.push_back(gt::gru::persistent_spec<float>(p, cell, keep_prev, backward, B, D)); break;
        case plan::Dtype::BF16: specs.push_back(gt::gru::persistent_spec<gt::bf16>(p, cell, keep_prev, backward, B, D)); break;
        default: specs.push_back(gt::gru::persistent_spec<gt::f16>(p, cell, keep_prev, backward, B, D)); break;
      }
    }
  } else if (plan::is_gru(cell)) {
    specs.push_back(gt::gru::step_spec(B, H));
  } else {
    throw std::invalid_argument("no CUDA path for cell " + std::to_string(cell) + " here: " + p.why);
  }
  std::vector<std::string> out;
  for (const auto& s : specs) {
    gt::check_launch(s, gpu);
    out.push_back(std::string(s.name) + " grid (" + std::to_string(s.grid.x) + "," +
                  std::to_string(s.grid.y) + ") block " + std::to_string(s.block.x) + " smem " +
                  std::to_string(s.smem) + " [" + p.why + "]");
  }
  return out;
}

}  // namespace gru_torch::emulated
