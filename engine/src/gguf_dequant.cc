// ggml block formats to f32. Each block is decoded as ggml's reference dequantizers do, with
// the same float operations in the same order (scale * q, then - min), so the values are
// bit-equal to the `gguf` package's numpy dequantizers (the oracle of gguf_test).
// Written here rather than linked from ggml: the engine needs only these few decoders, and
// the block layouts are the format's specification.
#include <cstring>

#include "absl/strings/str_cat.h"
#include "adaptd/engine/gguf.h"

namespace adaptd::engine {
namespace {

constexpr int64_t kQK = 32;    // elements of a Q4_0 .. Q8_0 block
constexpr int64_t kQKK = 256;  // elements of a K-quant super-block

float HalfToFloat(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF, bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000 | (mant << 13);  // inf, nan
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    int e = -1;
    do {
      ++e;
      mant <<= 1;
    } while ((mant & 0x400) == 0);
    bits = sign | (uint32_t(112 - e) << 23) | ((mant & 0x3FF) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t U16(const uint8_t* p) { return uint16_t(p[0] | (p[1] << 8)); }
float F16At(const uint8_t* p) { return HalfToFloat(U16(p)); }

// The 6-bit scale and min of sub-block j of a Q4_K/Q5_K super-block (12 packed bytes).
void ScaleMin(int j, const uint8_t* q, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = uint8_t((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
    *m = uint8_t((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

void Q4_0(const uint8_t* b, float* y) {  // d, qs[16]
  const float d = F16At(b);
  for (int l = 0; l < 16; ++l) {
    y[l] = d * float(int(b[2 + l] & 0xF) - 8);
    y[l + 16] = d * float(int(b[2 + l] >> 4) - 8);
  }
}

void Q4_1(const uint8_t* b, float* y) {  // d, m, qs[16]
  const float d = F16At(b), m = F16At(b + 2);
  for (int l = 0; l < 16; ++l) {
    y[l] = d * float(b[4 + l] & 0xF) + m;
    y[l + 16] = d * float(b[4 + l] >> 4) + m;
  }
}

// Q5_0 (d, qh[4], qs[16]) and Q5_1 (d, m, qh[4], qs[16]): bit e of qh is element e's fifth bit.
void Q5(const uint8_t* b, bool with_min, float* y) {
  const float d = F16At(b);
  const float m = with_min ? F16At(b + 2) : 0.0f;
  const uint8_t* qhp = b + (with_min ? 4 : 2);
  const uint32_t qh = uint32_t(qhp[0]) | uint32_t(qhp[1]) << 8 | uint32_t(qhp[2]) << 16 | uint32_t(qhp[3]) << 24;
  const uint8_t* qs = qhp + 4;
  for (int e = 0; e < 32; ++e) {
    const int low = e < 16 ? (qs[e] & 0xF) : (qs[e - 16] >> 4);
    const int q = low | int((qh >> e) & 1) << 4;
    y[e] = with_min ? d * float(q) + m : d * float(q - 16);
  }
}

void Q8_0(const uint8_t* b, float* y) {  // d, int8 qs[32]
  const float d = F16At(b);
  for (int l = 0; l < 32; ++l) y[l] = float(static_cast<int8_t>(b[2 + l])) * d;
}

// Q4_K (d, dmin, scales[12], qs[128]) and Q5_K (d, dmin, scales[12], qh[32], qs[128]): eight
// sub-blocks of 32; sub-block g takes the low (g even) or high nibbles of qs[32 (g/2) ...] and,
// for Q5_K, bit g of qh as its fifth bit.
void QK4or5(const uint8_t* b, bool five, float* y) {
  const float d = F16At(b), dmin = F16At(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + (five ? 48 : 16);
  for (int g = 0; g < 8; ++g) {
    uint8_t sc, m;
    ScaleMin(g, scales, &sc, &m);
    const float dl = d * float(sc), ml = dmin * float(m);
    for (int l = 0; l < 32; ++l) {
      int q = (qs[32 * (g / 2) + l] >> (4 * (g % 2))) & 0xF;
      if (five) q |= ((qh[l] >> g) & 1) << 4;
      y[32 * g + l] = dl * float(q) - ml;
    }
  }
}

// Q6_K (ql[128], qh[64], int8 scales[16], d): two halves of 128; in half h, element j takes the
// low (j < 64) or high nibble of ql[64h + j % 64], bits 2 (j / 32) of qh[32h + j % 32], and the
// scale of its sixteen.
void Q6_K(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const auto* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = F16At(b + 208);
  for (int e = 0; e < kQKK; ++e) {
    const int h = e / 128, j = e % 128;
    const int low = (ql[64 * h + j % 64] >> (j < 64 ? 0 : 4)) & 0xF;
    const int high = (qh[32 * h + j % 32] >> (2 * (j / 32))) & 3;
    y[e] = (d * float(sc[e / 16])) * float((low | high << 4) - 32);
  }
}

}  // namespace

const char* GgmlTypeName(uint32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::kF32: return "F32";
    case GgmlType::kF16: return "F16";
    case GgmlType::kBF16: return "BF16";
    case GgmlType::kQ4_0: return "Q4_0";
    case GgmlType::kQ4_1: return "Q4_1";
    case GgmlType::kQ5_0: return "Q5_0";
    case GgmlType::kQ5_1: return "Q5_1";
    case GgmlType::kQ8_0: return "Q8_0";
    case GgmlType::kQ4_K: return "Q4_K";
    case GgmlType::kQ5_K: return "Q5_K";
    case GgmlType::kQ6_K: return "Q6_K";
  }
  return nullptr;
}

std::optional<GgmlBlock> GgmlBlockOf(uint32_t type) {
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::kF32: return GgmlBlock{1, 4};
    case GgmlType::kF16: return GgmlBlock{1, 2};
    case GgmlType::kBF16: return GgmlBlock{1, 2};
    case GgmlType::kQ4_0: return GgmlBlock{kQK, 18};
    case GgmlType::kQ4_1: return GgmlBlock{kQK, 20};
    case GgmlType::kQ5_0: return GgmlBlock{kQK, 22};
    case GgmlType::kQ5_1: return GgmlBlock{kQK, 24};
    case GgmlType::kQ8_0: return GgmlBlock{kQK, 34};
    case GgmlType::kQ4_K: return GgmlBlock{kQKK, 144};
    case GgmlType::kQ5_K: return GgmlBlock{kQKK, 176};
    case GgmlType::kQ6_K: return GgmlBlock{kQKK, 210};
  }
  return std::nullopt;
}

absl::Status Dequantize(const GgufTensor& t, float* out) {
  const auto block = GgmlBlockOf(t.type);
  if (!block) return absl::InvalidArgumentError(absl::StrCat("tensor ", t.name, ": ggml type ", t.type, " is not read"));
  const int64_t n = t.NumElements();
  if (t.dims.empty() || t.dims[0] % block->elements != 0 || size_t(n / block->elements * block->bytes) != t.nbytes) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", t.name, ": its size is not whole blocks"));
  }
  const auto* p = reinterpret_cast<const uint8_t*>(t.data);
  const int64_t blocks = n / block->elements;
  for (int64_t i = 0; i < blocks; ++i, p += block->bytes, out += block->elements) {
    switch (static_cast<GgmlType>(t.type)) {
      case GgmlType::kF32: std::memcpy(out, p, 4); break;
      case GgmlType::kF16: *out = F16At(p); break;
      case GgmlType::kBF16: {
        const uint32_t bits = uint32_t(U16(p)) << 16;
        std::memcpy(out, &bits, 4);
        break;
      }
      case GgmlType::kQ4_0: Q4_0(p, out); break;
      case GgmlType::kQ4_1: Q4_1(p, out); break;
      case GgmlType::kQ5_0: Q5(p, false, out); break;
      case GgmlType::kQ5_1: Q5(p, true, out); break;
      case GgmlType::kQ8_0: Q8_0(p, out); break;
      case GgmlType::kQ4_K: QK4or5(p, false, out); break;
      case GgmlType::kQ5_K: QK4or5(p, true, out); break;
      case GgmlType::kQ6_K: Q6_K(p, out); break;
    }
  }
  return absl::OkStatus();
}

absl::Status UnpackQ4(const GgufTensor& t, uint8_t* q, float* scale, float* min) {
  const bool with_min = t.type == static_cast<uint32_t>(GgmlType::kQ4_1);
  if (!with_min && t.type != static_cast<uint32_t>(GgmlType::kQ4_0)) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", t.name, ": 4-bit codes are read from Q4_0 and Q4_1 only"));
  }
  const GgmlBlock block = *GgmlBlockOf(t.type);
  const int64_t n = t.NumElements();
  if (t.dims.empty() || t.dims[0] % kQK != 0 || size_t(n / kQK * block.bytes) != t.nbytes) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", t.name, ": its size is not whole blocks"));
  }
  const auto* p = reinterpret_cast<const uint8_t*>(t.data);
  for (int64_t b = 0; b < n / kQK; ++b, p += block.bytes, q += kQK) {
    const float d = F16At(p);
    scale[b] = d;
    min[b] = with_min ? F16At(p + 2) : -8 * d;
    const uint8_t* qs = p + (with_min ? 4 : 2);
    for (int l = 0; l < 16; ++l) {
      q[l] = qs[l] & 0xF;
      q[l + 16] = qs[l] >> 4;
    }
  }
  return absl::OkStatus();
}

}  // namespace adaptd::engine
