// The persistent fused GRU kernels: one launch runs a whole layer (both directions)
// over the whole sequence, forward or backward. One source for nvcc and the emulator.
//
// Letters as in csrc/gru.h: T steps, B rows, H hidden units, D directions; HP is H
// padded to the kernel's size (a multiple of 16), G = 3 gates.
//
// Work split (see csrc/README.md, "CUDA design"):
//   * A CTA owns 16 batch rows (one m16 tile) of one direction for all T steps:
//     grid = (ceil(B / 16), D). Nothing is exchanged between CTAs.
//   * Each of the CTA's warps owns U = HP / warps hidden units, for all three gates,
//     so a thread's r, z and n pre-activations for one (row, unit) land in the same
//     registers of its mma accumulators: the cell math needs no exchange.
//   * W_hh stays on chip for all T steps as mma B fragments: the first kRegTiles
//     k-tiles in registers, the rest (when registers run out) in shared memory, each
//     lane's fragments contiguous so a lane reads them with one 64-bit load.
//   * The state h (fp32) lives in the registers of the thread that computes it; only
//     h~ = h * mask goes through shared memory, in the mma operand type, as the next
//     step's A tile. reset_after=true: one double-buffered tile, one __syncthreads a
//     step. reset_after=false: the candidate needs r first, so two GEMMs and two
//     barriers a step (h~ tile, then q = r * h~ tile).
//   * Backward is the same machine in reverse: W_hh as the [G -> H] operand, the gate
//     gradients (dgh) through a shared tile, dh carried in fp32 registers.
// Every per-step global load is issued one step ahead, so it lands while the GEMM
// and the barrier run.
#pragma once

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

// ---------------------------------------------------------------- math
// Derivatives are taken from the activation's output (d sigmoid = y (1 - y)).
GT_DEV float sigmoid(float x) { return 1.f / (1.f + __expf(-x)); }
GT_DEV float tanh_fast(float x) { return 2.f / (1.f + __expf(-2.f * x)) - 1.f; }

// ---------------------------------------------------------------- arguments
template <class T>
struct FwdArgs {
  int steps, batch, hidden, dirs;
  gptr<const T> gx;              // [D, T, B, 3*HP]: x W_ih^T + b_ih (+ b_hr, b_hz); padded units 0
  gptr<const T> w_hh;            // [D, 3H, H]
  gptr<const T> b_hn;            // [D, H] or null (reset_after=true only)
  gptr<const T> h0;              // [D, B, H]
  gptr<const T> mask;            // [D, B, H] or null: recurrent dropout, scaled
  gptr<const int64_t> lengths;   // [B] or null
  gptr<T> out;                   // [T, B, D*H]
  gptr<T> h_n;                   // [D, B, H]
  gptr<T> reserve;               // [D, T, B, 5H] or null: r, z, n, aux, h_prev
};

template <class T>
struct BwdArgs {
  int steps, batch, hidden, dirs;
  gptr<const T> grad_out;        // [T, B, D*H]
  gptr<const T> grad_h_n;        // [D, B, H]
  gptr<const T> w_hh;            // [D, 3H, H]
  gptr<const T> mask;            // [D, B, H] or null
  gptr<const int64_t> lengths;   // [B] or null
  gptr<const T> reserve;         // [D, T, B, 5H] from the forward
  gptr<T> dgx;                   // [D, T, B, 3H]: da_r, da_z, da_n
  gptr<T> dghn;                  // [D, T, B, H]: da_n * r (reset_after=true), else null
  gptr<T> grad_hx;               // [D, B, H]
};

// ---------------------------------------------------------------- configurations
template <class T_, class Op_, int kHP_, int kWarps_, int kRegTiles_, bool kResetAfter_, bool kBackward_>
struct Config {
  using T = T_;
  using Op = Op_;
  using Elem = typename Op::Elem;
  static constexpr bool kResetAfter = kResetAfter_, kBackward = kBackward_;
  static constexpr int kHP = kHP_, kWarps = kWarps_, kThreads = 32 * kWarps_, kRows = 16;
  static constexpr int kU = kHP / kWarps, kNJ = kU / 8;
  // Forward: K = HP (the state), N = 3 gates x the warp's units. Backward: K = 3 HP
  // (the gate gradients), N = the warp's units.
  static constexpr int kK = kBackward ? 3 * kHP : kHP;
  static constexpr int kKT = kK / Op::kK;
  static constexpr int kCols = kBackward ? kNJ : 3 * kNJ;
  static constexpr int kRegTiles = kRegTiles_;
  static constexpr int kStride = kK + Op::kPad;
  static constexpr int kTiles = (kBackward && !kResetAfter) ? 1 : 2;
  static constexpr size_t kTileBytes = size_t(kRows) * kStride * sizeof(Elem);
  using Frags = WFrags<kKT, kCols, kRegTiles>;
  static constexpr size_t kWBytesPerWarp = size_t(Frags::kSmemPerWarp) * sizeof(u32x2);
  static constexpr size_t kSmemBytes = kTiles * kTileBytes + kWarps * kWBytesPerWarp;
  static_assert(kU % 8 == 0 && kHP % 16 == 0, "units per warp must be a multiple of 8");
  static_assert(kRegTiles >= 0 && kRegTiles <= kKT, "register tiles");
  static_assert(kTileBytes % 16 == 0, "tiles stay 16-byte aligned");
};

// The (row, unit) of each accumulator value a thread holds: value i of n-tile j is
// row g (+8 for i >= 2), unit warp*U + 8j + 2t + (i & 1), with g = lane / 4, t = lane % 4.
template <class C>
struct Position {
  int row[2];  // batch row of i < 2, i >= 2 (-1: past B)
  int unit[C::kNJ][2];
  GT_DEV void init(int b0, int batch, int hidden, int warp, int lane) {
    const int g = lane >> 2, t = lane & 3;
    row[0] = b0 + g < batch ? b0 + g : -1;
    row[1] = b0 + g + 8 < batch ? b0 + g + 8 : -1;
    GT_UNROLL for (int j = 0; j < C::kNJ; ++j) {
      const int u = warp * C::kU + 8 * j + 2 * t;
      unit[j][0] = u < hidden ? u : -1;
      unit[j][1] = u + 1 < hidden ? u + 1 : -1;
    }
  }
  GT_DEV int b(int i) const { return row[i >> 1]; }
  GT_DEV int u(int j, int i) const { return unit[j][i & 1]; }
  GT_DEV bool valid(int j, int i) const { return row[i >> 1] >= 0 && unit[j][i & 1] >= 0; }
  // Element index of value (j, i) in a tile whose row stride is `stride`, at column base `col0`.
  GT_DEV int tile_index(int j, int i, int stride, int col0, int warp, int lane) const {
    const int g = lane >> 2, t = lane & 3;
    return (g + ((i >> 1) << 3)) * stride + col0 + warp * C::kU + 8 * j + 2 * t + (i & 1);
  }
};

// Each row's length (0 for rows past B) and the tile's longest.
struct Lengths {
  int row[2];
  int tile_max;
  GT_DEV void init(const gptr<const int64_t>& lengths, int b0, int batch, int steps, int lane) {
    const int g = lane >> 2;
    auto len = [&](int b) { return b >= batch ? 0 : lengths ? int(lengths[b]) : steps; };
    row[0] = len(b0 + g);
    row[1] = len(b0 + g + 8);
    tile_max = 0;
    for (int r = 0; r < 16; ++r) tile_max = max_int(tile_max, len(b0 + r));
  }
  GT_DEV static int max_int(int a, int b) { return a > b ? a : b; }
  GT_DEV bool active(int i, int t) const { return t < row[i >> 1]; }
};

// Each block's share of W_hh, into fragments: forward B[k][n] = W_hh[gate(n) H + unit(n)][k],
// backward B[k][n] = W_hh[gate(k) H + unit(k)][n] (gate(x) = x / HP, unit(x) = x % HP).
template <class C>
GT_DEV void load_w(typename C::Frags& w, const gptr<const typename C::T>& w_hh, int H, int warp, int lane) {
  auto at = [&](int row_gate, int row_unit, int col) -> float {
    return (row_unit < H && col < H) ? to_float(w_hh[(int64_t(row_gate) * H + row_unit) * H + col]) : 0.f;
  };
  auto fwd = [&](int k, int n) { return at(n / C::kHP, n % C::kHP, k); };
  auto bwd = [&](int k, int n) { return at(k / C::kHP, k % C::kHP, n); };
  GT_UNROLL for (int kt = 0; kt < C::kKT; ++kt) {
    GT_UNROLL for (int c = 0; c < C::kCols; ++c) {
      uint32_t b[2];
      if constexpr (C::kBackward) {
        make_b<typename C::Op>(b, bwd, kt * C::Op::kK, warp * C::kU + 8 * c, lane);
      } else {
        const int q = c / C::kNJ, j = c % C::kNJ;
        make_b<typename C::Op>(b, fwd, kt * C::Op::kK, q * C::kHP + warp * C::kU + 8 * j, lane);
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

// ---------------------------------------------------------------- forward
template <class C>
__global__ void __launch_bounds__(C::kThreads, 1) gru_forward(FwdArgs<typename C::T> p) {
  using T = typename C::T;
  using Op = typename C::Op;
  using Elem = typename C::Elem;
  constexpr int NJ = C::kNJ, HP = C::kHP;
  GT_DYNAMIC_SMEM(smem);
  sptr<Elem> tile[2];
  tile[0] = smem_carve<Elem>(smem, 0, size_t(C::kRows) * C::kStride);
  tile[1] = smem_carve<Elem>(smem, C::kTileBytes, size_t(C::kRows) * C::kStride);
  const int lane = int(threadIdx.x & 31u), warp = int(threadIdx.x >> 5);
  const int d = int(blockIdx.y), b0 = int(blockIdx.x) * C::kRows;
  const int H = p.hidden, B = p.batch, Tn = p.steps, D = p.dirs;

  typename C::Frags w;
  w.smem = smem_carve<u32x2>(smem, C::kTiles * C::kTileBytes + warp * C::kWBytesPerWarp,
                             C::Frags::kSmemPerWarp);
  load_w<C>(w, p.w_hh + int64_t(d) * 3 * H * H, H, warp, lane);

  Position<C> pos;
  pos.init(b0, B, H, warp, lane);
  Lengths len;
  len.init(p.lengths, b0, B, Tn, lane);
  float hp[NJ][4], mk[NJ][4], bhn[NJ][2];
  GT_UNROLL for (int j = 0; j < NJ; ++j) {
    GT_UNROLL for (int i = 0; i < 2; ++i) {
      const int u = pos.unit[j][i];
      bhn[j][i] = (C::kResetAfter && p.b_hn && u >= 0) ? to_float(p.b_hn[d * H + u]) : 0.f;
    }
    GT_UNROLL for (int i = 0; i < 4; ++i) {
      const bool v = pos.valid(j, i);
      const int64_t e = (int64_t(d) * B + pos.b(i)) * H + pos.u(j, i);
      hp[j][i] = v ? to_float(p.h0[e]) : 0.f;
      mk[j][i] = !v ? 0.f : p.mask ? to_float(p.mask[e]) : 1.f;
    }
  }
  auto write_state_tile = [&](sptr<Elem> t) {  // h~ = h * mask, the next GEMM's A operand
    GT_UNROLL for (int j = 0; j < NJ; ++j) {
      GT_UNROLL for (int i = 0; i < 4; i += 2)
        put_pair<Op>(t, pos.tile_index(j, i, C::kStride, 0, warp, lane), hp[j][i] * mk[j][i],
                     hp[j][i + 1] * mk[j][i + 1]);
    }
  };
  write_state_tile(tile[0]);

  // gx of one step for this thread's values, raw (converted where used).
  T gxv[3][NJ][4];
  auto load_gx = [&](int s) {
    const int t = d == 0 ? s : Tn - 1 - s;
    GT_UNROLL for (int q = 0; q < 3; ++q) {
      GT_UNROLL for (int j = 0; j < NJ; ++j) {
        GT_UNROLL for (int i = 0; i < 4; ++i) {
          const int b = pos.b(i);
          const int u = warp * C::kU + 8 * j + 2 * (lane & 3) + (i & 1);  // padded units read 0
          gxv[q][j][i] = b >= 0 && t < len.row[i >> 1]
                             ? p.gx[((int64_t(d) * Tn + t) * B + b) * 3 * HP + q * HP + u]
                             : from_float<T>(0.f);
        }
      }
    }
  };
  load_gx(0);
  __syncthreads();

  const int64_t out_row = int64_t(D) * H;
  for (int s = 0; s < Tn; ++s) {
    const int t = d == 0 ? s : Tn - 1 - s;
    gptr<T> res = p.reserve ? p.reserve + (int64_t(d) * Tn + t) * B * 5 * H : gptr<T>();
    auto out_at = [&](int j, int i) { return (int64_t(t) * B + pos.b(i)) * out_row + d * H + pos.u(j, i); };
    auto res_at = [&](int j, int i, int slot) { return int64_t(pos.b(i)) * 5 * H + slot * H + pos.u(j, i); };
    auto store = [&](int j, int i, float h, float r, float z, float n, float aux, float h_prev) {
      p.out[out_at(j, i)] = from_float<T>(h);
      if (p.reserve) {
        res[res_at(j, i, 0)] = from_float<T>(r);
        res[res_at(j, i, 1)] = from_float<T>(z);
        res[res_at(j, i, 2)] = from_float<T>(n);
        res[res_at(j, i, 3)] = from_float<T>(aux);
        res[res_at(j, i, 4)] = from_float<T>(h_prev);
      }
    };
    if (t >= len.tile_max) {  // every row of the tile is past its length: zeros, state kept
      GT_UNROLL for (int j = 0; j < NJ; ++j)
        GT_UNROLL for (int i = 0; i < 4; ++i)
          if (pos.valid(j, i)) store(j, i, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f);
      if (s + 1 < Tn) load_gx(s + 1);
      continue;
    }
    float gxf[3][NJ][4];
    GT_UNROLL for (int q = 0; q < 3; ++q)
      GT_UNROLL for (int j = 0; j < NJ; ++j)
        GT_UNROLL for (int i = 0; i < 4; ++i) gxf[q][j][i] = to_float(gxv[q][j][i]);
    if (s + 1 < Tn) load_gx(s + 1);  // lands during this step's GEMM and barrier

    if constexpr (C::kResetAfter) {
      const int cur = s & 1;
      float acc[3 * NJ][4];
      GT_UNROLL for (int c = 0; c < 3 * NJ; ++c)
        GT_UNROLL for (int i = 0; i < 4; ++i) acc[c][i] = c < 2 * NJ ? 0.f : bhn[c - 2 * NJ][i & 1];
      gemm<C, 0, C::kKT, 0, 3 * NJ>(acc, tile[cur], w, lane);
      GT_UNROLL for (int j = 0; j < NJ; ++j) {
        GT_UNROLL for (int i = 0; i < 4; ++i) {
          if (!pos.valid(j, i)) continue;
          if (!len.active(i, t)) {
            store(j, i, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f);
            continue;
          }
          const float r = sigmoid(acc[j][i] + gxf[0][j][i]);
          const float z = sigmoid(acc[NJ + j][i] + gxf[1][j][i]);
          const float ghn = acc[2 * NJ + j][i];
          const float n = tanh_fast(gxf[2][j][i] + r * ghn);
          const float h = (1.f - z) * n + z * hp[j][i];
          store(j, i, h, r, z, n, ghn, hp[j][i]);
          hp[j][i] = h;
        }
      }
      write_state_tile(tile[cur ^ 1]);
      __syncthreads();
    } else {
      float acc_rz[2 * NJ][4], acc_n[NJ][4], r[NJ][4], z[NJ][4], qv[NJ][4];
      GT_UNROLL for (int c = 0; c < 2 * NJ; ++c)
        GT_UNROLL for (int i = 0; i < 4; ++i) acc_rz[c][i] = 0.f;
      gemm<C, 0, C::kKT, 0, 2 * NJ>(acc_rz, tile[0], w, lane);
      GT_UNROLL for (int j = 0; j < NJ; ++j) {
        GT_UNROLL for (int i = 0; i < 4; ++i) {
          r[j][i] = sigmoid(acc_rz[j][i] + gxf[0][j][i]);
          z[j][i] = sigmoid(acc_rz[NJ + j][i] + gxf[1][j][i]);
          qv[j][i] = len.active(i, t) ? r[j][i] * hp[j][i] * mk[j][i] : 0.f;
        }
        GT_UNROLL for (int i = 0; i < 4; i += 2)
          put_pair<Op>(tile[1], pos.tile_index(j, i, C::kStride, 0, warp, lane), qv[j][i], qv[j][i + 1]);
      }
      __syncthreads();
      GT_UNROLL for (int c = 0; c < NJ; ++c)
        GT_UNROLL for (int i = 0; i < 4; ++i) acc_n[c][i] = 0.f;
      gemm<C, 0, C::kKT, 2 * NJ, NJ>(acc_n, tile[1], w, lane);
      GT_UNROLL for (int j = 0; j < NJ; ++j) {
        GT_UNROLL for (int i = 0; i < 4; ++i) {
          if (!pos.valid(j, i)) continue;
          if (!len.active(i, t)) {
            store(j, i, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f);
            continue;
          }
          const float n = tanh_fast(gxf[2][j][i] + acc_n[j][i]);
          const float h = (1.f - z[j][i]) * n + z[j][i] * hp[j][i];
          store(j, i, h, r[j][i], z[j][i], n, qv[j][i], hp[j][i]);
          hp[j][i] = h;
        }
      }
      write_state_tile(tile[0]);
      __syncthreads();
    }
  }
  GT_UNROLL for (int j = 0; j < NJ; ++j)
    GT_UNROLL for (int i = 0; i < 4; ++i)
      if (pos.valid(j, i)) p.h_n[(int64_t(d) * B + pos.b(i)) * H + pos.u(j, i)] = from_float<T>(hp[j][i]);
}

// ---------------------------------------------------------------- backward
template <class C>
__global__ void __launch_bounds__(C::kThreads, 1) gru_backward(BwdArgs<typename C::T> p) {
  using T = typename C::T;
  using Op = typename C::Op;
  using Elem = typename C::Elem;
  constexpr int NJ = C::kNJ, HP = C::kHP, KT = C::kKT;
  GT_DYNAMIC_SMEM(smem);
  sptr<Elem> tile[2];
  tile[0] = smem_carve<Elem>(smem, 0, size_t(C::kRows) * C::kStride);
  tile[1] = C::kTiles == 2 ? smem_carve<Elem>(smem, C::kTileBytes, size_t(C::kRows) * C::kStride) : tile[0];
  const int lane = int(threadIdx.x & 31u), warp = int(threadIdx.x >> 5);
  const int d = int(blockIdx.y), b0 = int(blockIdx.x) * C::kRows;
  const int H = p.hidden, B = p.batch, Tn = p.steps, D = p.dirs;

  typename C::Frags w;
  w.smem = smem_carve<u32x2>(smem, C::kTiles * C::kTileBytes + warp * C::kWBytesPerWarp,
                             C::Frags::kSmemPerWarp);
  load_w<C>(w, p.w_hh + int64_t(d) * 3 * H * H, H, warp, lane);

  Position<C> pos;
  pos.init(b0, B, H, warp, lane);
  Lengths len;
  len.init(p.lengths, b0, B, Tn, lane);
  float dhc[NJ][4], mk[NJ][4];
  GT_UNROLL for (int j = 0; j < NJ; ++j) {
    GT_UNROLL for (int i = 0; i < 4; ++i) {
      const bool v = pos.valid(j, i);
      const int64_t e = (int64_t(d) * B + pos.b(i)) * H + pos.u(j, i);
      dhc[j][i] = v ? to_float(p.grad_h_n[e]) : 0.f;
      mk[j][i] = !v ? 0.f : p.mask ? to_float(p.mask[e]) : 1.f;
    }
  }

  // One step's grad_output and reserve values for this thread, raw.
  enum { kGout, kR, kZ, kN, kAux, kHprev, kLoads };
  T pf[kLoads][NJ][4];
  auto time_of = [&](int s) { return d == 0 ? Tn - 1 - s : s; };
  auto load_step = [&](int s) {
    const int t = time_of(s);
    GT_UNROLL for (int j = 0; j < NJ; ++j) {
      GT_UNROLL for (int i = 0; i < 4; ++i) {
        const bool on = pos.valid(j, i) && len.active(i, t);
        const int b = pos.b(i), u = pos.u(j, i);
        pf[kGout][j][i] = on ? p.grad_out[(int64_t(t) * B + b) * D * H + d * H + u] : from_float<T>(0.f);
        const int64_t r0 = ((int64_t(d) * Tn + t) * B + b) * 5 * H + u;
        GT_UNROLL for (int slot = 0; slot < 5; ++slot)
          pf[kR + slot][j][i] = on ? p.reserve[r0 + slot * H] : from_float<T>(0.f);
      }
    }
  };
  load_step(0);

  for (int s = 0; s < Tn; ++s) {
    const int t = time_of(s);
    gptr<T> dgx = p.dgx + ((int64_t(d) * Tn + t) * B) * 3 * H;
    gptr<T> dghn = p.dghn ? p.dghn + ((int64_t(d) * Tn + t) * B) * H : gptr<T>();
    auto put_grads = [&](int j, int i, float da_r, float da_z, float da_n, float dgh_n) {
      const int64_t e = int64_t(pos.b(i)) * 3 * H + pos.u(j, i);
      dgx[e] = from_float<T>(da_r);
      dgx[e + H] = from_float<T>(da_z);
      dgx[e + 2 * H] = from_float<T>(da_n);
      if (p.dghn) dghn[int64_t(pos.b(i)) * H + pos.u(j, i)] = from_float<T>(dgh_n);
    };
    if (t >= len.tile_max) {  // the whole tile is past its lengths: dh passes through
      GT_UNROLL for (int j = 0; j < NJ; ++j)
        GT_UNROLL for (int i = 0; i < 4; ++i)
          if (pos.valid(j, i)) put_grads(j, i, 0.f, 0.f, 0.f, 0.f);
      if (s + 1 < Tn) load_step(s + 1);
      continue;
    }
    float v[kLoads][NJ][4];
    GT_UNROLL for (int k = 0; k < kLoads; ++k)
      GT_UNROLL for (int j = 0; j < NJ; ++j)
        GT_UNROLL for (int i = 0; i < 4; ++i) v[k][j][i] = to_float(pf[k][j][i]);
    if (s + 1 < Tn) load_step(s + 1);  // lands during this step's GEMMs and barriers

    float dpart[NJ][4], da_z[NJ][4], da_n[NJ][4], dh[NJ][4];
    sptr<Elem> tl = tile[C::kTiles == 2 ? (s & 1) : 0];
    // Cell backward up to the gate gradients that do not need another GEMM.
    GT_UNROLL for (int j = 0; j < NJ; ++j) {
      GT_UNROLL for (int i = 0; i < 4; ++i) {
        const bool on = pos.valid(j, i) && len.active(i, t);
        dh[j][i] = dhc[j][i] + v[kGout][j][i];
        const float z = v[kZ][j][i], n = v[kN][j][i];
        da_n[j][i] = on ? dh[j][i] * (1.f - z) * (1.f - n * n) : 0.f;
        da_z[j][i] = on ? dh[j][i] * (v[kHprev][j][i] - n) * z * (1.f - z) : 0.f;
        dpart[j][i] = on ? dh[j][i] * z : dhc[j][i];
      }
    }
    if constexpr (C::kResetAfter) {
      GT_UNROLL for (int j = 0; j < NJ; ++j) {
        float da_r[4], dghv[4];
        GT_UNROLL for (int i = 0; i < 4; ++i) {
          const float r = v[kR][j][i];
          da_r[i] = da_n[j][i] * v[kAux][j][i] * r * (1.f - r);
          dghv[i] = da_n[j][i] * r;
          if (pos.valid(j, i)) put_grads(j, i, da_r[i], da_z[j][i], da_n[j][i], dghv[i]);
        }
        GT_UNROLL for (int i = 0; i < 4; i += 2) {
          put_pair<Op>(tl, pos.tile_index(j, i, C::kStride, 0, warp, lane), da_r[i], da_r[i + 1]);
          put_pair<Op>(tl, pos.tile_index(j, i, C::kStride, HP, warp, lane), da_z[j][i], da_z[j][i + 1]);
          put_pair<Op>(tl, pos.tile_index(j, i, C::kStride, 2 * HP, warp, lane), dghv[i], dghv[i + 1]);
        }
      }
      __syncthreads();
      float acc[NJ][4];
      GT_UNROLL for (int c = 0; c < NJ; ++c)
        GT_UNROLL for (int i = 0; i < 4; ++i) acc[c][i] = 0.f;
      gemm<C, 0, KT, 0, NJ>(acc, tl, w, lane);
      GT_UNROLL for (int j = 0; j < NJ; ++j)
        GT_UNROLL for (int i = 0; i < 4; ++i) dhc[j][i] = dpart[j][i] + acc[j][i] * mk[j][i];
    } else {
      GT_UNROLL for (int j = 0; j < NJ; ++j)
        GT_UNROLL for (int i = 0; i < 4; i += 2)
          put_pair<Op>(tl, pos.tile_index(j, i, C::kStride, 2 * HP, warp, lane), da_n[j][i], da_n[j][i + 1]);
      __syncthreads();
      float dq[NJ][4];
      GT_UNROLL for (int c = 0; c < NJ; ++c)
        GT_UNROLL for (int i = 0; i < 4; ++i) dq[c][i] = 0.f;
      gemm<C, 2 * KT / 3, KT, 0, NJ>(dq, tl, w, lane);  // dq = da_n W_hn
      GT_UNROLL for (int j = 0; j < NJ; ++j) {
        float da_r[4];
        GT_UNROLL for (int i = 0; i < 4; ++i) {
          const bool on = pos.valid(j, i) && len.active(i, t);
          const float r = v[kR][j][i];
          da_r[i] = on ? dq[j][i] * v[kHprev][j][i] * mk[j][i] * r * (1.f - r) : 0.f;
          if (on) dpart[j][i] += dq[j][i] * r * mk[j][i];
          if (pos.valid(j, i)) put_grads(j, i, da_r[i], da_z[j][i], da_n[j][i], 0.f);
        }
        GT_UNROLL for (int i = 0; i < 4; i += 2) {
          put_pair<Op>(tl, pos.tile_index(j, i, C::kStride, 0, warp, lane), da_r[i], da_r[i + 1]);
          put_pair<Op>(tl, pos.tile_index(j, i, C::kStride, HP, warp, lane), da_z[j][i], da_z[j][i + 1]);
        }
      }
      __syncthreads();
      float acc[NJ][4];
      GT_UNROLL for (int c = 0; c < NJ; ++c)
        GT_UNROLL for (int i = 0; i < 4; ++i) acc[c][i] = 0.f;
      gemm<C, 0, 2 * KT / 3, 0, NJ>(acc, tl, w, lane);  // [da_r, da_z] W_hrz
      GT_UNROLL for (int j = 0; j < NJ; ++j)
        GT_UNROLL for (int i = 0; i < 4; ++i) dhc[j][i] = dpart[j][i] + acc[j][i] * mk[j][i];
    }
  }
  GT_UNROLL for (int j = 0; j < NJ; ++j)
    GT_UNROLL for (int i = 0; i < 4; ++i)
      if (pos.valid(j, i)) p.grad_hx[(int64_t(d) * B + pos.b(i)) * H + pos.u(j, i)] = from_float<T>(dhc[j][i]);
}

}  // namespace gru
GT_END_NAMESPACE
