// The CPU product for streamed weights (cpu_gemv.h). A tile is MR rows of x against NR = 4 rows
// of W, its MR x NR sums in zmm registers over K in steps of 16 lanes, reduced at the end. At
// batch 1 the product is bound by the bytes of W, and the hardware prefetcher alone keeps only
// ~50% of the read bandwidth busy for four short row streams (measured: int8 [11264, 2048] at
// 10-12 GB/s of 22-24); prefetching the next block's rows at the offsets being read lifts it to
// 16-21 GB/s (int8) and f32 to 20-22 GB/s. The f32 products share the code with int8 widened.
#include "cpu_gemv.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)  // GCC: #pragma GCC target
#include <immintrin.h>
#define ADAPTD_GEMV_X86 1
#endif

namespace adaptd::engine {
namespace {

constexpr int kNr = 4;  // rows of W per tile
constexpr int kMr = 4;  // rows of x per tile: kMr * kNr accumulators of 32 registers

struct Args {
  const float* x;       // [M, K]
  const void* w;        // [N, K] int8 or f32
  const float* scales;  // [N] (int8) or null
  const float* add;     // [M, N] or null
  float* y;             // [M, N]
  int64_t m, n, k;
  int64_t prefetch;  // bytes ahead of the row being read
  bool tiled;        // int8 in tiles of 4 rows, 64 bytes by 64 bytes (TileRows)
};

#ifdef ADAPTD_GEMV_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl")
// GCC 12's intrinsics seed their results with _mm512_undefined_*(), which it then reports as
// uninitialized (GCC bug 105593, fixed in 13): a false warning, silenced for these kernels only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// One K step of 16 lanes (fewer under `mask`, for the tail): w points at the tile's first row
// of W, x at its first row of x, both at column k; rows of W are w_stride elements apart, of x
// x_stride.
template <bool kInt8, int MR, int NR>
inline void Step(const void* w, const float* x, int64_t w_stride, int64_t x_stride, __mmask16 mask,
                 __m512 (&acc)[MR][NR]) {
  __m512 wv[NR];
#pragma GCC unroll 4
  for (int j = 0; j < NR; ++j) {
    if constexpr (kInt8) {
      const __m128i q = _mm_maskz_loadu_epi8(mask, static_cast<const int8_t*>(w) + j * w_stride);
      wv[j] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q));
    } else {
      wv[j] = _mm512_maskz_loadu_ps(mask, static_cast<const float*>(w) + j * w_stride);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
    const __m512 xv = _mm512_maskz_loadu_ps(mask, x + i * x_stride);
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_fmadd_ps(wv[j], xv, acc[i][j]);
  }
}

// Every loop over the tile is unrolled, so that its sums stay in registers: GCC -O2 keeps an
// array indexed by a loop variable in memory, at a third of the speed.
template <bool kInt8, int MR, int NR>
void Tile(const Args& a, int64_t m0, int64_t n0, bool prefetch) {
  const int64_t k_len = a.k, full = k_len / 16 * 16, elt = kInt8 ? 1 : 4, ahead = a.prefetch;
  const char* w = static_cast<const char*>(a.w) + n0 * k_len * elt;
  const float* x = a.x + m0 * k_len;
  __m512 acc[MR][NR];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  }
  // Where column k of the tile's first row is, and how far apart its rows are there: rows apart,
  // or (tiled) the 4 rows of each 64-byte segment one after another.
  auto at_column = [&](int64_t k, int64_t* stride) {
    if (!a.tiled) {
      *stride = k_len;
      return w + k * elt;
    }
    const int64_t seg = k / 64 * 64;
    *stride = std::min<int64_t>(64, k_len - seg);
    return w + NR * seg + (k - seg);
  };
  int64_t stride = 0;
  for (int64_t k = 0; k < full; k += 16) {
    const char* wk = at_column(k, &stride);
    if (prefetch && (!kInt8 || k % 64 == 0)) {  // a line per row: 64 int8 or 16 f32 weights
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) {  // a hint, never a load: past the end of W it is ignored
        const uintptr_t at = reinterpret_cast<uintptr_t>(wk) + j * stride * elt + ahead;
        _mm_prefetch(reinterpret_cast<const char*>(at), _MM_HINT_T0);
      }
    }
    Step<kInt8, MR, NR>(wk, x + k, stride, k_len, static_cast<__mmask16>(0xFFFF), acc);
  }
  if (full < k_len) {
    const char* wk = at_column(full, &stride);
    Step<kInt8, MR, NR>(wk, x + full, stride, k_len, static_cast<__mmask16>((1u << (k_len - full)) - 1), acc);
  }
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int j = 0; j < NR; ++j) {
      float s = _mm512_reduce_add_ps(acc[i][j]);
      if constexpr (kInt8) s *= a.scales[n0 + j];
      const int64_t at = (m0 + i) * a.n + n0 + j;
      a.y[at] = a.add ? s + a.add[at] : s;
    }
  }
}

#pragma GCC diagnostic pop
#pragma GCC pop_options

using TileFn = void (*)(const Args&, int64_t, int64_t, bool);

template <bool kInt8, int MR>
constexpr TileFn TileFor(int nr) {
  return nr == 1 ? Tile<kInt8, MR, 1> : nr == 2 ? Tile<kInt8, MR, 2> : nr == 3 ? Tile<kInt8, MR, 3> : Tile<kInt8, MR, 4>;
}

template <bool kInt8>
TileFn TileFor(int mr, int nr) {
  switch (mr) {
    case 1: return TileFor<kInt8, 1>(nr);
    case 2: return TileFor<kInt8, 2>(nr);
    case 3: return TileFor<kInt8, 3>(nr);
    default: return TileFor<kInt8, 4>(nr);
  }
}

// Blocks of kNr rows of W split across the threads; each block meets every x row while it is in
// the cache, and only the first pass over it prefetches the next block.
template <bool kInt8>
void Run(const Args& a) {
  const int64_t blocks = (a.n + kNr - 1) / kNr;
  const int64_t block_bytes = kNr * a.k * (kInt8 ? 1 : 4);
  const int64_t grain = std::max<int64_t>(1, (int64_t{64} << 10) / block_bytes);  // >= 64 KB of W a thread
  at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n0 = b * kNr;
      const int nr = static_cast<int>(std::min<int64_t>(kNr, a.n - n0));
      for (int64_t m0 = 0; m0 < a.m; m0 += kMr) {
        TileFor<kInt8>(static_cast<int>(std::min<int64_t>(kMr, a.m - m0)), nr)(a, m0, n0, m0 == 0);
      }
    }
  });
}
#endif  // ADAPTD_GEMV_X86


// ---- The int4 product (cpu_gemv.h) ----------------------------------------------------------
// Each group of G codes is G/2 bytes, byte j holding code j (low nibble) and code j + G/2 (high),
// so that a 64-byte chunk of a row unpacks with an AND and a shift into two vectors of byte lanes
// whose 32-bit lanes cover 4 codes of the same group in both. x's digits are stored in the same
// two orders (the codes of low nibbles, of high ones), and vpdpbusd adds 4 products of a code
// (u8) and a digit (s8) to an int32 lane: 4 of them per chunk (2 halves x 2 digits of x), one
// conversion, and one multiply-add by the lane's scale, which a permute picks out of a window of
// 16 groups' products of the weight's scale and x's. The -8 of (q - 8) and the zeros meet x's
// group sums once per window. Per 64 bytes of W and row of x: ~12 vector operations.

constexpr int kChunk = 64;         // bytes of a row a step: 128 codes
constexpr int kWindow = 16;        // groups per window of scales
constexpr int kInt4Mr = 2;         // rows of x per tile: 2 x 4 windows and sums in registers
constexpr int64_t kInt4Rows = 64;  // rows of x per pass over W: their digits stay in L2

// x, rounded and summed once per call, laid out as the chunks read it.
struct Int4Args {
  const int8_t* digits;     // [M, 4, K / 2]: h of the low-nibble codes, of the high ones, then l
  const float* scale;       // [M, K / group] s / 256 of each group of x (256 h + l is x / that)
  const float* correction;  // [M, K / group] -8 (s / 256) sum (256 h + l): the -8 of (q - 8)
  const float* sum;         // [M, K / group] the f32 sum of each group of x
  const uint8_t* w;         // [N, K / 2] in tiles (PackInt4Codes)
  const uint32_t* sz;       // [N, K / group] a bf16 scale in the low half, its zero in the high one, in tiles
  float* y;                 // [M, N]
  int64_t m, n, k, group, prefetch;
};

#ifdef ADAPTD_GEMV_X86
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni")
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// x's digits per group (cpu_gemv.h): h = round(x / s), l = round((x - s h) 256 / s), each
// clamped to +-127 (|x - s h| <= s / 2 puts l within +-128: the clamp moves an element by at most
// s / 256). NaN and infinities give defined digits; the group's sum carries them into y.
void RoundActivations(const float* x, int64_t m, int64_t k, int64_t group, int8_t* digits, float* scale,
                      float* correction, float* sum) {
  const int64_t half = k / 2, vectors = group / 16, groups = k / group;
  const __m512i lo_clamp = _mm512_set1_epi32(-127), hi_clamp = _mm512_set1_epi32(127);
  for (int64_t r = 0; r < m; ++r) {
    int8_t* h_lo = digits + r * 4 * half;
    int8_t *h_hi = h_lo + half, *l_lo = h_hi + half, *l_hi = l_lo + half;
    for (int64_t g = 0; g < groups; ++g) {
      const float* xg = x + r * k + g * group;
      __m512 v[4], amax = _mm512_setzero_ps(), total = _mm512_setzero_ps();
      for (int64_t i = 0; i < vectors; ++i) {
        v[i] = _mm512_loadu_ps(xg + 16 * i);
        amax = _mm512_max_ps(amax, _mm512_abs_ps(v[i]));
        total = _mm512_add_ps(total, v[i]);
      }
      const float a = _mm512_reduce_max_ps(amax), s = a / 127, inv = a > 0 ? 127 / a : 0;
      const __m512 vs = _mm512_set1_ps(s), vinv = _mm512_set1_ps(inv), vinv_lo = _mm512_set1_ps(256 * inv);
      __m512i digit_sum = _mm512_setzero_si512();
      for (int64_t i = 0; i < vectors; ++i) {
        const __m512i h = _mm512_min_epi32(hi_clamp, _mm512_max_epi32(lo_clamp, _mm512_cvtps_epi32(_mm512_mul_ps(v[i], vinv))));
        const __m512 rest = _mm512_fnmadd_ps(vs, _mm512_cvtepi32_ps(h), v[i]);
        const __m512i l = _mm512_min_epi32(hi_clamp, _mm512_max_epi32(lo_clamp, _mm512_cvtps_epi32(_mm512_mul_ps(rest, vinv_lo))));
        digit_sum = _mm512_add_epi32(digit_sum, _mm512_add_epi32(_mm512_slli_epi32(h, 8), l));
        const bool high = i >= vectors / 2;  // codes [G/2, G) sit in the high nibbles
        const int64_t at = g * group / 2 + (i % (vectors / 2)) * 16;
        _mm_storeu_si128(reinterpret_cast<__m128i*>((high ? h_hi : h_lo) + at), _mm512_cvtsepi32_epi8(h));
        _mm_storeu_si128(reinterpret_cast<__m128i*>((high ? l_hi : l_lo) + at), _mm512_cvtsepi32_epi8(l));
      }
      const int64_t at = r * groups + g;
      scale[at] = s / 256;
      correction[at] = -8 * (s / 256) * static_cast<float>(_mm512_reduce_add_epi32(digit_sum));
      sum[at] = _mm512_reduce_add_ps(total);
    }
  }
}

// Where each lane of a chunk finds its group in the window, per chunk of the window, and for a
// last chunk of `bytes` < 64 (its lanes past them masked).
struct Lanes {
  alignas(64) int32_t idx[kWindow * 32 / kChunk][16];
  int tail_bytes;
};

Lanes LanesFor(int64_t k, int64_t group) {
  Lanes l;
  const int64_t window_bytes = kWindow * group / 2;
  for (int64_t pos = 0; pos < window_bytes / kChunk; ++pos) {
    for (int lane = 0; lane < 16; ++lane) l.idx[pos][lane] = static_cast<int32_t>((pos * kChunk + 4 * lane) / (group / 2));
  }
  l.tail_bytes = static_cast<int>(k / 2 % kChunk);
  return l;
}

// sum (256 h + l) q over each lane's 8 codes (4 in each nibble) of a chunk against row `row` of
// x's digits at byte `at` of each of its four orders.
template <bool kFull>
inline __m512 Int4Dot(const Int4Args& a, __m512i lo, __m512i hi, int64_t row, int64_t at, __mmask64 bytes) {
  const int8_t* d = a.digits + row * 2 * a.k + at;
  const int64_t half = a.k / 2;
  auto load = [&](const int8_t* p) { return kFull ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi8(bytes, p); };
  const __m512i zero = _mm512_setzero_si512();
  const __m512i h = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, lo, load(d)), hi, load(d + half));
  const __m512i l = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(zero, lo, load(d + 2 * half)), hi, load(d + 3 * half));
  return _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_slli_epi32(h, 8), l));
}

// One chunk of the tile's 4 rows (from byte `at` of a row, `bytes` of them, lane groups `idx`)
// against MR rows of x, the window's scale products in `c`.
template <bool kFull, int MR>
inline void Int4Chunk(const Int4Args& a, const int32_t* idx, int bytes, int64_t m0, int64_t n0, int64_t at,
                      bool prefetch, const __m512 (&c)[MR][kNr], __m512 (&acc)[MR][kNr]) {
  const __m512i nibble = _mm512_set1_epi8(0x0F), lanes = _mm512_load_si512(idx);
  const __mmask64 mask = kFull ? ~__mmask64{0} : (__mmask64{1} << bytes) - 1;
#pragma GCC unroll 4
  for (int j = 0; j < kNr; ++j) {
    const uint8_t* w = a.w + n0 * (a.k / 2) + kNr * at + j * bytes;  // the tile's rows chunk by chunk
    if (prefetch) _mm_prefetch(reinterpret_cast<const char*>(w) + a.prefetch, _MM_HINT_T0);  // a hint, never a load
    const __m512i v = kFull ? _mm512_loadu_si512(w) : _mm512_maskz_loadu_epi8(mask, w);
    const __m512i lo = _mm512_and_si512(v, nibble), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), nibble);
#pragma GCC unroll 2
    for (int i = 0; i < MR; ++i) {
      acc[i][j] = _mm512_fmadd_ps(Int4Dot<kFull>(a, lo, hi, m0 + i, at, mask), _mm512_permutexvar_ps(lanes, c[i][j]),
                                  acc[i][j]);
    }
  }
}

template <int MR>
void Int4Tile(const Int4Args& a, const Lanes& l, int64_t m0, int64_t n0, bool prefetch) {
  const int64_t groups = a.k / a.group, row_bytes = a.k / 2, full_end = row_bytes / kChunk * kChunk;
  __m512 acc[MR][kNr], c[MR][kNr];
#pragma GCC unroll 2
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int j = 0; j < kNr; ++j) acc[i][j] = _mm512_setzero_ps();
  }
  const __m512i zero_bits = _mm512_set1_epi32(static_cast<int32_t>(0xFFFF0000u));
  for (int64_t g0 = 0; g0 < groups; g0 += kWindow) {
    const int64_t count = std::min<int64_t>(kWindow, groups - g0);
    const __mmask16 gm = static_cast<__mmask16>((1u << count) - 1);
#pragma GCC unroll 4
    for (int j = 0; j < kNr; ++j) {
      const uint32_t* pairs = a.sz + n0 * groups + kNr * g0 + j * count;  // the tile's rows window by window
      if (prefetch) _mm_prefetch(reinterpret_cast<const char*>(pairs) + a.prefetch / (a.group / 8), _MM_HINT_T0);
      const __m512i p = _mm512_maskz_loadu_epi32(gm, pairs);
      const __m512 scale = _mm512_castsi512_ps(_mm512_slli_epi32(p, 16));
      const __m512 zero = _mm512_castsi512_ps(_mm512_and_si512(p, zero_bits));
#pragma GCC unroll 2
      for (int i = 0; i < MR; ++i) {
        const int64_t at = (m0 + i) * groups + g0;
        c[i][j] = _mm512_mul_ps(scale, _mm512_maskz_loadu_ps(gm, a.scale + at));
        acc[i][j] = _mm512_fmadd_ps(scale, _mm512_maskz_loadu_ps(gm, a.correction + at), acc[i][j]);
        acc[i][j] = _mm512_fmadd_ps(zero, _mm512_maskz_loadu_ps(gm, a.sum + at), acc[i][j]);
      }
    }
    const int64_t begin = g0 * a.group / 2, end = std::min(row_bytes, (g0 + kWindow) * a.group / 2);
    for (int64_t at = begin; at < std::min(end, full_end); at += kChunk) {
      Int4Chunk<true, MR>(a, l.idx[(at - begin) / kChunk], kChunk, m0, n0, at, prefetch, c, acc);
    }
    if (end > full_end) Int4Chunk<false, MR>(a, l.idx[(full_end - begin) / kChunk], l.tail_bytes, m0, n0, full_end, prefetch, c, acc);
  }
#pragma GCC unroll 2
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int j = 0; j < kNr; ++j) a.y[(m0 + i) * a.n + n0 + j] = _mm512_reduce_add_ps(acc[i][j]);
  }
}

#pragma GCC diagnostic pop
#pragma GCC pop_options

// As Run: tiles of kNr rows of W across the threads, each meeting up to kInt4Rows rows of x.
void RunInt4(const Int4Args& a) {
  const Lanes lanes = LanesFor(a.k, a.group);
  const int64_t tiles = a.n / kNr;
  const int64_t grain = std::max<int64_t>(1, (int64_t{64} << 10) / (kNr * a.k / 2));
  for (int64_t mc = 0; mc < a.m; mc += kInt4Rows) {
    const int64_t m_end = std::min(a.m, mc + kInt4Rows);
    at::parallel_for(0, tiles, grain, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        for (int64_t m0 = mc; m0 < m_end; m0 += kInt4Mr) {  // N is a multiple of 4: whole tiles
          (m_end - m0 >= 2 ? Int4Tile<2> : Int4Tile<1>)(a, lanes, m0, t * kNr, m0 == mc);
        }
      }
    });
  }
}
#endif  // ADAPTD_GEMV_X86

}  // namespace

bool CpuGemvAvailable() {
#ifdef ADAPTD_GEMV_X86
  static const bool available = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                                __builtin_cpu_supports("avx512vl");
  return available;
#else
  return false;
#endif
}

at::Tensor CpuGemv(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales, const at::Tensor& add,
                   bool tiled) {
  TORCH_CHECK(CpuGemvAvailable() && x.is_cpu() && w.is_cpu() && x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1),
              "CpuGemv: unsupported arguments");
  TORCH_CHECK(!tiled || (w.scalar_type() == at::kChar && w.size(0) % 4 == 0), "CpuGemv: only int8 comes tiled");
  const bool int8 = w.scalar_type() == at::kChar;
  TORCH_CHECK(int8 ? scales.defined() && scales.numel() == w.size(0) : w.scalar_type() == at::kFloat && !scales.defined(),
              "CpuGemv: W must be int8 with scales or f32 without");
  const at::Tensor xf = x.to(at::kFloat).contiguous(), wc = w.contiguous();
  const at::Tensor sf = int8 ? scales.to(at::kFloat).contiguous() : at::Tensor();
  const at::Tensor addf = add.defined() ? add.to(at::kFloat).contiguous() : at::Tensor();
  TORCH_CHECK(!addf.defined() || (addf.dim() == 2 && addf.size(0) == x.size(0) && addf.size(1) == w.size(0)),
              "CpuGemv: add must be [M, N]");
  at::Tensor y = at::empty({x.size(0), w.size(0)}, xf.options());
  Args a{xf.data_ptr<float>(), wc.data_ptr(), int8 ? sf.data_ptr<float>() : nullptr,
         addf.defined() ? addf.data_ptr<float>() : nullptr, y.data_ptr<float>(), x.size(0), w.size(0), x.size(1), 0,
         tiled};
  // The next block at the same offsets, unless a block is past ~half of L1 (f32 rows of 2k+):
  // then 4 KB ahead within the row (measured best for each shape of the 1B model and SmolLM2).
  const int64_t block_bytes = kNr * a.k * (int8 ? 1 : 4);
  a.prefetch = block_bytes <= (int64_t{24} << 10) ? block_bytes : 4096;
  if (a.k == 0) return addf.defined() ? addf.clone() : y.zero_();
#ifdef ADAPTD_GEMV_X86
  if (x.size(0) > 0 && w.size(0) > 0) int8 ? Run<true>(a) : Run<false>(a);
#endif
  return y;
}

bool CpuGemvInt4Available() {
#ifdef ADAPTD_GEMV_X86
  static const bool available = CpuGemvAvailable() && __builtin_cpu_supports("avx512vnni");
  return available;
#else
  return false;
#endif
}

namespace {

// [N, L] with each row cut into segments of `seg` columns (the last one shorter): the 4 rows of
// each tile segment by segment (Interleave), and back (Deinterleave).
at::Tensor Interleave(const at::Tensor& t, int64_t seg) {
  const int64_t n = t.size(0), l = t.size(1), full = l / seg * seg;
  std::vector<at::Tensor> parts;
  if (full > 0) parts.push_back(t.narrow(1, 0, full).reshape({n / 4, 4, full / seg, seg}).permute({0, 2, 1, 3}).reshape({n / 4, -1}));
  if (full < l) parts.push_back(t.narrow(1, full, l - full).reshape({n / 4, -1}));
  return at::cat(parts, 1).reshape({n, l}).contiguous();
}

at::Tensor Deinterleave(const at::Tensor& t, int64_t seg) {
  const int64_t n = t.size(0), l = t.size(1), full = l / seg * seg;
  const at::Tensor tiles = t.reshape({n / 4, 4 * l});
  std::vector<at::Tensor> parts;
  if (full > 0) parts.push_back(tiles.narrow(1, 0, 4 * full).reshape({n / 4, full / seg, 4, seg}).permute({0, 2, 1, 3}).reshape({n, full}));
  if (full < l) parts.push_back(tiles.narrow(1, 4 * full, 4 * (l - full)).reshape({n, l - full}));
  return at::cat(parts, 1).contiguous();
}

}  // namespace

at::Tensor TileRows(const at::Tensor& w) {
  TORCH_CHECK(w.dim() == 2 && w.size(0) % 4 == 0 && w.scalar_type() == at::kChar, "TileRows: int8 [N, K], N a multiple of 4");
  return Interleave(w, 64);
}

at::Tensor UntileRows(const at::Tensor& t) { return Deinterleave(t, 64); }

at::Tensor PackInt4Codes(const at::Tensor& q, int64_t group) {
  TORCH_CHECK(q.dim() == 2 && q.size(0) % 4 == 0 && (group == 32 || group == 64) && q.size(1) % group == 0,
              "PackInt4Codes: codes must be [N, K], N a multiple of 4, K of the group (32 or 64)");
  const int64_t n = q.size(0), k = q.size(1);
  const at::Tensor halves = q.to(at::kByte).reshape({n, k / group, 2, group / 2});
  const at::Tensor bytes = halves.select(2, 0).bitwise_or(halves.select(2, 1).bitwise_left_shift(4)).reshape({n, k / 2});
  return Interleave(bytes, kChunk);
}

at::Tensor PackInt4Pairs(const at::Tensor& sz) {
  TORCH_CHECK(sz.dim() == 3 && sz.size(0) % 4 == 0 && sz.size(2) == 2, "PackInt4Pairs: pairs must be [N, K / group, 2]");
  const at::Tensor words = sz.to(at::kBFloat16).contiguous().view(at::kInt).squeeze(2);  // [N, groups]
  return Interleave(words, kWindow).unsqueeze(2).view(at::kBFloat16);
}

at::Tensor DequantizeInt4(const at::Tensor& codes, const at::Tensor& pairs, int64_t group) {
  const int64_t n = codes.size(0), k = 2 * codes.size(1);
  TORCH_CHECK(codes.is_cpu() && n % 4 == 0 && pairs.dim() == 3 && pairs.size(0) == n && pairs.size(1) * group == k &&
                  pairs.scalar_type() == at::kBFloat16,
              "DequantizeInt4: unsupported arguments");
  const at::Tensor q = Deinterleave(codes, kChunk);
  const at::Tensor sf = Deinterleave(pairs.contiguous().view(at::kInt).squeeze(2), kWindow).unsqueeze(2)
                            .view(at::kBFloat16).to(at::kFloat).contiguous();
  at::Tensor out = at::empty({n, k}, at::kFloat);
  const uint8_t* in_all = q.data_ptr<uint8_t>();
  const float* s = sf.data_ptr<float>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, n, 16, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t g = 0; g < k / group; ++g) {
        const uint8_t* in = in_all + r * (k / 2) + g * group / 2;
        const float scale = s[(r * (k / group) + g) * 2], zero = s[(r * (k / group) + g) * 2 + 1];
        float* row = o + r * k + g * group;
        for (int64_t j = 0; j < group / 2; ++j) {
          row[j] = static_cast<float>((in[j] & 15) - 8) * scale + zero;
          row[j + group / 2] = static_cast<float>((in[j] >> 4) - 8) * scale + zero;
        }
      }
    }
  });
  return out;
}

at::Tensor CpuGemvInt4(const at::Tensor& x, const at::Tensor& codes, const at::Tensor& pairs, int64_t group) {
  TORCH_CHECK(CpuGemvInt4Available() && x.is_cpu() && codes.is_cpu() && pairs.is_cpu() && x.dim() == 2 &&
                  codes.dim() == 2 && codes.scalar_type() == at::kByte && codes.size(0) % 4 == 0 &&
                  x.size(1) == 2 * codes.size(1) && (group == 32 || group == 64) && x.size(1) % group == 0 &&
                  pairs.scalar_type() == at::kBFloat16 && pairs.dim() == 3 && pairs.size(0) == codes.size(0) &&
                  pairs.size(1) * group == x.size(1) && pairs.size(2) == 2,
              "CpuGemvInt4: unsupported arguments");
  const int64_t m = x.size(0), n = codes.size(0), k = x.size(1);
  const at::Tensor xf = x.to(at::kFloat).contiguous(), wc = codes.contiguous(), szc = pairs.contiguous();
  if (m == 0 || n == 0 || k == 0) return at::zeros({m, n}, xf.options());
  at::Tensor y = at::empty({m, n}, xf.options());  // every element written: N is whole tiles
  const int64_t groups = k / group;
  // One buffer: the digits [M, 4, K / 2] int8, then scale, correction and sum [M, K / group] f32.
  at::Tensor buffer = at::empty({m * 2 * k + 3 * m * groups * 4}, at::kChar);
  int8_t* d = buffer.data_ptr<int8_t>();
  float* per_group = reinterpret_cast<float*>(d + m * 2 * k);
  Int4Args a{d, per_group, per_group + m * groups, per_group + 2 * m * groups, wc.data_ptr<uint8_t>(),
             reinterpret_cast<const uint32_t*>(szc.data_ptr<at::BFloat16>()), y.data_ptr<float>(), m, n, k, group, 0};
  // The next block of rows at the same offsets while it fits in half of L1, else 4 KB ahead.
  const int64_t block_bytes = kNr * k / 2;
  a.prefetch = block_bytes <= (int64_t{24} << 10) ? block_bytes : 4096;
#ifdef ADAPTD_GEMV_X86
  RoundActivations(xf.data_ptr<float>(), m, k, group, d, per_group, per_group + m * groups, per_group + 2 * m * groups);
  RunInt4(a);
#endif
  return y;
}

}  // namespace adaptd::engine
