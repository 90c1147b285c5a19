// The store's record encodings: checksum test vectors (RFC 3720 for CRC-32C), SipHash-2-4's
// reference vector, key order and prefix rules, and records refusing damage.
#include "records.h"

#include <gtest/gtest.h>

namespace adaptd::session_store {
namespace {

TEST(RecordsTest, Crc32cMatchesTheStandardVectors) {
  EXPECT_EQ(Crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(Crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(Crc32c(std::string(32, '\xFF')), 0x62A8AB43u);
  EXPECT_EQ(Crc32c(""), 0u);
}

TEST(RecordsTest, SipHashMatchesTheReferenceVector) {
  std::string key, msg;
  for (int i = 0; i < 16; ++i) key.push_back(static_cast<char>(i));
  for (int i = 0; i < 15; ++i) msg.push_back(static_cast<char>(i));
  EXPECT_EQ(SipHash24(key, msg), 0xa129ca6149be45e5ull);  // the paper's example (64-bit output)
}

TEST(RecordsTest, KeysOrderByNumberAndNeverCollide) {
  std::string a = SessionPrefix({"t", "ab"}), b = SessionPrefix({"t", "a"});
  EXPECT_NE(a.compare(0, b.size(), b), 0);  // "a" is not a key prefix of "ab"
  std::string k1 = a, k2 = a;
  PutU64(&k1, 9);
  PutU64(&k2, 10);
  EXPECT_LT(k1, k2);
  EXPECT_EQ(PrefixEnd("ab\xFF"), "ac");
  size_t used;
  auto parsed = ParseSessionPrefix(a + "rest", &used);
  ASSERT_TRUE(parsed.has_value());
  EXPECT_EQ(parsed->session, "ab");
  EXPECT_EQ(used, a.size());
}

TEST(RecordsTest, DamagedRecordsAreRefused) {
  SessionInfo info;
  info.version = 7;
  info.metadata = "m";
  std::string rec = EncodeSessionRecord(info);
  ASSERT_TRUE(DecodeSessionRecord({"t", "s"}, rec).has_value());
  EXPECT_EQ(DecodeSessionRecord({"t", "s"}, rec)->version, 7u);
  for (size_t i = 0; i < rec.size(); ++i) {
    std::string bad = rec;
    bad[i] ^= 1;
    EXPECT_FALSE(DecodeSessionRecord({"t", "s"}, bad).has_value()) << i;
  }
  Manifest m;
  m.info = {5, "fp", "f32", true, 100};
  m.pieces = 2;
  const std::string man = EncodeManifest(m);
  auto back = DecodeManifest(man);
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->info.encoding, "f32");
  EXPECT_TRUE(back->info.lossy);
  EXPECT_FALSE(DecodeManifest(man.substr(0, man.size() - 1)).has_value());
  EXPECT_FALSE(DecodeEvent(EncodeEvent("payload").substr(1)).has_value());
  EXPECT_EQ(*DecodeEvent(EncodeEvent("payload")), "payload");
}

}  // namespace
}  // namespace adaptd::session_store
