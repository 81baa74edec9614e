// Large CPU buffers for the op's outputs (output, reserve, grad_input).
//
// glibc serves allocations above its mmap threshold (at most 32 MiB) with fresh pages
// from the kernel, and the first touch of every 4 KiB page is a fault, several times
// slower than writing memory already mapped. So buffers of 1 MiB and more are mapped
// here in 2 MiB granules with transparent huge pages requested (one fault per 2 MiB
// instead of 512), and freed ones are kept for reuse: a later request takes the
// smallest kept buffer that holds it and wastes at most half of it, so batches whose
// length changes from call to call reuse them as well as fixed shapes do.
//
// At most GRU_TORCH_CPU_POOL_MB (default 1024) of idle memory is kept; 0 keeps none:
// then buffers up to 16 MiB come from at::empty (glibc keeps freed ones in its heap once
// its mmap threshold has grown past their size, so they cost no faults), and larger ones
// are still mapped with huge pages and unmapped when freed.
#pragma once

#include <ATen/ATen.h>

namespace gru_torch::cpu {

// at::empty, served from the cache when the buffer is large.
at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options);

// Zeros, written by the calling thread alone. at::zeros of more than 32768 values opens a
// parallel region, and a region ends only when every thread has run its share: on a busy
// machine a thread of it may wait a whole scheduler time slice for its core. The op's
// own small buffers (packed weights, gradient sums) take a few microseconds to clear.
at::Tensor serial_zeros(at::IntArrayRef sizes, const at::TensorOptions& options);

}  // namespace gru_torch::cpu
