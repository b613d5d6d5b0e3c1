// C++ CPU kernels of the fused cache ops (backend="cpu").
//
// Semantics: dicache/ops/reference.py (probe_decide, reconstruct, refresh,
// quad_blend). Registered as
// torch.ops.dicache_cpu.{probe_decide,reconstruct,refresh,quad_blend} for CPU
// tensors; dicache/ops/cpu_backend.py wraps them.
//
// * probe_decide: the five per-sample probe sums, then the decision epilogue
//   (decide.h::decide); p_prev <- p, x_prev <- x.
// * reconstruct: out = x + R[-2] + gamma (R[-1] - R[-2]) (+ c (R[-3] - R[-2])).
// * refresh: r_slot <- h - x, p_slot <- p - x, den = sum |p_slot - p_other|.
// * quad_blend: the fit sums of w on every stride-th index of dim 1 (only
//   reads its big tensors), then the epilogue decide.h::quad_blend_finish
//   (w, c0, c2).
//
// Layout of the work: every [B, ...] tensor is seen as B rows of L elements
// (quad_blend: of the L subsampled elements it fits on). Each row is cut into
// chunks of kChunk elements; OpenMP threads take whole
// chunks (across all rows), each chunk writes its own partial sums, and the
// partials are combined afterwards in chunk order. The chunking does not
// depend on the thread count, so the sums are bitwise reproducible for a given
// build, whatever the number of threads.
//
// Inside a chunk the work goes tile by tile (kTile elements, L1-resident), in
// one of two ways, both with loops the compiler vectorizes (`omp simd`):
//
// * direct (fp32, fp64, bf16): one fused loop reads the storage values,
//   widens them to fp32 in registers (bf16 is a shift), computes, and writes
//   the results in the storage dtype;
// * staged (fp16): the tile is first widened into fp32 buffers with F16C
//   (8 values per instruction), computed, then narrowed back. Without F16C, a
//   branch-free bit-manipulation conversion is used.
//
// Arithmetic is fp32 throughout; sums are accumulated in fp32 per tile and in
// fp64 across tiles and chunks. Rounding to fp16/bf16 is to nearest even, as
// in torch's casts.
//
// Build flags (see dicache/build.py): -O3 -fopenmp -ffp-contract=off, plus
// -mavx2 -mf16c where the host has them. -ffp-contract=off keeps a*b+c from
// becoming an FMA, so element-wise outputs match the reference bit for bit.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__F16C__)
#include <immintrin.h>
#endif

#include "common.h"
#include "decide.h"

namespace dicache {
namespace cpu {

constexpr int64_t kTile = 512;             // elements per L1-resident tile
constexpr int64_t kChunk = 32 * kTile;     // elements per parallel work item / partial sum
constexpr int64_t kMinParallel = 1 << 16;  // fewer elements than this: one thread

// ---------------------------------------------------------------------------
// element conversions

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// Raw storage type of T in the kernels: bf16 is handled as its uint16_t bits
// (a struct copy would keep GCC from vectorizing), others as themselves.
template <typename T>
struct RawOf {
  using type = T;
};
template <>
struct RawOf<at::BFloat16> {
  using type = uint16_t;
};
template <typename T>
using raw_t = typename RawOf<T>::type;

template <typename T>
raw_t<T>* raw(T* p) {
  return reinterpret_cast<raw_t<T>*>(p);
}
template <typename T>
const raw_t<T>* raw(const T* p) {
  return reinterpret_cast<const raw_t<T>*>(p);
}

// Elem<S>: fp32 <-> raw storage S of the direct path (S = float, double, or
// uint16_t holding bf16 bits). Branch-free, so loops using it vectorize.
template <typename S>
struct Elem;
template <>
struct Elem<float> {
  static float to(float v) { return v; }
  static float from(float v) { return v; }
};
template <>
struct Elem<double> {
  static float to(double v) { return static_cast<float>(v); }
  static double from(float v) { return static_cast<double>(v); }
};
template <>
struct Elem<uint16_t> {  // bf16: the top half of an fp32
  static float to(uint16_t v) { return bits_to_float(static_cast<uint32_t>(v) << 16); }
  // Round to nearest even; NaN -> 0x7FC0 (as c10::BFloat16(float)).
  static uint16_t from(float f) {
    const uint32_t u = float_to_bits(f);
    const uint16_t r = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
    return (f != f) ? static_cast<uint16_t>(0x7FC0) : r;
  }
};

// fp16 goes through fp32 tiles (staged path); every other dtype is direct.
template <typename T>
constexpr bool kDirect = !std::is_same_v<T, at::Half>;

// v as stored in dtype R and read back (R = float/double: unchanged).
template <typename R>
inline float round_to(float v) {
  if constexpr (std::is_same_v<R, at::BFloat16>) {
    return Elem<uint16_t>::to(Elem<uint16_t>::from(v));
  } else if constexpr (std::is_same_v<R, at::Half>) {
    return static_cast<float>(at::Half(v));  // staged path only (not in vectorized loops)
  } else {
    return v;
  }
}

// IEEE half -> float without F16C: the branch-free bit manipulation of the
// FP16 library (as c10's fallback), written with masks so that it vectorizes.
inline float half_bits_to_float(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;
  const uint32_t normalized = float_to_bits(bits_to_float((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f);
  const uint32_t denormalized = float_to_bits(bits_to_float((two_w >> 17) | (126u << 23)) - 0.5f);
  const uint32_t is_denormal = 0u - static_cast<uint32_t>(two_w < (1u << 27));
  return bits_to_float(sign | (is_denormal & denormalized) | (~is_denormal & normalized));
}

// fp16 tiles <-> fp32 buffers (staged path).
inline void half_to_float(const at::Half* src, float* dst, int64_t n) {
  const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
  int64_t i = 0;
#if defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(h));
  }
#endif
#pragma omp simd
  for (int64_t j = i; j < n; ++j) dst[j] = half_bits_to_float(s[j]);
}

inline void float_to_half(const float* src, at::Half* dst, int64_t n) {
  int64_t i = 0;
#if defined(__F16C__)
  uint16_t* d = reinterpret_cast<uint16_t*>(dst);
  for (; i + 8 <= n; i += 8) {
    const __m128i h =
        _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i), h);
  }
#endif
  for (; i < n; ++i) dst[i] = at::Half(src[i]);  // c10's round-to-nearest-even
}

// Staged-path view of a tile: fp32 values of src (src itself for float).
inline const float* widen(const float* src, float*, int64_t) { return src; }
inline const float* widen(const at::Half* src, float* buf, int64_t n) {
  half_to_float(src, buf, n);
  return buf;
}
// Where to compute fp32 results bound for dst, and how to narrow them there.
inline float* target(float* dst, float*) { return dst; }
inline float* target(at::Half*, float* buf) { return buf; }
inline void narrow(const float*, float*, int64_t) {}
inline void narrow(const float* buf, at::Half* dst, int64_t n) { float_to_half(buf, dst, n); }

// ---------------------------------------------------------------------------
// parallel driver

// Calls fn(row, offset_in_row, n, part) for every chunk of every row; part
// points at nsums doubles owned by that chunk (zeroed). Writes the per-row
// totals, combined in chunk order (deterministic), as floats to out[B * nsums].
template <typename F>
void for_each_chunk(int64_t B, int64_t L, int nsums, float* out, const F& fn) {
  const int64_t per_row = L == 0 ? 0 : (L + kChunk - 1) / kChunk;
  const int64_t total = B * per_row;
  std::vector<double> parts(static_cast<size_t>(std::max<int64_t>(total, 1) * std::max(nsums, 1)),
                            0.0);
  const bool parallel = total > 1 && B * L >= kMinParallel && !at::in_parallel_region();
  const int threads = parallel ? std::max(1, at::get_num_threads()) : 1;
#pragma omp parallel for schedule(static) num_threads(threads) if (parallel)
  for (int64_t t = 0; t < total; ++t) {
    const int64_t b = t / per_row;
    const int64_t off = (t % per_row) * kChunk;
    fn(b, off, std::min(kChunk, L - off), parts.data() + t * nsums);
  }
  if (out == nullptr) return;
  for (int64_t b = 0; b < B; ++b) {
    for (int k = 0; k < nsums; ++k) {
      double s = 0.0;
      for (int64_t c = 0; c < per_row; ++c) s += parts[(b * per_row + c) * nsums + k];
      out[b * nsums + k] = static_cast<float>(s);
    }
  }
}

// Calls tile(i0, m) for the tiles of one chunk (i0: flat element index).
template <typename F>
inline void for_each_tile(int64_t begin, int64_t n, const F& tile) {
  for (int64_t t0 = 0; t0 < n; t0 += kTile) tile(begin + t0, std::min(kTile, n - t0));
}

// ---------------------------------------------------------------------------
// probe_decide: the five sums (+ p_prev <- p, x_prev <- x)
//
// OLD: p_old given (sum 2). XD: error_mode 1 (sums 3, 4; reads x_prev first).
// XC: x_prev given (x_prev <- x).

// One tile. S: raw storage (direct path) or float (fp32 buffers of the staged
// path). COPY (direct path): also p_prev <- p and, with XC, x_prev <- x, in the
// same loop, after the element was read (same index: no hazard).
template <typename S, bool OLD, bool XD, bool XC, bool COPY>
inline void probe_tile(const S* __restrict__ p, S* __restrict__ pp, const S* __restrict__ x,
                       const S* __restrict__ po, S* __restrict__ xp, int64_t n, double* part) {
  float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f, s4 = 0.f;
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4)
  for (int64_t i = 0; i < n; ++i) {
    const float vp = Elem<S>::to(p[i]), vpp = Elem<S>::to(pp[i]);
    s0 += std::fabs(vp - vpp);
    s1 += std::fabs(vpp);
    if constexpr (OLD) s2 += std::fabs((vp - Elem<S>::to(x[i])) - Elem<S>::to(po[i]));
    if constexpr (XD) {
      const float vx = Elem<S>::to(x[i]), vxp = Elem<S>::to(xp[i]);
      s3 += std::fabs(vx - vxp);
      s4 += std::fabs(vxp);
    }
    if constexpr (COPY) {
      pp[i] = p[i];
      if constexpr (XC) xp[i] = x[i];
    }
  }
  part[kSumProbeDiff] += s0;
  part[kSumProbePrev] += s1;
  part[kSumAlign] += s2;
  part[kSumInputDiff] += s3;
  part[kSumInputPrev] += s4;
}

template <typename T, bool OLD, bool XD, bool XC>
void probe_rows(const T* p, const T* x, T* pp, const T* po, T* xp, int64_t B, int64_t L,
                float* sums) {
  static_assert(!XD || XC, "error_mode 1 reads x_prev, which is then refreshed");
  for_each_chunk(B, L, kNumSums, sums, [&](int64_t b, int64_t off, int64_t n, double* part) {
    alignas(64) float bp[kTile], bpp[kTile], bx[kTile], bpo[kTile], bxp[kTile];
    for_each_tile(b * L + off, n, [&](int64_t i0, int64_t m) {
      // With the sums, the next call's baselines: raw copies (exact in every dtype).
      if constexpr (kDirect<T>) {
        probe_tile<raw_t<T>, OLD, XD, XC, true>(raw(p + i0), raw(pp + i0), raw(x + i0),
                                                OLD ? raw(po + i0) : nullptr,
                                                XC ? raw(xp + i0) : nullptr, m, part);
      } else {
        probe_tile<float, OLD, XD, false, false>(
            widen(p + i0, bp, m), const_cast<float*>(widen(pp + i0, bpp, m)),
            (OLD || XD) ? widen(x + i0, bx, m) : nullptr, OLD ? widen(po + i0, bpo, m) : nullptr,
            XD ? const_cast<float*>(widen(xp + i0, bxp, m)) : nullptr, m, part);
        std::memcpy(pp + i0, p + i0, static_cast<size_t>(m) * sizeof(T));  // tile still in L1
        if constexpr (XC) std::memcpy(xp + i0, x + i0, static_cast<size_t>(m) * sizeof(T));
      }
    });
  });
}

template <typename T>
void probe_dispatch(const T* p, const T* x, T* pp, const T* po, T* xp, int64_t B, int64_t L,
                    bool xd, float* sums) {
  const bool old = po != nullptr, xc = xp != nullptr;
  if (old) {
    if (xd) probe_rows<T, true, true, true>(p, x, pp, po, xp, B, L, sums);
    else if (xc) probe_rows<T, true, false, true>(p, x, pp, po, xp, B, L, sums);
    else probe_rows<T, true, false, false>(p, x, pp, po, xp, B, L, sums);
  } else {
    if (xd) probe_rows<T, false, true, true>(p, x, pp, po, xp, B, L, sums);
    else if (xc) probe_rows<T, false, false, true>(p, x, pp, po, xp, B, L, sums);
    else probe_rows<T, false, false, false>(p, x, pp, po, xp, B, L, sums);
  }
}

// ---------------------------------------------------------------------------
// reconstruct: out = x + R[-2] + gamma_b (R[-1] - R[-2])   (or x + R[-1]),
//              plus c_b (R[-3] - R[-2]) with r_oldest (OLDEST)

// One tile; S as in probe_tile (out: raw storage, or an fp32 buffer narrowed afterwards).
template <typename S, bool OLD, bool OLDEST = false>
inline void reconstruct_tile(const S* __restrict__ x, const S* __restrict__ rn,
                             const S* __restrict__ ro, float g, S* __restrict__ out, int64_t n,
                             const S* __restrict__ r3 = nullptr, float c = 0.0f) {
  if constexpr (OLD && OLDEST) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float vo = Elem<S>::to(ro[i]);
      // The reference's order: ((x + r_old) + g * (r_new - r_old)) + c * (r_oldest - r_old), no FMA.
      const float h = (Elem<S>::to(x[i]) + vo) + g * (Elem<S>::to(rn[i]) - vo);
      out[i] = Elem<S>::from(h + c * (Elem<S>::to(r3[i]) - vo));
    }
  } else if constexpr (OLD) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float vo = Elem<S>::to(ro[i]);
      // The reference's order: (x + r_old) + g * (r_new - r_old), no FMA.
      out[i] = Elem<S>::from((Elem<S>::to(x[i]) + vo) + g * (Elem<S>::to(rn[i]) - vo));
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) out[i] = Elem<S>::from(Elem<S>::to(x[i]) + Elem<S>::to(rn[i]));
  }
}

template <typename T, bool OLD, bool OLDEST = false>
void reconstruct_rows(const T* x, const T* rn, const T* ro, const float* gamma, T* out, int64_t B,
                      int64_t L, const T* r3 = nullptr, const float* c_oldest = nullptr) {
  for_each_chunk(B, L, 0, nullptr, [&](int64_t b, int64_t off, int64_t n, double*) {
    alignas(64) float bx[kTile], brn[kTile], bro[kTile], br3[kTile], bo[kTile];
    const float g = OLD ? gamma[b] : 1.0f;
    const float c = OLDEST ? c_oldest[b] : 0.0f;
    for_each_tile(b * L + off, n, [&](int64_t i0, int64_t m) {
      if constexpr (kDirect<T>) {
        reconstruct_tile<raw_t<T>, OLD, OLDEST>(raw(x + i0), raw(rn + i0), OLD ? raw(ro + i0) : nullptr,
                                                g, raw(out + i0), m, OLDEST ? raw(r3 + i0) : nullptr, c);
      } else {
        float* fo = target(out + i0, bo);
        reconstruct_tile<float, OLD, OLDEST>(widen(x + i0, bx, m), widen(rn + i0, brn, m),
                                             OLD ? widen(ro + i0, bro, m) : nullptr, g, fo, m,
                                             OLDEST ? widen(r3 + i0, br3, m) : nullptr, c);
        narrow(fo, out + i0, m);
      }
    });
  });
}

// ---------------------------------------------------------------------------
// refresh: r_slot <- h - x, p_slot <- p - x, den_b = sum |p_slot(stored) - p_other|
//
// T: the dtype of every tensor the kernel sees. R: the dtype p_slot is finally
// stored in (== T, or T == float computing for an fp16/bf16 slot through an fp32
// temporary): den must see the values rounded to R, as the reference reads them
// back from the slot.

template <typename S, typename R, bool OTHER>
inline void refresh_tile(const S* __restrict__ h, const S* __restrict__ p, const S* __restrict__ x,
                         S* __restrict__ rs, S* __restrict__ ps, const S* __restrict__ po,
                         int64_t n, double* part) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) {
    const float vx = Elem<S>::to(x[i]);
    rs[i] = Elem<S>::from(Elem<S>::to(h[i]) - vx);
    const S stored = Elem<S>::from(round_to<R>(Elem<S>::to(p[i]) - vx));
    ps[i] = stored;
    if constexpr (OTHER) s += std::fabs(Elem<S>::to(stored) - Elem<S>::to(po[i]));
  }
  if constexpr (OTHER) part[0] += s;
}

template <typename T, typename R, bool OTHER>
void refresh_rows(const T* h, const T* p, const T* x, T* rs, T* ps, const T* po, int64_t B,
                  int64_t L, float* den) {
  static_assert(std::is_same_v<T, R> || std::is_same_v<T, float>, "R differs only from fp32 T");
  for_each_chunk(B, L, OTHER ? 1 : 0, OTHER ? den : nullptr,
                 [&](int64_t b, int64_t off, int64_t n, double* part) {
    alignas(64) float bh[kTile], bp[kTile], bx[kTile], br[kTile], bv[kTile], bpo[kTile];
    for_each_tile(b * L + off, n, [&](int64_t i0, int64_t m) {
      if constexpr (kDirect<T> && !std::is_same_v<R, at::Half>) {
        refresh_tile<raw_t<T>, R, OTHER>(raw(h + i0), raw(p + i0), raw(x + i0), raw(rs + i0),
                                         raw(ps + i0), OTHER ? raw(po + i0) : nullptr, m, part);
      } else {
        // Staged: fp16 tensors, or fp32 tensors for an fp16 slot.
        const float* fh = widen(h + i0, bh, m);
        const float* fp = widen(p + i0, bp, m);
        const float* fx = widen(x + i0, bx, m);
        float* fr = target(rs + i0, br);
        float* fv = target(ps + i0, bv);
#pragma omp simd
        for (int64_t i = 0; i < m; ++i) {
          fr[i] = fh[i] - fx[i];
          fv[i] = fp[i] - fx[i];
        }
        if constexpr (std::is_same_v<T, float>) {  // fp32 temporary bound for an fp16 slot
          for (int64_t i = 0; i < m; ++i) fv[i] = round_to<R>(fv[i]);
        }
        narrow(fr, rs + i0, m);
        narrow(fv, ps + i0, m);
        if constexpr (OTHER) {
          // Re-read what was stored (rounded to the slot dtype), as the reference does.
          const float* fs = widen(ps + i0, bv, m);
          const float* fo = widen(po + i0, bpo, m);
          float s = 0.f;
#pragma omp simd reduction(+ : s)
          for (int64_t i = 0; i < m; ++i) s += std::fabs(fs[i] - fo[i]);
          part[0] += s;
        }
      }
    });
  });
}

// ---------------------------------------------------------------------------
// quad_blend: the fit sums sum miss*bend and sum bend^2 per sample, over the subsample
//
//   d21 = P2 - P1,  miss = ((p - x) - P1) - g d21,  bend = (l2 - g) d21 + l0 (P0 - P1)
//
// in the reference's order of fp32 operations (only the order of the additions differs).
// The subsample of a sample is `rows` runs of `inner` contiguous elements, `row_step`
// apart (common.h::fit_layout); it is chunked as a flat index space of rows * inner
// elements, and each chunk walks its runs tile by tile.

// One tile (a piece of one run). a = l2 - g. S as in probe_tile.
template <typename S>
inline void quad_fit_tile(const S* __restrict__ p, const S* __restrict__ x,
                          const S* __restrict__ p0, const S* __restrict__ p1,
                          const S* __restrict__ p2, float g, float a, float l0, int64_t n,
                          double* part) {
  float sn = 0.f, sd = 0.f;
#pragma omp simd reduction(+ : sn, sd)
  for (int64_t i = 0; i < n; ++i) {
    const float v1 = Elem<S>::to(p1[i]);
    const float d21 = Elem<S>::to(p2[i]) - v1;
    const float miss = ((Elem<S>::to(p[i]) - Elem<S>::to(x[i])) - v1) - g * d21;
    const float bend = a * d21 + l0 * (Elem<S>::to(p0[i]) - v1);
    sn += miss * bend;
    sd += bend * bend;
  }
  part[0] += sn;
  part[1] += sd;
}

// fit[B][2]: the per-sample sums. L: elements per sample of the (contiguous) tensors.
template <typename T>
void quad_fit_rows(const T* p, const T* x, const T* p0, const T* p1, const T* p2,
                   const float* gamma, int64_t B, int64_t L, const FitLayout& lay, float t0,
                   float t1, float t2, float* fit) {
  const int64_t M = lay.rows * lay.inner;  // subsampled elements per sample
  for_each_chunk(B, M, 2, fit, [&](int64_t b, int64_t off, int64_t n, double* part) {
    alignas(64) float bp[kTile], bx[kTile], b0[kTile], b1[kTile], b2[kTile];
    const float g = gamma[b];
    float l0, l2;
    lagrange_weights(g, t0, t1, t2, &l0, &l2);
    const float a = l2 - g;
    // The chunk's runs: from (row r, column j) on, n elements in all (n > 0: inner > 0).
    int64_t r = off / lay.inner, j = off % lay.inner;
    while (n > 0) {
      const int64_t m = std::min(lay.inner - j, n);
      for_each_tile(b * L + r * lay.row_step + j, m, [&](int64_t i0, int64_t k) {
        if constexpr (kDirect<T>) {
          quad_fit_tile<raw_t<T>>(raw(p + i0), raw(x + i0), raw(p0 + i0), raw(p1 + i0),
                                  raw(p2 + i0), g, a, l0, k, part);
        } else {
          quad_fit_tile<float>(widen(p + i0, bp, k), widen(x + i0, bx, k), widen(p0 + i0, b0, k),
                               widen(p1 + i0, b1, k), widen(p2 + i0, b2, k), g, a, l0, k, part);
        }
      });
      n -= m;
      ++r;
      j = 0;
    }
  });
}

// ---------------------------------------------------------------------------
// op entry points (registered below)

bool cpu_native(at::ScalarType t) { return is_float_dtype(t); }

void check_cpu(const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), "dicache_cpu ops run on CPU tensors, got ", t.device());
}

void probe_decide(const at::Tensor& p, const at::Tensor& x, const at::Tensor& p_prev,
                  const std::optional<at::Tensor>& p_old, const std::optional<at::Tensor>& x_prev,
                  const at::Tensor& acc, const at::Tensor& den, const at::Tensor& sums,
                  const at::Tensor& flag, const at::Tensor& gamma, double threshold,
                  double gamma_lo, double gamma_hi, int64_t policy, int64_t error_mode) {
  check_policy(policy, error_mode);
  const bool xd = error_mode == kErrorProbeMinusInput;
  TORCH_CHECK_VALUE(!xd || x_prev.has_value(), "error_mode=ERROR_PROBE_MINUS_INPUT needs x_prev");
  check_cpu(p);
  const int64_t B = batch_of(p), L = row_of(p);
  check_probe_decide_args(p, x, p_prev, p_old, x_prev, acc, den, sums, flag, gamma);

  const at::ScalarType dt = compute_dtype({&p, &x, &p_prev, opt_ptr(p_old), opt_ptr(x_prev)}, cpu_native);
  const at::Tensor cp = as_input(p, dt), cx = as_input(x, dt);
  const std::optional<at::Tensor> cpo = as_input(p_old, dt);
  Output pp(p_prev, dt, /*kernel_reads=*/true);
  Output xp = make_output(x_prev, dt, /*kernel_reads=*/xd);
  Output sums_o = state_output(sums, false), acc_o = state_output(acc, true);
  Output gamma_o = state_output(gamma, false), flag_o = state_output(flag, false);
  const at::Tensor den_c = den.contiguous();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "dicache_cpu::probe_decide", [&] {
    probe_dispatch<scalar_t>(cp.data_ptr<scalar_t>(), cx.data_ptr<scalar_t>(),
                             pp.work.data_ptr<scalar_t>(),
                             cpo ? cpo->data_ptr<scalar_t>() : nullptr,
                             xp.defined() ? xp.work.data_ptr<scalar_t>() : nullptr, B, L, xd,
                             sums_o.work.data_ptr<float>());
  });
  decide(B, sums_o.work.data_ptr<float>(), den_c.data_ptr<float>(), acc_o.work.data_ptr<float>(),
         gamma_o.work.data_ptr<float>(), flag_o.work.data_ptr<int32_t>(),
         static_cast<float>(threshold), static_cast<float>(gamma_lo), static_cast<float>(gamma_hi),
         static_cast<int>(policy), static_cast<int>(error_mode), p_old.has_value());
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
  check_cpu(x);
  const int64_t B = batch_of(x), L = row_of(x);
  check_reconstruct_args(x, r_new, r_old, gamma, out, r_oldest, c_oldest);

  const at::ScalarType dt =
      compute_dtype({&x, &r_new, opt_ptr(r_old), &out, opt_ptr(r_oldest)}, cpu_native);
  const at::Tensor cx = as_input(x, dt), crn = as_input(r_new, dt);
  const std::optional<at::Tensor> cro = as_input(r_old, dt), cr3 = as_input(r_oldest, dt);
  const at::Tensor g = gamma.contiguous();
  const std::optional<at::Tensor> c3 =
      c_oldest ? std::optional<at::Tensor>(c_oldest->contiguous()) : std::nullopt;
  Output o(out, dt, /*kernel_reads=*/false);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "dicache_cpu::reconstruct", [&] {
    if (cr3) {
      reconstruct_rows<scalar_t, true, true>(cx.data_ptr<scalar_t>(), crn.data_ptr<scalar_t>(),
                                             cro->data_ptr<scalar_t>(), g.data_ptr<float>(),
                                             o.work.data_ptr<scalar_t>(), B, L,
                                             cr3->data_ptr<scalar_t>(), c3->data_ptr<float>());
    } else if (cro) {
      reconstruct_rows<scalar_t, true>(cx.data_ptr<scalar_t>(), crn.data_ptr<scalar_t>(),
                                       cro->data_ptr<scalar_t>(), g.data_ptr<float>(),
                                       o.work.data_ptr<scalar_t>(), B, L);
    } else {
      reconstruct_rows<scalar_t, false>(cx.data_ptr<scalar_t>(), crn.data_ptr<scalar_t>(), nullptr,
                                        g.data_ptr<float>(), o.work.data_ptr<scalar_t>(), B, L);
    }
  });
  o.finish();
}

template <typename T, typename R>
void refresh_dispatch(const at::Tensor& h, const at::Tensor& p, const at::Tensor& x, Output& rs,
                      Output& ps, const std::optional<at::Tensor>& po, int64_t B, int64_t L,
                      float* den) {
  if (po) {
    refresh_rows<T, R, true>(h.data_ptr<T>(), p.data_ptr<T>(), x.data_ptr<T>(),
                             rs.work.data_ptr<T>(), ps.work.data_ptr<T>(), po->data_ptr<T>(), B,
                             L, den);
  } else {
    refresh_rows<T, R, false>(h.data_ptr<T>(), p.data_ptr<T>(), x.data_ptr<T>(),
                              rs.work.data_ptr<T>(), ps.work.data_ptr<T>(), nullptr, B, L, den);
  }
}

void refresh(const at::Tensor& h, const at::Tensor& p, const at::Tensor& x,
             const at::Tensor& r_slot, const at::Tensor& p_slot,
             const std::optional<at::Tensor>& p_other, const at::Tensor& den,
             const at::Tensor& acc) {
  check_cpu(h);
  const int64_t B = batch_of(h), L = row_of(h);
  check_refresh_args(h, p, x, r_slot, p_slot, p_other, den, acc);

  const at::ScalarType dt =
      compute_dtype({&h, &p, &x, &r_slot, &p_slot, opt_ptr(p_other)}, cpu_native);
  const at::Tensor ch = as_input(h, dt), cp = as_input(p, dt), cx = as_input(x, dt);
  const std::optional<at::Tensor> cpo = as_input(p_other, dt);
  Output rs(r_slot, dt, false), ps(p_slot, dt, false);
  Output den_o = state_output(den, false);
  float* dptr = den_o.work.data_ptr<float>();

  if (dt == at::kFloat && p_slot.scalar_type() == at::kHalf) {
    refresh_dispatch<float, at::Half>(ch, cp, cx, rs, ps, cpo, B, L, dptr);
  } else if (dt == at::kFloat && p_slot.scalar_type() == at::kBFloat16) {
    refresh_dispatch<float, at::BFloat16>(ch, cp, cx, rs, ps, cpo, B, L, dptr);
  } else {
    // Native dtype, or fp32 compute for an fp32/fp64 slot (fp32 values are exact in fp64).
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "dicache_cpu::refresh", [&] {
      refresh_dispatch<scalar_t, scalar_t>(ch, cp, cx, rs, ps, cpo, B, L, dptr);
    });
  }
  if (!p_other) std::fill(dptr, dptr + B, 0.0f);
  rs.finish();
  ps.finish();
  den_o.finish();
  acc.zero_();
}

void quad_blend(const at::Tensor& gamma, const at::Tensor& w, const at::Tensor& c0,
                const at::Tensor& c2, double t0, double t1, double t2,
                const std::optional<at::Tensor>& p, const std::optional<at::Tensor>& x,
                const std::optional<at::Tensor>& p0, const std::optional<at::Tensor>& p1,
                const std::optional<at::Tensor>& p2, int64_t stride, int64_t policy) {
  check_cpu(gamma);
  const bool fit = check_quad_blend_args(gamma, w, c0, c2, p, x, p0, p1, p2, stride, policy);
  const int64_t B = gamma.numel();
  const float ft0 = static_cast<float>(t0), ft1 = static_cast<float>(t1),
              ft2 = static_cast<float>(t2);
  const at::Tensor g = gamma.contiguous();
  // w is read when it is not fitted.
  Output w_o = state_output(w, /*kernel_reads=*/!fit);
  Output c0_o = state_output(c0, false), c2_o = state_output(c2, false);
  std::vector<float> sums;
  if (fit) {
    const int64_t L = row_of(*p);
    FitLayout lay = fit_layout(*p, stride);
    if (lay.row_step == lay.inner) {  // stride 1 (or one row): the subsample is contiguous
      lay = FitLayout{lay.rows == 0 ? 0 : 1, lay.rows * lay.inner, lay.rows * lay.inner};
    }
    const at::ScalarType dt = compute_dtype({&*p, &*x, &*p0, &*p1, &*p2}, cpu_native);
    const at::Tensor cp = as_input(*p, dt), cx = as_input(*x, dt), cp0 = as_input(*p0, dt),
                     cp1 = as_input(*p1, dt), cp2 = as_input(*p2, dt);
    sums.assign(static_cast<size_t>(std::max<int64_t>(2 * B, 1)), 0.0f);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dt, "dicache_cpu::quad_blend", [&] {
      quad_fit_rows<scalar_t>(cp.data_ptr<scalar_t>(), cx.data_ptr<scalar_t>(),
                              cp0.data_ptr<scalar_t>(), cp1.data_ptr<scalar_t>(),
                              cp2.data_ptr<scalar_t>(), g.data_ptr<float>(), B, L, lay, ft0, ft1,
                              ft2, sums.data());
    });
  }
  quad_blend_finish(B, g.data_ptr<float>(), fit ? sums.data() : nullptr, w_o.work.data_ptr<float>(),
                    c0_o.work.data_ptr<float>(), c2_o.work.data_ptr<float>(), ft0, ft1, ft2,
                    static_cast<int>(policy));
  w_o.finish();
  c0_o.finish();
  c2_o.finish();
}

}  // namespace cpu
}  // namespace dicache

TORCH_LIBRARY(dicache_cpu, m) {
  m.def(dicache::kProbeDecideSchema);
  m.def(dicache::kReconstructSchema);
  m.def(dicache::kRefreshSchema);
  m.def(dicache::kQuadBlendSchema);
  m.def(dicache::kExceptionProbeSchema, &dicache::exception_probe);
}

TORCH_LIBRARY_IMPL(dicache_cpu, CPU, m) {
  m.impl("probe_decide", &dicache::cpu::probe_decide);
  m.impl("reconstruct", &dicache::cpu::reconstruct);
  m.impl("refresh", &dicache::cpu::refresh);
  m.impl("quad_blend", &dicache::cpu::quad_blend);
}
