// The GRU cell's pointwise math on the CPU, one vector of hidden units of one batch row
// at a time (at::vec), taking the recurrent product straight from the GEMM's registers.
// Every pointer is offset to the vector's first unit; gate-major rows (the reserve row
// res: slots as in cpu_layer.h; dgx, dgh: r, z, n) step H between gates. `c` is the number
// of units in the vector (the last vector of a row may be short).
// Derivative helpers take the activation's *output* (d_sigmoid(y) = y (1 - y)).
// Everything is forced inline, so that the cells of a GEMM tile's rows interleave.
#pragma once

#include <ATen/cpu/vec/vec.h>
#include <c10/macros/Macros.h>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>

#include "cpu_layer.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

// In the loops' namespace (cpu/capability.h): compiled once per instruction set.
namespace gru_torch::cpu::CPU_CAPABILITY {

template <typename scalar_t>
using Vec = at::vec::Vectorized<scalar_t>;

// e^x: at::vec's exp_u20 (a polynomial, <= 20 ulp in float32; the exact exp in float64).
template <typename scalar_t>
C10_ALWAYS_INLINE Vec<scalar_t> exp_fast(Vec<scalar_t> x) {
  return x.exp_u20();
}

#if defined(CPU_CAPABILITY_AVX2)
// float32 with AVX2: exp_u20's reduction and polynomial (x = k ln2 + f, e^f of degree 5,
// times 2^k), with x clamped to [-87, 88] in place of its masks for under- and overflow:
// 14 operations instead of 18 (the activations call it 3 times per value, beside the
// GEMM's FMAs). The clamp keeps 2^k a normal float; e^-87 and e^88 are already 0 and inf
// to sigmoid and tanh. The max and min take x second, so that a NaN goes through.
template <>
C10_ALWAYS_INLINE Vec<float> exp_fast(Vec<float> v) {
  const __m256 x = _mm256_min_ps(_mm256_set1_ps(88.f), _mm256_max_ps(_mm256_set1_ps(-87.f), v));
  const __m256 k = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693147181f), x);
  __m256 p = _mm256_fmadd_ps(f, _mm256_set1_ps(0.00828929059f), _mm256_set1_ps(0.0418978221f));
  p = _mm256_fmadd_ps(f, p, _mm256_set1_ps(0.166676521f));
  p = _mm256_fmadd_ps(f, p, _mm256_set1_ps(0.499991506f));
  p = _mm256_fmadd_ps(f, p, _mm256_set1_ps(0.999999701f));
  p = _mm256_fmadd_ps(f, p, _mm256_set1_ps(1.f));
  const __m256i two_k = _mm256_slli_epi32(
      _mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(two_k));
}
#elif defined(CPU_CAPABILITY_AVX512)
// The same operations on 16 floats (cpu/avx512.h): the same bits as the AVX2 copy.
template <>
C10_ALWAYS_INLINE Vec<float> exp_fast(Vec<float> v) {
  const __m512 x = _mm512_min_ps(_mm512_set1_ps(88.f), _mm512_max_ps(_mm512_set1_ps(-87.f), v));
  const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693147181f), x);
  __m512 p = _mm512_fmadd_ps(f, _mm512_set1_ps(0.00828929059f), _mm512_set1_ps(0.0418978221f));
  p = _mm512_fmadd_ps(f, p, _mm512_set1_ps(0.166676521f));
  p = _mm512_fmadd_ps(f, p, _mm512_set1_ps(0.499991506f));
  p = _mm512_fmadd_ps(f, p, _mm512_set1_ps(0.999999701f));
  p = _mm512_fmadd_ps(f, p, _mm512_set1_ps(1.f));
  const __m512i two_k = _mm512_slli_epi32(
      _mm512_add_epi32(_mm512_cvtps_epi32(k), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(two_k));
}
#endif

// sigmoid and tanh: one exp and one division each.
template <typename scalar_t>
C10_ALWAYS_INLINE Vec<scalar_t> sigmoid(Vec<scalar_t> x) {
  const Vec<scalar_t> one(scalar_t(1));
  return one / (one + exp_fast(x.neg()));
}

// tanh(x) = 2 sigmoid(2x) - 1; saturates to +-1 where exp over- or underflows.
template <typename scalar_t>
C10_ALWAYS_INLINE Vec<scalar_t> tanh(Vec<scalar_t> x) {
  const Vec<scalar_t> one(scalar_t(1)), two(scalar_t(2));
  return two / (one + exp_fast(x * Vec<scalar_t>(scalar_t(-2)))) - one;
}

template <typename scalar_t>
C10_ALWAYS_INLINE Vec<scalar_t> load(const scalar_t* p, int c) {
  return Vec<scalar_t>::loadu(p, c);
}

// h~ = h * mask, or h itself without a mask.
template <typename scalar_t>
C10_ALWAYS_INLINE Vec<scalar_t> masked(Vec<scalar_t> h, const scalar_t* mask, int c) {
  return mask ? h * load(mask, c) : h;
}

// Runs f(j, count) over [0, n) in vector-width chunks; the last chunk may be short.
template <typename scalar_t, typename F>
C10_ALWAYS_INLINE void for_chunks(int64_t n, F f) {
  constexpr int64_t W = Vec<scalar_t>::size();
  for (int64_t j = 0; j < n; j += W) f(j, static_cast<int>(std::min<int64_t>(W, n - j)));
}

template <typename scalar_t>
C10_ALWAYS_INLINE void zero_gates(int64_t H, int64_t gates, scalar_t* p, int c) {
  const Vec<scalar_t> zero(scalar_t(0));
  for (int64_t g = 0; g < gates; ++g) zero.store(p + g * H, c);
}

// Where one forward step of one vector of units reads and writes.
template <typename scalar_t>
struct ForwardCell {
  const scalar_t* mask;    // recurrent-dropout mask, or null
  const scalar_t* h_prev;  // the state read at this step
  scalar_t* h_next;        // the state written
  scalar_t* hm_next;       // h_next * mask, the next recurrent GEMM's operand (with a mask)
  scalar_t* out;           // the output row; null when the caller writes it after the step
  scalar_t* res;           // the reserve row; null when none is kept (reset_after=true)
};

// The state update shared by both cells: h = (1-z) n + z h_prev, written to the next
// state, the output, and (with a mask) the next step's GEMM operand h~.
template <typename scalar_t>
C10_ALWAYS_INLINE void new_state(Vec<scalar_t> z, Vec<scalar_t> n, Vec<scalar_t> hp,
                                 const ForwardCell<scalar_t>& p, int c) {
  auto hn = (Vec<scalar_t>(scalar_t(1)) - z) * n + z * hp;
  hn.store(p.h_next, c);
  if (p.out) hn.store(p.out, c);
  if (p.mask) masked(hn, p.mask, c).store(p.hm_next, c);
}

// The forward's activations take pre-activations and are applied by the GEMM tiles to
// all of a tile's rows before any row's results are stored, so that the rows' exp and
// division chains overlap instead of running one after another.

// reset_after=true, one step, from the activated gates: r, z, n = tanh(gx_n + r * gh_n),
// with gh_n = h~ W_hn^T + b_hn (kept for the backward's r gate).
template <typename scalar_t>
C10_ALWAYS_INLINE void forward_after(Vec<scalar_t> r, Vec<scalar_t> z, Vec<scalar_t> n,
                                     Vec<scalar_t> gh_n, const ForwardCell<scalar_t>& p,
                                     int64_t H, int c) {
  auto hp = load(p.h_prev, c);
  if (p.res) {
    r.store(p.res + kSlotR * H, c);
    z.store(p.res + kSlotZ * H, c);
    gh_n.store(p.res + kSlotAux * H, c);
  }
  new_state(z, n, hp, p, c);
}

// reset_after=false, first half, from the activated r and z: q = r * h~, the operand
// of the second recurrent GEMM.
template <typename scalar_t>
C10_ALWAYS_INLINE void forward_before_rz(Vec<scalar_t> r, Vec<scalar_t> z,
                                         const scalar_t* hm_prev, scalar_t* q, scalar_t* res,
                                         int64_t H, int c) {
  auto qv = r * load(hm_prev, c);
  r.store(res + kSlotR * H, c);
  z.store(res + kSlotZ * H, c);
  qv.store(res + kSlotAux * H, c);
  qv.store(q, c);
}

// reset_after=false, second half, from the activated n = tanh(gx_n + q W_hn^T).
template <typename scalar_t>
C10_ALWAYS_INLINE void forward_before_n(Vec<scalar_t> n, const ForwardCell<scalar_t>& p,
                                        int64_t H, int c) {
  new_state(load(p.res + kSlotZ * H, c), n, load(p.h_prev, c), p, c);
}

// A row past its length: its state (and h~) carries over, its output and gates are 0.
template <typename scalar_t>
C10_ALWAYS_INLINE void forward_inactive(const ForwardCell<scalar_t>& p, const scalar_t* hm_prev,
                             int64_t H, int c) {
  load(p.h_prev, c).store(p.h_next, c);
  if (p.mask) load(hm_prev, c).store(p.hm_next, c);
  if (p.out) Vec<scalar_t>(scalar_t(0)).store(p.out, c);
  if (p.res) zero_gates(H, kSlots, p.res, c);
}

// Where one backward step of one vector of units reads and writes.
template <typename scalar_t>
struct BackwardCell {
  const scalar_t* res;   // the reserve row
  const scalar_t* hp;    // the state this step read (h_prev)
  const scalar_t* h;     // the state this step wrote
  const scalar_t* gout;  // the output's gradient
  bool gout_broadcast;   // gout holds one value for every unit (an expanded gradient)
  const scalar_t* mask;  // or null
  scalar_t* dhz;         // in: dh_{t+1} * z_{t+1} (the part of dh carried past the GEMM)
  scalar_t* dgx;         // the gate gradients: dgx = dL/d(x W_ih^T + b_ih)
  scalar_t* dgh;         //                     dgh = dL/d(h~ W_hh^T)
};

// The gradient reaching h_t: what was carried (dhz), what came back through the
// recurrent GEMM (dhh, times the mask), and the output's gradient.
template <typename scalar_t>
C10_ALWAYS_INLINE Vec<scalar_t> total_dh(Vec<scalar_t> dhh, const scalar_t* dhz,
                                         const scalar_t* mask, int c) {
  return load(dhz, c) + masked(dhh, mask, c);
}

template <typename scalar_t>
C10_ALWAYS_INLINE Vec<scalar_t> total_dh(Vec<scalar_t> dhh, const BackwardCell<scalar_t>& p,
                                         int c) {
  auto gout = p.gout_broadcast ? Vec<scalar_t>(*p.gout) : load(p.gout, c);
  return total_dh(dhh, p.dhz, p.mask, c) + gout;
}

// n from h = (1-z) n + z h_prev. Where z rounded to 1, n is lost, but then it does not
// matter: the backward uses n only in da_n = dh (1-z) (1-n^2) and da_z = dh (h_prev-n)
// z (1-z), both scaled by 1-z, which also scales the error of the division where 1-z is
// small (the clamp to tanh's range bounds it further).
template <typename scalar_t>
C10_ALWAYS_INLINE Vec<scalar_t> recover_n(Vec<scalar_t> h, Vec<scalar_t> z, Vec<scalar_t> hp) {
  const Vec<scalar_t> one(scalar_t(1));
  const Vec<scalar_t> tiny(std::numeric_limits<scalar_t>::min());
  auto n = (h - z * hp) / at::vec::maximum(one - z, tiny);
  return at::vec::clamp(n, Vec<scalar_t>(scalar_t(-1)), one);
}

// reset_after=true backward of one step. Writes dgx = [da_r, da_z, da_n],
// dgh = [da_r, da_z, da_n * r] and dhz = dh * z. Like the other backward cells, it adds
// its gate gradients to `sum`, [da_r, da_z, da_n, da_n * r]: the bias gradients' terms,
// summed over a tile's rows in registers.
template <typename scalar_t>
C10_ALWAYS_INLINE void backward_after(Vec<scalar_t> dhh, const BackwardCell<scalar_t>& p, int64_t H,
                           int c, Vec<scalar_t> (&sum)[4]) {
  const Vec<scalar_t> one(scalar_t(1));
  auto dh = total_dh(dhh, p, c);
  auto r = load(p.res + kSlotR * H, c), z = load(p.res + kSlotZ * H, c);
  auto gh_n = load(p.res + kSlotAux * H, c), hp = load(p.hp, c);
  auto n = recover_n(load(p.h, c), z, hp);
  auto da_n = dh * (one - z) * (one - n * n);
  auto da_z = dh * (hp - n) * z * (one - z);
  auto da_r = da_n * gh_n * r * (one - r);
  da_r.store(p.dgx, c);
  da_z.store(p.dgx + H, c);
  da_n.store(p.dgx + 2 * H, c);
  da_r.store(p.dgh, c);
  da_z.store(p.dgh + H, c);
  const auto da_nr = da_n * r;
  da_nr.store(p.dgh + 2 * H, c);
  (dh * z).store(p.dhz, c);
  sum[0] = sum[0] + da_r, sum[1] = sum[1] + da_z, sum[2] = sum[2] + da_n, sum[3] = sum[3] + da_nr;
}

// reset_after=false backward, first half: da_z and da_n (dgh_n = da_n feeds the
// GEMM dq = da_n W_hn that the r gate needs).
template <typename scalar_t>
C10_ALWAYS_INLINE void backward_before_zn(Vec<scalar_t> dhh, const BackwardCell<scalar_t>& p, int64_t H,
                               int c, Vec<scalar_t> (&sum)[4]) {
  const Vec<scalar_t> one(scalar_t(1));
  auto dh = total_dh(dhh, p, c);
  auto z = load(p.res + kSlotZ * H, c), hp = load(p.hp, c);
  auto n = recover_n(load(p.h, c), z, hp);
  auto da_n = dh * (one - z) * (one - n * n);
  auto da_z = dh * (hp - n) * z * (one - z);
  da_z.store(p.dgx + H, c);
  da_n.store(p.dgx + 2 * H, c);
  da_z.store(p.dgh + H, c);
  da_n.store(p.dgh + 2 * H, c);
  (dh * z).store(p.dhz, c);
  sum[1] = sum[1] + da_z, sum[2] = sum[2] + da_n;
}

// reset_after=false backward, second half: da_r from dq = da_n W_hn, and dqr = dq * r,
// the part of dh~ that flows through q = r * h~.
template <typename scalar_t>
C10_ALWAYS_INLINE void backward_before_r(Vec<scalar_t> dq, const BackwardCell<scalar_t>& p,
                              scalar_t* dqr, int64_t H, int c, Vec<scalar_t> (&sum)[4]) {
  const Vec<scalar_t> one(scalar_t(1));
  auto r = load(p.res + kSlotR * H, c);
  auto hm = masked(load(p.hp, c), p.mask, c);
  auto da_r = dq * hm * r * (one - r);
  da_r.store(p.dgx, c);
  da_r.store(p.dgh, c);
  (dq * r).store(dqr, c);
  sum[0] = sum[0] + da_r;
}

// A row past its length in backward: no gate gradients, and dh passes through.
template <typename scalar_t>
C10_ALWAYS_INLINE void backward_inactive(Vec<scalar_t> dhh, const BackwardCell<scalar_t>& p, int64_t H,
                              int c) {
  total_dh(dhh, p.dhz, p.mask, c).store(p.dhz, c);
  zero_gates(H, 3, p.dgx, c);
  zero_gates(H, 3, p.dgh, c);
}

// Asks for `count` values from p to be brought into cache for reading: the rows of a
// step to come, fetched while the current step computes.
template <typename scalar_t>
inline void prefetch(const scalar_t* p, int64_t count) {
  const char* b = reinterpret_cast<const char*>(p);
  const char* e = reinterpret_cast<const char*>(p + count);
  for (; b < e; b += 64) __builtin_prefetch(b, 0, 2);
}

// Copies n values to memory that will not be read again soon (the reserve, the output,
// the input gradient: read after the whole loop), with non-temporal stores where the CPU
// has them: the lines are written whole, without first being read into the cache or
// evicting what the loop still needs from it.
template <typename scalar_t>
inline void stream_copy(scalar_t* dst, const scalar_t* src, int64_t n) {
#if defined(__AVX2__)
  char* d = reinterpret_cast<char*>(dst);
  const char* s = reinterpret_cast<const char*>(src);
  size_t bytes = sizeof(scalar_t) * static_cast<size_t>(n);
  const size_t head = std::min(bytes, (32 - reinterpret_cast<uintptr_t>(d) % 32) % 32);
  std::memcpy(d, s, head);
  d += head, s += head, bytes -= head;
  for (; bytes >= 32; d += 32, s += 32, bytes -= 32) {
    _mm256_stream_si256(reinterpret_cast<__m256i*>(d),
                        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(s)));
  }
  std::memcpy(d, s, bytes);
  _mm_sfence();
#else
  std::memcpy(dst, src, sizeof(scalar_t) * n);
#endif
}

// dst = src * mask (src itself without a mask), n values.
template <typename scalar_t>
C10_ALWAYS_INLINE void masked_copy(int64_t n, const scalar_t* src, const scalar_t* mask, scalar_t* dst) {
  if (!mask) {
    std::memcpy(dst, src, sizeof(scalar_t) * n);
    return;
  }
  for_chunks<scalar_t>(n, [&](int64_t j, int c) {
    (load(src + j, c) * load(mask + j, c)).store(dst + j, c);
  });
}

}  // namespace gru_torch::cpu::CPU_CAPABILITY
