// Model::Load on whole checkpoints: sharded and f32/bf16/f16 files load; every broken
// checkpoint fails with its specific status code and names the tensor, file or field; the
// fingerprint is stable and tracks content, not layout.
#include <gtest/gtest.h>

#include <string>
#include <utility>

#include "absl/status/status.h"
#include "adaptd/engine/model.h"
#include "engine/fixtures.h"

namespace adaptd::engine {
namespace {

class CheckpointTest : public testing::TestWithParam<std::string> {};

TEST_P(CheckpointTest, LoadsOrFailsWithSpecificError) {
  const auto& c = Case("checkpoints", GetParam());
  ASSERT_FALSE(c.is_null()) << "fixture case " << GetParam() << " missing";
  LoadOptions o;
  o.device = Device();
  auto model = Model::Load(FixtureDir() + "/" + c["dir"].get<std::string>(), o);
  if (c["code"] == "OK") {
    ASSERT_TRUE(model.ok()) << model.status();
    EXPECT_EQ((*model)->fingerprint().size(), 16u);
    return;
  }
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(absl::StatusCodeToString(model.status().code()), c["code"].get<std::string>()) << model.status();
  EXPECT_NE(model.status().message().find(c["mentions"].get<std::string>()), std::string::npos)
      << model.status() << " should mention " << c["mentions"];
}

INSTANTIATE_TEST_SUITE_P(Fixtures, CheckpointTest,
                         testing::Values("sharded", "bf16", "f16", "ttt_overflow", "missing_tensor", "extra_tensor",
                                         "misshaped_tensor", "int_tensor", "truncated", "bad_json",
                                         "unsupported_architecture", "ttt_mode_without_tensors",
                                         "ttt_tensors_without_mode", "missing_shard"));

TEST(CheckpointTest, MissingDirectoryIsNotFound) {
  EXPECT_EQ(Model::Load(FixtureDir() + "/no/such/model").status().code(), absl::StatusCode::kNotFound);
}

// Devices and compute dtypes as the command lines name them: bad names are INVALID_ARGUMENT, a
// device that is not here FAILED_PRECONDITION, both before any weight is read.
TEST(CheckpointTest, DevicesAndDtypesAreCheckedByName) {
  EXPECT_TRUE(DeviceAvailable("cpu"));
  EXPECT_FALSE(DeviceAvailable("cuda:64"));
  EXPECT_FALSE(DeviceAvailable("nonsense"));
  EXPECT_FALSE(ParseComputeDType("").value().has_value());
  EXPECT_EQ(ParseComputeDType("bf16").value(), DType::kBF16);
  EXPECT_EQ(ParseComputeDType("f64").status().code(), absl::StatusCode::kInvalidArgument);
  const std::string dir = FixtureDir() + "/hf/qwen3_gqa_tied/model";
  for (const auto& [device, code] : {std::pair{"nonsense", absl::StatusCode::kInvalidArgument},
                                     std::pair{"mps", absl::StatusCode::kInvalidArgument},
                                     std::pair{"cuda:64", absl::StatusCode::kFailedPrecondition}}) {
    LoadOptions o;
    o.device = device;
    auto model = Model::Load(dir, o);
    EXPECT_EQ(model.status().code(), code) << device << ": " << model.status();
    EXPECT_NE(model.status().message().find(device), std::string::npos) << model.status();
  }
}

TEST(FingerprintTest, TracksContentNotLayout) {
  auto stock = LoadModel("hf/qwen3_gqa_tied/model");
  auto again = LoadModel("hf/qwen3_gqa_tied/model");
  auto sharded = LoadModel("checkpoints/sharded");
  auto bf16 = LoadModel("checkpoints/bf16");
  auto other = LoadModel("hf/llama_tied/model");
  ASSERT_TRUE(stock && again && sharded && bf16 && other);
  EXPECT_EQ(stock->fingerprint(), again->fingerprint());
  EXPECT_EQ(stock->fingerprint(), sharded->fingerprint());
  EXPECT_NE(stock->fingerprint(), bf16->fingerprint());
  EXPECT_NE(stock->fingerprint(), other->fingerprint());
}

// A bf16 checkpoint file computes in bf16 and matches HF transformers in bf16; the sharded
// copy gives the f32 logits exactly.
TEST(CheckpointTest, ShardedAndHalfFilesRunTheSameModel) {
  const std::string expected = "hf/qwen3_gqa_tied/expected.safetensors";
  const auto ids = ReadIds(expected);
  const std::vector<int> whole{static_cast<int>(ids.size())};
  for (const auto& [dir, name, tol] : {std::tuple{"checkpoints/sharded", "logits_f32", kF32Tol},
                                       std::tuple{"checkpoints/bf16", "logits_bf16", kBf16Tol}}) {
    SCOPED_TRACE(dir);
    auto model = LoadModel(dir);
    ASSERT_NE(model, nullptr);
    auto session = model->NewSession().value();
    EXPECT_LE(MaxAbsDiff(FeedPieces(*model, *session, ids, whole), ReadFloats(expected, name)), tol);
  }
}

}  // namespace
}  // namespace adaptd::engine
