#include "cpu_pool.h"

#include <cstdlib>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace gru_torch::cpu {
namespace {

constexpr size_t kMinPooled = size_t(1) << 20;  // smaller buffers: plain at::empty
constexpr size_t kGranule = size_t(2) << 20;
constexpr size_t kAlign = 64;

class Pool {
 public:
  Pool() {
    const char* env = std::getenv("GRU_TORCH_CPU_POOL_MB");
    limit_ = (env ? std::stoull(env) : 1024ull) << 20;
  }

  size_t limit() const { return limit_; }

  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(bytes);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        idle_ -= bytes;
        return p;
      }
    }
    void* p = std::aligned_alloc(kAlign, bytes);
    TORCH_CHECK(p, "gru_torch: out of memory allocating ", bytes, " bytes");
    return p;
  }

  void give(void* p, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (idle_ + bytes <= limit_) {
        free_[bytes].push_back(p);
        idle_ += bytes;
        return;
      }
    }
    std::free(p);
  }

 private:
  std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t idle_ = 0;
  size_t limit_ = 0;
};

// Never destroyed: tensors may be freed during interpreter shutdown.
Pool& pool() {
  static Pool* p = new Pool();
  return *p;
}

}  // namespace

at::Tensor pooled_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  const size_t bytes = static_cast<size_t>(c10::multiply_integers(sizes)) *
                       c10::elementSize(c10::typeMetaToScalarType(options.dtype()));
  if (bytes < kMinPooled || pool().limit() == 0) return at::empty(sizes, options);
  const size_t rounded = (bytes + kGranule - 1) / kGranule * kGranule;
  void* p = pool().take(rounded);
  return at::from_blob(p, sizes, [rounded](void* q) { pool().give(q, rounded); }, options);
}

}  // namespace gru_torch::cpu
