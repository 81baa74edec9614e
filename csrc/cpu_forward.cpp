// The forward time loop of one layer on the CPU.
//
// A group of rows (a chunk, or the whole batch when split by columns) runs each step as
// one or two phases over panels of hidden units (cpu_gemm.h). Per panel: the input
// projection x_t W_ih^T + bias and the recurrent product h~ W_hh^T for those units'
// gates, then the cell on those units. reset_after=false has two phases, since its
// candidate needs (r * h~) W_hn^T, and so r of every unit, first.
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

namespace gru_torch::cpu {
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
  scalar_t* gx;       // [n, G]
  scalar_t* gh;       // [n, G] (reset_after) or [n, 2H]
  scalar_t* q;        // [n, H] reset_after=false: r * h~
  scalar_t* ghn;      // [n, H] reset_after=false: q W_hn^T
  scalar_t* scratch;  // [n, 5H] the reserve rows when none is kept

  static int64_t floats_per_row(const LayerShape& s, bool mask, bool reserve) {
    return s.H * (2 + (mask ? 2 : 0) + 3 + (s.reset_after ? 3 : 4) + (reserve ? 0 : 5));
  }

  Rows(const LayerShape& s, bool mask, bool reserve, int64_t b0_, int64_t n_, scalar_t* mem)
      : b0(b0_), n(n_) {
    const int64_t H = s.H;
    auto take = [&](int64_t count) { scalar_t* p = mem; mem += n * count; return p; };
    h[0] = take(H), h[1] = take(H);
    hm[0] = mask ? take(H) : h[0], hm[1] = mask ? take(H) : h[1];
    gx = take(3 * H);
    gh = take(s.reset_after ? 3 * H : 2 * H);
    q = s.reset_after ? nullptr : take(H);
    ghn = s.reset_after ? nullptr : take(H);
    scratch = reserve ? nullptr : take(5 * H);
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

// Phase `phase` of step k (k-th in the direction's order) for rows r and panel p.
template <typename scalar_t>
void step_panel(const Direction<scalar_t>& f, Rows<scalar_t>& r, int64_t k, int64_t phase,
                int64_t p) {
  const LayerShape& s = f.s;
  const ForwardArgs<scalar_t>& a = f.a;
  const int64_t H = s.H, G = s.G(), B = s.B, t = f.time_of(k);
  const int64_t cur = k & 1, nxt = cur ^ 1;
  const PanelLayout& layout = phase == 0 ? f.w_h.layout() : f.w_hn->layout();
  const int64_t u0 = layout.unit0[p], nu = layout.unit1[p] - u0;
  auto active = [&](int64_t i) { return !a.len || t < a.len[r.b0 + i]; };
  auto mask_row = [&](int64_t i) { return a.mask ? a.mask + (r.b0 + i) * H + u0 : nullptr; };
  auto out_row = [&](int64_t i) { return a.out + ((t * B + r.b0 + i) * s.D + f.d) * H + u0; };
  auto res_row = [&](int64_t i) {
    return (a.res ? a.res + (t * B + r.b0 + i) * 5 * H : r.scratch + i * 5 * H) + u0;
  };
  auto row = [&](scalar_t* base, int64_t i) { return base + i * H + u0; };

  if (phase == 0) {
    gemm_panel(f.w_ih, p, a.x + (t * B + r.b0) * s.I, s.I, r.n, a.bias, 0, r.gx, G);
  }
  if (s.reset_after) {
    gemm_panel(f.w_h, p, r.hm[cur], H, r.n, static_cast<const scalar_t*>(nullptr), 0, r.gh, G);
    for (int64_t i = 0; i < r.n; ++i) {
      if (!active(i)) {
        forward_row_inactive(nu, H, row(r.h[cur], i), row(r.h[nxt], i), row(r.hm[cur], i),
                             row(r.hm[nxt], i), out_row(i), res_row(i));
        continue;
      }
      forward_row_after(nu, H, r.gx + i * G + u0, r.gh + i * G + u0,
                        a.b_hn ? a.b_hn + u0 : nullptr, mask_row(i), row(r.h[cur], i),
                        row(r.h[nxt], i), row(r.hm[nxt], i), out_row(i), res_row(i));
    }
    return;
  }
  if (phase == 0) {
    gemm_panel(f.w_h, p, r.hm[cur], H, r.n, static_cast<const scalar_t*>(nullptr), 0, r.gh, 2 * H);
    for (int64_t i = 0; i < r.n; ++i) {
      if (!active(i)) {
        std::memset(row(r.q, i), 0, sizeof(scalar_t) * nu);
        continue;
      }
      forward_row_before_rz(nu, H, r.gx + i * G + u0, r.gh + i * 2 * H + u0, row(r.hm[cur], i),
                            row(r.q, i), res_row(i));
    }
    return;
  }
  gemm_panel(*f.w_hn, p, r.q, H, r.n, static_cast<const scalar_t*>(nullptr), 0, r.ghn, H);
  for (int64_t i = 0; i < r.n; ++i) {
    if (!active(i)) {
      forward_row_inactive(nu, H, row(r.h[cur], i), row(r.h[nxt], i), row(r.hm[cur], i),
                           row(r.hm[nxt], i), out_row(i), res_row(i));
      continue;
    }
    forward_row_before_n(nu, H, r.gx + i * G + u0, row(r.ghn, i), mask_row(i),
                         row(r.h[cur], i), row(r.h[nxt], i), row(r.hm[nxt], i), out_row(i),
                         res_row(i));
  }
}

// Every step of one group of rows, on the calling thread.
template <typename scalar_t>
void run_rows(const Direction<scalar_t>& f, Rows<scalar_t>& r) {
  load_state(f, r);
  for (int64_t k = 0; k < f.s.T; ++k) {
    for (int64_t phase = 0; phase < f.phases(); ++phase) {
      for (int64_t p = 0; p < f.panels(phase); ++p) step_panel(f, r, k, phase, p);
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
  const int64_t per_row = Rows<scalar_t>::floats_per_row(s, mask, reserve);
  const Split split = layer_split(s);
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value);

  if (split.by_rows) {
    // Each task is one chunk of one direction, run through every step.
    const int64_t chunk = split.chunk_rows;
    at::Tensor ws = pooled_empty({split.threads, chunk * per_row}, opts);
    run_tasks(s.D * split.chunks, split.threads, [&](int64_t task, int64_t slot) {
      const int64_t d = task / split.chunks, c = task % split.chunks;
      Rows<scalar_t> r(s, mask, reserve, split.chunk_begin(c), split.chunk_size(c, s.B),
                       ws.data_ptr<scalar_t>() + slot * chunk * per_row);
      run_rows(*dirs[d], r);
    });
    return;
  }
  // By columns: the whole batch is one group of rows, its panels shared out every step.
  at::Tensor ws = pooled_empty({s.B * per_row}, opts);
  for (int64_t d = 0; d < s.D; ++d) {
    const Direction<scalar_t>& f = *dirs[d];
    Rows<scalar_t> r(s, mask, reserve, 0, s.B, ws.data_ptr<scalar_t>());
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

}  // namespace gru_torch::cpu
