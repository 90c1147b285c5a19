// The server's turn events as the log keeps them: per-token learn flags round-trip, events
// written before the flags existed still decode, context events round-trip, and damaged ones
// are DATA_LOSS.
#include <gtest/gtest.h>

#include "log_event.h"

namespace adaptd::server {
namespace {

LogEvent Turn(std::vector<uint8_t> prompt_learn) {
  LogEvent e;
  e.tokens = {5, 6, 7, 8, 9, 10, 11};
  e.prompt_tokens = 5;
  e.max_new_tokens = 2;
  e.prompt_learn = std::move(prompt_learn);
  return e;
}

TEST(EventTest, LearnFlagsRoundTrip) {
  for (const std::vector<uint8_t>& flags : std::vector<std::vector<uint8_t>>{
           {0, 0, 1, 1, 0}, {1, 0, 0, 0, 1}, {0, 0, 0, 0, 0}, {1, 0, 1, 0, 1}}) {
    auto back = DecodeEvent(EncodeEvent(Turn(flags)));
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->prompt_learn, flags);
    EXPECT_EQ(back->tokens, Turn(flags).tokens);
    std::vector<uint8_t> all = flags;
    all.insert(all.end(), {1, 1});  // the generated tokens follow learn_generated
    EXPECT_EQ(LearnFlags(*back), all);
  }
  LogEvent quiet = Turn({0, 1, 1, 1, 1});
  quiet.learn_generated = false;
  EXPECT_EQ(LearnFlags(*DecodeEvent(EncodeEvent(quiet))), (std::vector<uint8_t>{0, 1, 1, 1, 1, 0, 0}));
  LogEvent dry = Turn({});
  dry.learned = false;
  EXPECT_EQ(LearnFlags(dry), std::vector<uint8_t>(7, 0));
}

TEST(EventTest, AllLearnedEventsKeepTheOldFormat) {
  const std::string plain = EncodeEvent(Turn({}));
  EXPECT_EQ(plain, EncodeEvent(Turn({1, 1, 1, 1, 1})));  // no flags written when none is 0
  EXPECT_EQ(plain.size(), 14u + 7 * 4);
  auto back = DecodeEvent(plain);
  ASSERT_TRUE(back.ok());
  EXPECT_TRUE(back->prompt_learn.empty());
  EXPECT_EQ(LearnFlags(*back), std::vector<uint8_t>(7, 1));
}

TEST(EventTest, DamagedFlagsAreDataLoss) {
  const std::string good = EncodeEvent(Turn({0, 0, 1, 1, 0}));
  for (const std::string& bad : {good.substr(0, good.size() - 1), good.substr(0, good.size() - 4), good + "xxxx"}) {
    EXPECT_EQ(DecodeEvent(bad).status().code(), absl::StatusCode::kDataLoss);
  }
  std::string overrun = good;
  overrun[overrun.size() - 4] = 9;  // the last run past the prompt
  EXPECT_EQ(DecodeEvent(overrun).status().code(), absl::StatusCode::kDataLoss);
  std::string shortfall = good;
  shortfall[shortfall.size() - 4] = 0;  // the runs stop short of the prompt
  EXPECT_EQ(DecodeEvent(shortfall).status().code(), absl::StatusCode::kDataLoss);
}

TEST(EventTest, PinnedSystemPromptRoundTrips) {
  for (const std::vector<uint8_t>& flags : std::vector<std::vector<uint8_t>>{{}, {0, 0, 1, 1, 1}}) {
    LogEvent e = Turn(flags);
    e.pinned_tokens = 2;
    const std::string bytes = EncodeEvent(e);
    auto back = DecodeEvent(bytes);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->pinned_tokens, 2u);
    EXPECT_EQ(back->prompt_learn, flags);
    EXPECT_EQ(back->tokens, e.tokens);
    EXPECT_EQ(DecodeEvent(bytes.substr(0, bytes.size() - 1)).status().code(), absl::StatusCode::kDataLoss);
  }
  EXPECT_EQ(DecodeEvent(EncodeEvent(Turn({}))).value().pinned_tokens, 0u);  // the old format: none
  LogEvent past = Turn({});
  past.pinned_tokens = 6;  // beyond the prompt's 5 tokens
  EXPECT_EQ(DecodeEvent(EncodeEvent(past)).status().code(), absl::StatusCode::kDataLoss);
}

TEST(EventTest, ContextEventsRoundTrip) {
  LogEvent e;
  e.kind = LogEvent::Kind::kContext;
  e.context = 70000;
  auto back = DecodeEvent(EncodeEvent(e));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->kind, LogEvent::Kind::kContext);
  EXPECT_EQ(back->context, 70000u);
  std::string bytes = EncodeEvent(e);
  EXPECT_EQ(DecodeEvent(bytes.substr(0, 4)).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeEvent(bytes + "x").status().code(), absl::StatusCode::kDataLoss);
}

// A turn's record (what ListTurns shows) rides after the flags; cut or overlong, it is DATA_LOSS;
// a flag this server does not know is refused, not misread.
TEST(EventTest, RecordsRoundTripWithFlagsAndPins) {
  for (const auto& flags : {std::vector<uint8_t>{}, std::vector<uint8_t>{0, 1, 1, 0, 1}}) {
    LogEvent e = Turn(flags);
    e.pinned_tokens = 2;
    e.record = std::string("\x0a\x04" "chat" "\x00" "tail", 11);
    const std::string bytes = EncodeEvent(e);
    auto back = DecodeEvent(bytes);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(back->record, e.record);
    EXPECT_EQ(back->prompt_learn, flags.empty() ? std::vector<uint8_t>{} : flags);
    EXPECT_EQ(back->pinned_tokens, 2u);
    EXPECT_EQ(DecodeEvent(bytes.substr(0, bytes.size() - 1)).status().code(), absl::StatusCode::kDataLoss);
    EXPECT_EQ(DecodeEvent(bytes + "x").status().code(), absl::StatusCode::kDataLoss);
    std::string newer = bytes;
    newer[1] = static_cast<char>(newer[1] | 128);
    EXPECT_EQ(DecodeEvent(newer).status().code(), absl::StatusCode::kDataLoss);
  }
  EXPECT_TRUE(DecodeEvent(EncodeEvent(Turn({}))).value().record.empty());  // the old format: none
}

}  // namespace
}  // namespace adaptd::server
