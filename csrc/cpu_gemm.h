// The time loop's small GEMMs on the CPU: C[rows, :] = init + A[rows, K] B[K, :], with B
// packed once per layer call so that every step reads it in the kernel's order from cache.
//
// B's columns are cut into *slots* of one vector (W = 8 floats or 4 doubles), and slots
// are grouped into *panels* of up to kMaxSlots. A panel is stored k-major, [K][slots][W],
// zero past its last column. Each slot names the column of C where its W values land,
// so a panel may gather columns from anywhere in C: the forward packs the r, z and n
// columns of the same W hidden units into one panel, so that the thread computing that
// panel holds all three gates of those units and can run the cell on them at once.
//
// The micro-kernel (accumulate) computes a few rows by one panel in vector accumulators
// (4 rows x 3 slots = 12 of AVX2's 16 registers), broadcasting A one element at a time;
// no blocking over K is needed, since K (I, H or 3H) is at most a few hundred. Its
// callers (cpu_forward.cpp, cpu_backward.cpp) run the cell on the accumulators while
// they are still in registers.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cpu/vec/vec.h>
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "cpu_pool.h"

// In the loops' namespace (cpu/capability.h): compiled once per instruction set.
namespace gru_torch::cpu::CPU_CAPABILITY {

constexpr int kMaxSlots = 3;

// Where each panel's vectors go in C, and which hidden units a panel covers.
struct PanelLayout {
  std::vector<int> slots;             // [panels] vectors of each panel (1..kMaxSlots)
  std::vector<int64_t> first;         // [panels + 1] each panel's first slot in col, count
  std::vector<int64_t> col;           // [slots] the first column of C of each slot
  std::vector<int> count;             // [slots] columns in use, 1..W
  std::vector<int64_t> unit0, unit1;  // [panels] hidden units [unit0, unit1) of the panel

  int64_t panels() const { return static_cast<int64_t>(slots.size()); }
  const int64_t* cols(int64_t p) const { return col.data() + first[p]; }
  const int* counts(int64_t p) const { return count.data() + first[p]; }

  // One panel per W hidden units, one slot per gate: the slot of gate g covers C columns
  // g*H + [u, u+W). gates = 3 (r, z, n) or 2 (r, z).
  static PanelLayout gates(int64_t H, int64_t gates, int64_t W) {
    PanelLayout l;
    l.first.push_back(0);
    for (int64_t u = 0; u < H; u += W) {
      for (int64_t g = 0; g < gates; ++g) l.add_slot(g * H + u, std::min(W, H - u));
      l.close_panel(u, std::min(H, u + W));
    }
    return l;
  }

  // Panels of about per_panel consecutive vectors of columns (hidden units) of C, [rows, H].
  // The vectors are shared out evenly, so that no panel is left with one: with 13 vectors
  // and per_panel 2, five panels of 2 and one of 3 (not six of 2 and one of 1, whose tile
  // runs its FMAs at a fraction of the others' rate). The last vector may be short.
  static PanelLayout units(int64_t H, int64_t W, int64_t per_panel = kMaxSlots) {
    const int64_t vectors = (H + W - 1) / W;
    int64_t panels = std::max<int64_t>(1, vectors / per_panel);
    if ((vectors + panels - 1) / panels > kMaxSlots) panels = (vectors + per_panel - 1) / per_panel;
    PanelLayout l;
    l.first.push_back(0);
    for (int64_t p = 0, v = 0; p < panels; ++p) {
      const int64_t n = vectors / panels + (p < vectors % panels ? 1 : 0);
      for (int64_t j = v; j < v + n; ++j) l.add_slot(j * W, std::min(W, H - j * W));
      l.close_panel(v * W, std::min(H, (v + n) * W));
      v += n;
    }
    return l;
  }

 private:
  void add_slot(int64_t c, int64_t n) {
    col.push_back(c);
    count.push_back(static_cast<int>(n));
  }
  void close_panel(int64_t u0, int64_t u1) {
    slots.push_back(static_cast<int>(static_cast<int64_t>(col.size()) - first.back()));
    first.push_back(static_cast<int64_t>(col.size()));
    unit0.push_back(u0);
    unit1.push_back(u1);
  }
};

template <typename scalar_t>
using Vec = at::vec::Vectorized<scalar_t>;

// B packed for one layout. `src` is the weight matrix as stored:
//   transposed=true  (C = A src^T): B[k][j] = src[j * ld + k]  (the forward's W_ih, W_hh)
//   transposed=false (C = A src):   B[k][j] = src[k * ld + j]  (the backward's W_hh)
template <typename scalar_t>
class PackedB {
 public:
  static constexpr int64_t W = Vec<scalar_t>::size();

  PackedB(PanelLayout layout, const scalar_t* src, int64_t ld, int64_t K, bool transposed)
      : layout_(std::move(layout)), K_(K),
        data_(serial_zeros({static_cast<int64_t>(layout_.col.size()) * K * W},
                        at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value))),
        base_(data_.data_ptr<scalar_t>()) {
    for (int64_t p = 0; p < layout_.panels(); ++p) {
      scalar_t* panel = panel_data(p);
      const int64_t S = layout_.slots[p];
      for (int64_t s = 0; s < S; ++s) {
        const int64_t c0 = layout_.cols(p)[s];
        for (int64_t i = 0; i < layout_.counts(p)[s]; ++i) {
          for (int64_t k = 0; k < K; ++k) {
            panel[(k * S + s) * W + i] = transposed ? src[(c0 + i) * ld + k] : src[k * ld + c0 + i];
          }
        }
      }
    }
  }

  const PanelLayout& layout() const { return layout_; }
  int64_t K() const { return K_; }
  int64_t panels() const { return layout_.panels(); }
  // Panel p: [K][slots of p][W].
  const scalar_t* panel_data(int64_t p) const {
    return base_ + layout_.first[p] * K_ * W;
  }

 private:
  scalar_t* panel_data(int64_t p) { return base_ + layout_.first[p] * K_ * W; }

  PanelLayout layout_;
  int64_t K_;
  at::Tensor data_;  // 64-byte aligned by ATen's allocator
  scalar_t* base_;   // data_'s first value (the tiles ask for panels in their inner loops)
};

// acc[m][Slots[s]] += A[m, :K] B[:K, slot s] for m < R: the micro-kernel's loop over one
// panel packed with sizeof...(Slots) slots. The slot map is a template argument so that
// every accumulator stays in a register.
template <typename scalar_t, int R, int SA, int... Slots>
inline void accumulate(const scalar_t* a, int64_t lda, int64_t K, const scalar_t* b,
                       Vec<scalar_t> (&acc)[R][SA]) {
  using V = Vec<scalar_t>;
  constexpr int S = sizeof...(Slots);
  constexpr int64_t W = V::size();
  constexpr int slot[S] = {Slots...};
  for (int64_t k = 0; k < K; ++k) {
    V bv[S];
    for (int s = 0; s < S; ++s) bv[s] = V::loadu(b + (k * S + s) * W);
    for (int m = 0; m < R; ++m) {
      const V av(a[m * lda + k]);
      for (int s = 0; s < S; ++s) acc[m][slot[s]] = at::vec::fmadd(av, bv[s], acc[m][slot[s]]);
    }
  }
}

template <typename scalar_t, int R, int S, int... Slots>
inline void accumulate_seq(const scalar_t* a, int64_t lda, int64_t K, const scalar_t* b,
                           Vec<scalar_t> (&acc)[R][S], std::integer_sequence<int, Slots...>) {
  accumulate<scalar_t, R, S, Slots...>(a, lda, K, b, acc);
}

// acc[m][s] += A[m, :K] B[:K, slot s] for every slot s < S of a panel of S slots.
template <typename scalar_t, int R, int S>
inline void accumulate_all(const scalar_t* a, int64_t lda, int64_t K, const scalar_t* b,
                           Vec<scalar_t> (&acc)[R][S]) {
  accumulate_seq(a, lda, K, b, acc, std::make_integer_sequence<int, S>{});
}

template <int N>
using Const = std::integral_constant<int, N>;

// f(Const<R>{}, i) for the last `rest` (< R + 1) rows, starting at row i.
template <int R, typename F>
inline void row_tail(int64_t rest, int64_t i, const F& f) {
  if constexpr (R >= 1) {
    if (rest == R) return f(Const<R>{}, i);
    row_tail<R - 1>(rest, i, f);
  }
}

// A short last tile runs its few accumulator chains at a fraction of the FMA rate, so a
// rest under half a tile joins the last full tile, and the two split evenly (32 rows in
// tiles of 6: 6, 6, 6, 6, 4, 4 rather than 6, 6, 6, 6, 6, 2).
template <int RMAX, typename F>
inline void for_row_tiles(int64_t n, const F& f) {
  static_assert(RMAX >= 1 && RMAX <= 6, "tiles of 1 to 6 rows");
  const int64_t rest = n % RMAX;
  const int64_t full_end = n - rest - (rest > 0 && 2 * rest < RMAX && n > RMAX ? RMAX : 0);
  int64_t i = 0;
  for (; i < full_end; i += RMAX) f(Const<RMAX>{}, i);
  const int64_t left = n - i;  // rest, or a tile and rest
  if (left > RMAX) {
    row_tail<RMAX>((left + 1) / 2, i, f);
    row_tail<RMAX>(left / 2, i + (left + 1) / 2, f);
  } else {
    row_tail<RMAX>(left, i, f);
  }
}

// f(Const<S>{}) for a panel layout's S slots (1 to kMaxSlots).
template <typename F>
inline void with_slots(int64_t slots, const F& f) {
  if (slots == 3) return f(Const<3>{});
  if (slots == 2) return f(Const<2>{});
  f(Const<1>{});
}

}  // namespace gru_torch::cpu::CPU_CAPABILITY
