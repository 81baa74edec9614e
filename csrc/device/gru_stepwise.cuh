// The per-step path's fused pointwise kernels: each time step runs one GEMM through
// cuBLAS (ATen) and then one of these over the step's B x H elements, the whole
// cell in one pass. It serves what the persistent kernels do not: H > 128, exact
// float32 (TF32 off) and float64. The step loop is in csrc/gru_stepwise_op.h; the
// math mirrors csrc/cpu_cell.h (reserve rows: r, z, n, aux, h_prev).
#pragma once

#include <stdexcept>

#include "gru_raw.h"
#include "launch.h"
#include "port.cuh"

GT_BEGIN_NAMESPACE
namespace gru {

// Compute type: double for double, float otherwise.
template <class T> using Acc = std::conditional_t<std::is_same<T, double>::value, double, float>;
template <class T> GT_DEV Acc<T> in(T v) {
  if constexpr (std::is_same<T, double>::value) return v;
  else return to_float(v);
}
template <class T> GT_DEV T out_as(Acc<T> v) {
  if constexpr (std::is_same<T, double>::value) return v;
  else return from_float<T>(v);
}
#if GT_EMULATED
template <class A> GT_DEV A exp_(A x) { return std::exp(x); }
template <class A> GT_DEV A tanh_(A x) { return std::tanh(x); }
#else
template <class A> GT_DEV A exp_(A x) { return exp(x); }
template <class A> GT_DEV A tanh_(A x) { return tanh(x); }
#endif
template <class A> GT_DEV A sigm(A x) { return A(1) / (A(1) + exp_(-x)); }

template <class T>
struct StepArgs {
  int B, H, t, os;
  gptr<const T> gx, gh, mask, gout, dhh;
  gptr<const int64_t> lengths;
  gptr<T> out, res, hm, dgx, dgh, dghn, dqr;
  gptr<Acc<T>> h, rz;
};

constexpr unsigned kStepThreads = 256;

template <gru_torch::raw::Phase P, class T>
__global__ void __launch_bounds__(kStepThreads) gru_step(StepArgs<T> a) {
  using A = Acc<T>;
  using gru_torch::raw::Phase;
  const int64_t e = int64_t(blockIdx.x) * kStepThreads + threadIdx.x;
  if (e >= int64_t(a.B) * a.H) return;
  const int b = int(e / a.H), u = int(e % a.H), H = a.H;
  const bool on = !a.lengths || a.t < a.lengths[b];
  const A m = a.mask ? in(a.mask[e]) : A(1);
  const int64_t g3 = int64_t(b) * 3 * H + u, r5 = int64_t(b) * 5 * H + u, o = int64_t(b) * a.os + u;
  auto zero_res = [&] {
    if (a.res)
      for (int s = 0; s < 5; ++s) a.res[r5 + s * H] = out_as<T>(A(0));
  };
  if constexpr (P == Phase::FwdAfter) {  // gh = h~ W_hh^T + b_hh
    if (!on) { a.out[o] = out_as<T>(A(0)); zero_res(); return; }
    const A r = sigm(in(a.gx[g3]) + in(a.gh[g3])), z = sigm(in(a.gx[g3 + H]) + in(a.gh[g3 + H]));
    const A ghn = in(a.gh[g3 + 2 * H]), n = tanh_(in(a.gx[g3 + 2 * H]) + r * ghn), hp = a.h[e];
    const A h = (A(1) - z) * n + z * hp;
    a.out[o] = out_as<T>(h);
    if (a.res) {
      a.res[r5] = out_as<T>(r); a.res[r5 + H] = out_as<T>(z); a.res[r5 + 2 * H] = out_as<T>(n);
      a.res[r5 + 3 * H] = out_as<T>(ghn); a.res[r5 + 4 * H] = out_as<T>(hp);
    }
    a.h[e] = h;
    a.hm[e] = out_as<T>(h * m);
  } else if constexpr (P == Phase::FwdBeforeRZ) {  // gh = h~ W_hrz^T [B, 2H]; hm <- q
    const int64_t g2 = int64_t(b) * 2 * H + u;
    const A r = sigm(in(a.gx[g3]) + in(a.gh[g2])), z = sigm(in(a.gx[g3 + H]) + in(a.gh[g2 + H]));
    const A q = on ? r * a.h[e] * m : A(0);
    a.rz[g2] = r;
    a.rz[g2 + H] = z;
    a.hm[e] = out_as<T>(q);
  } else if constexpr (P == Phase::FwdBeforeN) {  // gh = q W_hn^T [B, H]; hm <- h~
    if (!on) {  // hm holds q = 0 for this row: put its h~ back for the next step
      a.out[o] = out_as<T>(A(0));
      zero_res();
      a.hm[e] = out_as<T>(a.h[e] * m);
      return;
    }
    const int64_t g2 = int64_t(b) * 2 * H + u;
    const A r = a.rz[g2], z = a.rz[g2 + H], hp = a.h[e], q = r * hp * m;
    const A n = tanh_(in(a.gx[g3 + 2 * H]) + in(a.gh[e])), h = (A(1) - z) * n + z * hp;
    a.out[o] = out_as<T>(h);
    if (a.res) {
      a.res[r5] = out_as<T>(r); a.res[r5 + H] = out_as<T>(z); a.res[r5 + 2 * H] = out_as<T>(n);
      a.res[r5 + 3 * H] = out_as<T>(q); a.res[r5 + 4 * H] = out_as<T>(hp);
    }
    a.h[e] = h;
    a.hm[e] = out_as<T>(h * m);
  } else if constexpr (P == Phase::BwdAfter || P == Phase::BwdBeforeZN) {
    // h holds dhz = dh_{t+1} z_{t+1}; dhh = dgh_{t+1} W_hh (the recurrent part, unmasked).
    const A dh_in = a.h[e] + in(a.dhh[e]) * m;
    if (!on) {
      a.h[e] = dh_in;
      for (int q = 0; q < 3; ++q) a.dgx[g3 + q * H] = a.dgh[g3 + q * H] = out_as<T>(A(0));
      if (a.dghn) a.dghn[e] = out_as<T>(A(0));
      return;
    }
    const A dh = dh_in + in(a.gout[o]);
    const A r = in(a.res[r5]), z = in(a.res[r5 + H]), n = in(a.res[r5 + 2 * H]);
    const A aux = in(a.res[r5 + 3 * H]), hp = in(a.res[r5 + 4 * H]);
    const A da_n = dh * (A(1) - z) * (A(1) - n * n), da_z = dh * (hp - n) * z * (A(1) - z);
    a.dgx[g3 + H] = a.dgh[g3 + H] = out_as<T>(da_z);
    a.dgx[g3 + 2 * H] = out_as<T>(da_n);
    if constexpr (P == Phase::BwdAfter) {
      const A da_r = da_n * aux * r * (A(1) - r);
      a.dgx[g3] = a.dgh[g3] = out_as<T>(da_r);
      a.dgh[g3 + 2 * H] = out_as<T>(da_n * r);
      a.dghn[e] = out_as<T>(da_n * r);
    } else {
      a.dgh[g3 + 2 * H] = out_as<T>(da_n);
    }
    a.h[e] = dh * z;
  } else if constexpr (P == Phase::BwdBeforeR) {  // gh = dq = da_n W_hn [B, H]
    if (!on) { a.dqr[e] = out_as<T>(A(0)); return; }
    const A r = in(a.res[r5]), hm = in(a.res[r5 + 4 * H]) * m, dq = in(a.gh[e]);
    const A da_r = dq * hm * r * (A(1) - r);
    a.dgx[g3] = a.dgh[g3] = out_as<T>(da_r);
    a.dqr[e] = out_as<T>(dq * r);
  } else {  // BwdFinal: dh_0 = dhz + dhh * mask, into hm
    a.hm[e] = out_as<T>(a.h[e] + in(a.dhh[e]) * m);
  }
}

template <class P, class T>
auto typed_step(const gru_torch::raw::Buf<T>& b) {
  using Q = std::conditional_t<std::is_const<T>::value, const P, P>;
  return make_gptr(static_cast<Q*>(b.ptr), b.numel);
}

// The launch of one step's pointwise kernel: one thread per (row, unit).
inline LaunchSpec step_spec(int batch, int hidden) {
  LaunchSpec spec;
  spec.name = "gru_step";
  const int64_t n = int64_t(batch) * hidden;
  spec.grid = dim3(unsigned((n + kStepThreads - 1) / kStepThreads));
  spec.block = dim3(kStepThreads);
  spec.max_threads = kStepThreads;
  return spec;
}

template <class T>
void run_step(const gru_torch::raw::Step& s, Stream st) {
  using gru_torch::raw::Phase;
  StepArgs<T> a;
  a.B = s.batch;
  a.H = s.hidden;
  a.t = s.t;
  a.os = s.out_stride;
  a.gx = typed_step<T>(s.gx);
  a.gh = typed_step<T>(s.gh);
  a.mask = typed_step<T>(s.mask);
  a.gout = typed_step<T>(s.gout);
  a.dhh = typed_step<T>(s.dhh);
  a.lengths = typed_step<int64_t>(s.lengths);
  a.out = typed_step<T>(s.out);
  a.res = typed_step<T>(s.res);
  a.hm = typed_step<T>(s.hm);
  a.dgx = typed_step<T>(s.dgx);
  a.dgh = typed_step<T>(s.dgh);
  a.dghn = typed_step<T>(s.dghn);
  a.dqr = typed_step<T>(s.dqr);
  a.h = typed_step<Acc<T>>(s.h);
  a.rz = typed_step<Acc<T>>(s.rz);
  const LaunchSpec spec = step_spec(s.batch, s.hidden);
  switch (s.phase) {
    case Phase::FwdAfter: return launch(spec, st, gru_step<Phase::FwdAfter, T>, a);
    case Phase::FwdBeforeRZ: return launch(spec, st, gru_step<Phase::FwdBeforeRZ, T>, a);
    case Phase::FwdBeforeN: return launch(spec, st, gru_step<Phase::FwdBeforeN, T>, a);
    case Phase::BwdAfter: return launch(spec, st, gru_step<Phase::BwdAfter, T>, a);
    case Phase::BwdBeforeZN: return launch(spec, st, gru_step<Phase::BwdBeforeZN, T>, a);
    case Phase::BwdBeforeR: return launch(spec, st, gru_step<Phase::BwdBeforeR, T>, a);
    case Phase::BwdFinal: return launch(spec, st, gru_step<Phase::BwdFinal, T>, a);
  }
  throw std::invalid_argument("gru_step: unknown phase");
}

}  // namespace gru
GT_END_NAMESPACE
