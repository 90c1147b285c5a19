// A minimal GGUF writer for the tests' hand-made files (valid ones and deliberately broken
// ones); the files the oracles check come from the `gguf` package (make_gguf_fixtures.py).
#ifndef ADAPTD_TESTS_ENGINE_GGUF_WRITER_H_
#define ADAPTD_TESTS_ENGINE_GGUF_WRITER_H_

#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace adaptd::engine {

class GgufWriter {
 public:
  struct Tensor {
    std::string name;
    std::vector<uint64_t> dims;  // ggml order
    uint32_t type;
    std::string bytes;
  };

  explicit GgufWriter(uint32_t version = 3) : version_(version) {}

  void U32(const std::string& key, uint32_t v) { Key(key, 4), Pod(&kv_, v), ++keys_; }
  void F32(const std::string& key, float v) { Key(key, 6), Pod(&kv_, v), ++keys_; }
  void Str(const std::string& key, const std::string& v) { Key(key, 8), String(&kv_, v), ++keys_; }
  void StrArray(const std::string& key, const std::vector<std::string>& v) {
    Key(key, 9), Pod(&kv_, uint32_t{8}), Pod(&kv_, uint64_t(v.size()));
    for (const auto& s : v) String(&kv_, s);
    ++keys_;
  }
  void I32Array(const std::string& key, const std::vector<int32_t>& v) {
    Key(key, 9), Pod(&kv_, uint32_t{5}), Pod(&kv_, uint64_t(v.size()));
    for (int32_t x : v) Pod(&kv_, x);
    ++keys_;
  }
  // F32 tensor of `dims` whose element i is fill(i).
  template <typename Fill>
  void F32Tensor(const std::string& name, std::vector<uint64_t> dims, Fill fill) {
    uint64_t n = 1;
    for (uint64_t d : dims) n *= d;
    std::string bytes;
    for (uint64_t i = 0; i < n; ++i) Pod(&bytes, float(fill(i)));
    tensors_.push_back({name, std::move(dims), 0, std::move(bytes)});
  }
  void Raw(Tensor t) { tensors_.push_back(std::move(t)); }

  std::string Bytes(uint32_t alignment = 32) const {
    std::string out = "GGUF";
    Pod(&out, version_);
    Pod(&out, uint64_t(tensors_.size()));
    Pod(&out, keys_);
    out += kv_;
    std::vector<uint64_t> offsets;
    uint64_t at = 0;
    for (const auto& t : tensors_) {
      offsets.push_back(at);
      at = (at + t.bytes.size() + alignment - 1) / alignment * alignment;
    }
    for (size_t i = 0; i < tensors_.size(); ++i) {
      String(&out, tensors_[i].name);
      Pod(&out, uint32_t(tensors_[i].dims.size()));
      for (uint64_t d : tensors_[i].dims) Pod(&out, d);
      Pod(&out, tensors_[i].type);
      Pod(&out, offsets[i]);
    }
    out.resize((out.size() + alignment - 1) / alignment * alignment, '\0');
    for (size_t i = 0; i < tensors_.size(); ++i) {
      out += tensors_[i].bytes;
      out.resize((out.size() + alignment - 1) / alignment * alignment, '\0');
    }
    return out;
  }

  static void Save(const std::string& path, const std::string& bytes) {
    std::ofstream(path, std::ios::binary) << bytes;
  }

 private:
  template <typename T>
  static void Pod(std::string* out, T v) {
    out->append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  static void String(std::string* out, const std::string& s) {
    Pod(out, uint64_t(s.size()));
    *out += s;
  }
  void Key(const std::string& key, uint32_t type) { String(&kv_, key), Pod(&kv_, type); }

  uint32_t version_;
  uint64_t keys_ = 0;
  std::string kv_;
  std::vector<Tensor> tensors_;
};

}  // namespace adaptd::engine

#endif  // ADAPTD_TESTS_ENGINE_GGUF_WRITER_H_
