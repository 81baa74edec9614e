// The run-time choice between the CPU loops' copies (cpu/capability.h).
#include "cpu/capability.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <atomic>
#include <cstdlib>

namespace gru_torch::cpu {
namespace {

bool cpu_has_avx512() {
#if defined(GRU_TORCH_CPU_AVX512)
  // __builtin_cpu_supports also checks that the OS saves the AVX-512 registers (XCR0).
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#else
  return false;
#endif
}

std::string baseline() {
#if defined(CPU_CAPABILITY_AVX2) || defined(GRU_TORCH_CPU_AVX512)
  return "avx2";
#else
  return "default";
#endif
}

// -1: not chosen yet; 0: baseline; 1: AVX-512.
std::atomic<int> chosen{-1};

int choose(const std::string& name, const char* source) {
  const std::vector<std::string> have = available_capabilities();
  std::string list;
  for (const std::string& h : have) list += (list.empty() ? "" : ", ") + h;
  TORCH_CHECK(name == "avx512" || name == "avx2" || name == "default", source,
              ": unknown CPU capability '", name, "'; this build and CPU can run: ", list);
  bool found = false;
  for (const std::string& h : have) found = found || h == name;
  TORCH_CHECK(found, source, ": CPU capability '", name,
              "' is not available (this build on this CPU can run: ", list, ")");
  return name == "avx512" ? 1 : 0;
}

int current() {
  int c = chosen.load(std::memory_order_relaxed);
  if (c >= 0) return c;
  if (const char* env = std::getenv("GRU_TORCH_CPU_CAPABILITY"); env && *env) {
    c = choose(env, "GRU_TORCH_CPU_CAPABILITY");
  } else {
    c = cpu_has_avx512() ? 1 : 0;
  }
  chosen.store(c, std::memory_order_relaxed);
  return c;
}

std::vector<std::string> capabilities_op() { return available_capabilities(); }
std::string capability_op() { return capability(); }
std::string set_capability_op(std::string name) { return set_capability(name); }

}  // namespace

bool use_avx512() { return current() == 1; }

std::vector<std::string> available_capabilities() {
  std::vector<std::string> have;
  if (cpu_has_avx512()) have.push_back("avx512");
  have.push_back(baseline());
  return have;
}

std::string capability() { return current() == 1 ? "avx512" : baseline(); }

std::string set_capability(const std::string& name) {
  const std::string before = capability();
  chosen.store(choose(name, "set_cpu_capability"), std::memory_order_relaxed);
  return before;
}

TORCH_LIBRARY_FRAGMENT(gru_torch, m) {
  m.def("_cpu_capabilities() -> str[]", &capabilities_op);
  m.def("_cpu_capability() -> str", &capability_op);
  m.def("_set_cpu_capability(str name) -> str", &set_capability_op);
}

}  // namespace gru_torch::cpu
