// The GRU cell's pointwise math on the CPU, vectorized with at::vec, for n hidden units
// of one batch row. Pointers to gate-major rows (gx, gh, dgx, dgh: r, z, n; the reserve
// row res: r, z, n, aux, h_prev) step H between gates; the others (h, out, mask, ...)
// hold the n values contiguously. Callers offset every pointer to the first unit, so a
// thread can run the cell on just the units whose gates it has computed.
// Derivative helpers take the activation's *output* (d_sigmoid(y) = y (1 - y)).
#pragma once

#include <ATen/cpu/vec/vec.h>
#include <algorithm>
#include <cstring>

namespace gru_torch::cpu {

template <typename scalar_t>
using Vec = at::vec::Vectorized<scalar_t>;

// exp_u20 is at::vec's fast exp (a polynomial, <= 20 ulp in float32; the exact exp
// in float64). sigmoid and tanh both go through it: one exp and one division each.
template <typename scalar_t>
inline Vec<scalar_t> sigmoid(Vec<scalar_t> x) {
  const Vec<scalar_t> one(scalar_t(1));
  return one / (one + x.neg().exp_u20());
}

// tanh(x) = 2 sigmoid(2x) - 1; saturates to +-1 where exp over- or underflows.
template <typename scalar_t>
inline Vec<scalar_t> tanh(Vec<scalar_t> x) {
  const Vec<scalar_t> one(scalar_t(1)), two(scalar_t(2));
  return two / (one + (x * Vec<scalar_t>(scalar_t(-2))).exp_u20()) - one;
}

// Runs f(j, count) over [0, n) in vector-width chunks; the last chunk may be short.
template <typename scalar_t, typename F>
inline void for_chunks(int64_t n, F f) {
  constexpr int64_t W = Vec<scalar_t>::size();
  for (int64_t j = 0; j < n; j += W) f(j, static_cast<int>(std::min<int64_t>(W, n - j)));
}

template <typename scalar_t>
inline Vec<scalar_t> load(const scalar_t* p, int64_t j, int c) {
  return Vec<scalar_t>::loadu(p + j, c);
}

// h~ = h * mask, or h itself without a mask.
template <typename scalar_t>
inline Vec<scalar_t> masked(Vec<scalar_t> h, const scalar_t* mask, int64_t j, int c) {
  return mask ? h * load(mask, j, c) : h;
}

template <typename scalar_t>
inline void zero_gates(int64_t n, int64_t H, int64_t gates, scalar_t* p) {
  for (int64_t g = 0; g < gates; ++g) std::memset(p + g * H, 0, sizeof(scalar_t) * n);
}

// The state update shared by both cells: h = (1-z) n + z h_prev, written to the next
// state, the output, and (with a mask) the next step's GEMM operand h~.
template <typename scalar_t>
inline Vec<scalar_t> new_state(Vec<scalar_t> z, Vec<scalar_t> n, Vec<scalar_t> hp,
                               const scalar_t* mask, scalar_t* h_next, scalar_t* hm_next,
                               scalar_t* out, int64_t j, int c) {
  auto hn = (Vec<scalar_t>(scalar_t(1)) - z) * n + z * hp;
  hn.store(h_next + j, c);
  hn.store(out + j, c);
  if (mask) masked(hn, mask, j, c).store(hm_next + j, c);
  return hn;
}

// reset_after=true, one step. gx: the input projection plus b_ih and the r, z parts of
// b_hh; gh = h~ W_hh^T (no bias); b_hn: [n] or null.
template <typename scalar_t>
inline void forward_row_after(int64_t n, int64_t H, const scalar_t* gx, const scalar_t* gh,
                              const scalar_t* b_hn, const scalar_t* mask,
                              const scalar_t* h_prev, scalar_t* h_next, scalar_t* hm_next,
                              scalar_t* out, scalar_t* res) {
  for_chunks<scalar_t>(n, [&](int64_t j, int c) {
    auto r = sigmoid(load(gx, j, c) + load(gh, j, c));
    auto z = sigmoid(load(gx + H, j, c) + load(gh + H, j, c));
    auto ghn = b_hn ? load(gh + 2 * H, j, c) + load(b_hn, j, c) : load(gh + 2 * H, j, c);
    auto nv = tanh(load(gx + 2 * H, j, c) + r * ghn);
    auto hp = load(h_prev, j, c);
    r.store(res + j, c);
    z.store(res + H + j, c);
    nv.store(res + 2 * H + j, c);
    ghn.store(res + 3 * H + j, c);
    hp.store(res + 4 * H + j, c);
    new_state(z, nv, hp, mask, h_next, hm_next, out, j, c);
  });
}

// reset_after=false, first half: r and z from gh_rz = h~ W_hrz^T (r, z H apart), and
// q = r * h~, the operand of the second recurrent GEMM.
template <typename scalar_t>
inline void forward_row_before_rz(int64_t n, int64_t H, const scalar_t* gx,
                                  const scalar_t* gh_rz, const scalar_t* hm, scalar_t* q,
                                  scalar_t* res) {
  for_chunks<scalar_t>(n, [&](int64_t j, int c) {
    auto r = sigmoid(load(gx, j, c) + load(gh_rz, j, c));
    auto z = sigmoid(load(gx + H, j, c) + load(gh_rz + H, j, c));
    auto qv = r * load(hm, j, c);
    r.store(res + j, c);
    z.store(res + H + j, c);
    qv.store(res + 3 * H + j, c);
    qv.store(q + j, c);
  });
}

// reset_after=false, second half: n from ghn = q W_hn^T, then the new state.
template <typename scalar_t>
inline void forward_row_before_n(int64_t n, int64_t H, const scalar_t* gx,
                                 const scalar_t* ghn, const scalar_t* mask,
                                 const scalar_t* h_prev, scalar_t* h_next, scalar_t* hm_next,
                                 scalar_t* out, scalar_t* res) {
  for_chunks<scalar_t>(n, [&](int64_t j, int c) {
    auto z = load(res + H, j, c);
    auto nv = tanh(load(gx + 2 * H, j, c) + load(ghn, j, c));
    auto hp = load(h_prev, j, c);
    nv.store(res + 2 * H + j, c);
    hp.store(res + 4 * H + j, c);
    new_state(z, nv, hp, mask, h_next, hm_next, out, j, c);
  });
}

// A row past its length: its state (and h~) carries over, its output and reserve are 0.
template <typename scalar_t>
inline void forward_row_inactive(int64_t n, int64_t H, const scalar_t* h_prev,
                                 scalar_t* h_next, const scalar_t* hm_prev,
                                 scalar_t* hm_next, scalar_t* out, scalar_t* res) {
  std::memcpy(h_next, h_prev, sizeof(scalar_t) * n);
  if (hm_next != h_next) std::memcpy(hm_next, hm_prev, sizeof(scalar_t) * n);
  std::memset(out, 0, sizeof(scalar_t) * n);
  zero_gates(n, H, 5, res);
}

// The gradient reaching h_t: what was carried (dhz = dh_{t+1} * z_{t+1}), what came
// back through the recurrent GEMM (dhh, times the mask), and the output's gradient.
template <typename scalar_t>
inline Vec<scalar_t> total_dh(const scalar_t* dhz, const scalar_t* dhh,
                              const scalar_t* mask, const scalar_t* gout, int64_t j, int c) {
  auto d = load(dhz, j, c) + masked(load(dhh, j, c), mask, j, c);
  return gout ? d + load(gout, j, c) : d;
}

// reset_after=true backward of one step. Writes dgx = [da_r, da_z, da_n],
// dgh = [da_r, da_z, da_n * r] and dhz = dh * z.
template <typename scalar_t>
inline void backward_row_after(int64_t n, int64_t H, const scalar_t* res,
                               const scalar_t* gout, const scalar_t* mask, scalar_t* dhz,
                               const scalar_t* dhh, scalar_t* dgx, scalar_t* dgh) {
  const Vec<scalar_t> one(scalar_t(1));
  for_chunks<scalar_t>(n, [&](int64_t j, int c) {
    auto dh = total_dh(dhz, dhh, mask, gout, j, c);
    auto r = load(res, j, c), z = load(res + H, j, c), nv = load(res + 2 * H, j, c);
    auto ghn = load(res + 3 * H, j, c), hp = load(res + 4 * H, j, c);
    auto da_n = dh * (one - z) * (one - nv * nv);
    auto da_z = dh * (hp - nv) * z * (one - z);
    auto da_r = da_n * ghn * r * (one - r);
    da_r.store(dgx + j, c);
    da_z.store(dgx + H + j, c);
    da_n.store(dgx + 2 * H + j, c);
    da_r.store(dgh + j, c);
    da_z.store(dgh + H + j, c);
    (da_n * r).store(dgh + 2 * H + j, c);
    (dh * z).store(dhz + j, c);
  });
}

// reset_after=false backward, first half: da_z and da_n (dgh_n = da_n feeds the
// GEMM dq = da_n W_hn that the r gate needs).
template <typename scalar_t>
inline void backward_row_before_zn(int64_t n, int64_t H, const scalar_t* res,
                                   const scalar_t* gout, const scalar_t* mask, scalar_t* dhz,
                                   const scalar_t* dhh, scalar_t* dgx, scalar_t* dgh) {
  const Vec<scalar_t> one(scalar_t(1));
  for_chunks<scalar_t>(n, [&](int64_t j, int c) {
    auto dh = total_dh(dhz, dhh, mask, gout, j, c);
    auto z = load(res + H, j, c), nv = load(res + 2 * H, j, c), hp = load(res + 4 * H, j, c);
    auto da_n = dh * (one - z) * (one - nv * nv);
    auto da_z = dh * (hp - nv) * z * (one - z);
    da_z.store(dgx + H + j, c);
    da_n.store(dgx + 2 * H + j, c);
    da_z.store(dgh + H + j, c);
    da_n.store(dgh + 2 * H + j, c);
    (dh * z).store(dhz + j, c);
  });
}

// reset_after=false backward, second half: da_r from dq, and dqr = dq * r, the part
// of dh~ that flows through q = r * h~.
template <typename scalar_t>
inline void backward_row_before_r(int64_t n, int64_t H, const scalar_t* res,
                                  const scalar_t* mask, const scalar_t* dq, scalar_t* dqr,
                                  scalar_t* dgx, scalar_t* dgh) {
  const Vec<scalar_t> one(scalar_t(1));
  for_chunks<scalar_t>(n, [&](int64_t j, int c) {
    auto r = load(res, j, c);
    auto hm = masked(load(res + 4 * H, j, c), mask, j, c);
    auto dqv = load(dq, j, c);
    auto da_r = dqv * hm * r * (one - r);
    da_r.store(dgx + j, c);
    da_r.store(dgh + j, c);
    (dqv * r).store(dqr + j, c);
  });
}

// A row past its length in backward: no gate gradients, and dh passes through.
template <typename scalar_t>
inline void backward_row_inactive(int64_t n, int64_t H, const scalar_t* mask, scalar_t* dhz,
                                  const scalar_t* dhh, scalar_t* dgx, scalar_t* dgh) {
  for_chunks<scalar_t>(n, [&](int64_t j, int c) {
    total_dh<scalar_t>(dhz, dhh, mask, nullptr, j, c).store(dhz + j, c);
  });
  zero_gates(n, H, 3, dgx);
  zero_gates(n, H, 3, dgh);
}

// dst = src * mask (src itself without a mask), n values.
template <typename scalar_t>
inline void masked_copy(int64_t n, const scalar_t* src, const scalar_t* mask, scalar_t* dst) {
  if (!mask) {
    std::memcpy(dst, src, sizeof(scalar_t) * n);
    return;
  }
  for_chunks<scalar_t>(n, [&](int64_t j, int c) {
    (load(src, j, c) * load(mask, j, c)).store(dst + j, c);
  });
}

}  // namespace gru_torch::cpu
