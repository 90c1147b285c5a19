// The log events' encoding (log_event.h).
#include "log_event.h"

#include <algorithm>
#include <cstring>

namespace adaptd::server {

// Turn event: 'T', flags (1 learned, 2 assistant open, 4 not kept in context, 8 the tokens after
// the prompt not learned, 16 per-token prompt flags follow, 32 a pinned system prompt opens the
// prompt), prompt tokens u32, max new tokens u32, token count u32, the tokens (int32,
// little-endian); with flag 32: the system prompt's token count u32; with flag 16: a run count
// u32 and the runs' lengths (u32), alternately learned and not, the first learned (it may be 0),
// summing to the prompt; with flag 64: the turn's record (a serialized v1::Turn), its length u32
// and its bytes, last. Reset: 'R'. Context: 'C', the context's id u32. A binary older than
// a flag (or than 'C') refuses such events (DATA_LOSS) rather than misreading them.
std::string EncodeEvent(const LogEvent& e) {
  std::string out(1, static_cast<char>(e.kind));
  if (e.kind == LogEvent::Kind::kReset) return out;
  if (e.kind == LogEvent::Kind::kContext) {
    out.append(reinterpret_cast<const char*>(&e.context), 4);
    return out;
  }
  const bool masked = std::count(e.prompt_learn.begin(), e.prompt_learn.end(), 0) > 0;
  out.push_back(static_cast<char>((e.learned ? 1 : 0) | (e.assistant_open ? 2 : 0) | (e.keep_in_context ? 0 : 4) |
                                  (e.learn_generated ? 0 : 8) | (masked ? 16 : 0) | (e.pinned_tokens ? 32 : 0) |
                                  (e.record.empty() ? 0 : 64)));
  const uint32_t head[3] = {e.prompt_tokens, e.max_new_tokens, static_cast<uint32_t>(e.tokens.size())};
  out.append(reinterpret_cast<const char*>(head), sizeof head);
  out.append(reinterpret_cast<const char*>(e.tokens.data()), e.tokens.size() * 4);
  if (e.pinned_tokens) out.append(reinterpret_cast<const char*>(&e.pinned_tokens), 4);
  if (masked) {
    std::vector<uint32_t> runs{0};
    for (uint8_t flag : e.prompt_learn) {
      if ((flag != 0) != (runs.size() % 2 == 1)) runs.push_back(0);  // odd count: a learned run is open
      ++runs.back();
    }
    const auto count = static_cast<uint32_t>(runs.size());
    out.append(reinterpret_cast<const char*>(&count), 4);
    out.append(reinterpret_cast<const char*>(runs.data()), runs.size() * 4);
  }
  if (!e.record.empty()) {
    const auto size = static_cast<uint32_t>(e.record.size());
    out.append(reinterpret_cast<const char*>(&size), 4);
    out.append(e.record);
  }
  return out;
}

absl::StatusOr<LogEvent> DecodeEvent(const std::string& bytes) {
  LogEvent e;
  if (bytes.size() == 1 && bytes[0] == static_cast<char>(LogEvent::Kind::kReset)) {
    e.kind = LogEvent::Kind::kReset;
    return e;
  }
  if (bytes.size() == 5 && bytes[0] == static_cast<char>(LogEvent::Kind::kContext)) {
    e.kind = LogEvent::Kind::kContext;
    std::memcpy(&e.context, bytes.data() + 1, 4);
    return e;
  }
  uint32_t head[3];
  if (bytes.size() < 14 || bytes[0] != static_cast<char>(LogEvent::Kind::kTurn)) return absl::DataLossError("not an event of the server's");
  std::memcpy(head, bytes.data() + 2, sizeof head);
  const bool pinned = bytes[1] & 32;
  const size_t tokens_end = 14 + size_t{head[2]} * 4 + (pinned ? 4 : 0);
  const bool masked = bytes[1] & 16, recorded = bytes[1] & 64;
  if ((bytes[1] & ~127) != 0) return absl::DataLossError("turn event of a newer server (unknown flags)");
  if (bytes.size() < tokens_end || head[0] > head[2]) return absl::DataLossError("turn event of the wrong size");
  e.learned = bytes[1] & 1;
  e.assistant_open = bytes[1] & 2;
  e.keep_in_context = !(bytes[1] & 4);
  e.learn_generated = !(bytes[1] & 8);
  e.prompt_tokens = head[0];
  e.max_new_tokens = head[1];
  e.tokens.resize(head[2]);
  std::memcpy(e.tokens.data(), bytes.data() + 14, size_t{head[2]} * 4);
  if (pinned) {
    std::memcpy(&e.pinned_tokens, bytes.data() + 14 + size_t{head[2]} * 4, 4);
    if (e.pinned_tokens == 0 || e.pinned_tokens > e.prompt_tokens) return absl::DataLossError("turn event's system prompt overruns the prompt");
  }
  size_t at = tokens_end;
  // A u32 at `at`, if the bytes hold one.
  const auto read_u32 = [&](uint32_t* v) {
    if (bytes.size() < at + 4) return false;
    std::memcpy(v, bytes.data() + at, 4);
    at += 4;
    return true;
  };
  if (masked) {
    uint32_t count = 0;
    if (!read_u32(&count) || bytes.size() - at < size_t{count} * 4) return absl::DataLossError("turn event's flags of the wrong size");
    for (uint32_t i = 0; i < count; ++i) {
      uint32_t run = 0;
      read_u32(&run);
      if (run > e.prompt_tokens - e.prompt_learn.size()) return absl::DataLossError("turn event's flags overrun the prompt");
      e.prompt_learn.insert(e.prompt_learn.end(), run, i % 2 == 0 ? 1 : 0);
    }
    if (e.prompt_learn.size() != e.prompt_tokens) return absl::DataLossError("turn event's flags do not cover the prompt");
  }
  if (recorded) {
    uint32_t size = 0;
    if (!read_u32(&size) || size == 0 || bytes.size() - at < size) return absl::DataLossError("turn event's record of the wrong size");
    e.record = bytes.substr(at, size);
    at += size;
  }
  if (at != bytes.size()) return absl::DataLossError("turn event of the wrong size");
  return e;
}

std::vector<uint8_t> LearnFlags(const LogEvent& e) {
  std::vector<uint8_t> flags(e.tokens.size(), e.learned ? 1 : 0);
  if (!e.learned) return flags;
  for (size_t i = 0; i < e.prompt_learn.size(); ++i) flags[i] = e.prompt_learn[i];
  if (!e.learn_generated) std::fill(flags.begin() + e.prompt_tokens, flags.end(), 0);
  return flags;
}

}  // namespace adaptd::server
