// The backward time loop of one layer direction on the CPU.
//
// Steps run in the reverse of the forward's order. A group of rows (a chunk, or the whole
// batch when split by columns) runs each step as phases over panels of hidden units:
// the recurrent GEMM of the step before (dh~ = dgh W_hh, the only sequential product)
// for those units, then the cell's backward on them, which needs nothing else. A chunk
// then computes its rows' input gradient (dx = dgx W_ih) with the same kind of tiles. The
// gate gradients dgx, dgh of a block of steps collect in the group's buffers; after the
// block, its share of the weight gradients (and, split by columns, of the input gradient)
// are GEMMs over the block's rows (ATen, single-threaded inside the loop's parallel
// region); the bias gradients are summed by the cells' tiles as they go. A chunk
// accumulates its own weight and bias gradients, and the chunks' sums are added in chunk
// order afterwards, so the result does not depend on which thread ran which chunk.
#include <cstring>
#include <optional>

#include "cpu_cell.h"
#include "cpu_gemm.h"
#include "cpu_layer.h"
#include "cpu_pool.h"

namespace gru_torch::cpu::CPU_CAPABILITY {
namespace {

// Rows of a block of steps: enough for the block's weight-gradient GEMMs to run near
// full speed, few enough for the block's buffers to stay in cache.
constexpr int64_t kBlockRows = 512;

template <typename scalar_t>
struct Direction {
  const LayerShape& s;
  const BackwardArgs<scalar_t>& a;
  int64_t d;
  int64_t block_steps;  // steps per block, >= 2 so a step's dgh never overwrites the last one
  std::optional<PackedB<scalar_t>> w_hh;  // reset_after: dh~ = dgh W_hh, K = G
  std::optional<PackedB<scalar_t>> w_rz;  // reset_after=false: dh~ = dqr + dgh_rz W_rz, K = 2H
  std::optional<PackedB<scalar_t>> w_n;   // reset_after=false: dq = dgh_n W_hn, K = H
  std::optional<PackedB<scalar_t>> w_ih;  // by rows: dx = dgx W_ih, K = G, in the step loop

  static constexpr int64_t W = PackedB<scalar_t>::W;

  Direction(const LayerShape& s_, const BackwardArgs<scalar_t>& a_, int64_t d_,
            int64_t block_rows, int64_t rows, bool by_rows)
      : s(s_), a(a_), d(d_),
        block_steps(std::max<int64_t>(2, std::min(s_.T, block_rows / std::max<int64_t>(rows, 1)))) {
    const int64_t H = s.H;
    if (by_rows) {
      w_ih.emplace(PanelLayout::units(s.I, W, 2), a.w_ih.template const_data_ptr<scalar_t>(),
                   s.I, s.G(), false);
    }
    if (s.reset_after) {
      w_hh.emplace(PanelLayout::units(H, W, 2), a.w_hh, H, 3 * H, false);
    } else {
      w_rz.emplace(PanelLayout::units(H, W), a.w_hh, H, 2 * H, false);
      w_n.emplace(PanelLayout::units(H, W), a.w_hh + 2 * H * H, H, H, false);
    }
  }

  int64_t phases() const { return s.reset_after ? 1 : 2; }
  const PanelLayout& layout(int64_t phase) const {
    return s.reset_after ? w_hh->layout() : (phase == 0 ? w_rz->layout() : w_n->layout());
  }
  int64_t panels() const { return layout(0).panels(); }
  // The k-th step of the backward: the forward's steps in reverse.
  int64_t time_of(int64_t k) const { return d == 0 ? s.T - 1 - k : k; }

  // Batch row b's state after the forward's step `time`: its output row there (a step
  // the row is active in).
  const scalar_t* state_at(int64_t time, int64_t b) const {
    return a.out + (time * s.B + b) * s.D * s.H + d * s.H;
  }
  // Batch row b's h_prev at backward step k: the state of the forward's step before, or
  // hx where there is none or the row was not yet active there (the reverse direction
  // of a row shorter than T starts at its last step).
  const scalar_t* h_prev(int64_t k, int64_t b) const {
    if (k + 1 < s.T) {
      const int64_t before = time_of(k + 1);
      if (!a.len || before < a.len[b]) return state_at(before, b);
    }
    return a.hx + b * s.H;
  }
};

// Buffers of one group of n rows; the block buffers hold block_steps steps of rows.
template <typename scalar_t>
struct Rows {
  int64_t b0 = 0, n = 0, chunk = 0;
  scalar_t *dhz, *dhh, *dqr;           // [n, H]
  scalar_t *dgx, *dgh;                 // [block_steps * n, G]
  scalar_t* xb;                        // [block_steps * n, I]
  scalar_t* dxb;                       // [block_steps * n, I]; staged: [n, I], one step's
  scalar_t *hmb, *qb;                  // [block_steps * n, H]
  scalar_t* stage;                     // [n, kSlots * H] the step's reserve rows
  scalar_t* hstage[2];                 // [n, H] step k's h_prev rows in hstage[k % 2]
                                       // (the step before's, its h, in the other)
  scalar_t* db = nullptr;              // [2G] the group's bias-gradient sums: b_ih's, b_hh's

  // staged: the group copies each step's reserve rows to a stage (a chunk, run by one
  // thread) rather than reading them where they lie (the whole batch, split by columns).
  static int64_t floats(const LayerShape& s, int64_t steps, int64_t n, bool staged) {
    return n * (3 * s.H + steps * (6 * s.H + s.I + 2 * s.H) +
                (staged ? (kSlots + 2) * s.H + s.I : steps * s.I));
  }

  Rows(const LayerShape& s, int64_t steps, int64_t b0_, int64_t n_, int64_t chunk_,
       bool staged, scalar_t* mem)
      : b0(b0_), n(n_), chunk(chunk_) {
    auto take = [&](int64_t count) { scalar_t* p = mem; mem += n * count; return p; };
    dhz = take(s.H), dhh = take(s.H), dqr = take(s.H);
    dgx = take(steps * s.G()), dgh = take(steps * s.G());
    xb = take(steps * s.I), dxb = take((staged ? 1 : steps) * s.I);
    hmb = take(steps * s.H), qb = take(steps * s.H);
    stage = staged ? take(kSlots * s.H) : nullptr;
    hstage[0] = staged ? take(s.H) : nullptr;
    hstage[1] = staged ? take(s.H) : nullptr;
  }
};

// Per-chunk sums of the weight and bias gradients: [chunks, ...] each.
struct Partials {  // w_ih [chunks, I, G], w_hh [chunks, H, G]: transposed
  at::Tensor w_ih, w_hh, b_ih, b_hh;
};

// Backward step k of a group of rows (k == T: only the GEMM that carries the gradient to
// the initial state): where each row reads and writes.
template <typename scalar_t>
struct Step {
  const Direction<scalar_t>& f;
  Rows<scalar_t>& r;
  int64_t k, t;
  scalar_t* dgx;             // this step's gate gradients, [n, G]
  scalar_t* dgh;
  const scalar_t* dgh_prev;  // the step before's (processed just before), or null
  const scalar_t* res = nullptr;  // row i's reserve row at res + i * kSlots * H

  Step(const Direction<scalar_t>& f_, Rows<scalar_t>& r_, int64_t k_)
      : f(f_), r(r_), k(k_), t(k_ < f_.s.T ? f_.time_of(k_) : -1),
        dgx(r_.dgx + (k_ % f_.block_steps) * r_.n * f_.s.G()),
        dgh(r_.dgh + (k_ % f_.block_steps) * r_.n * f_.s.G()),
        dgh_prev(k_ > 0 ? r_.dgh + ((k_ - 1) % f_.block_steps) * r_.n * f_.s.G() : nullptr) {
    if (last()) return;
    res = r.stage ? r.stage : f.a.res + (t * f.s.B + r.b0) * kSlots * f.s.H;
  }

  bool last() const { return k == f.s.T; }
  C10_ALWAYS_INLINE bool active(int64_t i) const { return !f.a.len || t < f.a.len[r.b0 + i]; }
  // Row i's h_prev and h (at an active step): from the stage, the h being the h_prev of
  // the step processed before; else from the output and hx.
  C10_ALWAYS_INLINE const scalar_t* hp_row(int64_t i) const {
    return r.hstage[0] ? r.hstage[k % 2] + i * f.s.H : f.h_prev(k, r.b0 + i);
  }
  C10_ALWAYS_INLINE const scalar_t* h_row(int64_t i) const {
    return r.hstage[0] && k > 0 ? r.hstage[(k - 1) % 2] + i * f.s.H : f.state_at(t, r.b0 + i);
  }

  // Row i's pointers for the vector of units starting at u.
  C10_ALWAYS_INLINE BackwardCell<scalar_t> cell(int64_t i, int64_t u) const {
    const LayerShape& s = f.s;
    const int64_t H = s.H, G = s.G(), b = r.b0 + i;
    const int64_t* gs = f.a.gout_stride;
    return {res + i * kSlots * H + u, hp_row(i) + u, h_row(i) + u,
            f.a.gout + t * gs[0] + b * gs[1] + (f.d * H + u) * gs[2], gs[2] == 0,
            f.a.mask ? f.a.mask + b * H + u : nullptr, r.dhz + i * H + u, dgx + i * G + u,
            dgh + i * G + u};
  }
};

// Backward step k's input gradient of batch rows [b0, b0+n), from src ([n, I]): written
// by direction 0, added to by direction 1.
template <typename scalar_t>
void write_input_grad(const Direction<scalar_t>& f, const scalar_t* src, int64_t k, int64_t b0,
                      int64_t n) {
  const int64_t I = f.s.I;
  scalar_t* dst = f.a.grad_x + (f.time_of(k) * f.s.B + b0) * I;
  if (f.d == 0) {
    stream_copy(dst, src, n * I);  // not read again in this call
  } else {
    for_chunks<scalar_t>(n * I, [&](int64_t q, int c) {
      (load(dst + q, c) + load(src + q, c)).store(dst + q, c);
    });
  }
}

// The bias-gradient sums of a tile's vectors of units, per vector s of units starting at
// col[s]: [da_r, da_z, da_n] for b_ih's gradient and da_n * r for b_hh's n part (its r and
// z parts are b_ih's; reset_after=false has no b_hh). A tile loads them from the group's
// running sums (r.db), its cells add their rows one by one in row order, and it stores
// them back, so each is a plain running sum over steps and rows, whatever the tiles are:
// the AVX2 and AVX-512 copies tile differently and must give the same bits
// (cpu/capability.h). A gate its phase does not add to is stored back as it was.
template <typename scalar_t, int S>
void load_bias_sums(const Direction<scalar_t>& f, const Rows<scalar_t>& r, const int64_t* col,
                    const int* count, Vec<scalar_t> (&sum)[S][4]) {
  const int64_t H = f.s.H;
  for (int s = 0; s < S; ++s) {
    for (int g = 0; g < 4; ++g) sum[s][g] = load(r.db + (g < 3 ? g * H : f.s.G() + 2 * H) + col[s], count[s]);
  }
}

template <typename scalar_t, int S>
void store_bias_sums(const Direction<scalar_t>& f, const Rows<scalar_t>& r, const int64_t* col,
                     const int* count, const Vec<scalar_t> (&sum)[S][4]) {
  const int64_t H = f.s.H;
  for (int s = 0; s < S; ++s) {
    for (int g = 0; g < 4; ++g) sum[s][g].store(r.db + (g < 3 ? g * H : f.s.G() + 2 * H) + col[s], count[s]);
  }
}

// Phase 0, rows [i0, i0+R) by panel p (S vectors of units): dh~ = dgh_prev W_hh (plus
// dqr, reset_after=false) in registers, then the cell's backward on those units.
template <typename scalar_t, int R, int S>
void tile_dh(const Step<scalar_t>& st, int64_t p, int64_t i0) {
  const Direction<scalar_t>& f = st.f;
  const int64_t H = f.s.H, G = f.s.G();
  const bool after = f.s.reset_after;
  const PackedB<scalar_t>& w = after ? *f.w_hh : *f.w_rz;
  const int64_t* col = w.layout().cols(p);
  const int* count = w.layout().counts(p);
  Rows<scalar_t>& r = st.r;
  Vec<scalar_t> acc[R][S];
  for (int m = 0; m < R; ++m) {
    for (int s = 0; s < S; ++s) {
      acc[m][s] = !after && st.dgh_prev ? load(r.dqr + (i0 + m) * H + col[s], count[s])
                                        : Vec<scalar_t>(scalar_t(0));
    }
  }
  if (st.dgh_prev) accumulate_all(st.dgh_prev + i0 * G, G, w.K(), w.panel_data(p), acc);
  if (st.last()) {
    for (int m = 0; m < R; ++m) {
      for (int s = 0; s < S; ++s) acc[m][s].store(r.dhh + (i0 + m) * H + col[s], count[s]);
    }
    return;
  }
  Vec<scalar_t> sum[S][4];
  load_bias_sums(f, r, col, count, sum);
  for (int m = 0; m < R; ++m) {
    const int64_t i = i0 + m;
    for (int s = 0; s < S; ++s) {
      const int c = count[s];
      const BackwardCell<scalar_t> cell = st.cell(i, col[s]);
      if (!st.active(i)) backward_inactive(acc[m][s], cell, H, c);
      else if (after) backward_after(acc[m][s], cell, H, c, sum[s]);
      else backward_before_zn(acc[m][s], cell, H, c, sum[s]);
    }
  }
  store_bias_sums(f, r, col, count, sum);
}

// reset_after=false, phase 1, rows [i0, i0+R) by panel p: dq = da_n W_hn in registers,
// then the r gate.
template <typename scalar_t, int R, int S>
void tile_r(const Step<scalar_t>& st, int64_t p, int64_t i0) {
  const Direction<scalar_t>& f = st.f;
  const int64_t H = f.s.H, G = f.s.G();
  const int64_t* col = f.w_n->layout().cols(p);
  const int* count = f.w_n->layout().counts(p);
  Rows<scalar_t>& r = st.r;
  Vec<scalar_t> acc[R][S];
  for (int m = 0; m < R; ++m) {
    for (int s = 0; s < S; ++s) acc[m][s] = Vec<scalar_t>(scalar_t(0));
  }
  accumulate_all(st.dgh + i0 * G + 2 * H, G, H, f.w_n->panel_data(p), acc);
  Vec<scalar_t> sum[S][4];
  load_bias_sums(f, r, col, count, sum);
  for (int m = 0; m < R; ++m) {
    const int64_t i = i0 + m;
    for (int s = 0; s < S; ++s) {
      const int c = count[s];
      scalar_t* dqr = r.dqr + i * H + col[s];
      if (!st.active(i)) Vec<scalar_t>(scalar_t(0)).store(dqr, c);
      else backward_before_r(acc[m][s], st.cell(i, col[s]), dqr, H, c, sum[s]);
    }
  }
  store_bias_sums(f, r, col, count, sum);
}

// Rows [i0, i0+R) of backward step k's input gradient by panel p (S vectors of inputs):
// dx = dgx W_ih, into the group's one-step buffer dxb.
template <typename scalar_t, int R, int S>
void tile_dx(const Step<scalar_t>& st, int64_t p, int64_t i0) {
  const PackedB<scalar_t>& w = *st.f.w_ih;
  const int64_t* col = w.layout().cols(p);
  const int* count = w.layout().counts(p);
  const int64_t I = st.f.s.I;
  Vec<scalar_t> acc[R][S];
  for (int m = 0; m < R; ++m) {
    for (int s = 0; s < S; ++s) acc[m][s] = Vec<scalar_t>(scalar_t(0));
  }
  accumulate_all(st.dgx + i0 * st.f.s.G(), st.f.s.G(), w.K(), w.panel_data(p), acc);
  for (int m = 0; m < R; ++m) {
    for (int s = 0; s < S; ++s) acc[m][s].store(st.r.dxb + (i0 + m) * I + col[s], count[s]);
  }
}

// A chunk's backward step k, after its cells: the input gradient of its rows, computed
// while their gate gradients are still in cache (rather than by a GEMM over the block,
// which reads them back and packs them first) and written to grad_x in one pass.
template <typename scalar_t>
void input_grad_step(const Direction<scalar_t>& f, Rows<scalar_t>& r, int64_t k) {
  const Step<scalar_t> st(f, r, k);
  const PanelLayout& l = f.w_ih->layout();
  for (int64_t p = 0; p < l.panels(); ++p) {
    with_slots(l.slots[p], [&](auto S) {
      constexpr int kS = decltype(S)::value;
      for_row_tiles<kS <= 2 ? 6 : 4>(r.n, [&](auto R, int64_t i0) {
        tile_dx<scalar_t, decltype(R)::value, kS>(st, p, i0);
      });
    });
  }
  write_input_grad(f, r.dxb, k, r.b0, r.n);
}

// Phase `phase` of backward step k for rows r and panel p.
template <typename scalar_t>
void step_panel(const Direction<scalar_t>& f, Rows<scalar_t>& r, int64_t k, int64_t phase,
                int64_t p) {
  const Step<scalar_t> st(f, r, k);
  with_slots(f.layout(phase).slots[p], [&](auto S) {
    constexpr int kS = decltype(S)::value;
    // 12 accumulators: 6 rows by 2 vectors, or 4 rows by 3.
    constexpr int kRows = kS <= 2 ? 6 : 4;
    for_row_tiles<kRows>(r.n, [&](auto R, int64_t i0) {
      constexpr int kR = decltype(R)::value;
      if (phase == 0) tile_dh<scalar_t, kR, kS>(st, p, i0);
      else tile_r<scalar_t, kR, kS>(st, p, i0);
    });
  });
}

// The first value of one of the op's own float buffers (a gradient, a chunk's sums).
template <typename scalar_t>
scalar_t* values(const at::Tensor& t) {
  return static_cast<scalar_t*>(t.data_ptr());
}

template <typename scalar_t>
at::Tensor matrix(scalar_t* p, int64_t rows, int64_t cols) {
  return at::from_blob(p, {rows, cols},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value));
}

// The weight gradients' operands of backward step k, the block's j-th: h~ = h_prev *
// mask, and q (reset_after=false) from the group's reserve rows (`res`, n rows of
// kSlots * H); h_prev from `hp` (n rows of H) if given, else from the output and hx.
template <typename scalar_t>
void keep_operands(const Direction<scalar_t>& f, Rows<scalar_t>& r, const scalar_t* res,
                   const scalar_t* hp, int64_t k, int64_t j) {
  const int64_t H = f.s.H, n = r.n;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t b = r.b0 + i;
    masked_copy(H, hp ? hp + i * H : f.h_prev(k, b), f.a.mask ? f.a.mask + b * H : nullptr,
                r.hmb + (j * n + i) * H);
    if (!f.s.reset_after) {
      std::memcpy(r.qb + (j * n + i) * H, res + i * kSlots * H + kSlotAux * H,
                  sizeof(scalar_t) * H);
    }
  }
}

// Backward step k's reserve rows and h_prev rows of a chunk, copied to its stages in
// sequential passes (which the hardware prefetcher follows, where the tiles' reads jump
// between gates and rows), and the weight gradients' operands taken from there.
template <typename scalar_t>
void stage_step(const Direction<scalar_t>& f, Rows<scalar_t>& r, int64_t k) {
  const int64_t t = f.time_of(k), H = f.s.H;
  std::memcpy(r.stage, f.a.res + (t * f.s.B + r.b0) * kSlots * H,
              sizeof(scalar_t) * r.n * kSlots * H);
  scalar_t* hp = r.hstage[k % 2];
  for (int64_t i = 0; i < r.n; ++i) {
    std::memcpy(hp + i * H, f.h_prev(k, r.b0 + i), sizeof(scalar_t) * H);
  }
  keep_operands(f, r, r.stage, hp, k, k % f.block_steps);
}

// After steps [k0, k1) of a block: their share of the weight gradients (into the group's
// partial sums, which the first block writes rather than adds to) and, unless the steps
// computed it (input_grad_step), of the input gradient (into grad_x).
template <typename scalar_t>
void finish_block(const Direction<scalar_t>& f, Rows<scalar_t>& r, const Partials& sums,
                  int64_t k0, int64_t k1) {
  const LayerShape& s = f.s;
  const BackwardArgs<scalar_t>& a = f.a;
  const int64_t H = s.H, I = s.I, B = s.B, n = r.n, rows = (k1 - k0) * n;
  for (int64_t j = 0; j < k1 - k0; ++j) {
    const int64_t t = f.time_of(k0 + j);
    for (int64_t i = 0; i < n; ++i) {
      std::memcpy(r.xb + (j * n + i) * I, a.x + t * a.x_stride[0] + (r.b0 + i) * a.x_stride[1],
                  sizeof(scalar_t) * I);
    }
    if (!r.stage) {
      keep_operands(f, r, a.res + (t * B + r.b0) * kSlots * H,
                    static_cast<const scalar_t*>(nullptr), k0 + j, j);
    }
  }
  const at::Tensor dgx = matrix(r.dgx, rows, s.G()), dgh = matrix(r.dgh, rows, s.G());
  const at::Tensor hm = matrix(r.hmb, rows, H);
  // The weight gradients, kept transposed ([I, G], [H, G]).
  at::Tensor gw_ih = sums.w_ih[r.chunk], gw_hh = sums.w_hh[r.chunk];
  auto add_product = [first = k0 == 0](at::Tensor c, const at::Tensor& a, const at::Tensor& b) {
    if (first) at::mm_out(c, a, b);
    else c.addmm_(a, b);
  };
  add_product(gw_ih, matrix(r.xb, rows, I).t(), dgx);
  if (s.reset_after) {
    add_product(gw_hh, hm.t(), dgh);
  } else {
    add_product(gw_hh.narrow(1, 0, 2 * H), hm.t(), dgh.narrow(1, 0, 2 * H));
    add_product(gw_hh.narrow(1, 2 * H, H), matrix(r.qb, rows, H).t(), dgh.narrow(1, 2 * H, H));
  }
  if (f.w_ih) return;
  at::Tensor dx = matrix(r.dxb, rows, I);
  at::mm_out(dx, dgx, a.w_ih);
  for (int64_t j = 0; j < k1 - k0; ++j) write_input_grad(f, r.dxb + j * n * I, k0 + j, r.b0, n);
}

template <typename scalar_t>
void load_grad_state(const Direction<scalar_t>& f, Rows<scalar_t>& r) {
  std::memcpy(r.dhz, f.a.gh_n + r.b0 * f.s.H, sizeof(scalar_t) * r.n * f.s.H);
}

// dh_0 = what was carried + what came back through the recurrent GEMM (times the mask).
template <typename scalar_t>
void store_grad_state(const Direction<scalar_t>& f, const Rows<scalar_t>& r) {
  const int64_t H = f.s.H;
  for (int64_t i = 0; i < r.n; ++i) {
    const int64_t b = r.b0 + i;
    const scalar_t* m = f.a.mask ? f.a.mask + b * H : nullptr;
    for_chunks<scalar_t>(H, [&](int64_t j, int c) {
      total_dh(load(r.dhh + i * H + j, c), r.dhz + i * H + j, m ? m + j : nullptr, c)
          .store(f.a.grad_hx + b * H + j, c);
    });
  }
}

// Rows [i0, i1) of backward step k's output gradient and h_prev, into cache (its reserve
// rows come in through the stage; its h is the step before's h_prev).
template <typename scalar_t>
void prefetch_rows(const Direction<scalar_t>& f, const Rows<scalar_t>& r, int64_t k,
                   int64_t i0, int64_t i1) {
  const LayerShape& s = f.s;
  const int64_t t = f.time_of(k), H = s.H;
  const int64_t* gs = f.a.gout_stride;
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t b = r.b0 + i;
    if (gs[2] == 1) prefetch(f.a.gout + t * gs[0] + b * gs[1] + f.d * H, H);
    prefetch(f.h_prev(k, b), H);
  }
}

// Every step of one chunk of rows, on the calling thread. A step first stages its reserve
// rows; while it computes, the next step's output-gradient rows are fetched, a share
// before each panel: they are spread too thin for the hardware prefetcher to follow.
template <typename scalar_t>
void run_rows(const Direction<scalar_t>& f, Rows<scalar_t>& r, const Partials& sums) {
  load_grad_state(f, r);
  for (int64_t k0 = 0; k0 < f.s.T; k0 += f.block_steps) {
    const int64_t k1 = std::min(f.s.T, k0 + f.block_steps);
    for (int64_t k = k0; k < k1; ++k) {
      stage_step(f, r, k);
      const int64_t np = f.panels();
      for (int64_t phase = 0; phase < f.phases(); ++phase) {
        for (int64_t p = 0; p < np; ++p) {
          if (phase == 0 && k + 1 < f.s.T) prefetch_rows(f, r, k + 1, p * r.n / np, (p + 1) * r.n / np);
          step_panel(f, r, k, phase, p);
        }
      }
      input_grad_step(f, r, k);
    }
    finish_block(f, r, sums, k0, k1);
  }
  for (int64_t p = 0; p < f.panels(); ++p) step_panel(f, r, f.s.T, 0, p);
  store_grad_state(f, r);
}

}  // namespace

// dst [G, n] += src^T (src [n, G]).
template <typename scalar_t>
void add_transposed(scalar_t* dst, const scalar_t* src, int64_t n, int64_t G) {
  for (int64_t g = 0; g < G; ++g) {
    for (int64_t i = 0; i < n; ++i) dst[g * n + i] += src[i * G + g];
  }
}

template <typename scalar_t>
void backward_direction(const LayerShape& s, int64_t d, const BackwardArgs<scalar_t>& a) {
  const Split split = layer_split(s);
  const int64_t chunks = split.by_rows ? split.chunks : 1;
  const int64_t rows = split.by_rows ? split.chunk_rows : s.B;
  // By columns, a block is also a parallel region: larger blocks, fewer regions.
  const Direction<scalar_t> f(s, a, d, split.by_rows ? kBlockRows : 4 * kBlockRows, rows,
                              split.by_rows);
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value);
  const int64_t G = s.G();
  // One buffer for the four sums, [chunks, G * (I + H + 2)]: the weights' are written by
  // each chunk's first block, the biases' zeroed here.
  at::Tensor sums_mem = pooled_empty({chunks, G * (s.I + s.H + 2)}, opts);
  auto bias_sums = [&](int64_t c) {
    return values<scalar_t>(sums_mem) + c * sums_mem.size(1) + G * (s.I + s.H);
  };
  for (int64_t c = 0; c < chunks; ++c) std::fill(bias_sums(c), bias_sums(c) + 2 * G, scalar_t(0));
  auto slab = [&](int64_t offset, int64_t rows, int64_t cols) {
    return sums_mem.narrow(1, offset, rows * cols).view({chunks, rows, cols});
  };
  const Partials sums{slab(0, s.I, G), slab(G * s.I, s.H, G),
                      slab(G * (s.I + s.H), 1, G).select(1, 0),
                      slab(G * (s.I + s.H + 1), 1, G).select(1, 0)};
  const int64_t per_slot = Rows<scalar_t>::floats(s, f.block_steps, rows, split.by_rows);
  // The weight gradients' GEMMs run single-threaded inside a region of several threads;
  // outside one (by columns, or one thread's chunks) MKL shares them out to its threads,
  // which then take this thread's denormal mode.
  std::optional<ThreadsDenormalMode> same_mode;
  if ((!split.by_rows || split.threads == 1) && available_threads() > 1) same_mode.emplace();

  if (split.by_rows) {
    at::Tensor ws = pooled_empty({split.threads, per_slot}, opts);
    run_tasks(chunks, split.threads, [&](int64_t c, int64_t slot) {
      Rows<scalar_t> r(s, f.block_steps, split.chunk_begin(c), split.chunk_size(c, s.B), c,
                       true, ws.data_ptr<scalar_t>() + slot * per_slot);
      r.db = bias_sums(c);
      run_rows(f, r, sums);
    });
  } else {
    // By columns: one parallel region per block of steps, its GEMMs after it.
    at::Tensor ws = pooled_empty({per_slot}, opts);
    Rows<scalar_t> r(s, f.block_steps, 0, s.B, 0, false, ws.data_ptr<scalar_t>());
    r.db = bias_sums(0);
    load_grad_state(f, r);
    const int64_t phases = f.phases();
    for (int64_t k0 = 0; k0 < s.T; k0 += f.block_steps) {
      const int64_t k1 = std::min(s.T, k0 + f.block_steps);
      run_groups(
          (k1 - k0) * phases, split.threads, [&](int64_t) { return f.panels(); },
          [&](int64_t g, int64_t p, int64_t) { step_panel(f, r, k0 + g / phases, g % phases, p); });
      finish_block(f, r, sums, k0, k1);
    }
    for (int64_t p = 0; p < f.panels(); ++p) step_panel(f, r, s.T, 0, p);
    store_grad_state(f, r);
  }
  // The chunks' sums, in chunk order (the same result whichever thread ran which chunk),
  // added on this thread alone (no parallel region; serial_zeros says why): into chunk
  // 0's, a row of the buffer at a time, then transposed into the gradients once.
  scalar_t* total = values<scalar_t>(sums_mem);
  const int64_t width = sums_mem.size(1);
  for (int64_t c = 1; c < chunks; ++c) {
    const scalar_t* part = total + c * width;
    for_chunks<scalar_t>(width, [&](int64_t j, int n) {
      (load(total + j, n) + load(part + j, n)).store(total + j, n);
    });
  }
  auto* ptr = &values<scalar_t>;
  add_transposed(ptr(a.grad_w_ih), ptr(sums.w_ih[0]), s.I, G);
  add_transposed(ptr(a.grad_w_hh), ptr(sums.w_hh[0]), s.H, G);
  scalar_t *gb_ih = ptr(a.grad_b_ih), *gb_hh = ptr(a.grad_b_hh);
  const scalar_t *b_ih = ptr(sums.b_ih[0]), *b_hh = ptr(sums.b_hh[0]);
  for (int64_t g = 0; g < G; ++g) gb_ih[g] += b_ih[g], gb_hh[g] += b_hh[g];
  // dgh and dgx agree on the r and z gates, and so do their bias gradients.
  if (s.reset_after) std::copy(gb_ih, gb_ih + 2 * s.H, gb_hh);
}

template void backward_direction<float>(const LayerShape&, int64_t, const BackwardArgs<float>&);
template void backward_direction<double>(const LayerShape&, int64_t, const BackwardArgs<double>&);

}  // namespace gru_torch::cpu::CPU_CAPABILITY
