// Launching a kernel the same way on a GPU and under the emulator.
//
// A LaunchSpec says everything the launch check needs: grid, block, dynamic shared
// memory, cooperative or cluster launch, and the kernel's __launch_bounds__ (keep
// those in one constexpr beside the kernel and use it in both places).
// gt::launch(spec, stream, kernel, args...) then launches it: under nvcc with
// cudaLaunchKernelEx on the stream (raising the dynamic shared-memory limit first
// when the spec needs more than 48 KiB), under the emulator through gt_emu::launch
// with the limits of the GPU the emulator is set to.
#pragma once

#include <algorithm>
#include <cstddef>
#include <stdexcept>
#include <string>

#include "port.cuh"

GT_BEGIN_NAMESPACE

struct LaunchSpec {
  const char* name = "kernel";
  dim3 grid{1, 1, 1};
  dim3 block{1, 1, 1};
  size_t smem = 0;  // dynamic shared memory, bytes
  bool cooperative = false;
  dim3 cluster{1, 1, 1};
  unsigned max_threads = 0;  // __launch_bounds__(max_threads, min_blocks)
  unsigned min_blocks = 1;
};

constexpr size_t kDefaultSmemLimit = 48 * 1024;  // without the opt-in attribute

#if GT_EMULATED
using Stream = void*;

// What the emulator's launch check sees of a spec: the kernel as the GPU would know
// it, and the launch with the shared-memory attribute launch() sets on a GPU.
inline gt_emu::KernelInfo kernel_info(const LaunchSpec& s) {
  gt_emu::KernelInfo k;
  k.name = s.name;
  k.max_threads = s.max_threads;
  k.min_blocks = s.min_blocks;
  return k;
}
inline gt_emu::LaunchConfig launch_config(const LaunchSpec& s) {
  gt_emu::LaunchConfig c;
  c.grid = s.grid;
  c.block = s.block;
  c.dyn_smem = s.smem;
  c.cooperative = s.cooperative;
  c.cluster = s.cluster;
  c.max_dyn_smem = std::max(kDefaultSmemLimit, s.smem);
  return c;
}

// Checks a launch against a GPU's limits without running it (gt_emu::Error if refused).
inline void check_launch(const LaunchSpec& s, const std::string& gpu) {
  gt_emu::check_launch(gt_emu::gpu_props(gpu), kernel_info(s), launch_config(s));
}

template <class... P, class... A>
inline void launch(const LaunchSpec& s, Stream, void (*kernel)(P...), A... args) {
  gt_emu::launch(kernel_info(s), launch_config(s), [=] { kernel(P(args)...); });
}
#else
using Stream = void*;  // a cudaStream_t

inline void check_cuda(cudaError_t e, const char* what, const char* name) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string(what) + " (" + name + "): " + cudaGetErrorString(e));
}

template <class... P, class... A>
inline void launch(const LaunchSpec& s, Stream stream, void (*kernel)(P...), A... args) {
  if (s.smem > kDefaultSmemLimit)
    check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(s.smem)),
               "cudaFuncSetAttribute", s.name);
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = s.grid;
  cfg.blockDim = s.block;
  cfg.dynamicSmemBytes = s.smem;
  cfg.stream = static_cast<cudaStream_t>(stream);
  cudaLaunchAttribute attrs[2];
  unsigned n = 0;
  if (s.cooperative) {
    attrs[n].id = cudaLaunchAttributeCooperative;
    attrs[n].val.cooperative = 1;
    ++n;
  }
  if (s.cluster.x * s.cluster.y * s.cluster.z > 1) {
    attrs[n].id = cudaLaunchAttributeClusterDimension;
    attrs[n].val.clusterDim.x = s.cluster.x;
    attrs[n].val.clusterDim.y = s.cluster.y;
    attrs[n].val.clusterDim.z = s.cluster.z;
    ++n;
  }
  cfg.attrs = attrs;
  cfg.numAttrs = n;
  check_cuda(cudaLaunchKernelEx(&cfg, kernel, P(args)...), "cudaLaunchKernelEx", s.name);
}
#endif

GT_END_NAMESPACE
