// Denormal numbers in the CPU op: flushed to zero in float32, in every thread of a call.
//
// A classifier's loss reads only the final state, so the gradient flowing back through
// hundreds of steps decays toward zero and, in float32, into denormal numbers (below
// about 1.2e-38). Intel cores take up to a hundred times longer for an operation on one:
// a backward at 512,200,50,100 ran 6.5x slower than with them flushed (csrc/README.md,
// "Denormals"). TensorFlow and XLA flush them on the CPU by default; PyTorch does not.
//
// So the op sets flush-to-zero and denormals-are-zero (MXCSR's FTZ and DAZ on x86-64,
// FPCR's FZ on AArch64) for float32 on the calling thread for the duration of the call,
// and run_tasks / run_groups (cpu_split.h) give their workers the calling thread's mode,
// each restoring its own state when it returns, also when the call throws. float64 keeps
// the caller's mode, which is IEEE's unless the caller chose otherwise
// (torch.set_flush_denormal): its denormals begin below 2.2e-308, which a decaying
// gradient reaches only after thousands of steps, and float64 is what results are
// checked against (gradcheck, the reference loop, nn.GRU to 1e-16).
#pragma once

#include <type_traits>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace gru_torch::cpu {

// A thread's denormal mode, as bits: results that would be denormal become 0, and
// denormal operands are read as 0. AArch64 has one switch for both.
constexpr int kFlushToZero = 1, kDenormalsAreZero = 2;
constexpr int kFlushDenormals = kFlushToZero | kDenormalsAreZero;

inline int denormal_mode() {
#if defined(__x86_64__) || defined(_M_X64)
  const unsigned csr = _mm_getcsr();
  return ((csr & 0x8000u) ? kFlushToZero : 0) | ((csr & 0x0040u) ? kDenormalsAreZero : 0);
#elif defined(__aarch64__)
  unsigned long fpcr;
  __asm__ volatile("mrs %0, fpcr" : "=r"(fpcr));
  return (fpcr & (1ul << 24)) ? kFlushDenormals : 0;
#else
  return 0;
#endif
}

inline void set_denormal_mode(int mode) {
#if defined(__x86_64__) || defined(_M_X64)
  unsigned csr = _mm_getcsr() & ~0x8040u;
  if (mode & kFlushToZero) csr |= 0x8000u;
  if (mode & kDenormalsAreZero) csr |= 0x0040u;
  _mm_setcsr(csr);
#elif defined(__aarch64__)
  unsigned long fpcr;
  __asm__ volatile("mrs %0, fpcr" : "=r"(fpcr));
  fpcr = mode ? (fpcr | (1ul << 24)) : (fpcr & ~(1ul << 24));
  __asm__ volatile("msr fpcr, %0" : : "r"(fpcr));
#else
  (void)mode;
#endif
}

// Sets this thread's mode for its lifetime and restores the one before.
class DenormalModeGuard {
 public:
  explicit DenormalModeGuard(int mode) : saved_(denormal_mode()) {
    if (mode != saved_) set_denormal_mode(mode);
  }
  ~DenormalModeGuard() {
    if (denormal_mode() != saved_) set_denormal_mode(saved_);
  }
  DenormalModeGuard(const DenormalModeGuard&) = delete;
  DenormalModeGuard& operator=(const DenormalModeGuard&) = delete;

 private:
  int saved_;
};

// The mode a call of the op in scalar_t runs in (see the file comment).
template <typename scalar_t>
int op_denormal_mode() {
  return std::is_same_v<scalar_t, float> ? kFlushDenormals : denormal_mode();
}

}  // namespace gru_torch::cpu
