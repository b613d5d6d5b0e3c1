// Torch binding of the CUDA kernels (backend="cuda"): argument checks, dtype
// and contiguity handling, workspace and stream, then one kernel launch per op.
// Registered as torch.ops.dicache_cuda.{probe_decide,reconstruct,refresh,quad_blend}
// for CUDA tensors; dicache/ops/cuda_backend.py wraps them.
//
// Light headers: ATen/ATen.h, torch/library.h and c10/cuda/*.h — not
// ATen/cuda/CUDAContext.h (needs cuBLAS/cuSPARSE headers) nor torch/extension.h.
//
// Workspace: reductions write per-block partials into a fresh buffer from the
// caching allocator (stream-ordered, no initialisation needed) and take an
// atomic ticket from an int32 counter kept per (device, stream). The kernels
// leave the counter at zero (atomicInc wraps), so it is zeroed only once, when
// it is created. Run each op once before capturing a CUDA graph so that the
// counter of the capture stream exists (the usual warm-up).

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <utility>
#include <vector>

#include "common.h"
#include "cuda_kernels.h"
#include "decide.h"

namespace dicache {
namespace cuda {
namespace {

bool cuda_native(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

DType kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: return DType::kFloat32;
  }
}

void check_cuda(const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.is_cuda(), "dicache_cuda ops run on CUDA tensors, got ", t.device());
  TORCH_CHECK_VALUE(t.dim() < 1 || t.size(0) <= 65535, "batch ", t.size(0),
                    " exceeds the grid's y limit (65535)");
}

int sm_count(int device) {
  static std::mutex mu;
  static std::vector<int> cache;
  std::lock_guard<std::mutex> lock(mu);
  if (device >= static_cast<int>(cache.size())) cache.resize(device + 1, 0);
  if (cache[device] == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&cache[device], cudaDevAttrMultiProcessorCount, device));
  }
  return cache[device];
}

// The ticket counter of this (device, stream); created zeroed on first use.
// The map is leaked on purpose: destroying CUDA tensors from a static
// destructor at exit can run after the caching allocator is gone.
unsigned int* ticket(const at::Device& device, cudaStream_t stream) {
  static std::mutex mu;
  static auto* counters = new std::map<std::pair<int, cudaStream_t>, at::Tensor>();
  std::lock_guard<std::mutex> lock(mu);
  auto key = std::make_pair(static_cast<int>(device.index()), stream);
  auto it = counters->find(key);
  if (it == counters->end()) {
    it = counters->emplace(key, at::zeros({1}, at::TensorOptions().device(device).dtype(at::kInt)))
             .first;
  }
  return reinterpret_cast<unsigned int*>(it->second.data_ptr<int32_t>());
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % kVectorBytes == 0; }

// True when the 16-byte path applies: all pointers aligned, rows a whole number of vectors.
bool can_vectorize(DType dt, int64_t L, std::initializer_list<const void*> ptrs) {
  if (L % vector_width(dt) != 0) return false;
  for (const void* p : ptrs) {
    if (p != nullptr && !aligned16(p)) return false;
  }
  return true;
}

template <typename T>
const void* ptr_or_null(const std::optional<T>& t) {
  return t.has_value() ? t->data_ptr() : nullptr;
}

// ---------------------------------------------------------------------------

void probe_decide(const at::Tensor& p, const at::Tensor& x, const at::Tensor& p_prev,
                  const std::optional<at::Tensor>& p_old, const std::optional<at::Tensor>& x_prev,
                  const at::Tensor& acc, const at::Tensor& den, const at::Tensor& sums,
                  const at::Tensor& flag, const at::Tensor& gamma, double threshold,
                  double gamma_lo, double gamma_hi, int64_t policy, int64_t error_mode) {
  check_policy(policy, error_mode);
  const bool xd = error_mode == kErrorProbeMinusInput;
  TORCH_CHECK_VALUE(!xd || x_prev.has_value(), "error_mode=ERROR_PROBE_MINUS_INPUT needs x_prev");
  check_cuda(p);
  const int64_t B = batch_of(p), L = row_of(p);
  check_probe_decide_args(p, x, p_prev, p_old, x_prev, acc, den, sums, flag, gamma);

  c10::cuda::CUDAGuard guard(p.device());
  if (B == 0) {  // nothing to reduce; all() over no samples is true, as in the reference
    flag.fill_(1);
    return;
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(p.device().index()).stream();
  const at::ScalarType st =
      compute_dtype({&p, &x, &p_prev, opt_ptr(p_old), opt_ptr(x_prev)}, cuda_native);
  const DType dt = kernel_dtype(st);
  const at::Tensor cp = as_input(p, st), cx = as_input(x, st);
  const std::optional<at::Tensor> cpo = as_input(p_old, st);
  Output pp(p_prev, st, /*kernel_reads=*/true);
  Output xp = make_output(x_prev, st, /*kernel_reads=*/xd);
  Output sums_o = state_output(sums, false), acc_o = state_output(acc, true);
  Output gamma_o = state_output(gamma, false), flag_o = state_output(flag, false);
  const at::Tensor den_c = den.contiguous();

  ProbeArgs a{};
  a.p = cp.data_ptr();
  a.x = cx.data_ptr();
  a.p_prev = pp.work.data_ptr();
  a.p_old = ptr_or_null(cpo);
  a.x_prev = xp.defined() ? xp.work.data_ptr() : nullptr;
  a.acc = acc_o.work.data_ptr<float>();
  a.den = den_c.data_ptr<float>();
  a.sums = sums_o.work.data_ptr<float>();
  a.flag = flag_o.work.data_ptr<int32_t>();
  a.gamma = gamma_o.work.data_ptr<float>();
  a.B = B;
  a.L = L;
  a.threshold = static_cast<float>(threshold);
  a.gamma_lo = static_cast<float>(gamma_lo);
  a.gamma_hi = static_cast<float>(gamma_hi);
  a.policy = static_cast<int>(policy);
  a.error_mode = static_cast<int>(error_mode);
  a.vectorized = can_vectorize(dt, L, {a.p, a.x, a.p_prev, a.p_old, a.x_prev});
  a.blocks_per_row =
      blocks_per_row(a.vectorized ? L / vector_width(dt) : L, B, sm_count(p.device().index()));
  const at::Tensor partials =
      at::empty({B * a.blocks_per_row * kNumSums}, p.options().dtype(at::kFloat));
  a.partials = partials.data_ptr<float>();
  a.ticket = ticket(p.device(), stream);
  C10_CUDA_CHECK(launch_probe_decide(dt, a, stream));

  pp.finish();
  xp.finish();
  sums_o.finish();
  acc_o.finish();
  gamma_o.finish();
  flag_o.finish();
}

void reconstruct(const at::Tensor& x, const at::Tensor& r_new,
                 const std::optional<at::Tensor>& r_old, const at::Tensor& gamma,
                 const at::Tensor& out, const std::optional<at::Tensor>& r_oldest,
                 const std::optional<at::Tensor>& c_oldest) {
  check_cuda(x);
  const int64_t B = batch_of(x), L = row_of(x);
  check_reconstruct_args(x, r_new, r_old, gamma, out, r_oldest, c_oldest);
  if (B == 0 || L == 0) return;

  c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  const at::ScalarType st =
      compute_dtype({&x, &r_new, opt_ptr(r_old), &out, opt_ptr(r_oldest)}, cuda_native);
  const DType dt = kernel_dtype(st);
  const at::Tensor cx = as_input(x, st), crn = as_input(r_new, st);
  const std::optional<at::Tensor> cro = as_input(r_old, st), cr3 = as_input(r_oldest, st);
  const at::Tensor g = gamma.contiguous();
  const std::optional<at::Tensor> c3 =
      c_oldest ? std::optional<at::Tensor>(c_oldest->contiguous()) : std::nullopt;
  Output o(out, st, /*kernel_reads=*/false);

  ReconstructArgs a{};
  a.x = cx.data_ptr();
  a.r_new = crn.data_ptr();
  a.r_old = ptr_or_null(cro);
  a.gamma = g.data_ptr<float>();
  a.r_oldest = ptr_or_null(cr3);
  a.c_oldest = c3 ? c3->data_ptr<float>() : nullptr;
  a.out = o.work.data_ptr();
  a.B = B;
  a.L = L;
  a.vectorized = can_vectorize(dt, L, {a.x, a.r_new, a.r_old, a.r_oldest, a.out});
  a.blocks_per_row =
      blocks_per_row(a.vectorized ? L / vector_width(dt) : L, B, sm_count(x.device().index()));
  C10_CUDA_CHECK(launch_reconstruct(dt, a, stream));
  o.finish();
}

void refresh(const at::Tensor& h, const at::Tensor& p, const at::Tensor& x,
             const at::Tensor& r_slot, const at::Tensor& p_slot,
             const std::optional<at::Tensor>& p_other, const at::Tensor& den,
             const at::Tensor& acc) {
  check_cuda(h);
  const int64_t B = batch_of(h), L = row_of(h);
  check_refresh_args(h, p, x, r_slot, p_slot, p_other, den, acc);
  if (B == 0) return;

  c10::cuda::CUDAGuard guard(h.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(h.device().index()).stream();
  const at::ScalarType st =
      compute_dtype({&h, &p, &x, &r_slot, &p_slot, opt_ptr(p_other)}, cuda_native);
  const DType dt = kernel_dtype(st);
  const at::Tensor ch = as_input(h, st), cp = as_input(p, st), cx = as_input(x, st);
  const std::optional<at::Tensor> cpo = as_input(p_other, st);
  Output rs(r_slot, st, false), ps(p_slot, st, false);
  Output den_o = state_output(den, false), acc_o = state_output(acc, false);

  RefreshArgs a{};
  a.h = ch.data_ptr();
  a.p = cp.data_ptr();
  a.x = cx.data_ptr();
  a.r_slot = rs.work.data_ptr();
  a.p_slot = ps.work.data_ptr();
  a.p_other = ptr_or_null(cpo);
  a.den = den_o.work.data_ptr<float>();
  a.acc = acc_o.work.data_ptr<float>();
  a.B = B;
  a.L = L;
  // The fp32 path (mixed dtypes) rounds p - x to the slot's own dtype when it is fp16/bf16.
  a.slot_dtype = dt;
  if (dt == DType::kFloat32 &&
      (p_slot.scalar_type() == at::kHalf || p_slot.scalar_type() == at::kBFloat16)) {
    a.slot_dtype = kernel_dtype(p_slot.scalar_type());
  }
  a.vectorized = can_vectorize(dt, L, {a.h, a.p, a.x, a.r_slot, a.p_slot, a.p_other});
  a.blocks_per_row =
      blocks_per_row(a.vectorized ? L / vector_width(dt) : L, B, sm_count(h.device().index()));
  at::Tensor partials;
  if (p_other) {
    partials = at::empty({B * a.blocks_per_row}, h.options().dtype(at::kFloat));
    a.partials = partials.data_ptr<float>();
    a.ticket = ticket(h.device(), stream);
  }
  C10_CUDA_CHECK(launch_refresh(dt, a, stream));
  rs.finish();
  ps.finish();
  den_o.finish();
  acc_o.finish();
}

void quad_blend(const at::Tensor& gamma, const at::Tensor& w, const at::Tensor& c0,
                const at::Tensor& c2, double t0, double t1, double t2,
                const std::optional<at::Tensor>& p, const std::optional<at::Tensor>& x,
                const std::optional<at::Tensor>& p0, const std::optional<at::Tensor>& p1,
                const std::optional<at::Tensor>& p2, int64_t stride, int64_t policy) {
  TORCH_CHECK_VALUE(gamma.is_cuda(), "dicache_cuda ops run on CUDA tensors, got ", gamma.device());
  const bool fit = check_quad_blend_args(gamma, w, c0, c2, p, x, p0, p1, p2, stride, policy);
  if (fit) check_cuda(*p);  // the batch is the grid's y
  const int64_t B = gamma.numel();
  if (B == 0) return;

  c10::cuda::CUDAGuard guard(gamma.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(gamma.device().index()).stream();
  const at::Tensor g = gamma.contiguous();
  Output w_o = state_output(w, /*kernel_reads=*/!fit);  // read when it is not fitted
  Output c0_o = state_output(c0, false), c2_o = state_output(c2, false);

  QuadBlendArgs a{};
  a.fit = fit;
  a.gamma = g.data_ptr<float>();
  a.w = w_o.work.data_ptr<float>();
  a.c0 = c0_o.work.data_ptr<float>();
  a.c2 = c2_o.work.data_ptr<float>();
  a.B = B;
  a.t0 = static_cast<float>(t0);
  a.t1 = static_cast<float>(t1);
  a.t2 = static_cast<float>(t2);
  a.policy = static_cast<int>(policy);
  a.blocks_per_row = 1;
  DType dt = DType::kFloat32;
  at::Tensor cp, cx, cp0, cp1, cp2, partials;
  if (fit) {
    const at::ScalarType st = compute_dtype({&*p, &*x, &*p0, &*p1, &*p2}, cuda_native);
    dt = kernel_dtype(st);
    cp = as_input(*p, st);
    cx = as_input(*x, st);
    cp0 = as_input(*p0, st);
    cp1 = as_input(*p1, st);
    cp2 = as_input(*p2, st);
    const FitLayout lay = fit_layout(*p, stride);
    a.p = cp.data_ptr();
    a.x = cx.data_ptr();
    a.p0 = cp0.data_ptr();
    a.p1 = cp1.data_ptr();
    a.p2 = cp2.data_ptr();
    a.L = row_of(*p);
    a.rows = lay.rows;
    a.inner = lay.inner;
    a.row_step = lay.row_step;
    // At least one block per sample (N = 0 included): the last one runs the epilogue.
    a.blocks_per_row = blocks_per_row(lay.rows * lay.inner, B, sm_count(gamma.device().index()));
    // [B][blocks_per_row][2] partials, then the [B][2] per-sample sums.
    partials = at::empty({B * (a.blocks_per_row + 1) * 2}, g.options());
    a.partials = partials.data_ptr<float>();
    a.ticket = ticket(gamma.device(), stream);
  }
  C10_CUDA_CHECK(launch_quad_blend(dt, a, stream));
  w_o.finish();
  c0_o.finish();
  c2_o.finish();
}

}  // namespace
}  // namespace cuda
}  // namespace dicache

TORCH_LIBRARY(dicache_cuda, m) {
  m.def(dicache::kProbeDecideSchema);
  m.def(dicache::kReconstructSchema);
  m.def(dicache::kRefreshSchema);
  m.def(dicache::kQuadBlendSchema);
  m.def(dicache::kExceptionProbeSchema, &dicache::exception_probe);
}

TORCH_LIBRARY_IMPL(dicache_cuda, CUDA, m) {
  m.impl("probe_decide", &dicache::cuda::probe_decide);
  m.impl("reconstruct", &dicache::cuda::reconstruct);
  m.impl("refresh", &dicache::cuda::refresh);
  m.impl("quad_blend", &dicache::cuda::quad_blend);
}
