// A small cache of large CPU buffers for the op's outputs and workspaces.
//
// glibc serves allocations above its mmap threshold (at most 32 MiB) with fresh
// pages from the kernel, and every first touch of a page is a fault, several
// times slower than writing memory already mapped. A training loop asks for the
// same [T, B, ...] buffers every batch, so the op keeps freed ones and hands
// them out again.
//
// Buffers of 1 MiB and more are rounded up to 2 MiB and cached by size; at most
// GRU_TORCH_CPU_POOL_MB (default 1024, 0 disables) of idle memory is kept.
#pragma once

#include <ATen/ATen.h>

namespace gru_torch::cpu {

// at::empty, served from the cache when the buffer is large.
at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace gru_torch::cpu
