// GGUF reader: mmap, header, metadata and tensor descriptions, each bounded before use.
#include "adaptd/engine/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "absl/strings/str_cat.h"
#include "status_macros.h"

namespace adaptd::engine {
namespace {

// Bounds a hostile header cannot push past (real files: tens of keys, hundreds of tensors, and
// arrays of ~150k tokens or merges).
constexpr uint64_t kMaxKeys = 1 << 16;
constexpr uint64_t kMaxTensors = 1 << 20;
constexpr uint64_t kMaxStringBytes = 64ull << 20;
// Array elements in all the metadata: each becomes a GgufValue (~100 bytes), so a small hostile
// file must not claim billions of one-byte elements.
constexpr uint64_t kMaxArrayElements = uint64_t{1} << 22;
constexpr int kMaxArrayDepth = 4;
constexpr uint32_t kMaxDims = 4;  // GGML_MAX_DIMS
constexpr uint32_t kDefaultAlignment = 32;

using Type = GgufValue::Type;

size_t ScalarSize(Type t) {
  switch (t) {
    case Type::kU8: case Type::kI8: case Type::kBool: return 1;
    case Type::kU16: case Type::kI16: return 2;
    case Type::kU32: case Type::kI32: case Type::kF32: return 4;
    case Type::kU64: case Type::kI64: case Type::kF64: return 8;
    default: return 0;
  }
}

}  // namespace

// Reads little-endian values from [p, end) and fails instead of reading past `end`.
class GgufCursor {
 public:
  GgufCursor(const std::byte* begin, const std::byte* end, const std::string& path)
      : begin_(begin), p_(begin), end_(end), path_(path) {}

  size_t offset() const { return static_cast<size_t>(p_ - begin_); }
  uint64_t array_budget = kMaxArrayElements;  // elements the metadata's arrays may still hold
  size_t left() const { return static_cast<size_t>(end_ - p_); }

  absl::Status Truncated(const std::string& what) const {
    return absl::DataLossError(absl::StrCat("GGUF file ", path_, ": truncated at byte ", offset(), " reading ", what));
  }

  template <typename T>
  absl::StatusOr<T> Read(const std::string& what) {
    if (left() < sizeof(T)) return Truncated(what);
    T v;
    std::memcpy(&v, p_, sizeof(T));  // the format is little-endian, as is every host we build for
    p_ += sizeof(T);
    return v;
  }

  absl::StatusOr<std::string> ReadString(const std::string& what) {
    ASSIGN_OR_RETURN(uint64_t n, Read<uint64_t>(what));
    if (n > kMaxStringBytes || n > left()) {
      return absl::DataLossError(absl::StrCat("GGUF file ", path_, ": ", what, " claims ", n,
                                              " bytes at byte ", offset(), ", past the end of the file"));
    }
    std::string s(reinterpret_cast<const char*>(p_), n);
    p_ += n;
    return s;
  }

 private:
  const std::byte* begin_;
  const std::byte* p_;
  const std::byte* end_;
  const std::string& path_;
};

namespace {

absl::Status ReadValue(GgufCursor& c, Type type, const std::string& key, int depth, GgufValue* out);

absl::Status ReadArray(GgufCursor& c, const std::string& key, int depth, GgufValue* out) {
  if (depth >= kMaxArrayDepth) return absl::DataLossError(absl::StrCat("metadata ", key, ": arrays nested too deep"));
  ASSIGN_OR_RETURN(uint32_t et, c.Read<uint32_t>(key + " element type"));
  if (et > static_cast<uint32_t>(Type::kF64)) {
    return absl::DataLossError(absl::StrCat("metadata ", key, ": unknown array element type ", et));
  }
  ASSIGN_OR_RETURN(uint64_t n, c.Read<uint64_t>(key + " length"));
  // Every element takes at least one byte (a string or array at least 8), so a count past the
  // bytes left is a lie: refuse it before reserving anything.
  const size_t min_size = ScalarSize(static_cast<Type>(et)) ? ScalarSize(static_cast<Type>(et)) : 8;
  if (n > c.left() / min_size) {
    return absl::DataLossError(absl::StrCat("metadata ", key, ": array of ", n, " elements does not fit in the file"));
  }
  if (n > c.array_budget) {
    return absl::DataLossError(absl::StrCat("metadata ", key, ": array of ", n, " elements exceeds the reader's bound of ",
                                            kMaxArrayElements, " in all"));
  }
  c.array_budget -= n;
  out->element_type = static_cast<Type>(et);
  out->array.resize(n);
  for (uint64_t i = 0; i < n; ++i) RETURN_IF_ERROR(ReadValue(c, out->element_type, key, depth + 1, &out->array[i]));
  return absl::OkStatus();
}

absl::Status ReadValue(GgufCursor& c, Type type, const std::string& key, int depth, GgufValue* out) {
  out->type = type;
  switch (type) {
#define ADAPTD_GGUF_INT(T, field, ctype)                       \
  case T: {                                                     \
    ASSIGN_OR_RETURN(ctype v, c.Read<ctype>(key));              \
    out->field = v;                                             \
    return absl::OkStatus();                                    \
  }
    ADAPTD_GGUF_INT(Type::kU8, u, uint8_t)
    ADAPTD_GGUF_INT(Type::kI8, i, int8_t)
    ADAPTD_GGUF_INT(Type::kU16, u, uint16_t)
    ADAPTD_GGUF_INT(Type::kI16, i, int16_t)
    ADAPTD_GGUF_INT(Type::kU32, u, uint32_t)
    ADAPTD_GGUF_INT(Type::kI32, i, int32_t)
    ADAPTD_GGUF_INT(Type::kU64, u, uint64_t)
    ADAPTD_GGUF_INT(Type::kI64, i, int64_t)
    ADAPTD_GGUF_INT(Type::kF32, f, float)
    ADAPTD_GGUF_INT(Type::kF64, f, double)
#undef ADAPTD_GGUF_INT
    case Type::kBool: {
      ASSIGN_OR_RETURN(uint8_t v, c.Read<uint8_t>(key));
      if (v > 1) return absl::DataLossError(absl::StrCat("metadata ", key, ": bool value ", int(v)));
      out->b = v == 1;
      return absl::OkStatus();
    }
    case Type::kString: {
      ASSIGN_OR_RETURN(out->s, c.ReadString(key));
      return absl::OkStatus();
    }
    case Type::kArray:
      return ReadArray(c, key, depth, out);
  }
  return absl::DataLossError(absl::StrCat("metadata ", key, ": unknown value type ", static_cast<uint32_t>(type)));
}

}  // namespace

bool GgufValue::IsInteger() const {
  switch (type) {
    case Type::kU8: case Type::kI8: case Type::kU16: case Type::kI16:
    case Type::kU32: case Type::kI32: case Type::kU64: case Type::kI64: return true;
    default: return false;
  }
}

int64_t GgufTensor::NumElements() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

std::vector<int64_t> GgufTensor::Shape() const { return {dims.rbegin(), dims.rend()}; }

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return absl::NotFoundError(absl::StrCat("cannot open ", path, ": ", std::strerror(errno)));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a regular file"));
  }
  std::unique_ptr<GgufFile> file(new GgufFile());
  file->path_ = path;
  file->map_size_ = static_cast<size_t>(st.st_size);
  if (file->map_size_ > 0) {
    void* map = ::mmap(nullptr, file->map_size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
      ::close(fd);
      return absl::InternalError(absl::StrCat("cannot mmap ", path));
    }
    file->map_ = map;
  }
  ::close(fd);
  RETURN_IF_ERROR(file->Parse());
  return file;
}

GgufFile::~GgufFile() {
  if (map_ != nullptr) ::munmap(map_, map_size_);
}

absl::Status GgufFile::Corrupt(const std::string& what) const {
  return absl::DataLossError(absl::StrCat("GGUF file ", path_, ": ", what));
}

absl::Status GgufFile::Parse() {
  const auto* begin = static_cast<const std::byte*>(map_);
  GgufCursor c(begin, begin + map_size_, path_);
  if (map_size_ < 4 || std::memcmp(begin, "GGUF", 4) != 0) return Corrupt("bad magic (not a GGUF file)");
  c.Read<uint32_t>("magic").IgnoreError();
  ASSIGN_OR_RETURN(version_, c.Read<uint32_t>("version"));
  if (version_ != 2 && version_ != 3) {
    return absl::UnimplementedError(absl::StrCat("GGUF file ", path_, ": version ", version_, " (2 and 3 are read)"));
  }
  ASSIGN_OR_RETURN(uint64_t n_tensors, c.Read<uint64_t>("tensor count"));
  ASSIGN_OR_RETURN(uint64_t n_keys, c.Read<uint64_t>("metadata count"));
  if (n_tensors > kMaxTensors || n_keys > kMaxKeys) {
    return Corrupt(absl::StrCat(n_tensors, " tensors and ", n_keys, " metadata keys exceed the reader's bounds"));
  }
  for (uint64_t k = 0; k < n_keys; ++k) {
    ASSIGN_OR_RETURN(std::string key, c.ReadString("a metadata key"));
    ASSIGN_OR_RETURN(uint32_t type, c.Read<uint32_t>(key + " type"));
    if (type > static_cast<uint32_t>(Type::kF64)) return Corrupt(absl::StrCat("metadata ", key, ": unknown value type ", type));
    GgufValue v;
    RETURN_IF_ERROR(ReadValue(c, static_cast<Type>(type), key, 0, &v));
    if (!metadata_.emplace(key, std::move(v)).second) return Corrupt(absl::StrCat("duplicate metadata key ", key));
  }
  uint64_t alignment = kDefaultAlignment;
  if (const GgufValue* a = Find("general.alignment")) {
    if (a->type != Type::kU32 || a->u == 0 || (a->u & (a->u - 1)) != 0) {
      return Corrupt("general.alignment must be a power of two (uint32)");
    }
    alignment = a->u;
  }
  std::vector<uint64_t> offsets;
  for (uint64_t t = 0; t < n_tensors; ++t) RETURN_IF_ERROR(ParseTensorInfo(c, alignment, &offsets));
  return PlaceTensors(offsets, (c.offset() + alignment - 1) / alignment * alignment);
}

// One tensor description: name, dimensions (each and their product bounded), type, offset.
absl::Status GgufFile::ParseTensorInfo(GgufCursor& c, uint64_t alignment, std::vector<uint64_t>* offsets) {
  GgufTensor tensor;
  ASSIGN_OR_RETURN(tensor.name, c.ReadString("a tensor name"));
  ASSIGN_OR_RETURN(uint32_t n_dims, c.Read<uint32_t>(tensor.name + " dimension count"));
  if (n_dims == 0 || n_dims > kMaxDims) return Corrupt(absl::StrCat("tensor ", tensor.name, " has ", n_dims, " dimensions"));
  uint64_t numel = 1;
  for (uint32_t i = 0; i < n_dims; ++i) {
    ASSIGN_OR_RETURN(uint64_t d, c.Read<uint64_t>(tensor.name + " dimension"));
    if (d == 0 || d > (uint64_t{1} << 40) || numel > (uint64_t{1} << 40) / d) {
      return Corrupt(absl::StrCat("tensor ", tensor.name, " has a dimension of ", d, " (too large or zero)"));
    }
    numel *= d;
    tensor.dims.push_back(static_cast<int64_t>(d));
  }
  ASSIGN_OR_RETURN(tensor.type, c.Read<uint32_t>(tensor.name + " type"));
  ASSIGN_OR_RETURN(uint64_t offset, c.Read<uint64_t>(tensor.name + " offset"));
  auto block = GgmlBlockOf(tensor.type);
  if (!block) {
    return absl::UnimplementedError(absl::StrCat("GGUF file ", path_, ": tensor ", tensor.name, " has ggml type ",
                                                 tensor.type, ", which the engine does not read"));
  }
  if (tensor.dims[0] % block->elements != 0) {
    return Corrupt(absl::StrCat("tensor ", tensor.name, ": rows of ", tensor.dims[0], " are not whole ",
                                GgmlTypeName(tensor.type), " blocks of ", block->elements));
  }
  tensor.nbytes = numel / block->elements * block->bytes;  // < 2^48: numel <= 2^40
  if (offset % alignment != 0) return Corrupt(absl::StrCat("tensor ", tensor.name, " is not aligned to ", alignment));
  if (!tensor_index_.emplace(tensor.name, tensors_.size()).second) {
    return Corrupt(absl::StrCat("duplicate tensor ", tensor.name));
  }
  offsets->push_back(offset);
  tensors_.push_back(std::move(tensor));
  return absl::OkStatus();
}

// Points each tensor at its bytes: inside the data section, which starts at `data_start`, and
// not overlapping another's.
absl::Status GgufFile::PlaceTensors(const std::vector<uint64_t>& offsets, uint64_t data_start) {
  if (tensors_.empty()) return absl::OkStatus();
  if (data_start > map_size_) return Corrupt("tensor data section starts past the end of the file");
  const uint64_t data_size = map_size_ - data_start;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (size_t t = 0; t < tensors_.size(); ++t) {
    GgufTensor& tensor = tensors_[t];
    const uint64_t offset = offsets[t];
    if (offset > data_size || tensor.nbytes > data_size - offset) {
      return Corrupt(absl::StrCat("tensor ", tensor.name, ": bytes [", offset, ", ", offset + tensor.nbytes,
                                  ") lie outside the data section of ", data_size, " bytes (truncated file?)"));
    }
    tensor.data = static_cast<const std::byte*>(map_) + data_start + offset;
    ranges.emplace_back(offset, offset + tensor.nbytes);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) return Corrupt("two tensors overlap in the data section");
  }
  return absl::OkStatus();
}

void GgufFile::ReleasePages() const {
  if (map_ != nullptr) ::madvise(map_, map_size_, MADV_DONTNEED);
}

const GgufValue* GgufFile::Find(const std::string& key) const {
  auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

const GgufTensor* GgufFile::FindTensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

absl::StatusOr<int64_t> GgufFile::GetInt(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return absl::NotFoundError(absl::StrCat("GGUF file ", path_, " lacks metadata ", key));
  if (!v->IsInteger()) return absl::InvalidArgumentError(absl::StrCat("GGUF metadata ", key, " is not an integer"));
  const bool is_unsigned = v->type == Type::kU8 || v->type == Type::kU16 || v->type == Type::kU32 || v->type == Type::kU64;
  if (is_unsigned && v->u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return absl::InvalidArgumentError(absl::StrCat("GGUF metadata ", key, " is out of range"));
  }
  return is_unsigned ? static_cast<int64_t>(v->u) : v->i;
}

absl::StatusOr<double> GgufFile::GetFloat(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return absl::NotFoundError(absl::StrCat("GGUF file ", path_, " lacks metadata ", key));
  if (v->IsFloat()) return v->f;
  if (v->IsInteger()) {
    const bool is_unsigned = v->type == Type::kU8 || v->type == Type::kU16 || v->type == Type::kU32 || v->type == Type::kU64;
    return is_unsigned ? static_cast<double>(v->u) : static_cast<double>(v->i);
  }
  return absl::InvalidArgumentError(absl::StrCat("GGUF metadata ", key, " is not a number"));
}

absl::StatusOr<std::string> GgufFile::GetString(const std::string& key) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return absl::NotFoundError(absl::StrCat("GGUF file ", path_, " lacks metadata ", key));
  if (v->type != Type::kString) return absl::InvalidArgumentError(absl::StrCat("GGUF metadata ", key, " is not a string"));
  return v->s;
}

absl::StatusOr<const std::vector<GgufValue>*> GgufFile::GetArray(const std::string& key, Type element) const {
  const GgufValue* v = Find(key);
  if (v == nullptr) return absl::NotFoundError(absl::StrCat("GGUF file ", path_, " lacks metadata ", key));
  if (v->type != Type::kArray || v->element_type != element) {
    return absl::InvalidArgumentError(absl::StrCat("GGUF metadata ", key, " is not an array of the expected type"));
  }
  return &v->array;
}

}  // namespace adaptd::engine
