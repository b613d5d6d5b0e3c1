// Launch interface of the CUDA kernels (csrc/cuda_kernels.cu).
//
// Deliberately free of ATen and torch headers: the .cu file includes only this,
// decide.h and the CUDA headers, so nvcc compiles it in seconds per
// architecture. Tensor handling (validation, contiguity, dtypes, workspace,
// stream) is done by the binding in cuda_ops.cpp, compiled by the host compiler.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace dicache {
namespace cuda {

// Storage dtypes the kernels run natively (others are computed in fp32 by the binding).
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

constexpr int kThreads = 256;       // threads per block (8 warps)
// Blocks per SM the grid aims for: the kernels use 28-56 registers per thread,
// so about 4 blocks of 256 threads are resident per SM, each thread with one
// 16-byte load per tensor in flight (>= 48 KiB per SM: enough to saturate HBM).
// More blocks would only add partial sums for the last block to combine.
constexpr int kBlocksPerSM = 4;
constexpr int kVectorBytes = 16;    // one 128-bit load / store per thread and tensor

inline int element_size(DType t) { return t == DType::kFloat32 ? 4 : 2; }
// Elements per 16-byte vector: 4 fp32 or 8 fp16/bf16.
inline int vector_width(DType t) { return kVectorBytes / element_size(t); }

// Blocks per sample (gridDim.x; gridDim.y is the batch): enough for one vector
// (or element) per thread, capped at about kBlocksPerSM blocks per SM over the
// whole grid; the kernels' grid-stride loops cover the rest.
inline int blocks_per_row(int64_t units_per_row, int64_t batch, int sm_count) {
  const int64_t want = (units_per_row + kThreads - 1) / kThreads;
  int64_t cap = (static_cast<int64_t>(sm_count) * kBlocksPerSM) / (batch > 0 ? batch : 1);
  if (cap < 1) cap = 1;
  int64_t n = want < cap ? want : cap;
  return static_cast<int>(n < 1 ? 1 : n);
}

// probe_decide: the five per-sample sums, p_prev <- p (and x_prev <- x), and in
// the last block to finish (atomic ticket) the decision epilogue of decide.h.
struct ProbeArgs {
  const void* p;
  const void* x;
  void* p_prev;       // read, then overwritten with p
  const void* p_old;  // nullptr: one residual stored (sum 2 = 0, gamma = 1)
  void* x_prev;       // nullptr or overwritten with x (read first when error_mode == 1)
  float* acc;         // [B] read and updated
  const float* den;   // [B]
  float* sums;        // [B][5] written
  int32_t* flag;      // [1] written
  float* gamma;       // [B] written
  float* partials;    // [B][blocks_per_row][5] workspace (no initialisation needed)
  unsigned int* ticket;  // zero before the launch; the kernel leaves it zero again
  int64_t B;
  int64_t L;          // elements per sample
  float threshold;
  float gamma_lo;
  float gamma_hi;
  int policy;
  int error_mode;
  int blocks_per_row;
  bool vectorized;    // every pointer 16-byte aligned and L a multiple of vector_width
};

// reconstruct: out = x + r_old + gamma[b] * (r_new - r_old), or x + r_new;
// plus c_oldest[b] * (r_oldest - r_old) with r_oldest.
struct ReconstructArgs {
  const void* x;
  const void* r_new;
  const void* r_old;   // nullptr: out = x + r_new
  const float* gamma;  // [B] device memory
  const void* r_oldest;     // nullptr: no second-order term (needs r_old)
  const float* c_oldest;    // [B] device memory, with r_oldest
  void* out;
  int64_t B;
  int64_t L;
  int blocks_per_row;
  bool vectorized;
};

// refresh: r_slot <- h - x, p_slot <- p - x, den[b] = sum |p_slot - p_other| from
// the stored values (in the last block, atomic ticket), acc <- 0.
struct RefreshArgs {
  const void* h;
  const void* p;
  const void* x;
  void* r_slot;
  void* p_slot;
  const void* p_other;   // nullptr: den = 0
  float* den;            // [B] written
  float* acc;            // [B] zeroed
  float* partials;       // [B][blocks_per_row] workspace (used when p_other is given)
  unsigned int* ticket;  // as in ProbeArgs (used when p_other is given)
  int64_t B;
  int64_t L;
  int blocks_per_row;
  bool vectorized;
  // fp32 kernels (dtype kFloat32) computing for an fp16/bf16 p_slot through an
  // fp32 temporary round p - x to this dtype first, so den sees the stored values.
  DType slot_dtype;
};

// quad_blend: with the probe tensors, the fit sums (sum miss*bend, sum bend^2) of each sample
// over its subsample (common.h::fit_layout), then in the last block to finish (atomic ticket)
// the epilogue decide.h::quad_blend_finish (w, c0, c2). Without them (fit false) one block of
// one thread runs the epilogue alone (w read). The big tensors are only read.
struct QuadBlendArgs {
  bool fit;              // the probe tensors are given (their pointers may be null when empty)
  const void* p;
  const void* x;
  const void* p0;        // P[-3]
  const void* p1;        // P[-2]
  const void* p2;        // P[-1]
  const float* gamma;    // [B]
  float* w;              // [B] written with the probe tensors, else read
  float* c0;             // [B] written
  float* c2;             // [B] written
  float* partials;       // [B][blocks_per_row][2], then fit [B][2] (workspace, no initialisation)
  unsigned int* ticket;  // as in ProbeArgs (used with the probe tensors)
  int64_t B;
  int64_t L;             // elements per sample of the probe tensors
  int64_t rows;          // subsampled indices of dim 1 per sample (fit_layout)
  int64_t inner;         // elements per index of dim 1
  int64_t row_step;      // elements between two subsampled indices
  float t0;
  float t1;
  float t2;
  int policy;
  int blocks_per_row;
};

cudaError_t launch_probe_decide(DType dtype, const ProbeArgs& args, cudaStream_t stream);
cudaError_t launch_reconstruct(DType dtype, const ReconstructArgs& args, cudaStream_t stream);
cudaError_t launch_refresh(DType dtype, const RefreshArgs& args, cudaStream_t stream);
cudaError_t launch_quad_blend(DType dtype, const QuadBlendArgs& args, cudaStream_t stream);

}  // namespace cuda
}  // namespace dicache
