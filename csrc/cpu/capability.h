// Which instruction set the CPU loops run with, chosen at run time.
//
// The loops (cpu_forward.cpp, cpu_backward.cpp, cpu/family_loop.cpp) are compiled once
// for the build's baseline (AVX2 with FMA on x86-64, or the compiler's default) and, on
// x86-64, once more for AVX-512 (cpu/avx512/*.cpp include them after cpu/avx512.h). Each
// copy lives in a namespace named by CPU_CAPABILITY (AVX2 or DEFAULT; AVX512), as ATen's
// kernels and at::vec do, so the two copies of every template and inline function of the
// loops are different functions. The ops' glue calls the copy `use_avx512()` picks: the
// AVX-512 one where the CPU has AVX-512 F, BW, VL and DQ, unless GRU_TORCH_CPU_CAPABILITY
// (or gru_torch.set_cpu_capability) says "avx2".
//
// Both copies compute every value with the same operations in the same order (the
// micro-kernel's k loop per output, one vector width or the other; the same exp
// polynomial; Sleef's functions at either width), so their results are the same bits;
// tests/test_cpu_capability.py checks that.
#pragma once

#include <string>
#include <vector>

#if !defined(CPU_CAPABILITY)
#error "CPU_CAPABILITY must name the instruction set (gru_torch/_build.py sets it)"
#endif

namespace gru_torch::cpu {

// Whether the ops run the AVX-512 copy of the loops now.
bool use_avx512();

// The capabilities this build can run on this CPU ("avx512", "avx2" or "default"), widest
// first; the one in use; and a switch for tests and benchmarks.
std::vector<std::string> available_capabilities();
std::string capability();
std::string set_capability(const std::string& name);  // returns the previous one

}  // namespace gru_torch::cpu

// fn (a qualified name under NS::CPU_CAPABILITY, e.g. forward_layer<float>) in the copy
// for the capability in use: NS::AVX512::fn or NS::<baseline>::fn.
#if defined(GRU_TORCH_CPU_AVX512)
#define GRU_TORCH_CPU_PICK(NS, ...) \
  (::gru_torch::cpu::use_avx512() ? &NS::AVX512::__VA_ARGS__ : &NS::CPU_CAPABILITY::__VA_ARGS__)
#else
#define GRU_TORCH_CPU_PICK(NS, ...) (&NS::CPU_CAPABILITY::__VA_ARGS__)
#endif
