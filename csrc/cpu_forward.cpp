// The forward time loop of one layer on the CPU.
//
// A group of rows (a chunk, or the whole batch when split by columns) runs each step as
// one or two phases over panels of hidden units (cpu_gemm.h). Per panel and few rows:
// the input projection x_t W_ih^T + bias and the recurrent product h~ W_hh^T for those
// units' gates, accumulated in registers, then the cell on them before they leave the
// registers. reset_after=false has two phases, since its candidate needs (r * h~) W_hn^T,
// and so r of every unit, first.
//
// The state is double-buffered (h[k % 2] is read at step k, h[(k+1) % 2] written), so
// that a panel's cell may write units that another panel's GEMM still reads.
#include <cstring>
#include <optional>
#include <vector>

#include "cpu_cell.h"
#include "cpu_gemm.h"
#include "cpu_layer.h"
#include "cpu_pool.h"

namespace gru_torch::cpu::CPU_CAPABILITY {
namespace {

template <typename scalar_t>
struct Direction {
  const LayerShape& s;
  const ForwardArgs<scalar_t>& a;
  int64_t d;
  PackedB<scalar_t> w_ih;                  // gates r, z, n; K = I
  PackedB<scalar_t> w_h;                   // reset_after: r, z, n; else r, z; K = H
  std::optional<PackedB<scalar_t>> w_hn;   // reset_after=false: n by units; K = H

  static constexpr int64_t W = PackedB<scalar_t>::W;

  Direction(const LayerShape& s_, const ForwardArgs<scalar_t>& a_, int64_t d_)
      : s(s_), a(a_), d(d_),
        w_ih(PanelLayout::gates(s.H, 3, W), a.w_ih, s.I, s.I, true),
        w_h(PanelLayout::gates(s.H, s.reset_after ? 3 : 2, W), a.w_hh, s.H, s.H, true) {
    if (!s.reset_after) w_hn.emplace(PanelLayout::units(s.H, W), a.w_hh + 2 * s.H * s.H, s.H, s.H, true);
  }

  int64_t phases() const { return s.reset_after ? 1 : 2; }
  int64_t panels(int64_t phase) const { return phase == 0 ? w_h.panels() : w_hn->panels(); }
  int64_t time_of(int64_t k) const { return d == 0 ? k : s.T - 1 - k; }
};

// Buffers of one group of n rows, carved from one block of memory.
template <typename scalar_t>
struct Rows {
  int64_t b0 = 0, n = 0;
  scalar_t* h[2];
  scalar_t* hm[2];    // h * mask, the recurrent GEMM's operand (== h without a mask)
  scalar_t* gx_n;     // [n, H] reset_after=false: the input part of n, for phase 1
  scalar_t* q;        // [n, H] reset_after=false: r * h~
  scalar_t* scratch;  // [n, kSlots * H] reset_after=false without a reserve: r, z between phases
  scalar_t* stage;    // [n, kSlots * H] with a reserve, split by rows: this step's reserve rows
  bool staged = false;

  // staged: a chunk run by one thread writes each step's reserve rows to `stage`, then
  // copies them to the reserve in one sequential pass, and its output rows after the step
  // from the new state; the whole batch, split by columns, writes both where they lie.
  static int64_t floats_per_row(const LayerShape& s, bool mask, bool reserve, bool staged) {
    const bool before = !s.reset_after;
    return s.H * (2 + (mask ? 2 : 0) + (before ? 2 : 0) + (before && !reserve ? kSlots : 0) +
                  (reserve && staged ? kSlots : 0));
  }

  Rows(const LayerShape& s, bool mask, bool reserve, bool staged_, int64_t b0_, int64_t n_,
       scalar_t* mem)
      : b0(b0_), n(n_), staged(staged_) {
    const int64_t H = s.H;
    const bool before = !s.reset_after;
    auto take = [&](int64_t count) { scalar_t* p = mem; mem += n * count; return p; };
    h[0] = take(H), h[1] = take(H);
    hm[0] = mask ? take(H) : h[0], hm[1] = mask ? take(H) : h[1];
    gx_n = before ? take(H) : nullptr;
    q = before ? take(H) : nullptr;
    scratch = before && !reserve ? take(kSlots * H) : nullptr;
    stage = reserve && staged_ ? take(kSlots * H) : nullptr;
  }
};

template <typename scalar_t>
void load_state(const Direction<scalar_t>& f, Rows<scalar_t>& r) {
  const int64_t H = f.s.H;
  std::memcpy(r.h[0], f.a.h + r.b0 * H, sizeof(scalar_t) * r.n * H);
  if (f.a.mask) {
    for (int64_t i = 0; i < r.n; ++i) {
      masked_copy(H, r.h[0] + i * H, f.a.mask + (r.b0 + i) * H, r.hm[0] + i * H);
    }
  }
}

template <typename scalar_t>
void store_state(const Direction<scalar_t>& f, const Rows<scalar_t>& r) {
  std::memcpy(f.a.h + r.b0 * f.s.H, r.h[f.s.T % 2], sizeof(scalar_t) * r.n * f.s.H);
}

// One step k (the k-th in the direction's order) of a group of rows: where each row
// reads and writes.
template <typename scalar_t>
struct Step {
  const Direction<scalar_t>& f;
  Rows<scalar_t>& r;
  int64_t t, cur, nxt;

  Step(const Direction<scalar_t>& f_, Rows<scalar_t>& r_, int64_t k)
      : f(f_), r(r_), t(f_.time_of(k)), cur(k & 1), nxt((k & 1) ^ 1) {}

  C10_ALWAYS_INLINE bool active(int64_t i) const { return !f.a.len || t < f.a.len[r.b0 + i]; }
  const scalar_t* x_rows(int64_t i) const {
    return f.a.x + t * f.a.x_stride[0] + (r.b0 + i) * f.a.x_stride[1];
  }
  int64_t x_ld() const { return f.a.x_stride[1]; }
  const scalar_t* hm_rows(int64_t i) const { return r.hm[cur] + i * f.s.H; }
  const scalar_t* hm_prev(int64_t i, int64_t u) const { return r.hm[cur] + i * f.s.H + u; }

  // Row i's pointers for the vector of units starting at u.
  C10_ALWAYS_INLINE ForwardCell<scalar_t> cell(int64_t i, int64_t u) const {
    const LayerShape& s = f.s;
    const int64_t H = s.H, b = r.b0 + i;
    scalar_t* res = r.stage ? r.stage + i * kSlots * H
                  : f.a.res ? f.a.res + (t * s.B + b) * kSlots * H
                  : (r.scratch ? r.scratch + i * kSlots * H : nullptr);
    return {f.a.mask ? f.a.mask + b * H + u : nullptr, r.h[cur] + i * H + u,
            r.h[nxt] + i * H + u, r.hm[nxt] + i * H + u,
            r.staged ? nullptr : f.a.out + ((t * s.B + b) * s.D + f.d) * H + u,
            res ? res + u : nullptr};
  }
};

template <typename scalar_t, int R, int S>
void init_from(Vec<scalar_t> (&acc)[R][S], const scalar_t* row0, int64_t ld, const int64_t* col,
               const int* count, int slots) {
  for (int m = 0; m < R; ++m) {
    for (int s = 0; s < slots; ++s) {
      acc[m][s] = row0 ? Vec<scalar_t>::loadu(row0 + m * ld + col[s], count[s])
                       : Vec<scalar_t>(scalar_t(0));
    }
  }
}

// reset_after=true, rows [i0, i0+R) by panel p: r, z and both parts of n, then the cell.
// Each of the two GEMM loops updates 3 of a row's 4 sums (r, z and its own part of n), so
// 4 rows take 12 registers, and the panel's 3 vectors and the broadcast the other 4.
template <typename scalar_t, int R>
void tile_after(const Step<scalar_t>& st, int64_t p, int64_t i0) {
  const Direction<scalar_t>& f = st.f;
  const int64_t H = f.s.H;
  const PanelLayout& l = f.w_h.layout();
  const int c = l.counts(p)[0], u0 = static_cast<int>(l.unit0[p]);
  Vec<scalar_t> acc[R][4];
  init_from(acc, f.a.bias, 0, l.cols(p), l.counts(p), 3);  // the bias, every row
  for (int m = 0; m < R; ++m) acc[m][3] = Vec<scalar_t>(scalar_t(0));
  accumulate<scalar_t, R, 4, 0, 1, 2>(st.x_rows(i0), st.x_ld(), f.s.I, f.w_ih.panel_data(p), acc);
  accumulate<scalar_t, R, 4, 0, 1, 3>(st.hm_rows(i0), H, H, f.w_h.panel_data(p), acc);
  const Vec<scalar_t> b_hn = f.a.b_hn ? load(f.a.b_hn + u0, c) : Vec<scalar_t>(scalar_t(0));
  Vec<scalar_t> r[R], z[R], n[R], gh_n[R];
  for (int m = 0; m < R; ++m) r[m] = sigmoid(acc[m][0]);
  for (int m = 0; m < R; ++m) z[m] = sigmoid(acc[m][1]);
  for (int m = 0; m < R; ++m) gh_n[m] = acc[m][3] + b_hn;
  for (int m = 0; m < R; ++m) n[m] = tanh(acc[m][2] + r[m] * gh_n[m]);
  for (int m = 0; m < R; ++m) {
    const int64_t i = i0 + m;
    const ForwardCell<scalar_t> cell = st.cell(i, u0);
    if (st.active(i)) forward_after(r[m], z[m], n[m], gh_n[m], cell, H, c);
    else forward_inactive(cell, st.hm_prev(i, u0), H, c);
  }
}

// reset_after=false, phase 0, rows [i0, i0+R) by panel p: r, z and the input part of n.
template <typename scalar_t, int R>
void tile_before_rz(const Step<scalar_t>& st, int64_t p, int64_t i0) {
  const Direction<scalar_t>& f = st.f;
  const int64_t H = f.s.H;
  const PanelLayout& l = f.w_ih.layout();
  const int c = l.counts(p)[0], u0 = static_cast<int>(l.unit0[p]);
  Vec<scalar_t> acc[R][3];
  init_from(acc, f.a.bias, 0, l.cols(p), l.counts(p), 3);
  accumulate<scalar_t, R, 3, 0, 1, 2>(st.x_rows(i0), st.x_ld(), f.s.I, f.w_ih.panel_data(p), acc);
  accumulate<scalar_t, R, 3, 0, 1>(st.hm_rows(i0), H, H, f.w_h.panel_data(p), acc);
  Rows<scalar_t>& rows = st.r;
  Vec<scalar_t> r[R], z[R];
  for (int m = 0; m < R; ++m) r[m] = sigmoid(acc[m][0]);
  for (int m = 0; m < R; ++m) z[m] = sigmoid(acc[m][1]);
  for (int m = 0; m < R; ++m) {
    const int64_t i = i0 + m;
    acc[m][2].store(rows.gx_n + i * H + u0, c);
    if (!st.active(i)) {
      Vec<scalar_t>(scalar_t(0)).store(rows.q + i * H + u0, c);
      continue;
    }
    forward_before_rz(r[m], z[m], st.hm_prev(i, u0), rows.q + i * H + u0, st.cell(i, u0).res,
                      H, c);
  }
}

// reset_after=false, phase 1, rows [i0, i0+R) by panel p (S vectors of units):
// gx_n + q W_hn^T, then the new state.
template <typename scalar_t, int R, int S>
void tile_before_n(const Step<scalar_t>& st, int64_t p, int64_t i0) {
  const Direction<scalar_t>& f = st.f;
  const int64_t H = f.s.H;
  const PanelLayout& l = f.w_hn->layout();
  const int64_t* col = l.cols(p);
  const int* count = l.counts(p);
  Rows<scalar_t>& r = st.r;
  Vec<scalar_t> acc[R][S];
  init_from(acc, r.gx_n + i0 * H, H, col, count, S);
  accumulate_all(r.q + i0 * H, H, H, f.w_hn->panel_data(p), acc);
  for (int m = 0; m < R; ++m) {
    for (int s = 0; s < S; ++s) acc[m][s] = tanh(acc[m][s]);
  }
  for (int m = 0; m < R; ++m) {
    const int64_t i = i0 + m;
    for (int s = 0; s < S; ++s) {
      const ForwardCell<scalar_t> cell = st.cell(i, col[s]);
      if (st.active(i)) forward_before_n(acc[m][s], cell, H, count[s]);
      else forward_inactive(cell, st.hm_prev(i, col[s]), H, count[s]);
    }
  }
}

// Phase `phase` of step k for rows r and panel p.
template <typename scalar_t>
void step_panel(const Direction<scalar_t>& f, Rows<scalar_t>& r, int64_t k, int64_t phase,
                int64_t p) {
  const Step<scalar_t> st(f, r, k);
  if (f.s.reset_after) {
    for_row_tiles<4>(r.n, [&](auto R, int64_t i0) { tile_after<scalar_t, decltype(R)::value>(st, p, i0); });
  } else if (phase == 0) {
    for_row_tiles<4>(r.n, [&](auto R, int64_t i0) { tile_before_rz<scalar_t, decltype(R)::value>(st, p, i0); });
  } else {
    with_slots(f.w_hn->layout().slots[p], [&](auto S) {
      for_row_tiles<4>(r.n, [&](auto R, int64_t i0) {
        tile_before_n<scalar_t, decltype(R)::value, decltype(S)::value>(st, p, i0);
      });
    });
  }
}

// Rows [i0, i1) of step k's input, into cache (the output and reserve rows are written
// after the step, streamed out).
template <typename scalar_t>
void prefetch_rows(const Direction<scalar_t>& f, const Rows<scalar_t>& r, int64_t k,
                   int64_t i0, int64_t i1) {
  const int64_t t = f.time_of(k);
  for (int64_t i = i0; i < i1; ++i) {
    prefetch(f.a.x + t * f.a.x_stride[0] + (r.b0 + i) * f.a.x_stride[1], f.s.I);
  }
}

// Step k's output rows of a chunk, from the new state (0 past a row's length), with
// non-temporal stores: the output is read again only after the whole loop, and the
// stores of the cells, spread over rows and units, would first read every line in.
template <typename scalar_t>
void write_outputs(const Direction<scalar_t>& f, const Rows<scalar_t>& r, int64_t k) {
  const LayerShape& s = f.s;
  const int64_t t = f.time_of(k), H = s.H;
  const scalar_t* h = r.h[(k & 1) ^ 1];
  scalar_t* out = f.a.out + ((t * s.B + r.b0) * s.D + f.d) * H;
  if (s.D == 1 && !f.a.len) return stream_copy(out, h, r.n * H);
  for (int64_t i = 0; i < r.n; ++i) {
    scalar_t* row = out + i * s.D * H;
    if (!f.a.len || t < f.a.len[r.b0 + i]) stream_copy(row, h + i * H, H);
    else std::fill(row, row + H, scalar_t(0));
  }
}

// Every step of one group of rows, on the calling thread. While a step computes, the
// next step's input rows are fetched, a share before each panel: they are spread too thin
// for the hardware prefetcher to follow. At the step's end, its output rows and (with a
// reserve) its reserve rows go out in one pass each.
template <typename scalar_t>
void run_rows(const Direction<scalar_t>& f, Rows<scalar_t>& r) {
  load_state(f, r);
  for (int64_t k = 0; k < f.s.T; ++k) {
    const int64_t np = f.panels(0);
    for (int64_t phase = 0; phase < f.phases(); ++phase) {
      for (int64_t p = 0; p < f.panels(phase); ++p) {
        if (phase == 0 && k + 1 < f.s.T) prefetch_rows(f, r, k + 1, p * r.n / np, (p + 1) * r.n / np);
        step_panel(f, r, k, phase, p);
      }
    }
    write_outputs(f, r, k);
    if (r.stage) {
      const int64_t H = f.s.H;
      stream_copy(f.a.res + (f.time_of(k) * f.s.B + r.b0) * kSlots * H, r.stage, r.n * kSlots * H);
    }
  }
  store_state(f, r);
}

}  // namespace

template <typename scalar_t>
void forward_layer(const LayerShape& s, const ForwardArgs<scalar_t>* args) {
  std::vector<std::optional<Direction<scalar_t>>> dirs(s.D);
  for (int64_t d = 0; d < s.D; ++d) dirs[d].emplace(s, args[d], d);
  const bool mask = args[0].mask != nullptr, reserve = args[0].res != nullptr;
  const Split split = layer_split(s);
  const int64_t per_row = Rows<scalar_t>::floats_per_row(s, mask, reserve, split.by_rows);
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value);

  if (split.by_rows) {
    // Each task is one chunk of one direction, run through every step.
    const int64_t chunk = split.chunk_rows;
    at::Tensor ws = pooled_empty({split.threads, chunk * per_row}, opts);
    run_tasks(s.D * split.chunks, split.threads, [&](int64_t task, int64_t slot) {
      const int64_t d = task / split.chunks, c = task % split.chunks;
      Rows<scalar_t> r(s, mask, reserve, true, split.chunk_begin(c), split.chunk_size(c, s.B),
                       ws.data_ptr<scalar_t>() + slot * chunk * per_row);
      run_rows(*dirs[d], r);
    });
    return;
  }
  // By columns: the whole batch is one group of rows, its panels shared out every step.
  at::Tensor ws = pooled_empty({s.B * per_row}, opts);
  for (int64_t d = 0; d < s.D; ++d) {
    const Direction<scalar_t>& f = *dirs[d];
    Rows<scalar_t> r(s, mask, reserve, false, 0, s.B, ws.data_ptr<scalar_t>());
    load_state(f, r);
    const int64_t phases = f.phases();
    run_groups(
        s.T * phases, split.threads, [&](int64_t g) { return f.panels(g % phases); },
        [&](int64_t g, int64_t p, int64_t) { step_panel(f, r, g / phases, g % phases, p); });
    store_state(f, r);
  }
}

template void forward_layer<float>(const LayerShape&, const ForwardArgs<float>*);
template void forward_layer<double>(const LayerShape&, const ForwardArgs<double>*);

}  // namespace gru_torch::cpu::CPU_CAPABILITY
