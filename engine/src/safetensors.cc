// Safetensors reader: mmap, header validation, views into the mapping.
#include "adaptd/engine/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <limits>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace adaptd::engine {
namespace {

// A header larger than this is rejected before it is parsed (real ones are a few hundred KiB).
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

struct DTypeInfo {
  const char* name;
  DType dtype;
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {"F32", DType::kF32, 4}, {"BF16", DType::kBF16, 2}, {"F16", DType::kF16, 2},
    {"F64", DType::kF64, 8}, {"I64", DType::kI64, 8},   {"I32", DType::kI32, 4},
    {"I16", DType::kI16, 2}, {"I8", DType::kI8, 1},     {"U8", DType::kU8, 1},
    {"BOOL", DType::kBool, 1},
};

absl::Status Corrupt(const std::string& path, const std::string& what) {
  return absl::DataLossError(absl::StrCat("safetensors file ", path, ": ", what));
}

// Parses one tensor entry of the header; data_size is the size of the byte section.
absl::StatusOr<TensorView> ParseEntry(const std::string& path, const std::string& name,
                                      const nlohmann::json& entry, const std::byte* data,
                                      uint64_t data_size) {
  auto bad = [&](const std::string& what) { return Corrupt(path, absl::StrCat("tensor '", name, "': ", what)); };
  if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") ||
      !entry.contains("data_offsets")) {
    return bad("entry needs dtype, shape and data_offsets");
  }
  const auto& dtype = entry["dtype"];
  const DTypeInfo* info = nullptr;
  for (const auto& d : kDTypes) {
    if (dtype.is_string() && dtype.get<std::string>() == d.name) info = &d;
  }
  if (info == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("safetensors file ", path, ": tensor '", name, "' has unsupported dtype ", dtype.dump()));
  }
  TensorView view{info->dtype, {}, nullptr, 0};
  uint64_t numel = 1;
  if (!entry["shape"].is_array()) return bad("shape is not a list");
  for (const auto& dim : entry["shape"]) {
    if (!dim.is_number_unsigned()) return bad("shape has a negative or non-integer dimension");
    uint64_t d = dim.get<uint64_t>();
    if (d != 0 && numel > std::numeric_limits<uint32_t>::max() * uint64_t{16} / d) return bad("shape too large");
    numel *= d;
    view.shape.push_back(static_cast<int64_t>(d));
  }
  const auto& off = entry["data_offsets"];
  if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned()) {
    return bad("data_offsets must be two non-negative integers");
  }
  uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
  if (begin > end || end > data_size) {
    return bad(absl::StrCat("bytes [", begin, ", ", end, ") outside the data section of ", data_size,
                            " bytes (truncated file?)"));
  }
  if (end - begin != numel * info->size) {
    return bad(absl::StrCat("holds ", end - begin, " bytes, its shape needs ", numel * info->size));
  }
  view.data = data + begin;
  view.nbytes = end - begin;
  return view;
}

}  // namespace

size_t DTypeSize(DType dtype) {
  for (const auto& d : kDTypes) {
    if (d.dtype == dtype) return d.size;
  }
  return 0;
}

const char* DTypeName(DType dtype) {
  for (const auto& d : kDTypes) {
    if (d.dtype == dtype) return d.name;
  }
  return "?";
}

int64_t TensorView::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return absl::InternalError(absl::StrCat("cannot stat ", path));
  }
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->map_size_ = static_cast<size_t>(st.st_size);
  if (file->map_size_ < 8) {
    ::close(fd);
    return Corrupt(path, "shorter than its 8-byte header length");
  }
  void* map = ::mmap(nullptr, file->map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return absl::InternalError(absl::StrCat("cannot mmap ", path));
  file->map_ = map;

  const auto* bytes = static_cast<const std::byte*>(map);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(bytes[i]);
  if (header_len > kMaxHeaderBytes || header_len > file->map_size_ - 8) {
    return Corrupt(path, absl::StrCat("header length ", header_len, " exceeds the file (", file->map_size_, " bytes)"));
  }
  nlohmann::json header = nlohmann::json::parse(reinterpret_cast<const char*>(bytes) + 8,
                                                reinterpret_cast<const char*>(bytes) + 8 + header_len,
                                                nullptr, /*allow_exceptions=*/false);
  if (!header.is_object()) return Corrupt(path, "header is not a JSON object");
  const std::byte* data = bytes + 8 + header_len;
  uint64_t data_size = file->map_size_ - 8 - header_len;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (!entry.is_object()) return Corrupt(path, "__metadata__ is not an object");
      for (const auto& [k, v] : entry.items()) {
        if (!v.is_string()) return Corrupt(path, absl::StrCat("metadata '", k, "' is not a string"));
        file->metadata_[k] = v.get<std::string>();
      }
      continue;
    }
    auto view = ParseEntry(path, name, entry, data, data_size);
    if (!view.ok()) return view.status();
    file->tensors_.emplace(name, *std::move(view));
  }
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

const TensorView* SafetensorsFile::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

}  // namespace adaptd::engine
