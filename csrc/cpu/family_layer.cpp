// The family op on the CPU: one layer (one or two directions) of any cell of family.h,
// forward and backward, over the whole sequence, from the input projection gx.
//
//   family_layer(gx [T,B,D,G], hx [D,B,H], cx? [D,B,H], w_hh [D,G,H], b_hn? [D,H],
//                mask? [D,B,M,H], lengths? [B], cell, gate, need_reserve)
//     -> (output [T,B,D*H], h_n [D,B,H], c_n [D,B,H] or [0], reserve [D,T,B,S*H])
//   family_layer_backward(grad_output, grad_h_n, grad_c_n?, hx, cx?, w_hh, b_hn?, mask?,
//                         lengths?, cell, gate, reserve, output)
//     -> (grad_gx [T,B,D,G], grad_hx, grad_cx or [0])
//
// gx is x W_ih^T + b_ih (+ the part of b_hh that adds to it: all of it but the GRU's
// b_hn), computed by the caller as one large GEMM (gru_torch/ops.py), which also takes
// the input's dropout masks and turns grad_gx into the input's and W_ih's gradients, and
// W_hh's from grad_gx, the reserve and the output. M = 1 (one recurrent mask for every
// gate) or the cell's gate count (gate k reads (h * m_k) W_hk^T).
//
// The loops are in cpu/family_loop.cpp.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>
#include <type_traits>
#include <vector>

#include "cpu/capability.h"
#include "cpu/family.h"
#include "cpu_denormals.h"
#include "cpu_pool.h"

namespace gru_torch::cpu::family {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// ---- the op's entry points

constexpr const char* kCellNames = "0 GRU (reset_after=True), 1 GRU (reset_after=False), "
                                   "2 LSTM, 3 RNN (tanh), 4 RNN (relu)";

template <typename Tn>
const void* ptr_or_null(const Tn& t) {
  return t ? t->data_ptr() : nullptr;
}

void check_same(const Tensor& t, const Tensor& like, const char* name, at::IntArrayRef shape,
                const char* where, const char* lead = "gx") {
  TORCH_CHECK(t.device() == like.device(), where, ": ", name, " is on ", t.device(),
              " but ", lead, " is on ", like.device());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), where, ": ", name, " has dtype ",
              t.scalar_type(), " but ", lead, " has dtype ", like.scalar_type());
  TORCH_CHECK(t.sizes() == shape, where, ": ", name, " must have shape ", shape, ", got ",
              t.sizes());
}

void check_cell_gate(int64_t cell, int64_t gate, const char* where) {
  TORCH_CHECK(cell >= 0 && cell < kCells, where, ": cell must be one of ", kCellNames,
              "; got ", cell);
  TORCH_CHECK(gate >= 0 && gate < kGates, where,
              ": gate must be 0 (sigmoid), 1 (Keras 2's hard sigmoid) or 2 (Keras 3's); got ",
              gate);
}

// The dtype and device of the tensor the others must match (gx, or x).
void check_lead(const Tensor& t, const char* name, const char* where) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, where,
              ": the CPU op computes float32 and float64, not ", t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), where, ": ", name, " must be a CPU tensor, got ", t.device());
}

// Checks the arguments past gx's (or x's) place, the shape [T, B, D, G] given; returns
// the call's shape (M from the mask). Tensors must match gx (or x: `lead`); d_at and g_at
// name where D and G were read.
Shape check_rest(int64_t T, int64_t B, int64_t D, int64_t G, const Tensor& gx,
                 const Tensor& hx, const OptTensor& cx, const Tensor& w_hh,
                 const OptTensor& b_hn, const OptTensor& mask, const OptTensor& lengths,
                 int64_t cell, int64_t gate, const char* where, const char* lead = "gx",
                 const char* d_at = "gx.size(2)", const char* g_at = "gx.size(3)") {
  const int64_t gates = gates_of(cell);
  TORCH_CHECK(D == 1 || D == 2, where, ": ", d_at, " must be 1 or 2 (directions), got ", D);
  TORCH_CHECK(T > 0, where, ": ", lead, " has no time steps");
  TORCH_CHECK(G > 0 && G % gates == 0, where, ": ", g_at, " must be ", gates,
              " * hidden_size for this cell, got ", G);
  const int64_t H = G / gates;
  check_same(hx, gx, "hx", {D, B, H}, where, lead);
  check_same(w_hh, gx, "w_hh", {D, G, H}, where, lead);
  TORCH_CHECK(cx.has_value() == (cell == kLstm), where,
              cell == kLstm ? ": an LSTM needs cx" : ": cx is an LSTM's; this cell has none");
  if (cx) check_same(*cx, gx, "cx", {D, B, H}, where, lead);
  if (b_hn) {
    TORCH_CHECK(cell == kGruAfter, where, ": b_hn belongs to a GRU with reset_after=True");
    check_same(*b_hn, gx, "b_hn", {D, H}, where, lead);
  }
  int64_t M = 0;
  if (mask) {
    TORCH_CHECK(mask->dim() == 4, where, ": mask must be [D, B, M, H], got ", mask->sizes());
    M = mask->size(2);
    TORCH_CHECK(M == 1 || M == gates, where, ": mask must hold 1 mask or one per gate (",
                gates, ") per row, got ", M);
    check_same(*mask, gx, "mask", {D, B, M, H}, where, lead);
  }
  if (lengths) {
    TORCH_CHECK(lengths->scalar_type() == at::kLong && lengths->dim() == 1 &&
                    lengths->size(0) == B && lengths->device().is_cpu(),
                where, ": lengths must be a 1-D int64 CPU tensor of ", B, " entries, got ",
                lengths->scalar_type(), " ", lengths->sizes(), " on ", lengths->device());
    if (B > 0) {
      const int64_t lo = lengths->min().item<int64_t>(), hi = lengths->max().item<int64_t>();
      TORCH_CHECK(lo >= 1 && hi <= T, where, ": lengths must lie in [1, ", T,
                  "] (the time steps), got values in [", lo, ", ", hi, "]");
    }
  }
  return {T, B, H, D, M, cell, gate};
}

// Checks every argument of the op that takes gx; returns the shape.
Shape check_args(const Tensor& gx, const Tensor& hx, const OptTensor& cx, const Tensor& w_hh,
                 const OptTensor& b_hn, const OptTensor& mask, const OptTensor& lengths,
                 int64_t cell, int64_t gate, const char* where) {
  check_cell_gate(cell, gate, where);
  TORCH_CHECK(gx.dim() == 4, where, ": gx must be [T, B, D, G], got ", gx.sizes());
  check_lead(gx, "gx", where);
  return check_rest(gx.size(0), gx.size(1), gx.size(2), gx.size(3), gx, hx, cx, w_hh, b_hn,
                    mask, lengths, cell, gate, where);
}

OptTensor contig(const OptTensor& t) {
  return t ? OptTensor(t->contiguous()) : std::nullopt;
}

// The forward's outputs, and the loops run on them: both entry points' common part.
// `inputs(a)` fills the arguments in which they differ (gx; or x, w_ih and bias) into
// Args<T> a.
template <typename Inputs>
std::tuple<Tensor, Tensor, Tensor, Tensor> run_forward(
    const Shape& s, const Tensor& like, const Tensor& hx_, const OptTensor& cx_,
    const Tensor& w_hh_, const OptTensor& b_hn_, const OptTensor& mask_,
    const OptTensor& lengths_, bool need_reserve, const Inputs& inputs) {
  const Tensor hx = hx_.contiguous(), w_hh = w_hh_.contiguous();
  const OptTensor cx = contig(cx_), b_hn = contig(b_hn_), mask = contig(mask_),
                  lengths = contig(lengths_);
  const auto opts = like.options();
  Tensor out = pooled_empty({s.T, s.B, s.D * s.H}, opts);
  Tensor h_n = at::empty({s.D, s.B, s.H}, opts);
  Tensor c_n = cx ? at::empty({s.D, s.B, s.H}, opts) : at::empty({0}, opts);
  Tensor res = need_reserve ? pooled_empty({s.D, s.T, s.B, s.S() * s.H}, opts)
                            : at::empty({0}, opts);
  if (s.B == 0) return {out, h_n, c_n, res};
  AT_DISPATCH_FLOATING_TYPES(like.scalar_type(), "family_layer_forward", [&] {
    using T = scalar_t;
    const DenormalModeGuard mode(op_denormal_mode<T>());
    Args<T> a{};
    inputs(a);
    a.w_hh = w_hh.const_data_ptr<T>();
    a.b_hn = static_cast<const T*>(ptr_or_null(b_hn));
    a.mask = static_cast<const T*>(ptr_or_null(mask));
    a.len = lengths ? lengths->const_data_ptr<int64_t>() : nullptr;
    a.hx = hx.const_data_ptr<T>(), a.cx = static_cast<const T*>(ptr_or_null(cx));
    a.out = out.data_ptr<T>(), a.h_n = h_n.data_ptr<T>();
    a.c_n = cx ? c_n.data_ptr<T>() : nullptr;
    a.res = need_reserve && s.S() > 0 ? res.data_ptr<T>() : nullptr;
    GRU_TORCH_CPU_PICK(family, forward<T>)(s, a);
  });
  return {out, h_n, c_n, res};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> family_layer_cpu(
    const Tensor& gx_, const Tensor& hx_, const OptTensor& cx_, const Tensor& w_hh_,
    const OptTensor& b_hn_, const OptTensor& mask_, const OptTensor& lengths_, int64_t cell,
    int64_t gate, bool need_reserve) {
  const Shape s = check_args(gx_, hx_, cx_, w_hh_, b_hn_, mask_, lengths_, cell, gate,
                             "family_layer");
  const Tensor gx = gx_.contiguous();
  return run_forward(s, gx, hx_, cx_, w_hh_, b_hn_, mask_, lengths_, need_reserve,
                     [&](auto& a) {
                       using T = typename std::decay_t<decltype(a)>::value_type;
                       a.gx = gx.const_data_ptr<T>();
                     });
}

std::tuple<Tensor, Tensor, Tensor> family_layer_backward_cpu(
    const Tensor& grad_output_, const Tensor& grad_h_n_, const OptTensor& grad_c_n_,
    const Tensor& gx_like, const Tensor& hx_, const OptTensor& cx_, const Tensor& w_hh_,
    const OptTensor& b_hn_, const OptTensor& mask_, const OptTensor& lengths_, int64_t cell,
    int64_t gate, const Tensor& reserve_, const Tensor& output_) {
  const char* where = "family_layer_backward";
  const Shape s = check_args(gx_like, hx_, cx_, w_hh_, b_hn_, mask_, lengths_, cell, gate, where);
  const std::vector<int64_t> out_shape{s.T, s.B, s.D * s.H};
  check_same(grad_output_, gx_like, "grad_output", out_shape, where);
  check_same(output_, gx_like, "output", out_shape, where);
  check_same(grad_h_n_, gx_like, "grad_h_n", {s.D, s.B, s.H}, where);
  if (grad_c_n_) check_same(*grad_c_n_, gx_like, "grad_c_n", {s.D, s.B, s.H}, where);
  TORCH_CHECK(reserve_.sizes() == at::IntArrayRef({s.D, s.T, s.B, s.S() * s.H}), where,
              ": reserve has shape ", reserve_.sizes(),
              "; it must be the one family_layer returned with need_reserve=True");
  const Tensor hx = hx_.contiguous(), w_hh = w_hh_.contiguous(), res = reserve_.contiguous(),
               out = output_.contiguous(), g_hn = grad_h_n_.contiguous();
  const OptTensor cx = contig(cx_), b_hn = contig(b_hn_), mask = contig(mask_),
                  lengths = contig(lengths_), g_cn = contig(grad_c_n_);
  const int64_t unit_stride = grad_output_.stride(2);
  const Tensor gout = unit_stride == 0 || unit_stride == 1 ? grad_output_ : grad_output_.contiguous();
  const auto opts = gx_like.options();
  Tensor g_gx = pooled_empty({s.T, s.B, s.D, s.G()}, opts);
  Tensor g_hx = at::empty({s.D, s.B, s.H}, opts);
  Tensor g_cx = cx ? at::empty({s.D, s.B, s.H}, opts) : at::empty({0}, opts);
  if (s.B == 0) return {g_gx, g_hx.zero_(), g_cx.zero_()};
  AT_DISPATCH_FLOATING_TYPES(gx_like.scalar_type(), "family_layer_backward_cpu", [&] {
    using T = scalar_t;
    const DenormalModeGuard mode(op_denormal_mode<T>());
    Args<T> a{};
    a.w_hh = w_hh.const_data_ptr<T>();
    a.b_hn = static_cast<const T*>(ptr_or_null(b_hn));
    a.mask = static_cast<const T*>(ptr_or_null(mask));
    a.len = lengths ? lengths->const_data_ptr<int64_t>() : nullptr;
    a.hx = hx.const_data_ptr<T>(), a.cx = static_cast<const T*>(ptr_or_null(cx));
    a.out = const_cast<T*>(out.const_data_ptr<T>());
    a.res = s.S() > 0 ? const_cast<T*>(res.const_data_ptr<T>()) : nullptr;
    a.gout = gout.const_data_ptr<T>();
    a.gout_stride[0] = gout.stride(0), a.gout_stride[1] = gout.stride(1);
    a.gout_stride[2] = unit_stride == 0 ? 0 : 1;
    a.g_hn = g_hn.const_data_ptr<T>(), a.g_cn = static_cast<const T*>(ptr_or_null(g_cn));
    a.g_gx = g_gx.data_ptr<T>(), a.g_hx = g_hx.data_ptr<T>();
    a.g_cx = cx ? g_cx.data_ptr<T>() : nullptr;
    GRU_TORCH_CPU_PICK(family, backward<T>)(s, a);
  });
  return {g_gx, g_hx, g_cx};
}

// The forward from the input: x [T, B, I], w_ih [D, G, I], bias [D, G] (b_ih + b_hh) in
// place of gx, for the LSTM and the RNNs (every gate of theirs adds gx to its recurrent
// product, so each step's GEMM computes both in the same registers and gx is never
// stored). The same results as family_layer on gx = x W_ih^T + bias, to rounding.
std::tuple<Tensor, Tensor, Tensor, Tensor> family_layer_x_cpu(
    const Tensor& x_, const Tensor& w_ih_, const OptTensor& bias_, const Tensor& hx_,
    const OptTensor& cx_, const Tensor& w_hh_, const OptTensor& mask_,
    const OptTensor& lengths_, int64_t cell, int64_t gate, bool need_reserve) {
  const char* where = "family_layer_x";
  check_cell_gate(cell, gate, where);
  TORCH_CHECK(cell == kLstm || cell == kRnnTanh || cell == kRnnRelu, where,
              ": takes the LSTM and the RNNs (cells 2, 3, 4); the GRU's cells take gx "
              "(family_layer); got cell ", cell);
  TORCH_CHECK(x_.dim() == 3, where, ": x must be [T, B, I], got ", x_.sizes());
  check_lead(x_, "x", where);
  TORCH_CHECK(w_ih_.dim() == 3 && w_ih_.size(2) == x_.size(2), where,
              ": w_ih must be [D, G, I] with I = x.size(2) = ", x_.size(2), ", got ", w_ih_.sizes());
  TORCH_CHECK(w_ih_.device() == x_.device() && w_ih_.scalar_type() == x_.scalar_type(), where,
              ": w_ih (", w_ih_.scalar_type(), " on ", w_ih_.device(), ") must match x (",
              x_.scalar_type(), " on ", x_.device(), ")");
  Shape s = check_rest(x_.size(0), x_.size(1), w_ih_.size(0), w_ih_.size(1), x_, hx_, cx_, w_hh_,
                       std::nullopt, mask_, lengths_, cell, gate, where, "x", "w_ih.size(0)",
                       "w_ih.size(1)");
  s.I = x_.size(2);
  if (bias_) check_same(*bias_, x_, "bias", {s.D, s.G()}, where, "x");
  const Tensor x = x_.contiguous(), w_ih = w_ih_.contiguous();
  const OptTensor bias = contig(bias_);
  return run_forward(s, x, hx_, cx_, w_hh_, std::nullopt, mask_, lengths_, need_reserve,
                     [&](auto& a) {
                       using T = typename std::decay_t<decltype(a)>::value_type;
                       a.x = x.const_data_ptr<T>(), a.w_ih = w_ih.const_data_ptr<T>();
                       a.bias = static_cast<const T*>(ptr_or_null(bias));
                     });
}

// A CPU buffer from cpu_pool (huge pages, freed buffers reused): for the large tensors
// the family op's caller makes every step of training (the input projection and its
// gradient), whose fresh pages would otherwise fault in on every call.
Tensor pooled_empty_op(at::IntArrayRef size, at::ScalarType dtype) {
  return pooled_empty(size, at::TensorOptions().dtype(dtype));
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(gru_torch, m) {
  m.def("_pooled_empty(int[] size, ScalarType dtype) -> Tensor", &pooled_empty_op);
  m.def(
      "family_layer(Tensor gx, Tensor hx, Tensor? cx, Tensor w_hh, Tensor? b_hn, "
      "Tensor? mask, Tensor? lengths, int cell, int gate, bool need_reserve) "
      "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor reserve)");
  m.def(
      "family_layer_x(Tensor x, Tensor w_ih, Tensor? bias, Tensor hx, Tensor? cx, "
      "Tensor w_hh, Tensor? mask, Tensor? lengths, int cell, int gate, bool need_reserve) "
      "-> (Tensor output, Tensor h_n, Tensor c_n, Tensor reserve)");
  // gx: only its shape, dtype and device are read (the gradient's)
  m.def(
      "family_layer_backward(Tensor grad_output, Tensor grad_h_n, Tensor? grad_c_n, "
      "Tensor gx, Tensor hx, Tensor? cx, Tensor w_hh, Tensor? b_hn, Tensor? mask, "
      "Tensor? lengths, int cell, int gate, Tensor reserve, Tensor output) "
      "-> (Tensor grad_gx, Tensor grad_hx, Tensor grad_cx)");
}

TORCH_LIBRARY_IMPL(gru_torch, CPU, m) {
  m.impl("family_layer", &family_layer_cpu);
  m.impl("family_layer_x", &family_layer_x_cpu);
  m.impl("family_layer_backward", &family_layer_backward_cpu);
}

}  // namespace gru_torch::cpu::family
