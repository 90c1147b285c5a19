// Proves the chosen stack links and runs in one process: LibTorch from the PyPI wheel next to
// Debian's gRPC, protobuf, Abseil, RocksDB and prometheus-cpp.
#include <google/protobuf/wrappers.pb.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <prometheus/counter.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>
#include <rocksdb/db.h>

#include <filesystem>
#include <string>

#include "absl/status/status.h"

float StackLinkTorchProbe();  // stack_link_torch.cc

namespace {

TEST(StackLinkTest, LibTorchComputes) { EXPECT_FLOAT_EQ(StackLinkTorchProbe(), 55.0f); }

TEST(StackLinkTest, ProtobufAndGrpcLink) {
  google::protobuf::Int64Value v;
  v.set_value(42);
  google::protobuf::Int64Value back;
  ASSERT_TRUE(back.ParseFromString(v.SerializeAsString()));
  EXPECT_EQ(back.value(), 42);
  auto channel = grpc::CreateChannel("127.0.0.1:1", grpc::InsecureChannelCredentials());
  EXPECT_NE(channel, nullptr);
  EXPECT_EQ(absl::NotFoundError("x").code(), absl::StatusCode::kNotFound);
}

TEST(StackLinkTest, RocksDbRoundTrip) {
  auto dir = std::filesystem::temp_directory_path() / ("adaptd_link_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  rocksdb::Options options;
  options.create_if_missing = true;
  rocksdb::DB* raw = nullptr;
  ASSERT_TRUE(rocksdb::DB::Open(options, dir.string(), &raw).ok());
  std::unique_ptr<rocksdb::DB> db(raw);
  rocksdb::WriteOptions sync;
  sync.sync = true;
  ASSERT_TRUE(db->Put(sync, "k", "v").ok());
  std::string value;
  ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), "k", &value).ok());
  EXPECT_EQ(value, "v");
  db.reset();
  std::filesystem::remove_all(dir);
}

TEST(StackLinkTest, PrometheusCounts) {
  prometheus::Registry registry;
  auto& family = prometheus::BuildCounter().Name("adaptd_link_test_total").Help("t").Register(registry);
  family.Add({}).Increment(3);
  std::string text = prometheus::TextSerializer().Serialize(registry.Collect());
  EXPECT_NE(text.find("adaptd_link_test_total 3"), std::string::npos) << text;
}

}  // namespace
