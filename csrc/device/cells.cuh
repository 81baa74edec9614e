// The recurrent cells as compile-time policies of the persistent kernels
// (gru_persistent.cuh): what depends on the cell is here, once; the time loop, W_hh
// on chip, the mma tiles, the barriers, lengths and directions are the kernels'.
// Codes as the family op's (csrc/cpu/family.h, gru_torch/ops.py's cell_code).
//
// A cell says, per (row, unit) of one step:
//   kCode       the family op's cell code
//   kGates      G: gate blocks of W_hh per unit (GRU 3, RNN 1); the forward GEMM's N
//               is G x the warp's units, the backward GEMM's K is G x HP
//   kSlots      values the reserve keeps per (row, unit) a step for the backward,
//               in the family op's order (csrc/cpu/family.h, reserve_slots)
//   kTwoGemm    the candidate needs a gate first (GRU reset_before): two GEMMs and two
//               barriers a step, with a step body of its own in each kernel
//   kRecBias    the gate whose recurrent bias stays inside the cell (GRU reset_after's
//               b_hn, scaled by r), or -1: every other bias is folded into gx
//   kNeedsOut   the backward reads the step's output h (RNN: its derivative is a
//               function of h)
//   kNeedsPrev  the backward reads the state before the step, h_prev (GRU: z's
//               gradient)
//   kHasC       a cell state c beside h (LSTM): the forward carries it, the backward
//               carries dc and reads c_prev (the previous step's c slot, or c0)
//   forward(pre, gx, h, c, gate, s)   pre[G] = h~ W^T (+ b), gx[G], h the unmasked
//                               state, c the cell state (updated in place), gate the
//                               gate function's code; returns h' and fills the slots s
//                               (kSlots of them; arrays hold at least one)
//   backward(dh, y, hp, cp, dc, gate, s, da, dg)   dh = dL/dh' (both paths), y = h'
//                               (kNeedsOut), hp = h_prev (kNeedsPrev), cp = c_prev and
//                               dc = dL/dc' (kHasC; becomes dL/dc_prev), s the slots;
//                               fills da[G] = dL/d(gx) and dg[G] = dL/d(gh) (the
//                               backward GEMM's A row); returns dL/dh_prev by the
//                               direct path (before the mask and W_hh)
// Derivatives are taken from the activation's output (d sigmoid = y (1 - y)).
#pragma once

#include "port.cuh"

GT_BEGIN_NAMESPACE
namespace gru {

// One MUFU op each (tanh.approx; sigmoid(x) = (1 + tanh(x/2)) / 2): the special-
// function units do a quarter of the ALUs' work a cycle, and three activations a
// (row, unit) a step would otherwise take six. Their ~2^-11 relative error is at the
// level of the 16-bit and tf32 operands' rounding.
GT_DEV float sigmoid(float x) { return fmaf(0.5f, tanh_approx(0.5f * x), 0.5f); }
GT_DEV float tanh_fast(float x) { return tanh_approx(x); }

// The GRU's and LSTM's gate function by the family op's code (a uniform run-time switch):
// 0 sigmoid, 1 Keras 2's hard sigmoid clip(0.2 x + 0.5, 0, 1), 2 Keras 3's clip(x/6 + 0.5).
enum GateCode : int { kSigmoid = 0, kHardKeras2 = 1, kHardKeras3 = 2 };
GT_DEV float gate_fn(float x, int gate) {
  if (gate == kSigmoid) return sigmoid(x);
  const float slope = gate == kHardKeras2 ? 0.2f : 1.f / 6.f;
  return fminf(fmaxf(fmaf(x, slope, 0.5f), 0.f), 1.f);
}
// Its derivative from its output: the slope where 0 < y < 1, 0 where the clip held y.
GT_DEV float gate_grad(float y, int gate) {
  if (gate == kSigmoid) return y * (1.f - y);
  return (y > 0.f && y < 1.f) ? (gate == kHardKeras2 ? 0.2f : 1.f / 6.f) : 0.f;
}

enum CellCode : int { kGruAfter = 0, kGruBefore = 1, kLstm = 2, kRnnTanh = 3, kRnnRelu = 4 };

// GRU, reset_after=true (nn.GRU): n = tanh(gx_n + r * (h~ W_hn^T + b_hn)).
// Slots: r, z, n, gh_n.
struct GruAfter {
  static constexpr int kCode = kGruAfter, kGates = 3, kSlots = 4, kRecBias = 2;
  static constexpr bool kTwoGemm = false, kNeedsOut = false, kNeedsPrev = true, kHasC = false;
  // h is the unmasked state (z carries it); the mask multiplies only the GEMM's operand.
  GT_DEV static float forward(const float (&pre)[3], const float (&gx)[3], float h, float&, int gate,
                              float (&s)[4]) {
    const float r = gate_fn(pre[0] + gx[0], gate), z = gate_fn(pre[1] + gx[1], gate);
    const float n = tanh_fast(gx[2] + r * pre[2]);
    s[0] = r; s[1] = z; s[2] = n; s[3] = pre[2];
    return (1.f - z) * n + z * h;
  }
  GT_DEV static float backward(float dh, float, float hprev, float, float&, int gate, const float (&s)[4],
                               float (&da)[3], float (&dg)[3]) {
    const float r = s[0], z = s[1], n = s[2];
    da[2] = dh * (1.f - z) * (1.f - n * n);
    da[1] = dh * (hprev - n) * gate_grad(z, gate);
    da[0] = da[2] * s[3] * gate_grad(r, gate);
    dg[0] = da[0];
    dg[1] = da[1];
    dg[2] = da[2] * r;
    return dh * z;
  }
};

// GRU, reset_after=false (Keras 2): n = tanh(gx_n + (r * h~) W_hn^T). Slots: r, z, n,
// q = r * h~. Its step body is the kernels' (two GEMMs); the pointwise parts are here.
struct GruBefore {
  static constexpr int kCode = kGruBefore, kGates = 3, kSlots = 4, kRecBias = -1;
  static constexpr bool kTwoGemm = true, kNeedsOut = false, kNeedsPrev = true, kHasC = false;
  GT_DEV static float candidate(float x) { return tanh_fast(x); }
  GT_DEV static float blend(float z, float n, float h) { return (1.f - z) * n + z * h; }
};

// Elman RNN: h' = tanh(gx + h~ W^T) or relu(...). No slots: the derivative is a
// function of the output (1 - h'^2, or h' > 0), which the backward reads.
template <bool kRelu>
struct Rnn {
  static constexpr int kCode = kRelu ? kRnnRelu : kRnnTanh, kGates = 1, kSlots = 0, kRecBias = -1;
  static constexpr bool kTwoGemm = false, kNeedsOut = true, kNeedsPrev = false, kHasC = false;
  GT_DEV static float forward(const float (&pre)[1], const float (&gx)[1], float, float&, int, float (&)[1]) {
    const float a = pre[0] + gx[0];
    return kRelu ? fmaxf(a, 0.f) : tanh_fast(a);
  }
  GT_DEV static float backward(float dh, float y, float, float, float&, int, const float (&)[1],
                               float (&da)[1], float (&dg)[1]) {
    // relu's derivative as torch's threshold_backward (and the CPU op) take it: 0 where
    // h' <= 0, so a NaN passes the gradient on
    da[0] = kRelu ? (y <= 0.f ? 0.f : dh) : dh * (1.f - y * y);
    dg[0] = da[0];
    return 0.f;
  }
};
using RnnTanh = Rnn<false>;
using RnnRelu = Rnn<true>;

// LSTM, gates i, f, g, o: c' = f c + i g, h' = o tanh(c'). Slots: i, f, g, o, c'.
struct Lstm {
  static constexpr int kCode = kLstm, kGates = 4, kSlots = 5, kRecBias = -1;
  static constexpr bool kTwoGemm = false, kNeedsOut = false, kNeedsPrev = false, kHasC = true;
  GT_DEV static float forward(const float (&pre)[4], const float (&gx)[4], float, float& c, int gate,
                              float (&s)[5]) {
    const float i = gate_fn(pre[0] + gx[0], gate), f = gate_fn(pre[1] + gx[1], gate);
    const float g = tanh_fast(pre[2] + gx[2]), o = gate_fn(pre[3] + gx[3], gate);
    c = f * c + i * g;
    s[0] = i; s[1] = f; s[2] = g; s[3] = o; s[4] = c;
    return o * tanh_fast(c);
  }
  GT_DEV static float backward(float dh, float, float, float cp, float& dc, int gate, const float (&s)[5],
                               float (&da)[4], float (&dg)[4]) {
    const float i = s[0], f = s[1], g = s[2], o = s[3], tc = tanh_fast(s[4]);
    const float dct = dc + dh * o * (1.f - tc * tc);
    da[0] = dct * g * gate_grad(i, gate);
    da[1] = dct * cp * gate_grad(f, gate);
    da[2] = dct * i * (1.f - g * g);
    da[3] = dh * tc * gate_grad(o, gate);
    dg[0] = da[0]; dg[1] = da[1]; dg[2] = da[2]; dg[3] = da[3];
    dc = dct * f;
    return 0.f;
  }
};

}  // namespace gru
GT_END_NAMESPACE
