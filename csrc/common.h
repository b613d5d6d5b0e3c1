// Host-side argument handling shared by the CPU ops (cpu_ops.cpp) and the CUDA
// binding (cuda_ops.cpp): validation, the op schemas, the choice of the compute
// dtype, and the contiguous views / temporaries the kernels work on.
//
// Light headers only (ATen/ATen.h), never torch/extension.h: the notes in
// /work/shared/toolchain-notes.md measure 16 s vs 47 s per build.
#pragma once

#include <ATen/ATen.h>

#include <initializer_list>
#include <optional>
#include <string>

#include "decide.h"

namespace dicache {

// Schemas of the four ops (identical for every backend namespace). The (x!)
// annotations list the tensors each op writes in place.
constexpr const char* kProbeDecideSchema =
    "probe_decide(Tensor p, Tensor x, Tensor(a!) p_prev, Tensor? p_old, Tensor(b!)? x_prev, "
    "Tensor(c!) acc, Tensor den, Tensor(d!) sums, Tensor(e!) flag, Tensor(f!) gamma, "
    "float threshold, float gamma_lo, float gamma_hi, int policy, int error_mode) -> ()";
constexpr const char* kReconstructSchema =
    "reconstruct(Tensor x, Tensor r_new, Tensor? r_old, Tensor gamma, Tensor(a!) out, "
    "Tensor? r_oldest=None, Tensor? c_oldest=None) -> ()";
constexpr const char* kRefreshSchema =
    "refresh(Tensor h, Tensor p, Tensor x, Tensor(a!) r_slot, Tensor(b!) p_slot, "
    "Tensor? p_other, Tensor(c!) den, Tensor(d!) acc) -> ()";
constexpr const char* kQuadBlendSchema =
    "quad_blend(Tensor gamma, Tensor(a!) w, Tensor(b!) c0, Tensor(c!) c2, float t0, float t1, float t2, "
    "Tensor? p=None, Tensor? x=None, Tensor? p0=None, Tensor? p1=None, Tensor? p2=None, "
    "int stride=1, int policy=0) -> ()";

// Not a kernel: raises ValueError("dicache exception probe") through the same TORCH_CHECK path as the ops'
// argument checks. dicache.build calls it in a separate process after each build: some toolchains link
// libraries whose C++ exceptions end the process (seen on a GPU machine whose CXX was a relocated g++).
constexpr const char* kExceptionProbeSchema = "_exception_probe() -> ()";
inline void exception_probe() { TORCH_CHECK_VALUE(false, "dicache exception probe"); }

// ---------------------------------------------------------------------------
// validation

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

// A [B, ...] image-token tensor: same shape and device as `like`, a float dtype.
inline void check_big(const char* name, const at::Tensor& t, const at::Tensor& like) {
  TORCH_CHECK_VALUE(t.sizes() == like.sizes(), name, " has shape ", t.sizes(), ", expected ",
                    like.sizes());
  TORCH_CHECK_VALUE(t.device() == like.device(), name, " is on ", t.device(), ", expected ",
                    like.device());
  TORCH_CHECK_TYPE(is_float_dtype(t.scalar_type()), name,
                   " must be a float tensor (fp32/fp16/bf16/fp64), got ", t.scalar_type());
}

// A small state tensor (acc, den, gamma, sums, flag): numel, dtype and device.
inline void check_state(const char* name, const at::Tensor& t, int64_t numel,
                        at::ScalarType dtype, const at::Device& device) {
  TORCH_CHECK_VALUE(t.numel() == numel, name, " must have ", numel, " elements, got shape ",
                    t.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, name, " must be ", dtype, ", got ",
                   t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == device, name, " is on ", t.device(), ", expected ", device);
}

inline void check_policy(int64_t policy, int64_t error_mode) {
  TORCH_CHECK_VALUE(policy == kPolicyGlobal || policy == kPolicyMax, "policy must be ",
                    kPolicyGlobal, " (global) or ", kPolicyMax, " (max), got ", policy);
  TORCH_CHECK_VALUE(error_mode == kErrorProbe || error_mode == kErrorProbeMinusInput,
                    "error_mode must be ", kErrorProbe, " or ", kErrorProbeMinusInput, ", got ",
                    error_mode);
}

// Samples (dim 0) and elements per sample of a [B, ...] tensor.
inline int64_t batch_of(const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.dim() >= 1, "expected a [B, ...] tensor, got a 0-dim one");
  return t.size(0);
}
inline int64_t row_of(const at::Tensor& t) {
  const int64_t B = t.size(0);
  return B == 0 ? 0 : t.numel() / B;
}

// ---------------------------------------------------------------------------
// compute dtype

// The dtype the kernels run in: the common dtype of all big tensors when they
// share one the backend supports natively; otherwise fp32 (every input is
// converted to fp32 exactly and every output goes through an fp32 temporary,
// which rounds exactly like the reference's ``out.copy_(fp32 result)``).
inline at::ScalarType compute_dtype(std::initializer_list<const at::Tensor*> tensors,
                                    bool (*native)(at::ScalarType)) {
  at::ScalarType common = at::ScalarType::Undefined;
  for (const at::Tensor* t : tensors) {
    if (t == nullptr) continue;
    if (common == at::ScalarType::Undefined) {
      common = t->scalar_type();
    } else if (t->scalar_type() != common) {
      return at::kFloat;
    }
  }
  return native(common) ? common : at::kFloat;
}

inline const at::Tensor* opt_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() ? &*t : nullptr;
}

// ---------------------------------------------------------------------------
// contiguous views and temporaries

// An input the kernel only reads: contiguous, in `dtype` (no copy when it already is).
inline at::Tensor as_input(const at::Tensor& t, at::ScalarType dtype) {
  return t.to(dtype).contiguous();
}
inline std::optional<at::Tensor> as_input(const std::optional<at::Tensor>& t,
                                          at::ScalarType dtype) {
  if (!t.has_value()) return std::nullopt;
  return as_input(*t, dtype);
}

// An in-place output. `work` is what the kernel writes: the user's tensor when
// it is contiguous and in `dtype`, else a contiguous temporary (initialised
// from the user's tensor when the kernel also reads it) that finish() copies
// back, so strides never reach the kernels.
struct Output {
  at::Tensor user;
  at::Tensor work;

  Output() = default;
  Output(const at::Tensor& t, at::ScalarType dtype, bool kernel_reads) : user(t) {
    if (t.scalar_type() == dtype && t.is_contiguous()) {
      work = t;
    } else if (kernel_reads) {
      work = t.to(dtype).contiguous();  // a copy: t is non-contiguous or in another dtype
    } else {
      work = at::empty(t.sizes(), t.options().dtype(dtype));  // contiguous by default
    }
  }
  bool defined() const { return user.defined(); }
  void finish() {
    if (user.defined() && !work.is_same(user)) user.copy_(work);
  }
};

inline Output make_output(const std::optional<at::Tensor>& t, at::ScalarType dtype,
                          bool kernel_reads) {
  return t.has_value() ? Output(*t, dtype, kernel_reads) : Output();
}

// A state tensor the kernel writes: same logic with its own dtype, viewed flat.
inline Output state_output(const at::Tensor& t, bool kernel_reads) {
  return Output(t, t.scalar_type(), kernel_reads);
}

// ---------------------------------------------------------------------------
// Argument checks shared by the CPU and CUDA bindings (after the device check).

inline void check_probe_decide_args(const at::Tensor& p, const at::Tensor& x, const at::Tensor& p_prev,
                                    const std::optional<at::Tensor>& p_old,
                                    const std::optional<at::Tensor>& x_prev, const at::Tensor& acc,
                                    const at::Tensor& den, const at::Tensor& sums, const at::Tensor& flag,
                                    const at::Tensor& gamma) {
  const int64_t B = batch_of(p);
  check_big("p", p, p);
  check_big("x", x, p);
  check_big("p_prev", p_prev, p);
  if (p_old) check_big("p_old", *p_old, p);
  if (x_prev) check_big("x_prev", *x_prev, p);
  check_state("acc", acc, B, at::kFloat, p.device());
  check_state("den", den, B, at::kFloat, p.device());
  check_state("sums", sums, B * kNumSums, at::kFloat, p.device());
  check_state("flag", flag, 1, at::kInt, p.device());
  check_state("gamma", gamma, B, at::kFloat, p.device());
}

inline void check_reconstruct_args(const at::Tensor& x, const at::Tensor& r_new,
                                   const std::optional<at::Tensor>& r_old, const at::Tensor& gamma,
                                   const at::Tensor& out, const std::optional<at::Tensor>& r_oldest,
                                   const std::optional<at::Tensor>& c_oldest) {
  check_big("r_new", r_new, x);
  if (r_old) check_big("r_old", *r_old, x);
  check_big("out", out, x);
  check_state("gamma", gamma, batch_of(x), at::kFloat, x.device());
  TORCH_CHECK_VALUE(r_oldest.has_value() == c_oldest.has_value(), "r_oldest and c_oldest go together");
  if (r_oldest) {
    TORCH_CHECK_VALUE(r_old.has_value(), "r_oldest needs r_old");
    check_big("r_oldest", *r_oldest, x);
    check_state("c_oldest", *c_oldest, batch_of(x), at::kFloat, x.device());
  }
}

inline void check_refresh_args(const at::Tensor& h, const at::Tensor& p, const at::Tensor& x,
                               const at::Tensor& r_slot, const at::Tensor& p_slot,
                               const std::optional<at::Tensor>& p_other, const at::Tensor& den,
                               const at::Tensor& acc) {
  const int64_t B = batch_of(h);
  check_big("p", p, h);
  check_big("x", x, h);
  check_big("r_slot", r_slot, h);
  check_big("p_slot", p_slot, h);
  if (p_other) check_big("p_other", *p_other, h);
  check_state("den", den, B, at::kFloat, h.device());
  check_state("acc", acc, B, at::kFloat, h.device());
}

// quad_blend: gamma, w, c0, c2 are [B] fp32 on one device; p, x, p0, p1, p2 all given (same shape,
// batch B, on that device) or none. Returns true when the probe tensors are given (w is fitted).
inline bool check_quad_blend_args(const at::Tensor& gamma, const at::Tensor& w, const at::Tensor& c0,
                                  const at::Tensor& c2, const std::optional<at::Tensor>& p,
                                  const std::optional<at::Tensor>& x, const std::optional<at::Tensor>& p0,
                                  const std::optional<at::Tensor>& p1, const std::optional<at::Tensor>& p2,
                                  int64_t stride, int64_t policy) {
  const int64_t B = gamma.numel();
  check_state("gamma", gamma, B, at::kFloat, gamma.device());
  check_state("w", w, B, at::kFloat, gamma.device());
  check_state("c0", c0, B, at::kFloat, gamma.device());
  check_state("c2", c2, B, at::kFloat, gamma.device());
  const int given = int(p.has_value()) + int(x.has_value()) + int(p0.has_value()) + int(p1.has_value()) +
                    int(p2.has_value());
  TORCH_CHECK_VALUE(given == 0 || given == 5,
                    "p, x, p0, p1 and p2 go together (all given to fit w, or none to read it)");
  TORCH_CHECK_VALUE(stride >= 1, "stride must be >= 1, got ", stride);
  TORCH_CHECK_VALUE(policy == kPolicyGlobal || policy == kPolicyMax, "policy must be ", kPolicyGlobal,
                    " (global) or ", kPolicyMax, " (max), got ", policy);
  if (given == 0) return false;
  TORCH_CHECK_VALUE(batch_of(*p) == B, "p has batch ", p->size(0), ", expected ", B, " (gamma's numel)");
  TORCH_CHECK_VALUE(p->device() == gamma.device(), "p is on ", p->device(), ", expected ", gamma.device());
  check_big("p", *p, *p);
  check_big("x", *x, *p);
  check_big("p0", *p0, *p);
  check_big("p1", *p1, *p);
  check_big("p2", *p2, *p);
  return true;
}

// quad_blend's fit runs on every `stride`-th index of dim 1 of a [B, N, ...] tensor (a [B] tensor: its
// one element per sample): rows of `inner` elements each, `rows` of them per sample, `row_step`
// elements apart.
struct FitLayout {
  int64_t rows;      // ceil(N / stride)
  int64_t inner;     // elements per index of dim 1
  int64_t row_step;  // stride * inner
};
inline FitLayout fit_layout(const at::Tensor& p, int64_t stride) {
  const int64_t B = p.size(0);
  const int64_t N = p.dim() >= 2 ? p.size(1) : 1;
  const int64_t inner = (B == 0 || N == 0) ? 0 : p.numel() / (B * N);
  // a stride past N leaves row 0 alone: clamp it (s * inner then cannot overflow)
  const int64_t s = p.dim() >= 2 ? (stride < N ? stride : (N > 0 ? N : 1)) : 1;
  return FitLayout{N == 0 ? 0 : (N + s - 1) / s, inner, s * inner};
}

}  // namespace dicache
