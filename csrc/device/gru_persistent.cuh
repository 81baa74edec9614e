// The persistent fused recurrent kernels: one launch runs a whole layer (both
// directions) over the whole sequence, forward or backward. One source for nvcc and
// the emulator, and one for every cell: the cell is a compile-time policy
// (csrc/device/cells.cuh) that supplies the pointwise math, the gate count and what
// the reserve keeps; this file is the rest.
//
// Letters as in csrc/gru.h: T steps, B rows, H hidden units, D directions; HP is H
// padded to the kernel's size (a multiple of 16), G the cell's gates (GRU 3, RNN 1).
//
// Work split (see csrc/README.md, "CUDA design"):
//   * A CTA owns 16 batch rows (one m16 tile) of one direction for all T steps:
//     grid = (ceil(B / 16), D). Nothing is exchanged between CTAs.
//   * Each of the CTA's warps owns U = HP / warps hidden units, for all G gates, so
//     a thread's pre-activations of every gate for one (row, unit) land in the same
//     registers of its mma accumulators: the cell math needs no exchange.
//   * W_hh stays on chip for all T steps as mma B fragments: the first kRegTiles
//     k-tiles in registers, the rest (when registers run out) in shared memory, each
//     lane's fragments contiguous so a lane reads them with one 64-bit load.
//   * The state h (fp32) lives in the registers of the thread that computes it; only
//     h~ = h * mask goes through shared memory, in the mma operand type, as the next
//     step's A tile: one double-buffered tile, one __syncthreads a step. The GRU with
//     reset_after=false (Cell::kTwoGemm) needs r before its candidate's GEMM, so two
//     GEMMs and two barriers a step (h~ tile, then q = r * h~ tile).
//   * Backward is the same machine in reverse: W_hh as the [G -> H] operand, the gate
//     gradients (dgh) through a shared tile, dh carried in fp32 registers.
//   * Two reserve layouts: the GRU's kernels keep h_prev after the cell's slots
//     (kKeepPrev), in the GRU op (gru_layer) and the family op (family_layer) alike;
//     the LSTM's and the RNNs' keep the cell's slots only, as the CPU family op does,
//     and their backward reads h_prev from the forward's output.
// Every per-step global load is issued one step ahead, so it lands while the GEMM
// and the barrier run.
#pragma once

#include "cells.cuh"
#include "port.cuh"

#if GT_EMULATED
#define GT_UNROLL
#else
#define GT_UNROLL _Pragma("unroll")
#endif

GT_BEGIN_NAMESPACE
namespace gru {

struct alignas(8) u32x2 {
  uint32_t x, y;
};

// ---------------------------------------------------------------- operand kinds
struct OpBF16 {  // m16n8k16, bf16 operands
  using Store = bf16;
  using Elem = uint16_t;
  static constexpr int kK = 16, kPad = 8;  // pad: 16 bytes a row, so ldmatrix rows miss each other's banks
};
struct OpF16 {  // m16n8k16, fp16 operands
  using Store = f16;
  using Elem = uint16_t;
  static constexpr int kK = 16, kPad = 8;
};
struct OpTF32 {  // m16n8k8, tf32 operands (fp32 storage)
  using Store = float;
  using Elem = uint32_t;
  static constexpr int kK = 8, kPad = 4;
};

// Two values (columns c, c+1 of one row) into an A tile of operands; idx is even.
template <class Op>
GT_DEV void put_pair(sptr<typename Op::Elem> tile, int idx, float v0, float v1) {
  if constexpr (Op::kK == 8) {
    tile[idx] = tf32_bits(v0);
    tile[idx + 1] = tf32_bits(v1);
  } else {
    sptr_cast<uint32_t>(tile + idx)[0] = pack2<typename Op::Store>(v0, v1);
  }
}

// The A fragment of rows 0-15, k0..k0+kK of a tile (row stride `stride` elements).
template <class Op>
GT_DEV void load_a(uint32_t (&a)[4], sptr<typename Op::Elem> tile, int stride, int k0, int lane) {
  if constexpr (Op::kK == 8) {
    const int g = lane >> 2, t = lane & 3;
    a[0] = tile[g * stride + k0 + t];
    a[1] = tile[(g + 8) * stride + k0 + t];
    a[2] = tile[g * stride + k0 + t + 4];
    a[3] = tile[(g + 8) * stride + k0 + t + 4];
  } else {
    const int m = lane >> 3, r = lane & 7;  // lanes 8m..8m+7 address the rows of matrix m
    ldmatrix_x4(a, tile + ((m & 1) * 8 + r) * stride + k0 + (m >> 1) * 8);
  }
}

// The B fragment of k0..k0+kK, n0..n0+7 of the matrix w(k, n).
template <class Op, class W>
GT_DEV void make_b(uint32_t (&b)[2], const W& w, int k0, int n0, int lane) {
  const int g = lane >> 2, t = lane & 3;
  if constexpr (Op::kK == 8) {
    b[0] = tf32_bits(w(k0 + t, n0 + g));
    b[1] = tf32_bits(w(k0 + t + 4, n0 + g));
  } else {
    using S = typename Op::Store;
    b[0] = pack2<S>(w(k0 + 2 * t, n0 + g), w(k0 + 2 * t + 1, n0 + g));
    b[1] = pack2<S>(w(k0 + 8 + 2 * t, n0 + g), w(k0 + 9 + 2 * t, n0 + g));
  }
}

template <class Op>
GT_DEV void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (Op::kK == 8) mma_m16n8k8_tf32(d, a, b, d);
  else mma_m16n8k16<typename Op::Store>(d, a, b, d);
}

// A warp's W_hh fragments: kTiles k-tiles x kCols n-tiles, the first kRegTiles
// k-tiles in registers, the rest in this warp's slice of shared memory.
template <int kTiles, int kCols, int kRegTiles>
struct WFrags {
  static constexpr int kSmemTiles = kTiles - kRegTiles;
  static constexpr int kSmemPerWarp = kSmemTiles * kCols * 32;  // u32x2 entries
  uint32_t reg[kRegTiles > 0 ? kRegTiles : 1][kCols][2];
  sptr<u32x2> smem;

  GT_DEV void set(int kt, int c, const uint32_t (&b)[2], int lane) {
    if (kt < kRegTiles) {
      reg[kt][c][0] = b[0];
      reg[kt][c][1] = b[1];
    } else {
      smem[((kt - kRegTiles) * kCols + c) * 32 + lane] = u32x2{b[0], b[1]};
    }
  }
  GT_DEV void get(uint32_t (&b)[2], int kt, int c, int lane) const {
    if (kt < kRegTiles) {
      b[0] = reg[kt][c][0];
      b[1] = reg[kt][c][1];
    } else {
      const u32x2 v = smem[((kt - kRegTiles) * kCols + c) * 32 + lane];
      b[0] = v.x;
      b[1] = v.y;
    }
  }
};

// ---------------------------------------------------------------- arguments
// Where gate q of unit u, row b, step t, direction d lies in gx (or dgx): at
// d * dir + t * step + b * row + q * gate + u. The GRU op's gx is [D, T, B, G*HP]
// (padded units 0), its dgx [D, T*B, G*H]; the family op's are [T, B, D, G*H].
struct Strides {
  int64_t dir, step;
  int row, gate;
};

template <class T>
struct FwdArgs {
  int steps, batch, hidden, dirs;
  gptr<const T> gx;              // x W_ih^T + b (all but the cell's kRecBias bias), at gx_at
  Strides gx_at;
  gptr<const T> w_hh;            // [D, G*H, H]
  gptr<const T> b_rec;           // [D, H] or null: the recurrent bias of gate Cell::kRecBias
  gptr<const T> h0;              // [D, B, H]
  gptr<const T> c0;              // [D, B, H]: the LSTM's initial cell state, else null
  gptr<const T> mask;            // [D, B, H] or null: recurrent dropout, scaled
  gptr<const int64_t> lengths;   // [B] or null
  int gate;                      // the gate function's code (cells.cuh, GateCode)
  gptr<T> out;                   // [T, B, D*H]
  gptr<T> h_n;                   // [D, B, H]
  gptr<T> c_n;                   // [D, B, H]: the LSTM's final cell state, else null
  gptr<T> reserve;               // [D, T, B, R*H] or null: the cell's slots (+ h_prev, kKeepPrev)
};

template <class T>
struct BwdArgs {
  int steps, batch, hidden, dirs;
  gptr<const T> grad_out;        // [T, B, D*H]
  gptr<const T> grad_h_n;        // [D, B, H]
  gptr<const T> grad_c_n;        // [D, B, H] or null (LSTM: zeros)
  gptr<const T> h0;              // [D, B, H]: h_prev at a row's first step (kNeedsPrev, !kKeepPrev)
  gptr<const T> c0;              // [D, B, H]: the LSTM's initial cell state, else null
  gptr<const T> w_hh;            // [D, G*H, H]
  gptr<const T> mask;            // [D, B, H] or null
  gptr<const int64_t> lengths;   // [B] or null
  int gate;                      // the gate function's code
  gptr<const T> reserve;         // [D, T, B, R*H] from the forward
  gptr<const T> out;             // [T, B, D*H]: the forward's output (kNeedsOut; kNeedsPrev
                                 // without kKeepPrev: h_prev), else null
  gptr<T> dgx;                   // the gate gradients dL/d(gx), at dgx_at
  Strides dgx_at;
  gptr<T> dghn;                  // [D, T, B, H]: dL/d(gh) of gate kRecBias (GRU: da_n * r), or null
  gptr<T> grad_hx;               // [D, B, H]
  gptr<T> grad_cx;               // [D, B, H]: the LSTM's, else null
};

// ---------------------------------------------------------------- configurations
template <class T_, class Op_, class Cell_, int kHP_, int kWarps_, int kRegTiles_, bool kBackward_,
          int kCluster_ = 1, bool kKeepPrev_ = true>
struct Config {
  using T = T_;
  using Op = Op_;
  using Cell = Cell_;
  using Elem = typename Op::Elem;
  static constexpr bool kBackward = kBackward_, kKeepPrev = kKeepPrev_;
  static constexpr int kGates = Cell::kGates;
  // Reserve values per (row, unit) a step: the cell's slots, then h_prev (kKeepPrev).
  static constexpr int kResSlots = Cell::kSlots + (kKeepPrev ? 1 : 0);
  static constexpr int kHP = kHP_, kWarps = kWarps_, kThreads = 32 * kWarps_, kRows = 16;
  // kCluster CTAs (one SM each) share a tile's rows and split its units: each owns
  // kUnits of them and sends its part of every A tile to all of them.
  static constexpr int kCluster = kCluster_, kUnits = kHP / kCluster;
  static constexpr int kU = kUnits / kWarps, kNJ = kU / 8;
  // Forward: K = HP (the state), N = G gates x the warp's units. Backward: K = G HP
  // (the gate gradients), N = the warp's units.
  static constexpr int kK = kBackward ? kGates * kHP : kHP;
  static constexpr int kKT = kK / Op::kK;
  static constexpr int kCols = kBackward ? kNJ : kGates * kNJ;
  static constexpr int kRegTiles = kRegTiles_;
  static constexpr int kStride = kK + Op::kPad;
  static constexpr int kTiles = (kBackward && Cell::kTwoGemm) ? 1 : 2;
  static constexpr size_t kTileBytes = size_t(kRows) * kStride * sizeof(Elem);
  using Frags = WFrags<kKT, kCols, kRegTiles>;
  static constexpr size_t kWBytesPerWarp = size_t(Frags::kSmemPerWarp) * sizeof(u32x2);
  static constexpr size_t kSmemBytes = kTiles * kTileBytes + kWarps * kWBytesPerWarp;
  static_assert(kU % 8 == 0 && kHP % 16 == 0, "units per warp must be a multiple of 8");
  static_assert(kRegTiles >= 0 && kRegTiles <= kKT, "register tiles");
  static_assert(kTileBytes % 16 == 0, "tiles stay 16-byte aligned");
};

// What a thread owns: accumulator value i of n-tile j is row b0 + g + 8h (h = i / 2),
// unit u(j) + e (e = i % 2) with u(j) = base + 8j + 2t, g = lane / 4, t = lane % 4, and
// base = rank * kUnits + warp * U the first unit of the warp (rank: in the cluster).
// The two units of a pair are adjacent in memory and H is even (the plan sends odd H
// to the per-step path), so one 32-bit (16-bit types) or 64-bit (float) access moves
// a pair, and u(j) < H implies u(j) + 1 < H.
template <class C>
struct Owned {
  int row[2];  // batch rows of h = 0, 1
  int len[2];  // their lengths (0 past B: never active)
  int tile_max;  // the longest length in the CTA's 16 rows
  int u0;      // u(0)
  int H;
  GT_DEV void init(const gptr<const int64_t>& lengths, int b0, int batch, int steps, int hidden,
                   int unit_base, int lane) {
    H = hidden;
    u0 = unit_base + 2 * (lane & 3);
    auto length = [&](int b) { return b >= batch ? 0 : lengths ? int(lengths[b]) : steps; };
    GT_UNROLL for (int h = 0; h < 2; ++h) {
      row[h] = b0 + (lane >> 2) + 8 * h;
      len[h] = length(row[h]);
    }
    tile_max = 0;
    for (int r = 0; r < C::kRows; ++r) {
      const int l = length(b0 + r);
      tile_max = l > tile_max ? l : tile_max;
    }
  }
  GT_DEV int unit(int j) const { return u0 + 8 * j; }
  GT_DEV bool unit_ok(int j) const { return unit(j) < H; }
  GT_DEV bool row_ok(int h) const { return len[h] > 0; }
  GT_DEV bool pair_ok(int j, int h) const { return row_ok(h) && unit_ok(j); }
  GT_DEV bool valid(int j, int i) const { return pair_ok(j, i >> 1); }
  GT_DEV bool active(int h, int t) const { return t < len[h]; }
  // Element index of value (j, i) in a tile with row stride `stride`, columns from col0.
  GT_DEV int tile_index(int j, int i, int stride, int col0, int lane) const {
    return ((lane >> 2) + 8 * (i >> 1)) * stride + col0 + unit(j) + (i & 1);
  }
  // Offset of this thread's first pair in a [rows, stride] matrix, row h.
  GT_DEV int offset(int h, int stride) const { return row[h] * stride + u0; }
};

template <class T> GT_DEV Pair<T> zero_pair() {
  const T z = from_float<T>(0.f);
  return Pair<T>{z, z};
}
template <class T> GT_DEV float lo_of(const Pair<T>& v) { return to_float(v.lo); }
template <class T> GT_DEV float hi_of(const Pair<T>& v) { return to_float(v.hi); }

// Each warp's share of W_hh [G*H, H], into fragments: forward B[k][n] = W_hh[gate(n) H +
// unit(n)][k], backward B[k][n] = W_hh[gate(k) H + unit(k)][n] (gate(x) = x / HP,
// unit(x) = x % HP).
template <class C>
GT_DEV void load_w(typename C::Frags& w, const gptr<const typename C::T>& w_hh, int H, int unit_base,
                   int lane) {
  auto at = [&](int row_gate, int row_unit, int col) -> float {
    return (row_unit < H && col < H) ? to_float(w_hh[(int64_t(row_gate) * H + row_unit) * H + col]) : 0.f;
  };
  auto fwd = [&](int k, int n) { return at(n / C::kHP, n % C::kHP, k); };
  auto bwd = [&](int k, int n) { return at(k / C::kHP, k % C::kHP, n); };
  GT_UNROLL for (int kt = 0; kt < C::kKT; ++kt) {
    GT_UNROLL for (int c = 0; c < C::kCols; ++c) {
      uint32_t b[2];
      if constexpr (C::kBackward) {
        make_b<typename C::Op>(b, bwd, kt * C::Op::kK, unit_base + 8 * c, lane);
      } else {
        const int q = c / C::kNJ, j = c % C::kNJ;
        make_b<typename C::Op>(b, fwd, kt * C::Op::kK, q * C::kHP + unit_base + 8 * j, lane);
      }
      w.set(kt, c, b, lane);
    }
  }
}

// acc[c] += A (tile, k-tiles [kt0, kt1)) x W (n-tiles [c0, c0 + count)).
template <class C, int kt0, int kt1, int c0, int count>
GT_DEV void gemm(float (&acc)[count][4], sptr<typename C::Elem> tile, const typename C::Frags& w,
                 int lane) {
  GT_UNROLL for (int kt = kt0; kt < kt1; ++kt) {
    uint32_t a[4];
    load_a<typename C::Op>(a, tile, C::kStride, kt * C::Op::kK, lane);
    GT_UNROLL for (int c = 0; c < count; ++c) {
      uint32_t b[2];
      w.get(b, kt, c0 + c, lane);
      mma<typename C::Op>(acc[c], a, b);
    }
  }
}

template <int N>
GT_DEV void fill(float (&a)[N][4], float v) {
  GT_UNROLL for (int c = 0; c < N; ++c)
    GT_UNROLL for (int i = 0; i < 4; ++i) a[c][i] = v;
}

// The CTA's shared memory: the A tile(s), then each warp's W fragments.
template <class C>
struct Smem {
  sptr<typename C::Elem> tiles;  // kTiles x [16][kStride]
  sptr<u32x2> w;                 // this warp's fragments
  GT_DEV Smem(const sptr<unsigned char>& base, int warp) {
    tiles = smem_carve<typename C::Elem>(base, 0, size_t(C::kTiles) * C::kRows * C::kStride);
    w = smem_carve<u32x2>(base, C::kTiles * C::kTileBytes + warp * C::kWBytesPerWarp,
                          C::Frags::kSmemPerWarp);
  }
  GT_DEV sptr<typename C::Elem> tile(int k) const { return tiles + k * (C::kRows * C::kStride); }
};

// A pair of operands into the A tile of every CTA of the cluster (just this one
// without a cluster): each CTA computes its units' part of the next GEMM's A.
template <class C>
GT_DEV void put_all(sptr<typename C::Elem> tile, int idx, float v0, float v1) {
  if constexpr (C::kCluster == 1) {
    put_pair<typename C::Op>(tile, idx, v0, v1);
  } else {
    GT_UNROLL for (int r = 0; r < C::kCluster; ++r) put_pair<typename C::Op>(map_rank(tile, r), idx, v0, v1);
  }
}

// The barrier that makes a step's A tile whole: the block's, or the cluster's.
template <class C>
GT_DEV void step_barrier() {
  if constexpr (C::kCluster == 1) __syncthreads();
  else cluster_sync();
}

// Which tile of rows and which share of units this CTA runs.
template <class C>
struct Place {
  int d, b0, rank, unit_base;
  GT_DEV Place(int warp) {
    d = int(blockIdx.y);
    rank = C::kCluster == 1 ? 0 : int(cluster_rank());
    b0 = int(blockIdx.x) / C::kCluster * C::kRows;
    unit_base = rank * C::kUnits + warp * C::kU;
  }
};

// What both kernels set up first: shared memory, where the CTA works, the warp's W_hh
// fragments and what the thread owns. Args: FwdArgs or BwdArgs.
template <class C>
struct Prologue {
  int lane, warp;
  Smem<C> smem;
  Place<C> at;
  typename C::Frags w;
  Owned<C> own;
  template <class Args>
  GT_DEV Prologue(const sptr<unsigned char>& raw, const Args& p)
      : lane(int(threadIdx.x & 31u)), warp(int(threadIdx.x >> 5)), smem(raw, warp), at(warp) {
    w.smem = smem.w;
    load_w<C>(w, p.w_hh + int64_t(at.d) * C::kGates * p.hidden * p.hidden, p.hidden, at.unit_base, lane);
    own.init(p.lengths, at.b0, p.batch, p.steps, p.hidden, at.unit_base, lane);
  }
};

// ---------------------------------------------------------------- forward
template <class C>
GT_DEV void forward_steps(FwdArgs<typename C::T> p) {
  using T = typename C::T;
  using Elem = typename C::Elem;
  using Cell = typename C::Cell;
  constexpr int NJ = C::kNJ, G = C::kGates, S = Cell::kSlots, R = C::kResSlots;
  constexpr int SA = S > 0 ? S : 1;  // (arrays of the slots hold at least one)
  GT_DYNAMIC_SMEM(smem_raw);
  Prologue<C> pro(smem_raw, p);
  const int lane = pro.lane, d = pro.at.d;
  const Smem<C>& smem = pro.smem;
  const typename C::Frags& w = pro.w;
  const Owned<C>& own = pro.own;
  const int H = p.hidden, B = p.batch, Tn = p.steps, D = p.dirs;
  // Offsets of this thread's first pair, per row half: in out (row stride D*H, this
  // direction's columns), in a reserve step (R*H), in a gx step, in [B, H].
  int o_out[2], o_res[2], o_gx[2], o_bh[2];
  GT_UNROLL for (int h = 0; h < 2; ++h) {
    o_out[h] = own.offset(h, D * H) + d * H;
    o_res[h] = own.offset(h, R * H);
    o_gx[h] = own.offset(h, p.gx_at.row);
    o_bh[h] = own.offset(h, H) + d * B * H;
  }
  float hp[NJ][4], cs[NJ][4], mk[NJ][4], brec[NJ][2];  // cs: the cell state (Cell::kHasC)
  GT_UNROLL for (int j = 0; j < NJ; ++j) {
    GT_UNROLL for (int e = 0; e < 2; ++e)
      brec[j][e] = (Cell::kRecBias >= 0 && p.b_rec && own.unit_ok(j)) ? to_float(p.b_rec[d * H + own.unit(j) + e]) : 0.f;
    GT_UNROLL for (int i = 0; i < 4; ++i) {
      const bool v = own.valid(j, i);
      const int e = o_bh[i >> 1] + 8 * j + (i & 1);
      hp[j][i] = v ? to_float(p.h0[e]) : 0.f;
      cs[j][i] = Cell::kHasC && v ? to_float(p.c0[e]) : 0.f;
      mk[j][i] = !v ? 0.f : p.mask ? to_float(p.mask[e]) : 1.f;
    }
  }
  auto write_state_tile = [&](sptr<Elem> t) {  // h~ = h * mask, the next GEMM's A operand
    GT_UNROLL for (int j = 0; j < NJ; ++j)
      GT_UNROLL for (int i = 0; i < 4; i += 2)
        put_all<C>(t, own.tile_index(j, i, C::kStride, 0, lane), hp[j][i] * mk[j][i],
                   hp[j][i + 1] * mk[j][i + 1]);
  };
  write_state_tile(smem.tile(0));

  // This thread's gx pairs of one step, raw: [gate][j][h]. Units are paired and H is
  // even, so every pair is an aligned, in-bounds access.
  Pair<T> gx[G][NJ][2];
  const gptr<const T> gx_dir = p.gx + int64_t(d) * p.gx_at.dir;
  auto load_gx = [&](int s) {
    const int t = d == 0 ? s : Tn - 1 - s;
    const gptr<const T> base = gx_dir + t * p.gx_at.step;
    GT_UNROLL for (int q = 0; q < G; ++q)
      GT_UNROLL for (int j = 0; j < NJ; ++j)
        GT_UNROLL for (int h = 0; h < 2; ++h)
          gx[q][j][h] = own.active(h, t) && own.unit_ok(j) ? load_pair(base, o_gx[h] + q * p.gx_at.gate + 8 * j)
                                                           : zero_pair<T>();
  };
  load_gx(0);
  step_barrier<C>();

  const int64_t out_step = int64_t(B) * D * H, res_step = int64_t(B) * R * H;
  const gptr<T> res_dir = p.reserve ? p.reserve + int64_t(d) * Tn * res_step : gptr<T>();
  int cur = 0;  // the state tile to read (one GEMM a step double-buffers it); only a step
                // that runs flips it: skipped steps (past every length) write no tile
  for (int s = 0; s < Tn; ++s) {
    const int t = d == 0 ? s : Tn - 1 - s;
    // Past every row's length the tile runs no GEMM and no barrier (a uniform branch):
    // its outputs are zeros and its state stays.
    const bool run = t < own.tile_max;
    const gptr<T> out = p.out + t * out_step;
    const gptr<T> res = p.reserve ? res_dir + t * res_step : gptr<T>();
    // Stores one pair, zeros where the row is past its length: the output and, when
    // backward will run, the reserve row (the cell's slots, then h_prev).
    auto store = [&](int j, int h, bool on, const float (&v)[1 + R][2]) {
      if (!own.pair_ok(j, h)) return;
      auto at = [&](int k, int e) { return on ? v[k][e] : 0.f; };
      store_pair(out, o_out[h] + 8 * j, at(0, 0), at(0, 1));
      if (p.reserve)
        GT_UNROLL for (int slot = 0; slot < R; ++slot)
          store_pair(res, o_res[h] + slot * H + 8 * j, at(1 + slot, 0), at(1 + slot, 1));
    };
    auto gxv = [&](int q, int j, int i) {
      return (i & 1) ? hi_of(gx[q][j][i >> 1]) : lo_of(gx[q][j][i >> 1]);
    };
    if constexpr (!Cell::kTwoGemm) {
      float acc[G * NJ][4];
      fill(acc, 0.f);
      if constexpr (Cell::kRecBias >= 0)
        GT_UNROLL for (int j = 0; j < NJ; ++j)
          GT_UNROLL for (int i = 0; i < 4; ++i) acc[Cell::kRecBias * NJ + j][i] = brec[j][i & 1];
      if (run) gemm<C, 0, C::kKT, 0, G * NJ>(acc, smem.tile(cur), w, lane);
      GT_UNROLL for (int j = 0; j < NJ; ++j) {
        GT_UNROLL for (int h = 0; h < 2; ++h) {
          const bool on = run && own.active(h, t);
          float v[1 + R][2];  // h', the slots, h_prev
          GT_UNROLL for (int e = 0; e < 2; ++e) {
            const int i = 2 * h + e;
            float pre[G], g[G], sl[SA];
            GT_UNROLL for (int q = 0; q < G; ++q) {
              pre[q] = acc[q * NJ + j][i];
              g[q] = gxv(q, j, i);
            }
            float c = cs[j][i];
            const float hn = Cell::forward(pre, g, hp[j][i], c, p.gate, sl);
            v[0][e] = hn;
            GT_UNROLL for (int k = 0; k < S; ++k) v[1 + k][e] = sl[k];
            if constexpr (C::kKeepPrev) v[R][e] = hp[j][i];
            hp[j][i] = on ? hn : hp[j][i];
            cs[j][i] = on ? c : cs[j][i];
          }
          store(j, h, on, v);
        }
      }
      if (s + 1 < Tn) load_gx(s + 1);  // lands during the next step's GEMM
      if (run) {
        cur ^= 1;
        write_state_tile(smem.tile(cur));
        step_barrier<C>();
      }
    } else {  // GRU, reset_after=false: r first, then the candidate's GEMM on q = r * h~
      float acc[2 * NJ][4], acc_n[NJ][4], r[NJ][4], z[NJ][4], qv[NJ][4];
      fill(acc, 0.f);
      fill(acc_n, 0.f);
      if (run) gemm<C, 0, C::kKT, 0, 2 * NJ>(acc, smem.tile(0), w, lane);
      GT_UNROLL for (int j = 0; j < NJ; ++j)
        GT_UNROLL for (int i = 0; i < 4; ++i) {
          r[j][i] = gate_fn(acc[j][i] + gxv(0, j, i), p.gate);
          z[j][i] = gate_fn(acc[NJ + j][i] + gxv(1, j, i), p.gate);
          qv[j][i] = own.active(i >> 1, t) ? r[j][i] * hp[j][i] * mk[j][i] : 0.f;
        }
      if (run) {
        GT_UNROLL for (int j = 0; j < NJ; ++j)
          GT_UNROLL for (int i = 0; i < 4; i += 2)
            put_all<C>(smem.tile(1), own.tile_index(j, i, C::kStride, 0, lane), qv[j][i], qv[j][i + 1]);
        step_barrier<C>();
        gemm<C, 0, C::kKT, 2 * NJ, NJ>(acc_n, smem.tile(1), w, lane);
      }
      GT_UNROLL for (int j = 0; j < NJ; ++j) {
        GT_UNROLL for (int h = 0; h < 2; ++h) {
          const bool on = run && own.active(h, t);
          float v[1 + R][2];  // h, r, z, n, q (, h_prev)
          GT_UNROLL for (int e = 0; e < 2; ++e) {
            const int i = 2 * h + e;
            const float n = Cell::candidate(gxv(2, j, i) + acc_n[j][i]);
            const float hn = Cell::blend(z[j][i], n, hp[j][i]);
            v[0][e] = hn; v[1][e] = r[j][i]; v[2][e] = z[j][i]; v[3][e] = n; v[4][e] = qv[j][i];
            if constexpr (C::kKeepPrev) v[R][e] = hp[j][i];
            hp[j][i] = on ? hn : hp[j][i];
          }
          store(j, h, on, v);
        }
      }
      if (s + 1 < Tn) load_gx(s + 1);
      if (run) {
        write_state_tile(smem.tile(0));
        step_barrier<C>();
      }
    }
  }
  // No CTA of a cluster leaves while another may still write into its shared memory.
  if constexpr (C::kCluster > 1) cluster_sync();
  GT_UNROLL for (int j = 0; j < NJ; ++j)
    GT_UNROLL for (int h = 0; h < 2; ++h)
      if (own.pair_ok(j, h)) {
        store_pair(p.h_n, o_bh[h] + 8 * j, hp[j][2 * h], hp[j][2 * h + 1]);
        if constexpr (Cell::kHasC) store_pair(p.c_n, o_bh[h] + 8 * j, cs[j][2 * h], cs[j][2 * h + 1]);
      }
}

// ---------------------------------------------------------------- backward
template <class C>
GT_DEV void backward_steps(BwdArgs<typename C::T> p) {
  using T = typename C::T;
  using Cell = typename C::Cell;
  constexpr int NJ = C::kNJ, HP = C::kHP, KT = C::kKT, G = C::kGates, S = Cell::kSlots, R = C::kResSlots;
  constexpr int SA = S > 0 ? S : 1;
  GT_DYNAMIC_SMEM(smem_raw);
  Prologue<C> pro(smem_raw, p);
  const int lane = pro.lane, d = pro.at.d;
  const Smem<C>& smem = pro.smem;
  const typename C::Frags& w = pro.w;
  const Owned<C>& own = pro.own;
  const int H = p.hidden, B = p.batch, Tn = p.steps, D = p.dirs;
  int o_out[2], o_res[2], o_dgx[2], o_bh[2];
  GT_UNROLL for (int h = 0; h < 2; ++h) {
    o_out[h] = own.offset(h, D * H) + d * H;
    o_res[h] = own.offset(h, R * H);
    o_dgx[h] = own.offset(h, p.dgx_at.row);
    o_bh[h] = own.offset(h, H);
  }
  float dhc[NJ][4], dcc[NJ][4], mk[NJ][4];  // dcc: dL/dc (Cell::kHasC)
  GT_UNROLL for (int j = 0; j < NJ; ++j) {
    GT_UNROLL for (int i = 0; i < 4; ++i) {
      const bool v = own.valid(j, i);
      const int e = d * B * H + o_bh[i >> 1] + 8 * j + (i & 1);
      dhc[j][i] = v ? to_float(p.grad_h_n[e]) : 0.f;
      dcc[j][i] = Cell::kHasC && v && p.grad_c_n ? to_float(p.grad_c_n[e]) : 0.f;
      mk[j][i] = !v ? 0.f : p.mask ? to_float(p.mask[e]) : 1.f;
    }
  }

  // One step's pairs for this thread, raw: [what][j][h]: grad_output, the reserve's
  // R values (the cell's slots, then h_prev with kKeepPrev), the output (kNeedsOut),
  // c_prev (kHasC: the previous step's c slot, the cell's last, or c0 at a row's first
  // step), h_prev (kNeedsPrev without kKeepPrev: the previous step's output, or h0).
  constexpr bool kPrevFromOut = Cell::kNeedsPrev && !C::kKeepPrev;
  constexpr int kGout = 0, kRes = 1, kOut = 1 + R, kCprev = kOut + (Cell::kNeedsOut ? 1 : 0);
  constexpr int kHprevOut = kCprev + (Cell::kHasC ? 1 : 0);
  constexpr int kLoads = kHprevOut + (kPrevFromOut ? 1 : 0);
  constexpr int kHprev = C::kKeepPrev ? kRes + S : kHprevOut;  // where h_prev is
  Pair<T> pf[kLoads][NJ][2];
  const int64_t out_step = int64_t(B) * D * H, res_step = int64_t(B) * R * H, bh_step = int64_t(B) * H;
  const gptr<const T> res_dir = R > 0 ? p.reserve + int64_t(d) * Tn * res_step : gptr<const T>();
  auto time_of = [&](int s) { return d == 0 ? Tn - 1 - s : s; };
  auto load_step = [&](int s) {
    const int t = time_of(s);
    const gptr<const T> go = p.grad_out + t * out_step;
    const gptr<const T> res = R > 0 ? res_dir + t * res_step : gptr<const T>();
    GT_UNROLL for (int j = 0; j < NJ; ++j)
      GT_UNROLL for (int h = 0; h < 2; ++h) {
        const bool on = own.active(h, t) && own.unit_ok(j);
        pf[kGout][j][h] = on ? load_pair(go, o_out[h] + 8 * j) : zero_pair<T>();
        GT_UNROLL for (int slot = 0; slot < R; ++slot)
          pf[kRes + slot][j][h] = on ? load_pair(res, o_res[h] + slot * H + 8 * j) : zero_pair<T>();
        if constexpr (Cell::kNeedsOut)
          pf[kOut][j][h] = on ? load_pair(p.out + t * out_step, o_out[h] + 8 * j) : zero_pair<T>();
        const int tp = d == 0 ? t - 1 : t + 1;  // the step before, in this direction
        const bool first = d == 0 ? t == 0 : tp >= own.len[h];
        if constexpr (Cell::kHasC)
          pf[kCprev][j][h] = !on ? zero_pair<T>()
                             : first ? load_pair(p.c0, d * B * H + o_bh[h] + 8 * j)
                                     : load_pair(res_dir + tp * res_step, o_res[h] + (S - 1) * H + 8 * j);
        if constexpr (kPrevFromOut)
          pf[kHprevOut][j][h] = !on ? zero_pair<T>()
                                : first ? load_pair(p.h0, d * B * H + o_bh[h] + 8 * j)
                                        : load_pair(p.out + tp * out_step, o_out[h] + 8 * j);
      }
  };
  auto val = [&](int k, int j, int i) {
    return (i & 1) ? hi_of(pf[k][j][i >> 1]) : lo_of(pf[k][j][i >> 1]);
  };
  load_step(0);

  const gptr<T> dgx_dir = p.dgx + int64_t(d) * p.dgx_at.dir;
  const gptr<T> dghn_dir = p.dghn ? p.dghn + int64_t(d) * Tn * bh_step : gptr<T>();
  for (int s = 0; s < Tn; ++s) {
    const int t = time_of(s);
    const bool run = t < own.tile_max;  // uniform: past every length, dh passes through
    const gptr<T> dgx = dgx_dir + t * p.dgx_at.step;
    const gptr<T> dghn = p.dghn ? dghn_dir + t * bh_step : gptr<T>();
    // The gate gradients of one pair: dgx (G of them) and, where asked, dghn = the
    // recurrent gradient of gate kRecBias (zeros past a row's length, as the values are).
    auto put_grads = [&](int j, int h, const float (&da)[G][2], const float (&dg)[G][2]) {
      if (!own.pair_ok(j, h)) return;
      GT_UNROLL for (int q = 0; q < G; ++q)
        store_pair(dgx, o_dgx[h] + q * p.dgx_at.gate + 8 * j, da[q][0], da[q][1]);
      if constexpr (Cell::kRecBias >= 0)
        if (p.dghn) store_pair(dghn, o_bh[h] + 8 * j, dg[Cell::kRecBias][0], dg[Cell::kRecBias][1]);
    };
    if constexpr (!Cell::kTwoGemm) {
      // The cell's backward to the gate gradients, which go to dgx and (dg) into the
      // tile of the one GEMM back to h; rows past their length (and padding) give zeros
      // and carry dh through.
      const sptr<typename C::Elem> tl = smem.tile(s & 1);
      float dpart[NJ][4];
      GT_UNROLL for (int j = 0; j < NJ; ++j) {
        GT_UNROLL for (int h = 0; h < 2; ++h) {
          float da[G][2], dg[G][2];
          GT_UNROLL for (int e = 0; e < 2; ++e) {
            const int i = 2 * h + e;
            const bool on = run && own.active(h, t) && own.unit_ok(j);
            const float dh = dhc[j][i] + val(kGout, j, i);
            float sl[SA], a[G], g[G];
            GT_UNROLL for (int k = 0; k < S; ++k) sl[k] = val(kRes + k, j, i);
            const float y = Cell::kNeedsOut ? val(kOut, j, i) : 0.f;
            const float hprev = Cell::kNeedsPrev ? val(kHprev, j, i) : 0.f;
            const float cprev = Cell::kHasC ? val(kCprev, j, i) : 0.f;
            float dc = dcc[j][i];
            const float dp = Cell::backward(dh, y, hprev, cprev, dc, p.gate, sl, a, g);
            GT_UNROLL for (int q = 0; q < G; ++q) {
              da[q][e] = on ? a[q] : 0.f;
              dg[q][e] = on ? g[q] : 0.f;
            }
            dpart[j][i] = on ? dp : dhc[j][i];
            dcc[j][i] = on ? dc : dcc[j][i];
          }
          put_grads(j, h, da, dg);
          if (run)
            GT_UNROLL for (int q = 0; q < G; ++q)
              put_all<C>(tl, own.tile_index(j, 2 * h, C::kStride, q * HP, lane), dg[q][0], dg[q][1]);
        }
      }
      if (s + 1 < Tn) load_step(s + 1);  // lands during the barrier and the GEMM
      float acc[NJ][4];
      fill(acc, 0.f);
      if (run) {
        step_barrier<C>();
        gemm<C, 0, KT, 0, NJ>(acc, tl, w, lane);
      }
      GT_UNROLL for (int j = 0; j < NJ; ++j)
        GT_UNROLL for (int i = 0; i < 4; ++i) dhc[j][i] = dpart[j][i] + acc[j][i] * mk[j][i];
    } else {  // GRU, reset_after=false: da_n first, then dq = da_n W_hn gives da_r
      constexpr int kR = kRes, kZ = kRes + 1, kN = kRes + 2;
      float dpart[NJ][4], da_z[NJ][4], da_n[NJ][4], r[NJ][4];
      GT_UNROLL for (int j = 0; j < NJ; ++j)
        GT_UNROLL for (int i = 0; i < 4; ++i) {
          const bool on = run && own.active(i >> 1, t) && own.unit_ok(j);
          const float dh = dhc[j][i] + val(kGout, j, i), z = val(kZ, j, i), n = val(kN, j, i);
          da_n[j][i] = on ? dh * (1.f - z) * (1.f - n * n) : 0.f;
          da_z[j][i] = on ? dh * (val(kHprev, j, i) - n) * gate_grad(z, p.gate) : 0.f;
          dpart[j][i] = on ? dh * z : dhc[j][i];
          r[j][i] = val(kR, j, i);
        }
      const sptr<typename C::Elem> tl = smem.tile(0);
      float hm[NJ][4];  // kept across the reload of pf
      GT_UNROLL for (int j = 0; j < NJ; ++j) {
        GT_UNROLL for (int i = 0; i < 4; ++i) hm[j][i] = val(kHprev, j, i) * mk[j][i];
        if (run)
          GT_UNROLL for (int i = 0; i < 4; i += 2)
            put_all<C>(tl, own.tile_index(j, i, C::kStride, 2 * HP, lane), da_n[j][i], da_n[j][i + 1]);
      }
      if (s + 1 < Tn) load_step(s + 1);
      float dq[NJ][4], acc[NJ][4];
      fill(dq, 0.f);
      fill(acc, 0.f);
      if (run) {
        step_barrier<C>();
        gemm<C, 2 * KT / 3, KT, 0, NJ>(dq, tl, w, lane);  // dq = da_n W_hn
      }
      GT_UNROLL for (int j = 0; j < NJ; ++j) {
        float da_r[4];
        GT_UNROLL for (int i = 0; i < 4; ++i) {
          const bool on = run && own.active(i >> 1, t) && own.unit_ok(j);
          da_r[i] = on ? dq[j][i] * hm[j][i] * gate_grad(r[j][i], p.gate) : 0.f;
          if (on) dpart[j][i] += dq[j][i] * r[j][i] * mk[j][i];
        }
        GT_UNROLL for (int h = 0; h < 2; ++h) {
          const float g[3][2] = {{da_r[2 * h], da_r[2 * h + 1]}, {da_z[j][2 * h], da_z[j][2 * h + 1]},
                                 {da_n[j][2 * h], da_n[j][2 * h + 1]}};
          put_grads(j, h, g, g);
        }
        if (run)
          GT_UNROLL for (int i = 0; i < 4; i += 2) {
            put_all<C>(tl, own.tile_index(j, i, C::kStride, 0, lane), da_r[i], da_r[i + 1]);
            put_all<C>(tl, own.tile_index(j, i, C::kStride, HP, lane), da_z[j][i], da_z[j][i + 1]);
          }
      }
      if (run) {
        step_barrier<C>();
        gemm<C, 0, 2 * KT / 3, 0, NJ>(acc, tl, w, lane);  // [da_r, da_z] W_hrz
      }
      GT_UNROLL for (int j = 0; j < NJ; ++j)
        GT_UNROLL for (int i = 0; i < 4; ++i) dhc[j][i] = dpart[j][i] + acc[j][i] * mk[j][i];
    }
  }
  if constexpr (C::kCluster > 1) cluster_sync();  // as in forward
  GT_UNROLL for (int j = 0; j < NJ; ++j)
    GT_UNROLL for (int h = 0; h < 2; ++h)
      if (own.pair_ok(j, h)) {
        store_pair(p.grad_hx, d * B * H + o_bh[h] + 8 * j, dhc[j][2 * h], dhc[j][2 * h + 1]);
        if constexpr (Cell::kHasC)
          store_pair(p.grad_cx, d * B * H + o_bh[h] + 8 * j, dcc[j][2 * h], dcc[j][2 * h + 1]);
      }
}

// ---------------------------------------------------------------- the kernels
// A cluster kernel (HP = 256) in a pass for a GPU without clusters (nvcc's sm_80 code) is
// a trap alone: the plan never launches it there (gru_plan.h), and its body would only
// cost compile time and registers.
template <class C>
__global__ void __launch_bounds__(C::kThreads, 1) gru_forward(FwdArgs<typename C::T> p) {
  if constexpr (C::kCluster > 1 && !GT_HAS_CLUSTERS) __trap();
  else forward_steps<C>(p);
}

template <class C>
__global__ void __launch_bounds__(C::kThreads, 1) gru_backward(BwdArgs<typename C::T> p) {
  if constexpr (C::kCluster > 1 && !GT_HAS_CLUSTERS) __trap();
  else backward_steps<C>(p);
}

}  // namespace gru
GT_END_NAMESPACE
