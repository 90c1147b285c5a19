// Reader of the safetensors format (Hugging Face): an 8-byte little-endian header length, a JSON
// header {name: {dtype, shape, data_offsets}, "__metadata__": {...}}, then the tensor bytes.
// The file is memory-mapped; tensors are views into the mapping (no copy).
#ifndef ADAPTD_ENGINE_SAFETENSORS_H_
#define ADAPTD_ENGINE_SAFETENSORS_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace adaptd::engine {

enum class DType { kF32, kBF16, kF16, kF64, kI64, kI32, kI16, kI8, kU8, kBool };

// Bytes per element of `dtype`.
size_t DTypeSize(DType dtype);
// "F32", "BF16", ... as written in safetensors headers.
const char* DTypeName(DType dtype);

struct TensorView {
  DType dtype;
  std::vector<int64_t> shape;
  const std::byte* data;  // into the file's mapping; valid while the SafetensorsFile lives
  size_t nbytes;

  int64_t NumElements() const;
};

class SafetensorsFile {
 public:
  // Maps and validates `path`. Every tensor's dtype, shape and byte range is checked against the
  // header and the file size: a truncated or malformed file is DATA_LOSS (INVALID_ARGUMENT for
  // an unsupported dtype), naming the file and the tensor. NOT_FOUND when the file is missing.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);

  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // nullptr when absent.
  const TensorView* Find(const std::string& name) const;
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }

 private:
  SafetensorsFile() = default;

  std::string path_;
  void* map_ = nullptr;
  size_t map_size_ = 0;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace adaptd::engine

#endif  // ADAPTD_ENGINE_SAFETENSORS_H_
