// A session's log events as the server writes them into the store (the store keeps them as
// opaque bytes): turns, resets and context switches, and their binary encoding.
#ifndef ADAPTD_SERVER_LOG_EVENT_H_
#define ADAPTD_SERVER_LOG_EVENT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace adaptd::server {

// One event of a session's log. A turn (Chat, Generate, Ingest): every token that entered the
// model (template, prompt, generated, stop), whether they were learned, whether the turn ended
// inside the assistant's message (the next turn closes it first), and whether its tokens stay in
// the KV window (an Ingest with keep_in_context = false leaves none). A reset: the state starts
// afresh (the history before it stays in the log). A context event: the session's next turns go
// to context `context`, a new one when it equals the number of contexts so far.
struct LogEvent {
  enum class Kind : char { kTurn = 'T', kReset = 'R', kContext = 'C' };
  Kind kind = Kind::kTurn;
  uint32_t context = 0;  // kContext
  std::vector<int32_t> tokens;
  bool learned = true;
  bool assistant_open = false;
  bool keep_in_context = true;
  bool learn_generated = true;  // with learned: the tokens after the prompt were learned too
  uint32_t prompt_tokens = 0;   // tokens[0, prompt_tokens) were the prompt
  // With learned: empty (the whole prompt was learned) or a flag per prompt token (0: fed
  // without learning, as a role the session does not learn).
  std::vector<uint8_t> prompt_learn;
  uint32_t max_new_tokens = 0;  // the reply's reserved room (the window rule reads it)
  // tokens[0, pinned_tokens) are the session's system prompt: the first turn of a context
  // renders it, and the window rule keeps it at the window's head.
  uint32_t pinned_tokens = 0;
  // The turn as its call saw it (a serialized v1::Turn without version and context: the kind,
  // the messages as sent, the reply's text), for ListTurns; empty: not recorded.
  std::string record;
};
std::string EncodeEvent(const LogEvent& event);
// DATA_LOSS for bytes that are not an event of this server's (a newer binary's kinds or flags
// included: refused rather than misread).
absl::StatusOr<LogEvent> DecodeEvent(const std::string& bytes);
// Whether each of the event's tokens was learned (1) or only fed (0).
std::vector<uint8_t> LearnFlags(const LogEvent& event);

}  // namespace adaptd::server

#endif  // ADAPTD_SERVER_LOG_EVENT_H_
