// CUDA kernels of the fused cache ops (backend="cuda"): probe_decide,
// reconstruct, refresh and quad_blend.
//
// Semantics: dicache/ops/reference.py. One launch per op:
//
// * grid = (blocks_per_row, B): blockIdx.y is the sample, blockIdx.x strides
//   over that sample's L elements (grid-stride loop);
// * 16-byte vectorized loads and stores (4 fp32 / 8 fp16 or bf16 per thread and
//   tensor) when every pointer is 16-byte aligned and L is a multiple of the
//   vector width, else the same code with one element per thread;
// * fp32 arithmetic and accumulation, block sums by warp shuffles;
// * reductions write one partial per block (no float atomics: the result does
//   not depend on scheduling); the last block to finish, found with an atomic
//   ticket, adds the partials in a fixed order and runs the epilogue on the
//   device (decision, gamma, den) — nothing goes back to the host;
// * reconstruct reads gamma from device memory;
// * quad_blend reads its subsample (every stride-th index of dim 1) with scalar
//   loads (a strided subsample is not 16-byte aligned in general, and it is
//   small) and runs decide.h::quad_blend_finish in its last block.
//
// Only CUDA headers here (no ATen): see cuda_kernels.h.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "cuda_kernels.h"
#include "decide.h"

namespace dicache {
namespace cuda {
namespace {

// ---------------------------------------------------------------------------
// conversions and vector access

template <typename T>
struct Cvt;
template <>
struct Cvt<float> {
  static __device__ __forceinline__ float to(float v) { return v; }
  static __device__ __forceinline__ float from(float v) { return v; }
};
template <>
struct Cvt<__half> {
  static __device__ __forceinline__ float to(__half v) { return __half2float(v); }
  static __device__ __forceinline__ __half from(float v) { return __float2half_rn(v); }
};
template <>
struct Cvt<__nv_bfloat16> {
  static __device__ __forceinline__ float to(__nv_bfloat16 v) { return __bfloat162float(v); }
  static __device__ __forceinline__ __nv_bfloat16 from(float v) { return __float2bfloat16_rn(v); }
};

// v rounded to what storing it as R and reading it back gives.
template <typename R>
__device__ __forceinline__ float round_to(float v) {
  return Cvt<R>::to(Cvt<R>::from(v));
}

// VEC elements loaded / stored with one instruction (16 bytes when VEC > 1).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ Pack<T, VEC> load(const void* base, int64_t i) {
  return reinterpret_cast<const Pack<T, VEC>*>(base)[i];
}
template <typename T, int VEC>
__device__ __forceinline__ void store(void* base, int64_t i, const Pack<T, VEC>& v) {
  reinterpret_cast<Pack<T, VEC>*>(base)[i] = v;
}

// ---------------------------------------------------------------------------
// block reduction and the last-block ticket

// Sums v[0..N) over the block; the totals end up in thread 0. Fixed order.
template <int N>
__device__ __forceinline__ void block_sum(float (&v)[N]) {
  __shared__ float warp_sums[kThreads / 32][N];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
  for (int k = 0; k < N; ++k) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v[k] += __shfl_down_sync(0xffffffffu, v[k], o);
  }
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < N; ++k) warp_sums[warp][k] = v[k];
  }
  __syncthreads();
  if (warp == 0) {
    constexpr int kWarps = kThreads / 32;
#pragma unroll
    for (int k = 0; k < N; ++k) {
      v[k] = lane < kWarps ? warp_sums[lane][k] : 0.0f;
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) v[k] += __shfl_down_sync(0xffffffffu, v[k], o);
    }
  }
}

// Thread 0 of each block has written its partial sums: publish them and take a
// ticket. Returns true (in every thread) in the last block of the grid.
// atomicInc wraps to 0 at total - 1, so the counter is left zero for the next
// launch on this stream without a memset.
__device__ __forceinline__ bool last_block(unsigned int* ticket) {
  __shared__ bool is_last;
  if (threadIdx.x == 0) {
    __threadfence();  // partials visible to the whole device before the ticket
    const unsigned int total = gridDim.x * gridDim.y;
    is_last = atomicInc(ticket, total - 1) == total - 1;
  }
  __syncthreads();
  return is_last;
}

// Last block: out[b * N + k] = sum over the nb block partials of sample b
// (partials laid out [B][nb][N]). One warp per sample: each lane adds a strided
// subset, then a shuffle tree: a fixed order, so the result is reproducible.
template <int N>
__device__ __forceinline__ void combine_partials(const float* partials, int64_t B, int64_t nb,
                                                 float* out) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t b = warp; b < B; b += kThreads / 32) {
    float v[N];
#pragma unroll
    for (int k = 0; k < N; ++k) v[k] = 0.f;
    for (int64_t c = lane; c < nb; c += 32) {
      const float* part = partials + (b * nb + c) * N;
#pragma unroll
      for (int k = 0; k < N; ++k) v[k] += __ldcg(part + k);  // L2: written by other blocks
    }
#pragma unroll
    for (int k = 0; k < N; ++k) {
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) v[k] += __shfl_down_sync(0xffffffffu, v[k], o);
    }
    if (lane == 0) {
#pragma unroll
      for (int k = 0; k < N; ++k) out[b * N + k] = v[k];
    }
  }
}

// ---------------------------------------------------------------------------
// probe_decide

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) probe_decide_kernel(ProbeArgs a) {
  const bool old = a.p_old != nullptr;
  const bool xd = a.error_mode == kErrorProbeMinusInput;
  const bool xc = a.x_prev != nullptr;
  const int64_t b = blockIdx.y;
  const int64_t n = a.L / VEC;  // vectors per row (VEC divides L when VEC > 1)
  const int64_t row = b * n;
  float s[kNumSums] = {0.f, 0.f, 0.f, 0.f, 0.f};

  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t j = row + i;
    const Pack<T, VEC> vp = load<T, VEC>(a.p, j);
    const Pack<T, VEC> vpp = load<T, VEC>(a.p_prev, j);
    Pack<T, VEC> vx, vpo, vxp;
    if (old || xd || xc) vx = load<T, VEC>(a.x, j);
    if (old) vpo = load<T, VEC>(a.p_old, j);
    if (xd) vxp = load<T, VEC>(a.x_prev, j);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const float fp = Cvt<T>::to(vp.v[k]), fpp = Cvt<T>::to(vpp.v[k]);
      s[kSumProbeDiff] += fabsf(fp - fpp);
      s[kSumProbePrev] += fabsf(fpp);
      if (old) s[kSumAlign] += fabsf((fp - Cvt<T>::to(vx.v[k])) - Cvt<T>::to(vpo.v[k]));
      if (xd) {
        const float fx = Cvt<T>::to(vx.v[k]), fxp = Cvt<T>::to(vxp.v[k]);
        s[kSumInputDiff] += fabsf(fx - fxp);
        s[kSumInputPrev] += fabsf(fxp);
      }
    }
    // The next call's baselines (raw copies, exact).
    store<T, VEC>(a.p_prev, j, vp);
    if (xc) store<T, VEC>(a.x_prev, j, vx);
  }

  block_sum(s);
  if (threadIdx.x == 0) {
    float* part = a.partials + (b * gridDim.x + blockIdx.x) * kNumSums;
#pragma unroll
    for (int k = 0; k < kNumSums; ++k) part[k] = s[k];
  }
  if (!last_block(a.ticket)) return;

  // Last block: per-sample totals, then the decision.
  combine_partials<kNumSums>(a.partials, a.B, gridDim.x, a.sums);
  __syncthreads();  // sums visible to thread 0
  if (threadIdx.x == 0) {
    decide(a.B, a.sums, a.den, a.acc, a.gamma, a.flag, a.threshold, a.gamma_lo, a.gamma_hi,
           a.policy, a.error_mode, old);
  }
}

// ---------------------------------------------------------------------------
// reconstruct

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) reconstruct_kernel(ReconstructArgs a) {
  const bool old = a.r_old != nullptr;
  const bool oldest = old && a.r_oldest != nullptr;
  const int64_t b = blockIdx.y;
  const float g = old ? a.gamma[b] : 1.0f;  // device memory: no host round trip
  const float c = oldest ? a.c_oldest[b] : 0.0f;
  const int64_t n = a.L / VEC;
  const int64_t row = b * n;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t j = row + i;
    const Pack<T, VEC> vx = load<T, VEC>(a.x, j);
    const Pack<T, VEC> vn = load<T, VEC>(a.r_new, j);
    Pack<T, VEC> vo, v3, out;
    if (old) vo = load<T, VEC>(a.r_old, j);
    if (oldest) v3 = load<T, VEC>(a.r_oldest, j);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const float fx = Cvt<T>::to(vx.v[k]), fn = Cvt<T>::to(vn.v[k]);
      // (x + r_old) + g * (r_new - r_old) [+ c * (r_oldest - r_old)], each step rounded as in the
      // reference (no FMA).
      float h = old ? __fadd_rn(__fadd_rn(fx, Cvt<T>::to(vo.v[k])),
                                __fmul_rn(g, __fsub_rn(fn, Cvt<T>::to(vo.v[k]))))
                    : __fadd_rn(fx, fn);
      if (oldest) h = __fadd_rn(h, __fmul_rn(c, __fsub_rn(Cvt<T>::to(v3.v[k]), Cvt<T>::to(vo.v[k]))));
      out.v[k] = Cvt<T>::from(h);
    }
    store<T, VEC>(a.out, j, out);
  }
}

// ---------------------------------------------------------------------------
// refresh

// T: dtype of every tensor the kernel sees; R: dtype p_slot is finally stored in.
template <typename T, typename R, int VEC>
__global__ void __launch_bounds__(kThreads) refresh_kernel(RefreshArgs a) {
  const bool other = a.p_other != nullptr;
  const int64_t b = blockIdx.y;
  const int64_t n = a.L / VEC;
  const int64_t row = b * n;
  float s[1] = {0.f};
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t j = row + i;
    const Pack<T, VEC> vh = load<T, VEC>(a.h, j);
    const Pack<T, VEC> vp = load<T, VEC>(a.p, j);
    const Pack<T, VEC> vx = load<T, VEC>(a.x, j);
    Pack<T, VEC> vo, r, ps;
    if (other) vo = load<T, VEC>(a.p_other, j);
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const float fx = Cvt<T>::to(vx.v[k]);
      r.v[k] = Cvt<T>::from(__fsub_rn(Cvt<T>::to(vh.v[k]), fx));
      // The value p_slot will hold; den is computed from it, as in the reference.
      const float stored = round_to<R>(round_to<T>(__fsub_rn(Cvt<T>::to(vp.v[k]), fx)));
      ps.v[k] = Cvt<T>::from(stored);
      if (other) s[0] += fabsf(stored - Cvt<T>::to(vo.v[k]));
    }
    store<T, VEC>(a.r_slot, j, r);
    store<T, VEC>(a.p_slot, j, ps);
  }

  if (!other) {  // den = 0, acc = 0: no reduction, no ticket
    if (blockIdx.x == 0 && blockIdx.y == 0) {
      for (int64_t t = threadIdx.x; t < a.B; t += kThreads) {
        a.den[t] = 0.f;
        a.acc[t] = 0.f;
      }
    }
    return;
  }
  block_sum(s);
  if (threadIdx.x == 0) a.partials[b * gridDim.x + blockIdx.x] = s[0];
  if (!last_block(a.ticket)) return;
  combine_partials<1>(a.partials, a.B, gridDim.x, a.den);
  for (int64_t t = threadIdx.x; t < a.B; t += kThreads) a.acc[t] = 0.f;
}

// ---------------------------------------------------------------------------
// quad_blend

// The fit sums of sample blockIdx.y over its subsample, in the reference's order of fp32 operations
// (no FMA; only the order of the additions differs):
//   d21 = P2 - P1,  miss = ((p - x) - P1) - g d21,  bend = (l2 - g) d21 + l0 (P0 - P1).
// The subsample is `rows` runs of `inner` contiguous elements, `row_step` apart: a flat index i
// of rows * inner is run r = i / inner, column i - r * inner. Then the last block to finish
// combines the partials and runs the epilogue.
template <typename T>
__global__ void __launch_bounds__(kThreads) quad_blend_fit_kernel(QuadBlendArgs a) {
  const int64_t b = blockIdx.y;
  const float g = a.gamma[b];  // each block derives its sample's weights itself
  float l0, l2;
  lagrange_weights(g, a.t0, a.t1, a.t2, &l0, &l2);
  const float lg = __fsub_rn(l2, g);
  const T* p = static_cast<const T*>(a.p);
  const T* x = static_cast<const T*>(a.x);
  const T* p0 = static_cast<const T*>(a.p0);
  const T* p1 = static_cast<const T*>(a.p1);
  const T* p2 = static_cast<const T*>(a.p2);
  const int64_t m = a.rows * a.inner;  // subsampled elements per sample (inner > 0 when m > 0)
  const int64_t base = b * a.L;
  float s[2] = {0.f, 0.f};
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < m;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t r = i / a.inner;
    const int64_t j = base + r * a.row_step + (i - r * a.inner);
    const float v1 = Cvt<T>::to(p1[j]);
    const float d21 = __fsub_rn(Cvt<T>::to(p2[j]), v1);
    const float miss = __fsub_rn(__fsub_rn(__fsub_rn(Cvt<T>::to(p[j]), Cvt<T>::to(x[j])), v1),
                                 __fmul_rn(g, d21));
    const float bend =
        __fadd_rn(__fmul_rn(lg, d21), __fmul_rn(l0, __fsub_rn(Cvt<T>::to(p0[j]), v1)));
    s[0] += miss * bend;
    s[1] += bend * bend;
  }

  // Every block writes its partial, even one without elements (N = 0: sums 0, w = 0), so that
  // the last block always runs the epilogue.
  block_sum(s);
  if (threadIdx.x == 0) {
    float* part = a.partials + (b * gridDim.x + blockIdx.x) * 2;
    part[0] = s[0];
    part[1] = s[1];
  }
  if (!last_block(a.ticket)) return;

  // Last block: per-sample sums [B][2] after the partials in the workspace, then the epilogue.
  float* fit = a.partials + a.B * gridDim.x * 2;
  combine_partials<2>(a.partials, a.B, gridDim.x, fit);
  __syncthreads();  // fit visible to thread 0
  if (threadIdx.x == 0) {
    quad_blend_finish(a.B, a.gamma, fit, a.w, a.c0, a.c2, a.t0, a.t1, a.t2, a.policy);
  }
}

// No probe tensors: w is read; the epilogue alone (one block of one thread).
__global__ void quad_blend_weights_kernel(QuadBlendArgs a) {
  quad_blend_finish(a.B, a.gamma, nullptr, a.w, a.c0, a.c2, a.t0, a.t1, a.t2, a.policy);
}

// ---------------------------------------------------------------------------
// launchers

dim3 grid_of(int blocks_per_row, int64_t B) {
  return dim3(static_cast<unsigned int>(blocks_per_row), static_cast<unsigned int>(B), 1);
}

template <typename T>
cudaError_t probe_launch(const ProbeArgs& a, cudaStream_t stream) {
  constexpr int V = kVectorBytes / sizeof(T);
  if (a.vectorized) {
    probe_decide_kernel<T, V><<<grid_of(a.blocks_per_row, a.B), kThreads, 0, stream>>>(a);
  } else {
    probe_decide_kernel<T, 1><<<grid_of(a.blocks_per_row, a.B), kThreads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t reconstruct_launch(const ReconstructArgs& a, cudaStream_t stream) {
  constexpr int V = kVectorBytes / sizeof(T);
  if (a.vectorized) {
    reconstruct_kernel<T, V><<<grid_of(a.blocks_per_row, a.B), kThreads, 0, stream>>>(a);
  } else {
    reconstruct_kernel<T, 1><<<grid_of(a.blocks_per_row, a.B), kThreads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

template <typename T, typename R>
cudaError_t refresh_launch(const RefreshArgs& a, cudaStream_t stream) {
  constexpr int V = kVectorBytes / sizeof(T);
  if (a.vectorized) {
    refresh_kernel<T, R, V><<<grid_of(a.blocks_per_row, a.B), kThreads, 0, stream>>>(a);
  } else {
    refresh_kernel<T, R, 1><<<grid_of(a.blocks_per_row, a.B), kThreads, 0, stream>>>(a);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t quad_blend_launch(const QuadBlendArgs& a, cudaStream_t stream) {
  quad_blend_fit_kernel<T><<<grid_of(a.blocks_per_row, a.B), kThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_probe_decide(DType dtype, const ProbeArgs& a, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32: return probe_launch<float>(a, stream);
    case DType::kFloat16: return probe_launch<__half>(a, stream);
    case DType::kBFloat16: return probe_launch<__nv_bfloat16>(a, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_reconstruct(DType dtype, const ReconstructArgs& a, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32: return reconstruct_launch<float>(a, stream);
    case DType::kFloat16: return reconstruct_launch<__half>(a, stream);
    case DType::kBFloat16: return reconstruct_launch<__nv_bfloat16>(a, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_refresh(DType dtype, const RefreshArgs& a, cudaStream_t stream) {
  switch (dtype) {
    case DType::kFloat32:
      switch (a.slot_dtype) {
        case DType::kFloat16: return refresh_launch<float, __half>(a, stream);
        case DType::kBFloat16: return refresh_launch<float, __nv_bfloat16>(a, stream);
        default: return refresh_launch<float, float>(a, stream);
      }
    case DType::kFloat16: return refresh_launch<__half, __half>(a, stream);
    case DType::kBFloat16: return refresh_launch<__nv_bfloat16, __nv_bfloat16>(a, stream);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_quad_blend(DType dtype, const QuadBlendArgs& a, cudaStream_t stream) {
  if (!a.fit) {
    quad_blend_weights_kernel<<<1, 1, 0, stream>>>(a);
    return cudaGetLastError();
  }
  switch (dtype) {
    case DType::kFloat32: return quad_blend_launch<float>(a, stream);
    case DType::kFloat16: return quad_blend_launch<__half>(a, stream);
    case DType::kBFloat16: return quad_blend_launch<__nv_bfloat16>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace dicache
