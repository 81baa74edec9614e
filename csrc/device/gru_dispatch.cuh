// From a plan and raw arguments to the persistent kernel instantiation that runs
// them. Included by the nvcc files (csrc/cuda/gru_*.cu, one per dtype) and by the
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

template <class Op, int HP, bool kBackward>
struct ShapeOf {
  static constexpr gru_torch::plan::Operand kOp =
      std::is_same<Op, OpTF32>::value ? gru_torch::plan::Operand::TF32
      : std::is_same<Op, OpBF16>::value ? gru_torch::plan::Operand::BF16 : gru_torch::plan::Operand::F16;
  static constexpr gru_torch::plan::Shape kShape = gru_torch::plan::shape(kOp, HP);
  static constexpr int kRegTiles = kBackward ? kShape.reg_tiles_bwd : kShape.reg_tiles_fwd;
};

template <class T, class Op, int HP, bool RA, bool kBackward>
using ConfigFor = Config<T, Op, HP, ShapeOf<Op, HP, kBackward>::kShape.warps,
                         ShapeOf<Op, HP, kBackward>::kRegTiles, RA, kBackward,
                         ShapeOf<Op, HP, kBackward>::kShape.cluster>;

template <class C>
LaunchSpec spec_for(const char* name, int batch, int dirs) {
  static_assert(C::kSmemBytes == gru_torch::plan::persistent_smem(
                                     ShapeOf<typename C::Op, C::kHP, C::kBackward>::kOp, C::kHP,
                                     C::kResetAfter, C::kBackward),
                "gru_plan.h's shared-memory size must match the kernel's");
  LaunchSpec s;
  s.name = name;
  s.grid = dim3(unsigned((batch + C::kRows - 1) / C::kRows * C::kCluster), unsigned(dirs), 1);
  s.block = dim3(C::kThreads, 1, 1);
  s.cluster = dim3(unsigned(C::kCluster), 1, 1);
  s.smem = C::kSmemBytes;
  s.max_threads = C::kThreads;
  s.min_blocks = 1;
  return s;
}

template <class T, class Op, int HP, bool RA>
void forward_as(const gru_torch::raw::Forward& r, Stream st) {
  using C = ConfigFor<T, Op, HP, RA, false>;
  FwdArgs<T> a;
  a.steps = r.steps;
  a.batch = r.batch;
  a.hidden = r.hidden;
  a.dirs = r.dirs;
  a.gx = typed<T>(r.gx);
  a.w_hh = typed<T>(r.w_hh);
  a.b_hn = typed<T>(r.b_hn);
  a.h0 = typed<T>(r.h0);
  a.mask = typed<T>(r.mask);
  a.lengths = typed<int64_t>(r.lengths);
  a.out = typed<T>(r.out);
  a.h_n = typed<T>(r.h_n);
  a.reserve = typed<T>(r.reserve);
  launch(spec_for<C>("gru_forward", r.batch, r.dirs), st, gru_forward<C>, a);
}

template <class T, class Op, int HP, bool RA>
void backward_as(const gru_torch::raw::Backward& r, Stream st) {
  using C = ConfigFor<T, Op, HP, RA, true>;
  BwdArgs<T> a;
  a.steps = r.steps;
  a.batch = r.batch;
  a.hidden = r.hidden;
  a.dirs = r.dirs;
  a.grad_out = typed<T>(r.grad_out);
  a.grad_h_n = typed<T>(r.grad_h_n);
  a.w_hh = typed<T>(r.w_hh);
  a.mask = typed<T>(r.mask);
  a.lengths = typed<int64_t>(r.lengths);
  a.reserve = typed<T>(r.reserve);
  a.dgx = typed<T>(r.dgx);
  a.dghn = typed<T>(r.dghn);
  a.grad_hx = typed<T>(r.grad_hx);
  launch(spec_for<C>("gru_backward", r.batch, r.dirs), st, gru_backward<C>, a);
}

// Calls f.template operator()<HP, RA>() (a template lambda) for the padded size and
// cell; HP = 256 (a cluster of two) exists for 16-bit operands only.
template <class Op, class F>
void with_shape(int hp, bool reset_after, F&& f) {
  auto cell = [&](auto hp_c) {
    if (reset_after) f.template operator()<decltype(hp_c)::value, true>();
    else f.template operator()<decltype(hp_c)::value, false>();
  };
  switch (hp) {
    case 32: return cell(std::integral_constant<int, 32>{});
    case 64: return cell(std::integral_constant<int, 64>{});
    case 128: return cell(std::integral_constant<int, 128>{});
    case 256:
      if constexpr (!std::is_same<Op, OpTF32>::value) return cell(std::integral_constant<int, 256>{});
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
LaunchSpec persistent_spec(const gru_torch::plan::Plan& plan, bool reset_after, bool backward,
                           int batch, int dirs) {
  LaunchSpec spec;
  with_shape<OperandFor<T>>(plan.hp, reset_after, [&]<int HP, bool RA>() {
    if (backward) spec = spec_for<ConfigFor<T, OperandFor<T>, HP, RA, true>>("gru_backward", batch, dirs);
    else spec = spec_for<ConfigFor<T, OperandFor<T>, HP, RA, false>>("gru_forward", batch, dirs);
  });
  return spec;
}

template <class T>
void run_forward(const gru_torch::plan::Plan& plan, const gru_torch::raw::Forward& r, Stream st) {
  with_shape<OperandFor<T>>(plan.hp, r.reset_after,
                            [&]<int HP, bool RA>() { forward_as<T, OperandFor<T>, HP, RA>(r, st); });
}

template <class T>
void run_backward(const gru_torch::plan::Plan& plan, const gru_torch::raw::Backward& r, Stream st) {
  with_shape<OperandFor<T>>(plan.hp, r.reset_after,
                            [&]<int HP, bool RA>() { backward_as<T, OperandFor<T>, HP, RA>(r, st); });
}

}  // namespace gru
GT_END_NAMESPACE
