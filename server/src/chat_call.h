// The turn calls: Chat, Generate and Ingest (chat_call.cc).
#ifndef ADAPTD_SERVER_CHAT_CALL_H_
#define ADAPTD_SERVER_CHAT_CALL_H_

#include <string>

#include <grpcpp/grpcpp.h>

#include "adaptd/engine/executor.h"
#include "adaptd/engine/tokenizer.h"
#include "adaptd/v1/adaptd.grpc.pb.h"
#include "quotas.h"
#include "metrics.h"
#include "session_manager.h"
#include "worker.h"

namespace adaptd::server {

struct ChatDeps {
  const engine::Model& model;
  engine::Executor& executor;
  SessionManager& sessions;
  const engine::Tokenizer& tokenizer;
  Worker& worker;
  Metrics& metrics;
  Quotas& quotas;
  int max_new_tokens;
  // Opens a context that starts without a system message (empty: none).
  const std::string& system_prompt;
};

enum class TurnKind {
  kChat,    // messages rendered in the session's chat format
  kRaw,     // the one message's content fed as plain text (Generate)
  kIngest,  // text or ids learned, no reply
};

// Reactors that run one turn for `tenant` (or fail the call with its error) and delete
// themselves when the call is done.
grpc::ServerWriteReactor<v1::ChatResponse>* StartChat(ChatDeps deps, absl::StatusOr<std::string> tenant,
                                                      const v1::ChatRequest* req, TurnKind kind);
grpc::ServerUnaryReactor* StartIngest(ChatDeps deps, absl::StatusOr<std::string> tenant,
                                      const v1::IngestRequest* req, v1::IngestResponse* resp);

// Writes a committed event's snapshot when its policy says so and records it (metrics; an
// error line on failure).
void WriteSnapshot(SessionManager& sessions, Metrics& metrics, const SessionManager::Committed& committed);

grpc::Status ToGrpc(const absl::Status& status);  // service.cc
// INVALID_ARGUMENT naming `field` unless `text` is valid UTF-8 (service.cc).
absl::Status CheckUtf8(std::string_view field, const std::string& text);

}  // namespace adaptd::server

#endif  // ADAPTD_SERVER_CHAT_CALL_H_
