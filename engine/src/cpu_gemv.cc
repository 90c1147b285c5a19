// The CPU product for streamed weights (cpu_gemv.h). A tile is MR rows of x against NR = 4 rows
// of W, its MR x NR sums in zmm registers over K in steps of 16 lanes, reduced at the end. At
// batch 1 the product is bound by the bytes of W, and the hardware prefetcher alone keeps only
// ~50% of the read bandwidth busy for four short row streams (measured: int8 [11264, 2048] at
// 10-12 GB/s of 22-24); prefetching the next block's rows at the offsets being read lifts it to
// 16-21 GB/s (int8) and f32 to 20-22 GB/s. The f32 products share the code with int8 widened.
#include "cpu_gemv.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

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
// of W, x at its first row of x, both at column k; rows are k_stride elements apart.
template <bool kInt8, int MR, int NR>
inline void Step(const void* w, const float* x, int64_t k_stride, __mmask16 mask, __m512 (&acc)[MR][NR]) {
  __m512 wv[NR];
#pragma GCC unroll 4
  for (int j = 0; j < NR; ++j) {
    if constexpr (kInt8) {
      const __m128i q = _mm_maskz_loadu_epi8(mask, static_cast<const int8_t*>(w) + j * k_stride);
      wv[j] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q));
    } else {
      wv[j] = _mm512_maskz_loadu_ps(mask, static_cast<const float*>(w) + j * k_stride);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
    const __m512 xv = _mm512_maskz_loadu_ps(mask, x + i * k_stride);
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
  for (int64_t k = 0; k < full; k += 16) {
    if (prefetch && (!kInt8 || k % 64 == 0)) {  // a line per row: 64 int8 or 16 f32 weights
#pragma GCC unroll 4
      for (int j = 0; j < NR; ++j) {  // a hint, never a load: past the end of W it is ignored
        const uintptr_t at = reinterpret_cast<uintptr_t>(w) + (j * k_len + k) * elt + ahead;
        _mm_prefetch(reinterpret_cast<const char*>(at), _MM_HINT_T0);
      }
    }
    Step<kInt8, MR, NR>(w + k * elt, x + k, k_len, static_cast<__mmask16>(0xFFFF), acc);
  }
  if (full < k_len) {
    Step<kInt8, MR, NR>(w + full * elt, x + full, k_len, static_cast<__mmask16>((1u << (k_len - full)) - 1), acc);
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

at::Tensor CpuGemv(const at::Tensor& x, const at::Tensor& w, const at::Tensor& scales, const at::Tensor& add) {
  TORCH_CHECK(CpuGemvAvailable() && x.is_cpu() && w.is_cpu() && x.dim() == 2 && w.dim() == 2 && x.size(1) == w.size(1),
              "CpuGemv: unsupported arguments");
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
         addf.defined() ? addf.data_ptr<float>() : nullptr, y.data_ptr<float>(), x.size(0), w.size(0), x.size(1), 0};
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

}  // namespace adaptd::engine
