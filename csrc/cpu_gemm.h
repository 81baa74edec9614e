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
// The micro-kernel computes up to kTileRows rows by one panel in kTileRows * kMaxSlots
// vector accumulators (4 x 3 = 12 of AVX2's 16 registers), broadcasting A one element
// at a time; no blocking over K is needed, since K (I, H or 3H) is at most a few hundred.
#pragma once

#include <ATen/ATen.h>
#include <ATen/cpu/vec/vec.h>
#include <algorithm>
#include <cstring>
#include <vector>

namespace gru_torch::cpu {

constexpr int kMaxSlots = 3;
constexpr int kTileRows = 4;

// Where each panel's vectors go in C, and which hidden units a panel covers.
struct PanelLayout {
  int64_t slots = 1;          // vectors per panel (1..kMaxSlots)
  std::vector<int64_t> col;   // [panels * slots] first column of C per slot
  std::vector<int> count;     // [panels * slots] columns in use, 0..W
  std::vector<int64_t> unit0, unit1;  // [panels] hidden units [unit0, unit1) of the panel

  int64_t panels() const { return static_cast<int64_t>(unit0.size()); }

  // One panel per W hidden units, one slot per gate: the slot of gate g covers C columns
  // g*H + [u, u+W). gates = 3 (r, z, n) or 2 (r, z).
  static PanelLayout gates(int64_t H, int64_t gates, int64_t W) {
    PanelLayout l;
    l.slots = gates;
    for (int64_t u = 0; u < H; u += W) {
      l.unit0.push_back(u);
      l.unit1.push_back(std::min(H, u + W));
      for (int64_t g = 0; g < gates; ++g) {
        l.col.push_back(g * H + u);
        l.count.push_back(static_cast<int>(std::min(W, H - u)));
      }
    }
    return l;
  }

  // One panel per kMaxSlots*W consecutive columns (hidden units) of C, [rows, H].
  static PanelLayout units(int64_t H, int64_t W) {
    PanelLayout l;
    l.slots = std::min<int64_t>(kMaxSlots, (H + W - 1) / W);
    for (int64_t u = 0; u < H; u += l.slots * W) {
      l.unit0.push_back(u);
      l.unit1.push_back(std::min(H, u + l.slots * W));
      for (int64_t s = 0; s < l.slots; ++s) {
        const int64_t c = u + s * W;
        l.col.push_back(std::min(c, H));
        l.count.push_back(static_cast<int>(std::clamp<int64_t>(H - c, 0, W)));
      }
    }
    return l;
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
        data_(at::zeros({layout_.panels() * K * layout_.slots * W},
                        at::TensorOptions().dtype(c10::CppTypeToScalarType<scalar_t>::value))) {
    const int64_t S = layout_.slots;
    for (int64_t p = 0; p < layout_.panels(); ++p) {
      scalar_t* panel = panel_data(p);
      for (int64_t s = 0; s < S; ++s) {
        const int64_t c0 = layout_.col[p * S + s];
        for (int64_t i = 0; i < layout_.count[p * S + s]; ++i) {
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
  const scalar_t* panel_data(int64_t p) const {
    return data_.const_data_ptr<scalar_t>() + p * K_ * layout_.slots * W;
  }

 private:
  scalar_t* panel_data(int64_t p) { return data_.data_ptr<scalar_t>() + p * K_ * layout_.slots * W; }

  PanelLayout layout_;
  int64_t K_;
  at::Tensor data_;  // 64-byte aligned by ATen's allocator
};

namespace detail {

template <typename scalar_t, int R, int S>
inline void tile(const scalar_t* a, int64_t lda, int64_t K, const scalar_t* b,
                 const scalar_t* init, int64_t ldi, scalar_t* c, int64_t ldc,
                 const int64_t* col, const int* count) {
  using V = Vec<scalar_t>;
  constexpr int64_t W = V::size();
  V acc[R][S];
  for (int m = 0; m < R; ++m) {
    for (int s = 0; s < S; ++s) {
      acc[m][s] = init ? V::loadu(init + m * ldi + col[s], count[s]) : V(scalar_t(0));
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    V bv[S];
    for (int s = 0; s < S; ++s) bv[s] = V::loadu(b + (k * S + s) * W);
    for (int m = 0; m < R; ++m) {
      const V av(a[m * lda + k]);
      for (int s = 0; s < S; ++s) acc[m][s] = at::vec::fmadd(av, bv[s], acc[m][s]);
    }
  }
  for (int m = 0; m < R; ++m) {
    for (int s = 0; s < S; ++s) acc[m][s].store(c + m * ldc + col[s], count[s]);
  }
}

template <typename scalar_t, int S>
inline void rows_by_panel(const scalar_t* a, int64_t lda, int64_t rows, int64_t K,
                          const scalar_t* b, const scalar_t* init, int64_t ldi, scalar_t* c,
                          int64_t ldc, const int64_t* col, const int* count) {
  int64_t m = 0;
  for (; m + kTileRows <= rows; m += kTileRows) {
    tile<scalar_t, kTileRows, S>(a + m * lda, lda, K, b, init ? init + m * ldi : nullptr, ldi,
                                 c + m * ldc, ldc, col, count);
  }
  const scalar_t* i0 = init ? init + m * ldi : nullptr;
  switch (rows - m) {
    case 3: return tile<scalar_t, 3, S>(a + m * lda, lda, K, b, i0, ldi, c + m * ldc, ldc, col, count);
    case 2: return tile<scalar_t, 2, S>(a + m * lda, lda, K, b, i0, ldi, c + m * ldc, ldc, col, count);
    case 1: return tile<scalar_t, 1, S>(a + m * lda, lda, K, b, i0, ldi, c + m * ldc, ldc, col, count);
    default: return;
  }
}

}  // namespace detail

// C[rows, panel p's columns] = init + A[rows, K] B[:, panel p's columns]. `init` (null
// for zero) is read like C with row stride ldi; ldi = 0 adds one bias row to every row.
template <typename scalar_t>
inline void gemm_panel(const PackedB<scalar_t>& B, int64_t p, const scalar_t* a, int64_t lda,
                       int64_t rows, const scalar_t* init, int64_t ldi, scalar_t* c,
                       int64_t ldc) {
  const PanelLayout& l = B.layout();
  const int64_t* col = l.col.data() + p * l.slots;
  const int* count = l.count.data() + p * l.slots;
  const scalar_t* b = B.panel_data(p);
  switch (l.slots) {
    case 3: return detail::rows_by_panel<scalar_t, 3>(a, lda, rows, B.K(), b, init, ldi, c, ldc, col, count);
    case 2: return detail::rows_by_panel<scalar_t, 2>(a, lda, rows, B.K(), b, init, ldi, c, ldc, col, count);
    default: return detail::rows_by_panel<scalar_t, 1>(a, lda, rows, B.K(), b, init, ldi, c, ldc, col, count);
  }
}

}  // namespace gru_torch::cpu
