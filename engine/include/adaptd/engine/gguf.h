// Reader of GGUF files (the llama.cpp project's checkpoint format), versions 2 and 3: a header,
// typed metadata key/values, tensor descriptions, then aligned tensor data. The file is
// memory-mapped; tensors are views of their raw (possibly quantized) blocks, and Dequantize
// turns them into f32. Every count, length, offset and size is checked against the file before
// it is used: a hostile file gives a status, never a crash or an out-of-bounds read.
//
// Threading: a GgufFile is immutable after Open and may be shared.
#ifndef ADAPTD_ENGINE_GGUF_H_
#define ADAPTD_ENGINE_GGUF_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace adaptd::engine {

// ggml tensor types, numbered as in the file (the ones the engine reads).
enum class GgmlType : uint32_t {
  kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8,
  kQ4_K = 12, kQ5_K = 13, kQ6_K = 14, kBF16 = 30,
};
// "F32", "Q4_K", ...; nullptr for a number the engine does not read.
const char* GgmlTypeName(uint32_t type);

// One metadata value. Integers keep their sign in `i` or `u` (whichever fits the file's type),
// floats in `f`; arrays hold their elements (all of one type).
struct GgufValue {
  enum class Type : uint32_t {
    kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
    kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
  };
  Type type = Type::kU8;
  uint64_t u = 0;
  int64_t i = 0;
  double f = 0;
  bool b = false;
  std::string s;
  Type element_type = Type::kU8;  // kArray
  std::vector<GgufValue> array;

  bool IsInteger() const;
  bool IsFloat() const { return type == Type::kF32 || type == Type::kF64; }
};

class GgufCursor;  // gguf.cc

struct GgufTensor {
  std::string name;
  uint32_t type = 0;             // a GgmlType
  std::vector<int64_t> dims;     // ggml order: dims[0] is contiguous (a row), as in the file
  const std::byte* data = nullptr;  // the raw blocks, inside the file's mapping
  size_t nbytes = 0;

  int64_t NumElements() const;
  // The shape as PyTorch/HF write it: dims reversed ([rows, ..., dims[0]]).
  std::vector<int64_t> Shape() const;
};

class GgufFile {
 public:
  // Maps and validates `path`: NOT_FOUND when it cannot be opened; DATA_LOSS naming what is
  // wrong for a bad magic, a truncated file, a length or count past the file, a tensor outside
  // the data section, misaligned or overlapping, a duplicate key or tensor; UNIMPLEMENTED for a
  // version other than 2 or 3 or a tensor type the engine does not read.
  static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  uint32_t version() const { return version_; }
  const std::string& path() const { return path_; }
  const std::map<std::string, GgufValue>& metadata() const { return metadata_; }
  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  // nullptr when absent.
  const GgufValue* Find(const std::string& key) const;
  const GgufTensor* FindTensor(const std::string& name) const;

  // Typed metadata: NOT_FOUND when absent, INVALID_ARGUMENT naming the key for another type or
  // a value out of range.
  absl::StatusOr<int64_t> GetInt(const std::string& key) const;
  absl::StatusOr<double> GetFloat(const std::string& key) const;  // integers are accepted
  absl::StatusOr<std::string> GetString(const std::string& key) const;
  absl::StatusOr<const std::vector<GgufValue>*> GetArray(const std::string& key, GgufValue::Type element) const;

  // Drops the mapping's resident pages (they are file-backed: a later read of a tensor's
  // blocks faults them in again). Model::Load calls it once the weights are dequantized.
  void ReleasePages() const;

 private:
  GgufFile() = default;
  absl::Status Parse();
  absl::Status ParseTensorInfo(GgufCursor& c, uint64_t alignment, std::vector<uint64_t>* offsets);
  absl::Status PlaceTensors(const std::vector<uint64_t>& offsets, uint64_t data_start);
  absl::Status Corrupt(const std::string& what) const;

  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  uint32_t version_ = 0;
  std::map<std::string, GgufValue> metadata_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, size_t> tensor_index_;
};

// The f32 values of `tensor` into out[0, NumElements()), in the file's element order (dims[0]
// fastest). Bit-equal to the `gguf` package's dequantize. INVALID_ARGUMENT for a type the engine
// does not read or a row length that is not a whole number of blocks.
absl::Status Dequantize(const GgufTensor& tensor, float* out);

// The 4-bit codes of a Q4_0 or Q4_1 tensor, undecoded, for a base kept in 4 bits without
// requantizing: element e (file order) is scale[e / 32] * q[e] + min[e / 32] (Q4_0: min is
// -8 scale), q in [0, 15]; q holds NumElements() values, scale and min one per 32. Equal to
// Dequantize up to f32 rounding. INVALID_ARGUMENT for another type or partial blocks.
absl::Status UnpackQ4(const GgufTensor& tensor, uint8_t* q, float* scale, float* min);

// Elements per block and bytes per block of a readable type (nullopt otherwise).
struct GgmlBlock {
  int64_t elements;
  int64_t bytes;
};
std::optional<GgmlBlock> GgmlBlockOf(uint32_t type);

}  // namespace adaptd::engine

#endif  // ADAPTD_ENGINE_GGUF_H_
