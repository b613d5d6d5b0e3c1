// The decision epilogue of probe_decide, shared by the C++ CPU kernels and the
// CUDA kernels (compiled for the host by g++ and for the device by nvcc).
//
// It mirrors dicache/ops/reference.py::probe_decide after the per-sample sums
// are known: error, error accumulation, the reuse flag and the alignment step
// gamma, with the same guards (zero / non-finite denominators, NaN compares
// false). No ATen or CUDA headers: this file must stay light.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define DICACHE_HD __host__ __device__
#else
#define DICACHE_HD
#endif

namespace dicache {

// Columns of the per-sample sums (same as reference.SUM_*).
constexpr int kSumProbeDiff = 0;  // sum |p - p_prev|
constexpr int kSumProbePrev = 1;  // sum |p_prev|
constexpr int kSumAlign = 2;      // sum |(p - x) - P[-2]|
constexpr int kSumInputDiff = 3;  // sum |x - x_prev|   (error_mode 1 only)
constexpr int kSumInputPrev = 4;  // sum |x_prev|       (error_mode 1 only)
constexpr int kNumSums = 5;

// policy / error_mode values (same as reference.POLICY_* / ERROR_*).
constexpr int kPolicyGlobal = 0;
constexpr int kPolicyMax = 1;
constexpr int kErrorProbe = 0;
constexpr int kErrorProbeMinusInput = 1;

// +inf without <cmath> / <limits> (both differ between host and device).
DICACHE_HD inline float inf_f() { return __builtin_huge_valf(); }

// Finite test that works on host and device and is not removed by the
// compiler: NaN fails both comparisons, +-inf fails the magnitude test.
DICACHE_HD inline bool finite_f(float v) {
  return v <= 3.402823466e+38f && v >= -3.402823466e+38f;
}

// num / den where den > 0 and the quotient is finite, else fallback
// (reference._safe_ratio; NaN den compares false -> fallback).
DICACHE_HD inline float safe_ratio(float num, float den, float fallback) {
  if (!(den > 0.0f)) return fallback;
  const float r = num / den;
  return finite_f(r) ? r : fallback;
}

// torch.clamp(v, lo, hi) == min(max(v, lo), hi) (hi wins when lo > hi).
DICACHE_HD inline float clamp_f(float v, float lo, float hi) {
  const float a = v < lo ? lo : v;
  return a > hi ? hi : a;
}

// The error of one decision unit (a sample, or the pooled batch).
DICACHE_HD inline float unit_error(const float* s, int error_mode) {
  float err = safe_ratio(s[kSumProbeDiff], s[kSumProbePrev], inf_f());
  if (error_mode == kErrorProbeMinusInput) {
    const float err_x = safe_ratio(s[kSumInputDiff], s[kSumInputPrev], inf_f());
    const float d = err - err_x;
    err = d < 0.0f ? -d : d;
    if (!finite_f(err)) err = inf_f();  // inf - inf = NaN -> forces a refresh
  }
  return err;
}

// Decision epilogue. Single-threaded (one host thread or one device thread).
//
//   sums  [B][kNumSums]  per-sample sums of this probe (already final)
//   den   [B]            sum |P[-1] - P[-2]| per sample (written at refresh)
//   acc   [B]            accumulated error, updated in place
//   gamma [B]            alignment step, written
//   flag  [1]            1 = reuse, 0 = compute the deep blocks, written
//
// policy and error_mode must already be validated by the caller.
DICACHE_HD inline void decide(int64_t B, const float* sums, const float* den, float* acc,
                              float* gamma, int32_t* flag, float threshold, float gamma_lo,
                              float gamma_hi, int policy, int error_mode, bool has_old) {
  bool reuse = true;  // all() over an empty batch is true, as in torch
  if (policy == kPolicyGlobal) {
    // Pool the sums (and the denominators of gamma) over the batch, in order.
    float stat[kNumSums] = {0.f, 0.f, 0.f, 0.f, 0.f};
    float den_g = 0.f;
    for (int64_t b = 0; b < B; ++b) {
      for (int k = 0; k < kNumSums; ++k) stat[k] += sums[b * kNumSums + k];
      den_g += den[b];
    }
    const float err = unit_error(stat, error_mode);
    const float g =
        has_old ? clamp_f(safe_ratio(stat[kSumAlign], den_g, 1.0f), gamma_lo, gamma_hi) : 1.0f;
    for (int64_t b = 0; b < B; ++b) {
      const float a = acc[b] + err;
      acc[b] = a;
      reuse = reuse && (a < threshold);  // NaN compares false
      gamma[b] = g;
    }
  } else {  // kPolicyMax: per-sample errors and gamma, reuse only if all are under
    for (int64_t b = 0; b < B; ++b) {
      const float* s = sums + b * kNumSums;
      const float a = acc[b] + unit_error(s, error_mode);
      acc[b] = a;
      reuse = reuse && (a < threshold);
      gamma[b] =
          has_old ? clamp_f(safe_ratio(s[kSumAlign], den[b], 1.0f), gamma_lo, gamma_hi) : 1.0f;
    }
  }
  flag[0] = reuse ? 1 : 0;
}

// ---------------------------------------------------------------------------
// quad_blend (reference.quad_blend): the weights of the line bent towards the quadratic.

// Lagrange weights (c0 of the oldest, c2 of the newest entry) of the quadratic through entries stored
// at steps t0 < t1 < t2, at tau = t1 + gamma (t2 - t1) (reference.lagrange_weights).
DICACHE_HD inline void lagrange_weights(float gamma, float t0, float t1, float t2, float* c0, float* c2) {
  const float tau = t1 + gamma * (t2 - t1);
  *c0 = (tau - t1) * (tau - t2) / ((t0 - t1) * (t0 - t2));
  *c2 = (tau - t0) * (tau - t1) / ((t2 - t0) * (t2 - t1));
}

// w = clip(num / den, 0, 1); 0 where den <= 0 (or NaN) or the ratio is NaN.
DICACHE_HD inline float fit_weight(float num, float den) {
  float r = den > 0.0f ? num / den : 0.0f;
  if (r != r) r = 0.0f;
  return clamp_f(r, 0.0f, 1.0f);
}

// Epilogue of quad_blend. Single-threaded. `fit` [B][2] holds the per-sample sums (sum miss*bend,
// sum bend^2) of the fit, or is nullptr: w is then read, not written.
DICACHE_HD inline void quad_blend_finish(int64_t B, const float* gamma, const float* fit, float* w,
                                         float* c0, float* c2, float t0, float t1, float t2, int policy) {
  if (fit != nullptr) {
    if (policy == kPolicyGlobal) {
      float num = 0.f, den = 0.f;
      for (int64_t b = 0; b < B; ++b) {
        num += fit[2 * b];
        den += fit[2 * b + 1];
      }
      const float wg = fit_weight(num, den);
      for (int64_t b = 0; b < B; ++b) w[b] = wg;
    } else {
      for (int64_t b = 0; b < B; ++b) w[b] = fit_weight(fit[2 * b], fit[2 * b + 1]);
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    float l0, l2;
    lagrange_weights(gamma[b], t0, t1, t2, &l0, &l2);
    c0[b] = w[b] * l0;
    c2[b] = gamma[b] + w[b] * (l2 - gamma[b]);
  }
}

}  // namespace dicache
