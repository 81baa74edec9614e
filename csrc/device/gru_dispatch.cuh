// From a plan and raw arguments to the persistent kernel instantiation that runs
// them: the operand type, the padded size and the cell (a policy, cells.cuh). Included by the nvcc files (csrc/cuda/gru_*.cu, one per dtype) and by the
// emulator's ops (csrc/emu_ops.cpp); each instantiates run_forward / run_backward
// for the dtypes it serves.
#pragma once

#include <stdexcept>
#include <string>

#include "gru_persistent.cuh"
#include "gru_plan.h"
#include "gru_raw.h"
#include "launch.h"

GT_BEGIN_NAMESPACE
namespace gru {

template <class P, class T>
auto typed(const gru_torch::raw::Buf<T>& b) {
  using Q = std::conditional_t<std::is_const<T>::value, const P, P>;
  return make_gptr(static_cast<Q*>(b.ptr), b.numel);
}

template <class Op>
constexpr gru_torch::plan::Operand operand_of() {
  return std::is_same<Op, OpTF32>::value ? gru_torch::plan::Operand::TF32
         : std::is_same<Op, OpBF16>::value ? gru_torch::plan::Operand::BF16 : gru_torch::plan::Operand::F16;
}

template <class T, class Op, class Cell, int HP, bool kBackward, bool kKeepPrev>
using ConfigFor = Config<T, Op, Cell, HP, gru_torch::plan::shape(operand_of<Op>(), HP).warps,
                         gru_torch::plan::reg_tiles(operand_of<Op>(), HP, Cell::kGates, kBackward),
                         kBackward, gru_torch::plan::shape(operand_of<Op>(), HP).cluster, kKeepPrev>;

// The kernels' names in launch specs and errors: gru_forward, rnn_backward, ...
template <class Cell>
constexpr const char* kernel_name(bool backward) {
  if constexpr (Cell::kGates == 1) return backward ? "rnn_backward" : "rnn_forward";
  else if constexpr (Cell::kGates == 4) return backward ? "lstm_backward" : "lstm_forward";
  else return backward ? "gru_backward" : "gru_forward";
}

template <class C>
LaunchSpec spec_for(int batch, int dirs) {
  static_assert(C::kSmemBytes == gru_torch::plan::persistent_smem(operand_of<typename C::Op>(), C::kHP,
                                                                  C::Cell::kCode, C::kBackward),
                "gru_plan.h's shared-memory size must match the kernel's");
  LaunchSpec s;
  s.name = kernel_name<typename C::Cell>(C::kBackward);
  s.grid = dim3(unsigned((batch + C::kRows - 1) / C::kRows * C::kCluster), unsigned(dirs), 1);
  s.block = dim3(C::kThreads, 1, 1);
  s.cluster = dim3(unsigned(C::kCluster), 1, 1);
  s.smem = C::kSmemBytes;
  s.max_threads = C::kThreads;
  s.min_blocks = 1;
  return s;
}

inline Strides strides_of(const gru_torch::raw::Layout& l) { return Strides{l.dir, l.step, l.row, l.gate}; }

template <class C>
void forward_as(const gru_torch::raw::Forward& r, Stream st) {
  using T = typename C::T;
  FwdArgs<T> a;
  a.steps = r.steps;
  a.batch = r.batch;
  a.hidden = r.hidden;
  a.dirs = r.dirs;
  a.gx = typed<T>(r.gx);
  a.gx_at = strides_of(r.gx_at);
  a.w_hh = typed<T>(r.w_hh);
  a.b_rec = typed<T>(r.b_hn);
  a.h0 = typed<T>(r.h0);
  a.c0 = typed<T>(r.c0);
  a.mask = typed<T>(r.mask);
  a.lengths = typed<int64_t>(r.lengths);
  a.gate = r.gate;
  a.out = typed<T>(r.out);
  a.h_n = typed<T>(r.h_n);
  a.c_n = typed<T>(r.c_n);
  a.reserve = typed<T>(r.reserve);
  launch(spec_for<C>(r.batch, r.dirs), st, gru_forward<C>, a);
}

template <class C>
void backward_as(const gru_torch::raw::Backward& r, Stream st) {
  using T = typename C::T;
  BwdArgs<T> a;
  a.steps = r.steps;
  a.batch = r.batch;
  a.hidden = r.hidden;
  a.dirs = r.dirs;
  a.grad_out = typed<T>(r.grad_out);
  a.grad_h_n = typed<T>(r.grad_h_n);
  a.grad_c_n = typed<T>(r.grad_c_n);
  a.h0 = typed<T>(r.h0);
  a.c0 = typed<T>(r.c0);
  a.w_hh = typed<T>(r.w_hh);
  a.mask = typed<T>(r.mask);
  a.lengths = typed<int64_t>(r.lengths);
  a.gate = r.gate;
  a.reserve = typed<T>(r.reserve);
  a.out = typed<T>(r.out);
  a.dgx = typed<T>(r.dgx);
  a.dgx_at = strides_of(r.dgx_at);
  a.dghn = typed<T>(r.dghn);
  a.grad_hx = typed<T>(r.grad_hx);
  a.grad_cx = typed<T>(r.grad_cx);
  launch(spec_for<C>(r.batch, r.dirs), st, gru_backward<C>, a);
}

// Calls f.template operator()<HP, Cell, KeepPrev>() (a template lambda) for the padded
// size and cell. The GRU's kernels keep h_prev in the reserve, for the GRU op and the
// family op alike (one instantiation per GRU cell); the LSTM's and the RNNs' keep the
// CPU family op's slots. HP = 256 (a cluster of two) exists for 16-bit operands only.
template <class Op, class F>
void with_shape(int hp, int cell, bool keep_prev, F&& f) {
  namespace pl = gru_torch::plan;
  auto with_cell = [&](auto hp_c) {
    constexpr int HP = decltype(hp_c)::value;
    if (keep_prev && cell == pl::kGruAfter) return f.template operator()<HP, GruAfter, true>();
    if (keep_prev && cell == pl::kGruBefore) return f.template operator()<HP, GruBefore, true>();
    if (!keep_prev && cell == pl::kRnnTanh) return f.template operator()<HP, RnnTanh, false>();
    if (!keep_prev && cell == pl::kRnnRelu) return f.template operator()<HP, RnnRelu, false>();
    if (!keep_prev && cell == pl::kLstm) return f.template operator()<HP, Lstm, false>();
    throw std::invalid_argument("gru: no persistent kernel for cell " + std::to_string(cell) +
                                (keep_prev ? " in the GRU op" : " in the family op"));
  };
  switch (hp) {
    case 32: return with_cell(std::integral_constant<int, 32>{});
    case 64: return with_cell(std::integral_constant<int, 64>{});
    case 128: return with_cell(std::integral_constant<int, 128>{});
    case 256:
      if constexpr (!std::is_same<Op, OpTF32>::value) return with_cell(std::integral_constant<int, 256>{});
      break;
  }
  throw std::invalid_argument("gru: no persistent kernel for padded size " + std::to_string(hp));
}

// T: float (tf32 operands), bf16 or f16 storage.
template <class T>
using OperandFor = std::conditional_t<std::is_same<T, float>::value, OpTF32,
                                      std::conditional_t<std::is_same<T, bf16>::value, OpBF16, OpF16>>;

// The launch of the persistent kernel for a plan, as run_forward / run_backward make it.
template <class T>
LaunchSpec persistent_spec(const gru_torch::plan::Plan& plan, int cell, bool keep_prev, bool backward,
                           int batch, int dirs) {
  LaunchSpec spec;
  with_shape<OperandFor<T>>(plan.hp, cell, keep_prev, [&]<int HP, class Cell, bool KP>() {
    if (backward) spec = spec_for<ConfigFor<T, OperandFor<T>, Cell, HP, true, KP>>(batch, dirs);
    else spec = spec_for<ConfigFor<T, OperandFor<T>, Cell, HP, false, KP>>(batch, dirs);
  });
  return spec;
}

template <class T>
void run_forward(const gru_torch::plan::Plan& plan, const gru_torch::raw::Forward& r, Stream st) {
  with_shape<OperandFor<T>>(plan.hp, r.cell, r.keep_prev, [&]<int HP, class Cell, bool KP>() {
    forward_as<ConfigFor<T, OperandFor<T>, Cell, HP, false, KP>>(r, st);
  });
}

template <class T>
void run_backward(const gru_torch::plan::Plan& plan, const gru_torch::raw::Backward& r, Stream st) {
  with_shape<OperandFor<T>>(plan.hp, r.cell, r.keep_prev, [&]<int HP, class Cell, bool KP>() {
    backward_as<ConfigFor<T, OperandFor<T>, Cell, HP, true, KP>>(r, st);
  });
}

}  // namespace gru
GT_END_NAMESPACE
