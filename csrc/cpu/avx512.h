// Included first by the AVX-512 copies of the CPU loops (cpu/avx512/*.cpp): everything
// after it, the loop's source and every header it includes, is compiled for AVX-512
// (F, BW, VL, DQ) and FMA, with at::vec's 512-bit Vectorized, in namespaces named AVX512
// (cpu/capability.h). The rest of the extension keeps the baseline flags.
//
// Inline functions outside those namespaces (ATen's, c10's, the loops' shared structs)
// are compiled here too, and the linker keeps one copy of each: the first it meets.
// gru_torch/_build.py lists these sources last, so that copy is the baseline's, and
// tests/test_cpu_capability.py checks that no function outside an AVX512 namespace in the
// built library uses an AVX-512 register.
#pragma once

#if !defined(__GNUC__) || defined(__clang__)
#error "the AVX-512 copies of the CPU loops need GCC (#pragma GCC target)"
#endif

#pragma GCC target("avx2,fma,avx512f,avx512bw,avx512vl,avx512dq")
// The pragma enables the instructions but, unlike -mavx512f, defines none of the macros
// that headers test for them (sleef.h declares its 512-bit functions under __AVX512F__).
#define __AVX512F__ 1
#define __AVX512BW__ 1
#define __AVX512VL__ 1
#define __AVX512DQ__ 1

#undef CPU_CAPABILITY
#define CPU_CAPABILITY AVX512
#undef CPU_CAPABILITY_AVX2
#define CPU_CAPABILITY_AVX512 1
