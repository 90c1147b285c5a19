// Shared by the engine tests: the oracle fixtures written by make_fixtures.py (directory
// ADAPTD_FIXTURE_DIR, manifest.json) and small helpers to run models over them.
#ifndef ADAPTD_TESTS_ENGINE_FIXTURES_H_
#define ADAPTD_TESTS_ENGINE_FIXTURES_H_

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "adaptd/engine/model.h"
#include "adaptd/engine/safetensors.h"
#include "nlohmann/json.hpp"

namespace adaptd::engine {

// Max abs difference bounds; parity_test.cc says where they come from.
inline constexpr double kF32Tol = 1e-4;
inline constexpr double kBf16Tol = 0.1;
inline constexpr double kBf16GpuScale = 1.0 / 32;

inline std::string FixtureDir() { return ADAPTD_FIXTURE_DIR; }

// The device the tests run on: ADAPTD_TEST_DEVICE (e.g. "cuda"), else the CPU.
inline std::string Device() {
  const char* d = std::getenv("ADAPTD_TEST_DEVICE");
  return d ? d : "cpu";
}

// Without that device here every test of the binary fails, or, where ADAPTD_TEST_DEVICE_OPTIONAL
// is set (the gpu label's registrations), is skipped.
class DeviceEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    if (DeviceAvailable(Device())) return;
    if (std::getenv("ADAPTD_TEST_DEVICE_OPTIONAL") != nullptr) {
      GTEST_SKIP() << "device " << Device() << " is not available here";
    }
    GTEST_FAIL() << "ADAPTD_TEST_DEVICE=" << Device() << ", but that device is not available here";
  }
};
inline ::testing::Environment* const kDeviceEnvironment =
    ::testing::AddGlobalTestEnvironment(new DeviceEnvironment);

inline const nlohmann::json& Manifest() {
  static const nlohmann::json manifest = [] {
    std::ifstream in(FixtureDir() + "/manifest.json");
    std::stringstream ss;
    ss << in.rdbuf();
    return nlohmann::json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  }();
  return manifest;
}

inline const nlohmann::json& Case(const std::string& kind, const std::string& name) {
  static const nlohmann::json none;
  if (!Manifest().contains(kind)) return none;
  for (const auto& c : Manifest()[kind]) {
    if (c["name"] == name) return c;
  }
  return none;
}

// The named tensor of a fixture file, as floats (F32) or ints (I64).
inline std::vector<float> ReadFloats(const std::string& file, const std::string& name) {
  auto f = SafetensorsFile::Open(FixtureDir() + "/" + file);
  if (!f.ok()) ADD_FAILURE() << f.status();
  const TensorView* t = f.ok() ? (*f)->Find(name) : nullptr;
  if (t == nullptr || t->dtype != DType::kF32) {
    ADD_FAILURE() << file << " has no F32 tensor " << name;
    return {};
  }
  const auto* p = reinterpret_cast<const float*>(t->data);
  return std::vector<float>(p, p + t->NumElements());
}

inline std::vector<int32_t> ReadIds(const std::string& file) {
  auto f = SafetensorsFile::Open(FixtureDir() + "/" + file);
  if (!f.ok() || (*f)->Find("ids") == nullptr) {
    ADD_FAILURE() << file << " has no ids";
    return {};
  }
  const TensorView* t = (*f)->Find("ids");
  const auto* p = reinterpret_cast<const int64_t*>(t->data);
  return std::vector<int32_t>(p, p + t->NumElements());
}

// The bf16 bound for a result compared with `ref`: kBf16Tol on the CPU, where the engine and
// the reference run the same kernels. Elsewhere (cuBLAS and cuDNN round in another order) it
// grows with the tensor's scale, a few bf16 ulps at max |ref|: TTT weights reach ~100 in the
// fixtures, where one ulp is 0.5.
inline double Bf16Tol(const std::vector<float>& ref) {
  if (Device() == "cpu") return kBf16Tol;
  double scale = 0;
  for (float v : ref) scale = std::max(scale, std::abs(static_cast<double>(v)));
  return kBf16Tol + kBf16GpuScale * scale;
}

inline double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size() || a.empty()) return INFINITY;
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(static_cast<double>(a[i]) - b[i]));
  return m;
}

// The frozen base's format the tests run with: ADAPTD_TEST_WEIGHTS (e.g. "int4-g32", the
// quant label's second run of the batching, codec and executor tests), else dense; a suffix
// ":dense_ttt_down" keeps the TTT layers' W0 dense (parity sessions need it). One variable:
// gtest_discover_tests splits a list of them.
inline void ApplyTestWeights(LoadOptions& options) {
  const char* env = std::getenv("ADAPTD_TEST_WEIGHTS");
  std::string w = env ? env : "";
  const std::string suffix = ":dense_ttt_down";
  if (w.size() > suffix.size() && w.compare(w.size() - suffix.size(), suffix.size(), suffix) == 0) {
    options.dense_ttt_down = true;
    w.resize(w.size() - suffix.size());
  }
  auto f = ParseWeightFormat(w);
  if (!f.ok()) ADD_FAILURE() << f.status();
  if (f.ok()) options.weights = *f;
}

inline std::unique_ptr<Model> LoadModel(const std::string& rel_dir, LoadOptions options = {}) {
  options.device = Device();
  if (!options.weights.quantized()) ApplyTestWeights(options);
  auto model = Model::Load(FixtureDir() + "/" + rel_dir, options);
  if (!model.ok()) {
    ADD_FAILURE() << model.status();
    return nullptr;
  }
  return *std::move(model);
}

// Feeds ids in pieces of the given lengths to a new session; returns all logits concatenated.
inline std::vector<float> FeedPieces(const Model& model, SessionState& session, const std::vector<int32_t>& ids,
                                     const std::vector<int>& pieces) {
  std::vector<float> logits;
  size_t pos = 0;
  for (int n : pieces) {
    auto out = model.Forward(session, absl::MakeConstSpan(ids).subspan(pos, n));
    if (!out.ok()) {
      ADD_FAILURE() << out.status();
      return {};
    }
    logits.insert(logits.end(), out->begin(), out->end());
    pos += n;
  }
  return logits;
}

}  // namespace adaptd::engine

#endif  // ADAPTD_TESTS_ENGINE_FIXTURES_H_
