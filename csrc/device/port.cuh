// The thin layer every device source is written against, so that one source builds
// two ways:
//   * nvcc: real CUDA. sptr<T> and gptr<T> are plain pointers, the tensor-core ops
//     are inline PTX (mma.sync, ldmatrix, cp.async), nothing is checked.
//   * the host compiler: the gt_emu emulator (csrc/emu/emulator.h). Every CUDA
//     thread is a fiber; sptr<T> and gptr<T> carry their allocation's bounds and
//     every shared-memory access goes through the race, bounds and init checks.
//
// Kernel code uses the CUDA spellings (__global__, threadIdx, __syncthreads(),
// __shfl_xor_sync, ...) plus what this header adds in namespace gt:
//   sptr<T> / gptr<T>            shared / global pointers (see above)
//   GT_DYNAMIC_SMEM(name)        the block's dynamic shared memory, as sptr<uint8_t>
//   GT_SHARED_ARRAY(T, name, N)  a static __shared__ array, as sptr<T>
//   smem_carve<T>(base, off, n)  n T's at byte offset off of base, bounds narrowed
//   bf16, f16, to_float, from_float<T>, pack2<T>, tf32_bits
//   mma_m16n8k16<T>, mma_m16n8k8_tf32, ldmatrix_x{1,2,4}[_trans], cp_async*
// Never use a bare __shared__: the emulator only sees shared memory reached through
// sptr<T>.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

// Whether this pass's code can run thread-block clusters: nvcc's sm_90+ code and the host
// compiler's (the emulator); not nvcc's sm_80 code.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
#define GT_HAS_CLUSTERS 0
#else
#define GT_HAS_CLUSTERS 1
#endif

#if defined(__CUDACC__)
// ================================================================ real CUDA
#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#define GT_EMULATED 0
// Device code is compiled twice into one library (nvcc and the emulator): an inline
// namespace per mode keeps the two definitions of each inline function apart.
#define GT_BEGIN_NAMESPACE namespace gt { inline namespace cuda {
#define GT_ENTRY_NAMESPACE cuda
#define GT_END_NAMESPACE } }
#define GT_HD __host__ __device__ __forceinline__
#define GT_DEV __device__ __forceinline__

GT_BEGIN_NAMESPACE
template <class T> using sptr = T*;
template <class T> using gptr = T*;
template <class T> GT_HD T* make_gptr(T* p, size_t) { return p; }
template <class U, class T> GT_DEV U* sptr_cast(T* p) { return reinterpret_cast<U*>(p); }
template <class U, class T> GT_HD U* gptr_cast(T* p) { return reinterpret_cast<U*>(p); }
template <class T> GT_DEV T* smem_carve(unsigned char* base, size_t byte_off, size_t) {
  return reinterpret_cast<T*>(base + byte_off);
}

// An atomic add on shared memory (on global memory, atomicAdd works on gptr's T&).
GT_DEV float atomic_add_shared(float* p, float v) { return atomicAdd(p, v); }

// Thread-block clusters (sm_90): the cluster barrier, this block's rank, and a pointer
// into another block's shared memory (distributed shared memory).
GT_DEV void cluster_sync() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  cooperative_groups::this_cluster().sync();
#else
  __trap();
#endif
}
GT_DEV unsigned cluster_rank() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return cooperative_groups::this_cluster().block_rank();
#else
  return 0;
#endif
}
template <class T> GT_DEV T* map_rank(T* p, unsigned rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  return cooperative_groups::this_cluster().map_shared_rank(p, rank);
#else
  __trap();
  return p;
#endif
}
GT_END_NAMESPACE

#define GT_DYNAMIC_SMEM(name)                                        \
  extern __shared__ __align__(16) unsigned char name##_gt_dynamic[]; \
  ::gt::sptr<unsigned char> name = name##_gt_dynamic
#define GT_SHARED_ARRAY(T, name, N)                \
  __shared__ __align__(16) T name##_gt_static[N]; \
  ::gt::sptr<T> name = name##_gt_static

#else
// ================================================================ emulator
#include <atomic>
#include <cmath>
#include <cstring>
#include <string>

#include "../emu/emulator.h"

#define GT_EMULATED 1
#define GT_BEGIN_NAMESPACE namespace gt { inline namespace emulated {
#define GT_ENTRY_NAMESPACE emulated
#define GT_END_NAMESPACE } }
#define GT_HD inline
#define GT_DEV inline
#ifndef __global__
#define __global__
#endif
#ifndef __device__
#define __device__
#endif
#ifndef __host__
#define __host__
#endif
#ifndef __forceinline__
#define __forceinline__ inline
#endif
#ifndef __launch_bounds__
#define __launch_bounds__(...)
#endif
#ifndef __restrict__
#define __restrict__ __restrict
#endif

using gt_emu::dim3;
#define threadIdx (::gt_emu::ctx().tid)
#define blockIdx (::gt_emu::ctx().bid)
#define blockDim (::gt_emu::ctx().bdim)
#define gridDim (::gt_emu::ctx().gdim)
#define warpSize 32

GT_BEGIN_NAMESPACE

template <class T> class sptr;

// A reference to one element of shared memory: reading converts, assigning stores,
// both through the checks. Keep the value, not the reference: `float v = p[i];`.
template <class T>
class SRef {
 public:
  SRef(const gt_emu::Span& s, int64_t off) : s_(s), off_(off) {}
  operator T() const {
    T v;
    gt_emu::smem_access(s_, off_, sizeof(T), false, &v);
    return v;
  }
  template <class U = T, class = std::enable_if_t<!std::is_const<U>::value>>
  const SRef& operator=(const T& v) const {
    T copy = v;
    gt_emu::smem_access(s_, off_, sizeof(T), true, &copy);
    return *this;
  }
  const SRef& operator=(const SRef& o) const { return *this = T(o); }
  const SRef& operator+=(const T& v) const { return *this = T(*this) + v; }
  const SRef& operator-=(const T& v) const { return *this = T(*this) - v; }
  const SRef& operator*=(const T& v) const { return *this = T(*this) * v; }

 private:
  gt_emu::Span s_;
  int64_t off_;
};

template <class T>
class sptr {
 public:
  sptr() = default;
  sptr(const gt_emu::Span& s, int64_t off) : s_(s), off_(off) {}
  template <class U, class = std::enable_if_t<std::is_same<const U, T>::value>>
  sptr(const sptr<U>& o) : s_(o.span()), off_(o.offset()) {}  // T* -> const T*
  SRef<T> operator[](ptrdiff_t i) const { return SRef<T>(s_, off_ + i * int64_t(sizeof(T))); }
  SRef<T> operator*() const { return (*this)[0]; }
  sptr operator+(ptrdiff_t i) const { return sptr(s_, off_ + i * int64_t(sizeof(T))); }
  sptr operator-(ptrdiff_t i) const { return *this + (-i); }
  sptr& operator+=(ptrdiff_t i) { return *this = *this + i; }
  sptr& operator-=(ptrdiff_t i) { return *this = *this - i; }
  sptr& operator++() { return *this += 1; }
  ptrdiff_t operator-(const sptr& o) const { return (off_ - o.off_) / int64_t(sizeof(T)); }
  bool operator==(const sptr& o) const { return s_.blk == o.s_.blk && off_ == o.off_; }
  bool operator!=(const sptr& o) const { return !(*this == o); }
  const gt_emu::Span& span() const { return s_; }
  int64_t offset() const { return off_; }  // bytes from the start of the block's arena

 private:
  gt_emu::Span s_;
  int64_t off_ = 0;
};

template <class U, class T> inline sptr<U> sptr_cast(const sptr<T>& p) {
  return sptr<U>(p.span(), p.offset());
}
template <class T> inline sptr<T> smem_carve(const sptr<unsigned char>& base, size_t byte_off, size_t n) {
  gt_emu::Span s = base.span();
  const int64_t lo = base.offset() + int64_t(byte_off);
  if (lo < int64_t(s.lo) || lo + int64_t(n * sizeof(T)) > int64_t(s.hi))
    gt_emu::fail(gt_emu::ErrorKind::SharedBounds, "smem_carve outside the shared allocation");
  s.lo = uint32_t(lo);
  s.hi = uint32_t(lo + int64_t(n * sizeof(T)));
  return sptr<T>(s, lo);
}

// A pointer into a global-memory tensor that knows the tensor's bounds.
template <class T>
class gptr {
 public:
  gptr() = default;
  gptr(T* p, T* lo, T* hi) : p_(p), lo_(lo), hi_(hi) {}
  template <class U, class = std::enable_if_t<std::is_same<const U, T>::value>>
  gptr(const gptr<U>& o) : p_(o.raw()), lo_(o.lo()), hi_(o.hi()) {}
  T& operator[](ptrdiff_t i) const { return *check(p_ + i, sizeof(T)); }
  T& operator*() const { return *check(p_, sizeof(T)); }
  gptr operator+(ptrdiff_t i) const { return gptr(p_ + i, lo_, hi_); }
  gptr operator-(ptrdiff_t i) const { return gptr(p_ - i, lo_, hi_); }
  gptr& operator+=(ptrdiff_t i) { p_ += i; return *this; }
  ptrdiff_t operator-(const gptr& o) const { return p_ - o.p_; }
  explicit operator bool() const { return p_ != nullptr; }
  T* raw() const { return p_; }
  T* lo() const { return lo_; }
  T* hi() const { return hi_; }
  // A checked view of `bytes` bytes at this address (vector loads, cp.async).
  const void* checked(size_t bytes) const { return check(p_, bytes); }

 private:
  T* check(T* p, size_t bytes) const {
    const char *c = reinterpret_cast<const char*>(p), *l = reinterpret_cast<const char*>(lo_),
               *h = reinterpret_cast<const char*>(hi_);
    if (!p || c < l || c + bytes > h) gt_emu::global_oob("access", p, bytes, lo_, hi_);
    if (reinterpret_cast<uintptr_t>(p) % alignof(T))
      gt_emu::fail(gt_emu::ErrorKind::Misaligned, "global-memory access of " + std::to_string(bytes) +
                                                      " bytes not aligned to " + std::to_string(alignof(T)));
    return p;
  }
  T* p_ = nullptr;
  T* lo_ = nullptr;
  T* hi_ = nullptr;
};
template <class T> inline gptr<T> make_gptr(T* p, size_t n) { return gptr<T>(p, p, p + n); }
// The same bounds, seen as U's (a vector load of two T's, say).
template <class U, class T> inline gptr<U> gptr_cast(const gptr<T>& p) {
  return gptr<U>(reinterpret_cast<U*>(p.raw()), reinterpret_cast<U*>(p.lo()), reinterpret_cast<U*>(p.hi()));
}
// An atomic add on shared memory: atomics do not race with each other, only with
// plain accesses that no barrier orders.
inline float atomic_add_shared(const sptr<float>& p, float v) {
  float old;
  gt_emu::smem_atomic_add_f32(p.span(), p.offset(), v, &old);
  return old;
}
inline void cluster_sync(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  gt_emu::cluster_sync(file, line);
}
inline unsigned cluster_rank() { return gt_emu::cluster_block_rank(); }
template <class T> inline sptr<T> map_rank(const sptr<T>& p, unsigned rank) {
  return sptr<T>(gt_emu::map_shared_rank(p.span(), rank), p.offset());
}
template <class T> inline sptr<T> static_array(const void* site, size_t n) {
  const gt_emu::Span s = gt_emu::static_smem(site, sizeof(T) * n, 16);
  return sptr<T>(s, s.lo);
}

GT_END_NAMESPACE

#define GT_DYNAMIC_SMEM(name) \
  ::gt::sptr<unsigned char> name(::gt_emu::dynamic_smem(), 0)
#define GT_SHARED_ARRAY(T, name, N)  \
  static const char name##_gt_site = 0; \
  ::gt::sptr<T> name = ::gt::static_array<T>(&name##_gt_site, (N))

// The CUDA device API, each call naming its source line for the emulator's reports.
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  gt_emu::syncthreads(file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
  gt_emu::syncwarp(mask, file, line);
}
template <class T>
inline T gt_emu_shfl(unsigned mask, T v, gt_emu::ShflKind kind, int arg, int width,
                     const char* file, int line) {
  static_assert(sizeof(T) <= 16 && std::is_trivially_copyable<T>::value, "shuffle type");
  T r;
  gt_emu::shfl_bytes(mask, &v, &r, sizeof(T), kind, arg, width, file, line);
  return r;
}
template <class T>
inline T __shfl_sync(unsigned m, T v, int src, int w = 32, const char* file = __builtin_FILE(),
                     int line = __builtin_LINE()) {
  return gt_emu_shfl(m, v, gt_emu::SHFL_IDX, src, w, file, line);
}
template <class T>
inline T __shfl_xor_sync(unsigned m, T v, int lane_mask, int w = 32,
                         const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return gt_emu_shfl(m, v, gt_emu::SHFL_XOR, lane_mask, w, file, line);
}
template <class T>
inline T __shfl_up_sync(unsigned m, T v, unsigned d, int w = 32,
                        const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return gt_emu_shfl(m, v, gt_emu::SHFL_UP, int(d), w, file, line);
}
template <class T>
inline T __shfl_down_sync(unsigned m, T v, unsigned d, int w = 32,
                          const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return gt_emu_shfl(m, v, gt_emu::SHFL_DOWN, int(d), w, file, line);
}
inline unsigned __ballot_sync(unsigned m, int p, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  return gt_emu::ballot(m, p != 0, file, line);
}
inline int __any_sync(unsigned m, int p, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
  return gt_emu::ballot(m, p != 0, file, line) != 0;
}
inline int __all_sync(unsigned m, int p, const char* file = __builtin_FILE(),
                      int line = __builtin_LINE()) {
  return gt_emu::ballot(m, p != 0, file, line) == m;
}
inline void __nanosleep(unsigned) { gt_emu::yield(); }
[[noreturn]] inline void __trap() { gt_emu::fail(gt_emu::ErrorKind::Kernel, "__trap()"); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
inline void __threadfence_block() { std::atomic_thread_fence(std::memory_order_seq_cst); }

// Global-memory atomics: groups run on several OS threads, so these are real atomics.
template <class T>
inline T atomicAdd(T* p, T v) {
  if constexpr (std::is_integral<T>::value) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
  } else {
    using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
    U* q = reinterpret_cast<U*>(p);
    U old = __atomic_load_n(q, __ATOMIC_SEQ_CST), nw;
    T f;
    do {
      std::memcpy(&f, &old, sizeof f);
      const T s = f + v;
      std::memcpy(&nw, &s, sizeof nw);
    } while (!__atomic_compare_exchange_n(q, &old, nw, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST));
    return f;
  }
}
template <class T> inline T atomicExch(T* p, T v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
template <class T> inline T atomicCAS(T* p, T cmp, T v) {
  __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return cmp;
}
#endif  // __CUDACC__

// ================================================================ both
GT_BEGIN_NAMESPACE

// 16-bit storage types: the raw bits of bfloat16 / IEEE half (at::BFloat16 and
// at::Half have the same layout).
struct bf16 { uint16_t bits; };
struct f16 { uint16_t bits; };

GT_DEV float bf16_bits_to_float(uint16_t b) {
#if GT_EMULATED
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#else
  return __uint_as_float(uint32_t(b) << 16);
#endif
}

// Round to nearest even, as __float2bfloat16_rn (NaN stays a quiet NaN).
GT_DEV uint16_t float_to_bf16_bits(float x) {
#if GT_EMULATED
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
#else
  return __bfloat16_as_ushort(__float2bfloat16_rn(x));
#endif
}

GT_DEV float f16_bits_to_float(uint16_t b) {
#if GT_EMULATED
  _Float16 h;
  std::memcpy(&h, &b, 2);
  return float(h);
#else
  return __half2float(__ushort_as_half(b));
#endif
}

GT_DEV uint16_t float_to_f16_bits(float x) {
#if GT_EMULATED
  const _Float16 h = static_cast<_Float16>(x);  // round to nearest even
  uint16_t b;
  std::memcpy(&b, &h, 2);
  return b;
#else
  return __half_as_ushort(__float2half_rn(x));
#endif
}

GT_DEV float bits_to_float(uint32_t u) {
#if GT_EMULATED
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#else
  return __uint_as_float(u);
#endif
}

// tanh.approx.f32 (sm_75+): one MUFU op, relative error about 2^-11. The emulator
// computes the exact tanh, so it cannot see that error (the GPU self-check does).
GT_DEV float tanh_approx(float x) {
#if GT_EMULATED
  return std::tanh(x);
#else
  float y;
  asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}

GT_DEV float to_float(float x) { return x; }
GT_DEV float to_float(bf16 x) { return bf16_bits_to_float(x.bits); }
GT_DEV float to_float(f16 x) { return f16_bits_to_float(x.bits); }

template <class T> GT_DEV T from_float(float x);
template <> GT_DEV float from_float<float>(float x) { return x; }
template <> GT_DEV bf16 from_float<bf16>(float x) { return bf16{float_to_bf16_bits(x)}; }
template <> GT_DEV f16 from_float<f16>(float x) { return f16{float_to_f16_bits(x)}; }

// Two values as one 32-bit mma operand register, the first in the low half.
template <class T> GT_DEV uint32_t pack2(float lo, float hi);
template <> GT_DEV uint32_t pack2<bf16>(float lo, float hi) {
  return uint32_t(float_to_bf16_bits(lo)) | (uint32_t(float_to_bf16_bits(hi)) << 16);
}
template <> GT_DEV uint32_t pack2<f16>(float lo, float hi) {
  return uint32_t(float_to_f16_bits(lo)) | (uint32_t(float_to_f16_bits(hi)) << 16);
}

// cvt.rna.tf32.f32: round to the nearest tf32 (10 mantissa bits), ties away from
// zero; the result is an fp32 bit pattern with the low 13 bits clear.
GT_DEV uint32_t tf32_bits(float x) {
#if GT_EMULATED
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) return u;  // Inf, NaN unchanged
  u += 0x1000u;
  return u & 0xffffe000u;
#else
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
#endif
}

// Two adjacent elements, loaded and stored as one (32-bit for 16-bit types, 64-bit
// for float): the index of the first must be even.
template <class T>
struct alignas(2 * sizeof(T)) Pair {
  T lo, hi;
};
template <class T> GT_DEV Pair<T> load_pair(gptr<const T> p, int64_t i) {
  return gptr_cast<const Pair<T>>(p + i)[0];
}
template <class T> GT_DEV void store_pair(gptr<T> p, int64_t i, float lo, float hi) {
  gptr_cast<Pair<T>>(p + i)[0] = Pair<T>{from_float<T>(lo), from_float<T>(hi)};
}

// ---------------------------------------------------------------- tensor cores
// D = A*B + C, fp32 accumulators. Fragment layouts: PTX ISA, "Matrix Fragments for
// mma.m16n8k16" and "... mma.m16n8k8" (see emulator.cpp for the lane mapping).
template <class T>
GT_DEV void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                         const float (&c)[4]
#if GT_EMULATED
                         , const char* file = __builtin_FILE(), int line = __builtin_LINE()
#endif
) {
  static_assert(std::is_same<T, bf16>::value || std::is_same<T, f16>::value, "bf16 or f16");
#if GT_EMULATED
  gt_emu::mma_m16n8k16(std::is_same<T, bf16>::value ? gt_emu::MmaType::BF16 : gt_emu::MmaType::F16,
                       d, a, b, c, file, line);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same<T, bf16>::value) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
          "f"(c[1]), "f"(c[2]), "f"(c[3]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%10,%11,%12,%13};\n"
        : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]),
          "f"(c[1]), "f"(c[2]), "f"(c[3]));
  }
#else
  __trap();
#endif
}

GT_DEV void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                             const float (&c)[4]
#if GT_EMULATED
                             , const char* file = __builtin_FILE(), int line = __builtin_LINE()
#endif
) {
#if GT_EMULATED
  gt_emu::mma_m16n8k8_tf32(d, a, b, c, file, line);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#else
  __trap();
#endif
}

// ldmatrix.sync.aligned.m8n8.x{N}[.trans].shared.b16: lanes 8i..8i+7 give the row
// addresses (16 bytes each, 16-byte aligned) of matrix i; lane L receives, in r[i],
// row L/4, columns 2(L%4) and 2(L%4)+1 of matrix i (transposed with .trans).
#if GT_EMULATED
#define GT_LDMATRIX(N, TRANS, SUFFIX)                                                         \
  template <class T>                                                                          \
  inline void ldmatrix_##SUFFIX(uint32_t (&r)[N], sptr<T> row,                                \
                                const char* file = __builtin_FILE(), int line = __builtin_LINE()) { \
    gt_emu::ldmatrix(N, TRANS, row.span(), row.offset(), r, file, line);                      \
  }
GT_LDMATRIX(1, false, x1)
GT_LDMATRIX(2, false, x2)
GT_LDMATRIX(4, false, x4)
GT_LDMATRIX(1, true, x1_trans)
GT_LDMATRIX(2, true, x2_trans)
GT_LDMATRIX(4, true, x4_trans)
#undef GT_LDMATRIX
#else
template <class T> GT_DEV uint32_t smem_u32(const T* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
template <class T> GT_DEV void ldmatrix_x1(uint32_t (&r)[1], const T* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(smem_u32(row)));
}
template <class T> GT_DEV void ldmatrix_x2(uint32_t (&r)[2], const T* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1]) : "r"(smem_u32(row)));
}
template <class T> GT_DEV void ldmatrix_x4(uint32_t (&r)[4], const T* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(row)));
}
template <class T> GT_DEV void ldmatrix_x1_trans(uint32_t (&r)[1], const T* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(smem_u32(row)));
}
template <class T> GT_DEV void ldmatrix_x2_trans(uint32_t (&r)[2], const T* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1]) : "r"(smem_u32(row)));
}
template <class T> GT_DEV void ldmatrix_x4_trans(uint32_t (&r)[4], const T* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(row)));
}
#endif

// cp.async: copy `bytes` (4, 8 or 16) from global to shared memory asynchronously;
// with valid=false nothing is read and the destination is zero-filled. The copy is
// complete after cp_async_wait<n>() has retired its group (and visible to other
// threads after the barrier that follows). Until then it may read the source and
// write the destination at any time: neither may be touched in between, not even by
// the issuing thread (the emulator reports it). dst must be the block's own shared
// memory, not a map_rank pointer.
template <int kBytes, class T>
GT_DEV void cp_async(sptr<T> dst, gptr<const T> src, bool valid) {
  static_assert(kBytes == 4 || kBytes == 8 || kBytes == 16, "cp.async size");
#if GT_EMULATED
  gt_emu::cp_async(dst.span(), dst.offset(), valid ? src.checked(kBytes) : nullptr, kBytes,
                   valid ? kBytes : 0);
#else
  // The source operand is a .global address: convert the generic pointer. "memory":
  // the asm reads and writes memory its operands do not show, so the compiler must not
  // move other accesses across it (NVIDIA's inline PTX guide).
  const int src_bytes = valid ? kBytes : 0;
  const size_t gsrc = __cvta_generic_to_global(src);
  if constexpr (kBytes == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n"
                 :: "r"(smem_u32(dst)), "l"(gsrc), "r"(src_bytes) : "memory");
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n"
                 :: "r"(smem_u32(dst)), "l"(gsrc), "n"(kBytes), "r"(src_bytes) : "memory");
  }
#endif
}
GT_DEV void cp_async_commit() {
#if GT_EMULATED
  gt_emu::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
template <int kPending>
GT_DEV void cp_async_wait() {
#if GT_EMULATED
  gt_emu::cp_async_wait(kPending);
#else
  asm volatile("cp.async.wait_group %0;\n" :: "n"(kPending) : "memory");
#endif
}

GT_DEV unsigned lane_id() { return threadIdx.x & 31u; }
GT_DEV unsigned warp_id() { return threadIdx.x >> 5; }

GT_END_NAMESPACE
