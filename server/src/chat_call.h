// The Chat RPC's reactor (chat_call.cc).
#ifndef ADAPTD_SERVER_CHAT_CALL_H_
#define ADAPTD_SERVER_CHAT_CALL_H_

#include <string>

#include <grpcpp/grpcpp.h>

#include "adaptd/engine/executor.h"
#include "adaptd/engine/tokenizer.h"
#include "adaptd/v1/adaptd.grpc.pb.h"
#include "metrics.h"
#include "session_manager.h"
#include "worker.h"

namespace adaptd::server {

struct ChatDeps {
  engine::Executor& executor;
  SessionManager& sessions;
  const engine::Tokenizer& tokenizer;
  Worker& worker;
  Metrics& metrics;
  int max_new_tokens;
};

// A reactor that runs one turn for `tenant` (or fails the call with its error) and deletes
// itself when the call is done.
// With `raw`, the one message's content is fed as plain text (Generate).
grpc::ServerWriteReactor<v1::ChatResponse>* StartChat(ChatDeps deps, absl::StatusOr<std::string> tenant,
                                                      const v1::ChatRequest* req, bool raw = false);

grpc::Status ToGrpc(const absl::Status& status);  // service.cc

}  // namespace adaptd::server

#endif  // ADAPTD_SERVER_CHAT_CALL_H_
