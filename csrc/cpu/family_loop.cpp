// The family op's time loops on the CPU (cpu/family_layer.cpp has the op and its
// arguments), compiled once per instruction set (cpu/capability.h).
//
// The loop is the GRU op's (cpu_forward.cpp): one parallel region per call, the batch
// cut into chunks of rows that a thread runs through every step (cpu_split.h), W_hh
// packed once per call for the register-tiled micro-kernel (cpu_gemm.h). What differs:
// a step is a GEMM phase over all of a chunk's rows into a pre-activation buffer
// [rows, G] that stays in L1/L2, then the cell's pointwise pass; the cell is a template
// parameter of the pointwise code only (the GRU op fuses the cell into the GEMM's
// registers). The backward runs the same way in reverse: per step dh~ = dgh_{t+1} W_hh
// (per mask group), then the cell's backward, which writes grad_gx.
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

#include "cpu/family.h"
#include "cpu_cell.h"
#include "cpu_gemm.h"
#include "cpu_pool.h"
#include "cpu_split.h"

namespace gru_torch::cpu::family::CPU_CAPABILITY {
namespace {

using namespace ::gru_torch::cpu::CPU_CAPABILITY;  // the micro-kernel and cell helpers
using at::Tensor;
template <typename T>
using V = Vec<T>;

// ---- gate functions, and their derivatives from their outputs

template <typename T>
C10_ALWAYS_INLINE V<T> gate_fn(int64_t gate, V<T> x) {
  if (gate == kSigmoid) return sigmoid(x);
  const V<T> slope(gate == kHardKeras2 ? T(0.2) : T(1) / T(6));
  return at::vec::clamp(at::vec::fmadd(x, slope, V<T>(T(0.5))), V<T>(T(0)), V<T>(T(1)));
}

template <typename T>
C10_ALWAYS_INLINE V<T> gate_grad(int64_t gate, V<T> y) {
  if (gate == kSigmoid) return y * (V<T>(T(1)) - y);
  const V<T> slope(gate == kHardKeras2 ? T(0.2) : T(1) / T(6));
  // the slope where 0 < y < 1, and 0 where the clip held y at a bound
  return ((y > V<T>(T(0))) & (y < V<T>(T(1)))) & slope;
}

// ---- the step GEMM: C[i, :N] = init + X[i, :KX] BX[:KX, :N] + A[i, :K] B[:K, :N] for rows
// i < n, the X term where BX is given (packed with B's layout): the input projection of
// the step, summed in the same registers as the recurrent product.

// init: null (zeros), a row broadcast to every row (ldi = 0), or a matrix (ldi > 0).
template <typename T>
void gemm_rows(int64_t n, const T* A, int64_t lda, const PackedB<T>& B, const T* init,
               int64_t ldi, T* C, int64_t ldc, const T* X = nullptr, int64_t ldx = 0,
               const PackedB<T>* BX = nullptr) {
  const PanelLayout& l = B.layout();
  for (int64_t p = 0; p < l.panels(); ++p) {
    const int64_t* col = l.cols(p);
    const int* count = l.counts(p);
    with_slots(l.slots[p], [&](auto S_) {
      constexpr int S = decltype(S_)::value;
      for_row_tiles<4>(n, [&](auto R_, int64_t i0) {
        constexpr int R = decltype(R_)::value;
        V<T> acc[R][S];
        for (int m = 0; m < R; ++m) {
          for (int s = 0; s < S; ++s) {
            acc[m][s] = init ? V<T>::loadu(init + (i0 + m) * ldi + col[s], count[s])
                             : V<T>(T(0));
          }
        }
        if (BX) accumulate_all(X + i0 * ldx, ldx, BX->K(), BX->panel_data(p), acc);
        accumulate_all(A + i0 * lda, lda, B.K(), B.panel_data(p), acc);
        for (int m = 0; m < R; ++m) {
          for (int s = 0; s < S; ++s) acc[m][s].store(C + (i0 + m) * ldc + col[s], count[s]);
        }
      });
    });
  }
}


// A group of W_hh's rows (gate columns [col0, col0 + cols)) whose recurrent product
// reads one operand: h~ * mask k (op = k), and the packed matrix for it; where the loop
// computes the input projection, W_ih's rows of the same columns too.
template <typename T>
struct Group {
  int64_t col0, cols, op;
  const T* init;  // forward: a bias row for these columns (the GRU's b_hn, or with x the
                  // projection's bias), or null
  PackedB<T> w;
  std::optional<PackedB<T>> wx;  // forward with x: W_ih's rows, K = I
};

// The groups of one direction: one for every gate that reads h~ with a shared mask (the
// GRU's n apart with reset_after=True, for its b_hn), or one per gate with per-gate masks.
// forward: C = A W^T (W's rows packed as columns); backward: C = A W (W's columns).
template <typename T>
std::vector<Group<T>> make_groups(const Shape& s, const T* w_hh, const T* b_hn, const T* w_ih,
                                  const T* bias, bool forward) {
  constexpr int64_t W = PackedB<T>::W;
  const int64_t H = s.H, G1 = s.G1();
  std::vector<std::pair<int64_t, int64_t>> ranges;  // (col0, cols)
  if (s.M > 1) {
    for (int64_t c = 0; c < G1; c += H) ranges.push_back({c, H});
  } else if (forward && s.cell == kGruAfter) {
    ranges = {{0, 2 * H}, {2 * H, H}};
  } else {
    ranges = {{0, G1}};
  }
  std::vector<Group<T>> groups;
  for (const auto& [c0, n] : ranges) {
    const int64_t op = s.M > 1 ? c0 / H : 0;
    const T* init = (forward && s.cell == kGruAfter && c0 == 2 * H) ? b_hn : nullptr;
    if (forward) {
      groups.push_back({c0, n, op, init, PackedB<T>(PanelLayout::units(n, W), w_hh + c0 * H, H, H, true),
                        std::nullopt});
      if (w_ih) {  // (only cells whose every gate adds gx to its recurrent product)
        groups.back().init = bias ? bias + c0 : nullptr;
        groups.back().wx.emplace(PanelLayout::units(n, W), w_ih + c0 * s.I, s.I, s.I, true);
      }
    } else {
      groups.push_back({c0, n, op, init, PackedB<T>(PanelLayout::units(H, W), w_hh + c0 * H, H, n, false),
                        std::nullopt});
    }
  }
  return groups;
}


template <typename T>
struct Direction {
  const Shape& s;
  const Args<T>& a;
  int64_t d;
  std::vector<Group<T>> groups;
  std::optional<PackedB<T>> w_n;  // GRU reset_after=False: W_hn (forward: for q W_hn^T;
                                  // backward: dq = da_n W_hn)

  Direction(const Shape& s_, const Args<T>& a_, int64_t d_, bool forward)
      : s(s_), a(a_), d(d_),
        groups(make_groups<T>(s_, a_.w_hh + d_ * s_.G() * s_.H,
                              a_.b_hn ? a_.b_hn + d_ * s_.H : nullptr,
                              forward && a_.x ? a_.w_ih + d_ * s_.G() * s_.I : nullptr,
                              forward && a_.x && a_.bias ? a_.bias + d_ * s_.G() : nullptr,
                              forward)) {
    constexpr int64_t W = PackedB<T>::W;
    const int64_t H = s.H;
    if (s.cell == kGruBefore) {
      const T* wn = a.w_hh + d * s.G() * H + 2 * H * H;
      w_n.emplace(PanelLayout::units(H, W), wn, H, H, forward);
    }
  }
  bool active(int64_t t, int64_t b) const { return !a.len || t < a.len[b]; }
  const T* mask_of(int64_t b, int64_t k) const {
    return a.mask ? a.mask + ((d * s.B + b) * s.M + k) * s.H : nullptr;
  }
  const T* gx_row(int64_t t, int64_t b) const { return a.gx + ((t * s.B + b) * s.D + d) * s.G(); }
  const T* x_rows(int64_t t, int64_t b) const { return a.x + (t * s.B + b) * s.I; }
  T* g_gx_row(int64_t t, int64_t b) const { return a.g_gx + ((t * s.B + b) * s.D + d) * s.G(); }
  T* res_row(int64_t t, int64_t b) const {
    return a.res ? a.res + ((d * s.T + t) * s.B + b) * s.S() * s.H : nullptr;
  }
  T* out_row(int64_t t, int64_t b) const { return a.out + ((t * s.B + b) * s.D + d) * s.H; }
  // The step before t in this direction's order, for a row active at t, or -1 at its first.
  int64_t prev_t(int64_t t, int64_t b) const {
    if (d == 0) return t - 1;
    return t + 1 < (a.len ? a.len[b] : s.T) ? t + 1 : -1;
  }
};

template <typename T>
C10_ALWAYS_INLINE V<T> ld(const T* p, int c) {
  return V<T>::loadu(p, c);
}

// ---- forward

// A chunk's buffers: h, c, the masked operands, the pre-activations, q.
template <typename T>
struct FwdRows {
  int64_t b0, n;
  T *h, *c, *hm, *pre, *q;
  static int64_t per_row(const Shape& s) {
    return s.H * (2 + std::max<int64_t>(s.M, 0) + 1) + s.G();
  }
  FwdRows(const Shape& s, int64_t b0_, int64_t n_, T* mem) : b0(b0_), n(n_) {
    auto take = [&](int64_t k) { T* p = mem; mem += n * k; return p; };
    h = take(s.H), c = take(s.H), q = take(s.H);
    hm = s.M > 0 ? take(s.M * s.H) : nullptr;  // [M][n, H]
    pre = take(s.G());
  }
  const T* operand(const Shape& s, int64_t k) const { return hm ? hm + k * n * s.H : h; }
};

// h~ = h * mask k for every mask k, of row i.
template <typename T>
void mask_row(const Direction<T>& f, FwdRows<T>& r, int64_t i) {
  if (!r.hm) return;
  const int64_t H = f.s.H, b = r.b0 + i;
  for (int64_t k = 0; k < f.s.M; ++k) {
    const T* m = f.mask_of(b, k);
    T* dst = r.hm + (k * r.n + i) * H;
    for_chunks<T>(H, [&](int64_t u, int c) { (ld(r.h + i * H + u, c) * ld(m + u, c)).store(dst + u, c); });
  }
}

// The pointwise pass of one active row at step t (phase 0: the whole cell, or the GRU's
// r and z with reset_after=False; phase 1: that GRU's n and the state). X: the step's
// GEMM computed the input projection too, so pre holds gx + the recurrent product.
template <typename T, int64_t CELL, bool X>
void forward_row(const Direction<T>& f, FwdRows<T>& r, int64_t t, int64_t i, int phase) {
  const Shape& s = f.s;
  const int64_t H = s.H, b = r.b0 + i, gate = s.gate;
  const T* gx = X ? nullptr : f.gx_row(t, b);
  const T* pre = r.pre + i * s.G();
  // gate k's pre-activation, at unit u
  auto pa = [&](int64_t k, int64_t u, int c) {
    if constexpr (X) return ld(pre + k * H + u, c);
    else return ld(gx + k * H + u, c) + ld(pre + k * H + u, c);
  };
  T* h = r.h + i * H;
  T* res = f.res_row(t, b);
  T* out = f.out_row(t, b);
  const V<T> one(T(1));
  for_chunks<T>(H, [&](int64_t u, int c) {
    if constexpr (CELL == kRnnTanh || CELL == kRnnRelu) {
      const V<T> a = pa(0, u, c);
      const V<T> hn = CELL == kRnnTanh ? tanh(a) : at::vec::maximum(a, V<T>(T(0)));
      hn.store(h + u, c);
      hn.store(out + u, c);
    } else if constexpr (CELL == kLstm) {
      const V<T> ig = gate_fn(gate, pa(0, u, c));
      const V<T> fg = gate_fn(gate, pa(1, u, c));
      const V<T> gg = tanh(pa(2, u, c));
      const V<T> og = gate_fn(gate, pa(3, u, c));
      const V<T> cn = fg * ld(r.c + i * H + u, c) + ig * gg;
      const V<T> hn = og * tanh(cn);
      cn.store(r.c + i * H + u, c);
      hn.store(h + u, c);
      hn.store(out + u, c);
      if (res) {
        ig.store(res + u, c), fg.store(res + H + u, c), gg.store(res + 2 * H + u, c);
        og.store(res + 3 * H + u, c), cn.store(res + 4 * H + u, c);
      }
    } else if constexpr (X) {
      static_assert(!X, "the GRU's cells take gx");
    } else if constexpr (CELL == kGruAfter) {
      const V<T> rg = gate_fn(gate, ld(gx + u, c) + ld(pre + u, c));
      const V<T> zg = gate_fn(gate, ld(gx + H + u, c) + ld(pre + H + u, c));
      const V<T> ghn = ld(pre + 2 * H + u, c);
      const V<T> ng = tanh(ld(gx + 2 * H + u, c) + rg * ghn);
      const V<T> hn = (one - zg) * ng + zg * ld(h + u, c);
      hn.store(h + u, c);
      hn.store(out + u, c);
      if (res) {
        rg.store(res + u, c), zg.store(res + H + u, c), ng.store(res + 2 * H + u, c);
        ghn.store(res + 3 * H + u, c);
      }
    } else {  // kGruBefore
      if (phase == 0) {
        const V<T> rg = gate_fn(gate, ld(gx + u, c) + ld(pre + u, c));
        const V<T> zg = gate_fn(gate, ld(gx + H + u, c) + ld(pre + H + u, c));
        const T* hm = r.hm ? r.hm + ((s.M > 1 ? 2 : 0) * r.n + i) * H : h;
        const V<T> q = rg * ld(hm + u, c);
        q.store(r.q + i * H + u, c);
        zg.store(r.pre + i * s.G() + H + u, c);  // z, for phase 1
        if (res) rg.store(res + u, c), zg.store(res + H + u, c), q.store(res + 3 * H + u, c);
      } else {
        const V<T> zg = ld(pre + H + u, c);
        const V<T> ng = tanh(ld(gx + 2 * H + u, c) + ld(pre + 2 * H + u, c));
        const V<T> hn = (one - zg) * ng + zg * ld(h + u, c);
        hn.store(h + u, c);
        hn.store(out + u, c);
        if (res) ng.store(res + 2 * H + u, c);
      }
    }
  });
}

// A row past its length at step t: its state carries over, its output and reserve are 0.
template <typename T>
void forward_inactive(const Direction<T>& f, int64_t t, int64_t b) {
  const int64_t H = f.s.H;
  std::fill(f.out_row(t, b), f.out_row(t, b) + H, T(0));
  if (T* res = f.res_row(t, b)) std::fill(res, res + f.s.S() * H, T(0));
}

template <typename T, int64_t CELL, bool X>
void forward_rows(const Direction<T>& f, FwdRows<T>& r) {
  const Shape& s = f.s;
  const int64_t H = s.H, G = s.G();
  std::memcpy(r.h, f.a.hx + (f.d * s.B + r.b0) * H, sizeof(T) * r.n * H);
  if (CELL == kLstm) std::memcpy(r.c, f.a.cx + (f.d * s.B + r.b0) * H, sizeof(T) * r.n * H);
  for (int64_t i = 0; i < r.n; ++i) mask_row(f, r, i);
  for (int64_t k = 0; k < s.T; ++k) {
    const int64_t t = s.time_of(f.d, k);
    if (k + 1 < s.T) {
      const int64_t tn = s.time_of(f.d, k + 1);
      if (X) prefetch(f.x_rows(tn, r.b0), r.n * s.I);
      else for (int64_t i = 0; i < r.n; ++i) prefetch(f.gx_row(tn, r.b0 + i), G);
    }
    const T* x = X ? f.x_rows(t, r.b0) : nullptr;
    for (const Group<T>& g : f.groups) {
      gemm_rows(r.n, r.operand(s, g.op), H, g.w, g.init, 0, r.pre + g.col0, G, x, s.I,
                X ? &*g.wx : nullptr);
    }
    for (int64_t i = 0; i < r.n; ++i) {
      if (f.active(t, r.b0 + i)) forward_row<T, CELL, X>(f, r, t, i, 0);
    }
    if constexpr (CELL == kGruBefore) {
      gemm_rows(r.n, r.q, H, *f.w_n, static_cast<const T*>(nullptr), 0, r.pre + 2 * H, G);
      for (int64_t i = 0; i < r.n; ++i) {
        if (f.active(t, r.b0 + i)) forward_row<T, CELL, X>(f, r, t, i, 1);
      }
    }
    for (int64_t i = 0; i < r.n; ++i) {
      if (f.active(t, r.b0 + i)) mask_row(f, r, i);
      else forward_inactive(f, t, r.b0 + i);
    }
  }
  std::memcpy(f.a.h_n + (f.d * s.B + r.b0) * H, r.h, sizeof(T) * r.n * H);
  if (CELL == kLstm) std::memcpy(f.a.c_n + (f.d * s.B + r.b0) * H, r.c, sizeof(T) * r.n * H);
}

// The chunks of rows, and the threads that run them (both directions' chunks are tasks).
Split family_split(const Shape& s) {
  const double flops = 2.0 * (s.H + s.I) * s.G();
  const int64_t threads = available_threads();
  Split sp = choose_split(s.B, flops, threads, /*panels=*/1);
  if (const char* env = std::getenv("GRU_TORCH_FAMILY_CHUNK")) {  // rows a chunk, for measuring
    sp.chunk_rows = std::max<int64_t>(1, std::min<int64_t>(std::atoll(env), std::max<int64_t>(s.B, 1)));
    sp.chunks = std::max<int64_t>(1, (s.B + sp.chunk_rows - 1) / sp.chunk_rows);
  }
  sp.threads = std::max<int64_t>(1, std::min(threads, s.D * sp.chunks));
  return sp;
}

// Both directions' chunks of rows as the tasks of one parallel region: run(direction,
// rows) for each, with the direction's packed weights (forward's or backward's).
template <typename T, typename Rows, typename Run>
void run_layer(const Shape& s, const Args<T>& a, bool forward, const Run& run) {
  std::vector<std::optional<Direction<T>>> dirs(s.D);
  for (int64_t d = 0; d < s.D; ++d) dirs[d].emplace(s, a, d, forward);
  const Split sp = family_split(s);
  const int64_t per_row = Rows::per_row(s);
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  Tensor ws = pooled_empty({sp.threads, sp.chunk_rows * per_row}, opts);
  run_tasks(s.D * sp.chunks, sp.threads, [&](int64_t task, int64_t slot) {
    const int64_t d = task / sp.chunks, ch = task % sp.chunks;
    Rows r(s, sp.chunk_begin(ch), sp.chunk_size(ch, s.B),
           ws.data_ptr<T>() + slot * sp.chunk_rows * per_row);
    run(*dirs[d], r);
  });
}

// ---- backward

template <typename T>
struct BwdRows {
  int64_t b0, n;
  T *dh, *dc, *dgh, *tmp;  // dh: [n, H] the gradient reaching h (carried, then totalled)
  static int64_t per_row(const Shape& s) { return s.H * 3 + s.G(); }
  BwdRows(const Shape& s, int64_t b0_, int64_t n_, T* mem) : b0(b0_), n(n_) {
    auto take = [&](int64_t k) { T* p = mem; mem += n * k; return p; };
    dh = take(s.H), dc = take(s.H), tmp = take(s.H), dgh = take(s.G());
  }
};

// dh += sum over groups of mask_k * (dgh[:, group] W_group): the gradient that the step
// after (in the direction's order) sends back through its recurrent product.
template <typename T>
void recurrent_grad(const Direction<T>& f, BwdRows<T>& r) {
  const Shape& s = f.s;
  const int64_t H = s.H, G = s.G();
  for (const Group<T>& g : f.groups) {
    if (!f.a.mask) {
      gemm_rows(r.n, r.dgh + g.col0, G, g.w, r.dh, H, r.dh, H);
      continue;
    }
    gemm_rows(r.n, r.dgh + g.col0, G, g.w, static_cast<const T*>(nullptr), 0, r.tmp, H);
    for (int64_t i = 0; i < r.n; ++i) {
      const T* m = f.mask_of(r.b0 + i, g.op);
      T* dh = r.dh + i * H;
      const T* tmp = r.tmp + i * H;
      for_chunks<T>(H, [&](int64_t u, int c) {
        (ld(dh + u, c) + ld(tmp + u, c) * ld(m + u, c)).store(dh + u, c);
      });
    }
  }
}

// h_prev of row b at step t (active there): the output of the step before, or hx.
template <typename T>
const T* h_prev_of(const Direction<T>& f, int64_t t, int64_t b) {
  const int64_t tp = f.prev_t(t, b);
  return tp < 0 ? f.a.hx + (f.d * f.s.B + b) * f.s.H : f.out_row(tp, b);
}

// The cell's backward at step t for row i (active): from dh (and dc), writes grad_gx,
// dgh (the recurrent product's gradients, for the step before), and what dh and dc carry.
template <typename T, int64_t CELL>
void backward_row(const Direction<T>& f, BwdRows<T>& r, int64_t t, int64_t i) {
  const Shape& s = f.s;
  const int64_t H = s.H, G = s.G(), b = r.b0 + i, gate = s.gate;
  const T* res = f.res_row(t, b);
  T* ggx = f.g_gx_row(t, b);
  T* dgh = r.dgh + i * G;
  T* dhp = r.dh + i * H;
  T* dcp = r.dc + i * H;
  const int64_t* gs = f.a.gout_stride;
  const T* gout = f.a.gout + t * gs[0] + b * gs[1] + f.d * H * gs[2];
  const V<T> one(T(1));
  const T* hp = (CELL == kGruAfter || CELL == kGruBefore) ? h_prev_of(f, t, b) : nullptr;
  const T* cp = nullptr;
  if constexpr (CELL == kLstm) {
    const int64_t tp = f.prev_t(t, b);
    cp = tp < 0 ? f.a.cx + (f.d * s.B + b) * H : f.res_row(tp, b) + 4 * H;
  }
  const T* hout = f.out_row(t, b);
  for_chunks<T>(H, [&](int64_t u, int c) {
    const V<T> dh = ld(dhp + u, c) + (gs[2] == 0 ? V<T>(gout[0]) : ld(gout + u, c));
    if constexpr (CELL == kRnnTanh || CELL == kRnnRelu) {
      const V<T> h = ld(hout + u, c);
      // relu's derivative as torch's threshold_backward takes it: 0 where h <= 0, so a
      // NaN h passes the gradient on
      const V<T> zero(T(0));
      const V<T> da = CELL == kRnnTanh ? dh * (one - h * h) : V<T>::blendv(dh, zero, h <= zero);
      da.store(ggx + u, c);
      da.store(dgh + u, c);
      V<T>(T(0)).store(dhp + u, c);
    } else if constexpr (CELL == kLstm) {
      const V<T> ig = ld(res + u, c), fg = ld(res + H + u, c), gg = ld(res + 2 * H + u, c);
      const V<T> og = ld(res + 3 * H + u, c), tc = tanh(ld(res + 4 * H + u, c));
      const V<T> dc = ld(dcp + u, c) + dh * og * (one - tc * tc);
      const V<T> da_i = dc * gg * gate_grad(gate, ig);
      const V<T> da_f = dc * ld(cp + u, c) * gate_grad(gate, fg);
      const V<T> da_g = dc * ig * (one - gg * gg);
      const V<T> da_o = dh * tc * gate_grad(gate, og);
      da_i.store(ggx + u, c), da_f.store(ggx + H + u, c);
      da_g.store(ggx + 2 * H + u, c), da_o.store(ggx + 3 * H + u, c);
      da_i.store(dgh + u, c), da_f.store(dgh + H + u, c);
      da_g.store(dgh + 2 * H + u, c), da_o.store(dgh + 3 * H + u, c);
      (dc * fg).store(dcp + u, c);
      V<T>(T(0)).store(dhp + u, c);
    } else {
      const V<T> rg = ld(res + u, c), zg = ld(res + H + u, c), ng = ld(res + 2 * H + u, c);
      const V<T> h0 = ld(hp + u, c);
      const V<T> da_n = dh * (one - zg) * (one - ng * ng);
      const V<T> da_z = dh * (h0 - ng) * gate_grad(gate, zg);
      da_z.store(ggx + H + u, c), da_n.store(ggx + 2 * H + u, c);
      da_z.store(dgh + H + u, c);
      (dh * zg).store(dhp + u, c);
      if constexpr (CELL == kGruAfter) {
        const V<T> da_r = da_n * ld(res + 3 * H + u, c) * gate_grad(gate, rg);
        da_r.store(ggx + u, c), da_r.store(dgh + u, c);
        (da_n * rg).store(dgh + 2 * H + u, c);
      } else {
        da_n.store(dgh + 2 * H + u, c);  // dq = da_n W_hn next, then da_r (backward_gru_r)
      }
    }
  });
}

// GRU reset_after=False, after dq = da_n W_hn (in r.tmp): da_r = dq * h~_n * r', and
// dh_prev += mask_n * (dq * r), the part of dh~ that flows through q = r * h~_n.
template <typename T>
void backward_gru_r(const Direction<T>& f, BwdRows<T>& r, int64_t t, int64_t i) {
  const Shape& s = f.s;
  const int64_t H = s.H, G = s.G(), b = r.b0 + i;
  const T* res = f.res_row(t, b);
  T* ggx = f.g_gx_row(t, b);
  const T* hp = h_prev_of(f, t, b);
  const T* m = f.mask_of(b, s.M > 1 ? 2 : 0);
  for_chunks<T>(H, [&](int64_t u, int c) {
    const V<T> rg = ld(res + u, c), dq = ld(r.tmp + i * H + u, c);
    const V<T> mv = m ? ld(m + u, c) : V<T>(T(1));
    const V<T> da_r = dq * ld(hp + u, c) * mv * gate_grad(s.gate, rg);
    da_r.store(ggx + u, c);
    da_r.store(r.dgh + i * G + u, c);
    (ld(r.dh + i * H + u, c) + dq * rg * mv).store(r.dh + i * H + u, c);
  });
}

template <typename T, int64_t CELL>
void backward_rows(const Direction<T>& f, BwdRows<T>& r) {
  const Shape& s = f.s;
  const int64_t H = s.H, G = s.G();
  std::memcpy(r.dh, f.a.g_hn + (f.d * s.B + r.b0) * H, sizeof(T) * r.n * H);
  if (CELL == kLstm) {
    if (f.a.g_cn) std::memcpy(r.dc, f.a.g_cn + (f.d * s.B + r.b0) * H, sizeof(T) * r.n * H);
    else std::fill(r.dc, r.dc + r.n * H, T(0));
  }
  for (int64_t k = s.T - 1; k >= 0; --k) {
    const int64_t t = s.time_of(f.d, k);
    if (k < s.T - 1) recurrent_grad(f, r);
    for (int64_t i = 0; i < r.n; ++i) {
      const int64_t b = r.b0 + i;
      if (f.active(t, b)) {
        backward_row<T, CELL>(f, r, t, i);
      } else {  // dh and dc pass through; no gate gradients
        std::fill(r.dgh + i * G, r.dgh + (i + 1) * G, T(0));
        T* ggx = f.g_gx_row(t, b);
        std::fill(ggx, ggx + G, T(0));
      }
    }
    if constexpr (CELL == kGruBefore) {
      gemm_rows(r.n, r.dgh + 2 * H, G, *f.w_n, static_cast<const T*>(nullptr), 0, r.tmp, H);
      for (int64_t i = 0; i < r.n; ++i) {
        if (f.active(t, r.b0 + i)) backward_gru_r(f, r, t, i);
      }
    }
  }
  recurrent_grad(f, r);
  std::memcpy(f.a.g_hx + (f.d * s.B + r.b0) * H, r.dh, sizeof(T) * r.n * H);
  if (CELL == kLstm) std::memcpy(f.a.g_cx + (f.d * s.B + r.b0) * H, r.dc, sizeof(T) * r.n * H);
}

template <typename F>
void with_cell(int64_t cell, const F& f) {
  switch (cell) {
    case kGruAfter: return f(std::integral_constant<int64_t, kGruAfter>{});
    case kGruBefore: return f(std::integral_constant<int64_t, kGruBefore>{});
    case kLstm: return f(std::integral_constant<int64_t, kLstm>{});
    case kRnnTanh: return f(std::integral_constant<int64_t, kRnnTanh>{});
    default: return f(std::integral_constant<int64_t, kRnnRelu>{});
  }
}

}  // namespace

template <typename T>
void forward(const Shape& s, const Args<T>& a) {
  with_cell(s.cell, [&](auto C) {
    constexpr int64_t cell = decltype(C)::value;
    if constexpr (cell == kLstm || cell == kRnnTanh || cell == kRnnRelu) {
      if (a.x) {
        return run_layer<T, FwdRows<T>>(s, a, true, [](const Direction<T>& f, FwdRows<T>& r) {
          forward_rows<T, cell, true>(f, r);
        });
      }
    }
    run_layer<T, FwdRows<T>>(s, a, true, [](const Direction<T>& f, FwdRows<T>& r) {
      forward_rows<T, cell, false>(f, r);
    });
  });
}

template <typename T>
void backward(const Shape& s, const Args<T>& a) {
  with_cell(s.cell, [&](auto C) {
    run_layer<T, BwdRows<T>>(s, a, false, [](const Direction<T>& f, BwdRows<T>& r) {
      backward_rows<T, decltype(C)::value>(f, r);
    });
  });
}

template void forward<float>(const Shape&, const Args<float>&);
template void forward<double>(const Shape&, const Args<double>&);
template void backward<float>(const Shape&, const Args<float>&);
template void backward<double>(const Shape&, const Args<double>&);

}  // namespace gru_torch::cpu::family::CPU_CAPABILITY
