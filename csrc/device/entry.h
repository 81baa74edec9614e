// What the kernel translation units (csrc/kernels/*.cu) export to the torch side. Each
// is compiled twice: by nvcc into namespace gru_torch::cuda (real CUDA; the stream is a
// cudaStream_t), and by the host compiler through csrc/emu/*.cpp into namespace
// gru_torch::emulated (the emulator; the stream is ignored). Neither includes a torch
// header, which keeps both compilers fast and lets ninja build them in parallel.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "gru_plan.h"
#include "gru_raw.h"

#define GT_ENTRY_POINTS                                                                        \
  void run_selftest(const std::string& name, const std::vector<void*>& data,                   \
                    const std::vector<size_t>& bytes, const std::vector<int64_t>& ints,        \
                    void* stream);                                                             \
  void persistent_forward_f32(const plan::Plan&, const raw::Forward&, void* stream);           \
  void persistent_forward_bf16(const plan::Plan&, const raw::Forward&, void* stream);          \
  void persistent_forward_f16(const plan::Plan&, const raw::Forward&, void* stream);           \
  void persistent_backward_f32(const plan::Plan&, const raw::Backward&, void* stream);         \
  void persistent_backward_bf16(const plan::Plan&, const raw::Backward&, void* stream);        \
  void persistent_backward_f16(const plan::Plan&, const raw::Backward&, void* stream);         \
  void step(plan::Dtype, const raw::Step&, void* stream);

namespace gru_torch {
namespace cuda {
GT_ENTRY_POINTS
}  // namespace cuda
namespace emulated {
GT_ENTRY_POINTS
// The launches the CUDA op would make for a layer, each checked against `gpu`'s limits
// (a refused one raises gt_emu::Error); one line per launch.
// cell: plan::Cell; the GRU's launches are the GRU op's, the other cells' the family op's.
std::vector<std::string> launch_check(plan::Dtype dtype, const plan::Plan& plan, int H, int B,
                                      int D, int cell, const std::string& gpu);
}  // namespace emulated
}  // namespace gru_torch

#undef GT_ENTRY_POINTS
