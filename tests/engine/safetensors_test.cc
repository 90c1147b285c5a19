// SafetensorsFile: valid files and every malformed-file case yields a specific error.
#include "adaptd/engine/safetensors.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

namespace adaptd::engine {
namespace {

// Writes <8-byte length><header><data> and returns the path.
std::string WriteFile(const std::string& name, const std::string& header, const std::string& data) {
  auto path = std::filesystem::temp_directory_path() / (name + "_" + std::to_string(::getpid()) + ".safetensors");
  std::ofstream out(path, std::ios::binary);
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>((n >> (8 * i)) & 0xff));
  out << header << data;
  return path.string();
}

std::string Floats(std::initializer_list<float> v) {
  std::string s(v.size() * 4, '\0');
  std::memcpy(s.data(), v.begin(), s.size());
  return s;
}

TEST(SafetensorsTest, ReadsTensorsAndMetadata) {
  auto path = WriteFile("ok",
                        R"({"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},)"
                        R"("b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]}})",
                        Floats({1, 2, 3, 4}) + std::string(6, '\x01'));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorView* a = (*file)->Find("a");
  ASSERT_NE(a, nullptr);
  EXPECT_EQ(a->dtype, DType::kF32);
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(a->NumElements(), 4);
  float v[4];
  std::memcpy(v, a->data, 16);
  EXPECT_EQ(v[3], 4.0f);
  EXPECT_EQ((*file)->Find("b")->nbytes, 6u);
  EXPECT_EQ((*file)->Find("c"), nullptr);
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
}

struct BadCase {
  const char* name;
  std::string header;
  std::string data;
  absl::StatusCode code;
  const char* message;
};

TEST(SafetensorsTest, RejectsMalformedFiles) {
  const BadCase cases[] = {
      {"truncated", R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", Floats({1, 2}),
       absl::StatusCode::kDataLoss, "truncated"},
      {"size_mismatch", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}})", Floats({1, 2, 3, 4}),
       absl::StatusCode::kDataLoss, "its shape needs 12"},
      {"bad_json", R"({"a":{"dtype":"F32",)", "", absl::StatusCode::kDataLoss, "not a JSON object"},
      {"bad_dtype", R"({"a":{"dtype":"F8_E4M3","shape":[1],"data_offsets":[0,1]}})", "x",
       absl::StatusCode::kInvalidArgument, "unsupported dtype"},
      {"negative_dim", R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", "xxxx",
       absl::StatusCode::kDataLoss, "negative"},
      {"reversed_offsets", R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})", "xxxx",
       absl::StatusCode::kDataLoss, "outside"},
      {"no_offsets", R"({"a":{"dtype":"U8","shape":[1]}})", "x", absl::StatusCode::kDataLoss, "data_offsets"},
  };
  for (const auto& c : cases) {
    auto file = SafetensorsFile::Open(WriteFile(c.name, c.header, c.data));
    ASSERT_FALSE(file.ok()) << c.name;
    EXPECT_EQ(file.status().code(), c.code) << c.name << ": " << file.status();
    EXPECT_NE(file.status().message().find(c.message), std::string::npos) << c.name << ": " << file.status();
  }
}

TEST(SafetensorsTest, RejectsHeaderLongerThanFile) {
  auto path = std::filesystem::temp_directory_path() / "adaptd_header_len.safetensors";
  std::ofstream(path, std::ios::binary) << std::string("\xff\xff\xff\x00\x00\x00\x00\x00{}", 10);
  auto file = SafetensorsFile::Open(path.string());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kDataLoss) << file.status();
  EXPECT_EQ(SafetensorsFile::Open("/nonexistent/x.safetensors").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace adaptd::engine
