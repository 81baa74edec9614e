// cpu/family_loop.cpp compiled for AVX-512 (cpu/avx512.h, cpu/capability.h).
#if defined(GRU_TORCH_CPU_AVX512)
#include "cpu/avx512.h"
#include "cpu/family_loop.cpp"
#endif
