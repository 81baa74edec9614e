#include "cpu_pool.h"

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace gru_torch::cpu {
namespace {

constexpr size_t kMinPooled = size_t(1) << 20;  // smaller buffers: plain at::empty
// With nothing kept here, buffers up to this size come from at::empty: glibc keeps freed
// ones in its heap once its mmap threshold (at most 32 MiB) has grown past their size, so
// a fixed shape costs no faults, where fresh huge pages would cost their zeroing on every
// call. But each time a request is larger than any before, glibc maps fresh 4 KiB pages,
// and with T varying that happens often; larger buffers are therefore always huge pages.
constexpr size_t kHeapMax = size_t(16) << 20;
constexpr size_t kGranule = size_t(2) << 20;    // one huge page

// Maps `bytes` (a multiple of kGranule) aligned to a huge page, asking for huge pages.
void* map_buffer(size_t bytes) {
#if defined(__linux__)
  void* raw = mmap(nullptr, bytes + kGranule, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  TORCH_CHECK(raw != MAP_FAILED, "gru_torch: out of memory mapping ", bytes, " bytes");
  // Trim to a huge-page boundary at both ends, so the whole buffer can be huge pages.
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (start + kGranule - 1) / kGranule * kGranule;
  if (aligned > start) munmap(raw, aligned - start);
  const uintptr_t tail = aligned + bytes, end = start + bytes + kGranule;
  if (end > tail) munmap(reinterpret_cast<void*>(tail), end - tail);
  void* p = reinterpret_cast<void*>(aligned);
#if defined(MADV_HUGEPAGE)
  madvise(p, bytes, MADV_HUGEPAGE);  // a hint: where THP is off, plain pages it is
#endif
  return p;
#else
  void* p = std::aligned_alloc(kGranule, bytes);
  TORCH_CHECK(p, "gru_torch: out of memory allocating ", bytes, " bytes");
  return p;
#endif
}

void unmap_buffer(void* p, size_t bytes) {
#if defined(__linux__)
  munmap(p, bytes);
#else
  (void)bytes;
  std::free(p);
#endif
}

class Pool {
 public:
  Pool() {
    const char* env = std::getenv("GRU_TORCH_CPU_POOL_MB");
    limit_ = (env ? std::stoull(env) : 1024ull) << 20;
  }

  // A buffer of at least `bytes`; *size receives its real size.
  void* take(size_t bytes, size_t* size) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      // Best fit: the smallest kept buffer that holds the request, if it is not more
      // than twice as large (a larger one would be wasted and missed by a larger request).
      auto it = free_.lower_bound(bytes);
      if (it != free_.end() && it->first <= 2 * bytes) {
        void* p = it->second;
        *size = it->first;
        idle_ -= it->first;
        free_.erase(it);
        return p;
      }
    }
    *size = bytes;
    return map_buffer(bytes);
  }

  bool keeps_nothing() const { return limit_ == 0; }

  void give(void* p, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (idle_ + bytes <= limit_) {
        free_.emplace(bytes, p);
        idle_ += bytes;
        return;
      }
    }
    unmap_buffer(p, bytes);
  }

 private:
  std::mutex mu_;
  std::multimap<size_t, void*> free_;  // by size
  size_t idle_ = 0;
  size_t limit_ = 0;
};

// Never destroyed: tensors may be freed during interpreter shutdown.
Pool& pool() {
  static Pool* p = new Pool();
  return *p;
}

}  // namespace

at::Tensor serial_zeros(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = pooled_empty(sizes, options);
  std::memset(t.data_ptr(), 0, t.nbytes());
  return t;
}

at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const size_t bytes = static_cast<size_t>(c10::multiply_integers(sizes)) *
                       c10::elementSize(c10::typeMetaToScalarType(options.dtype()));
  if (bytes < kMinPooled || (pool().keeps_nothing() && bytes <= kHeapMax)) {
    return at::empty(sizes, options);
  }
  size_t size = 0;
  void* p = pool().take((bytes + kGranule - 1) / kGranule * kGranule, &size);
  return at::from_blob(p, sizes, [size](void* q) { pool().give(q, size); }, options);
}

}  // namespace gru_torch::cpu
