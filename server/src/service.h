// The Adaptd gRPC service (callback API): authentication, validation at the edge, and the
// session resource over the session store. Unary methods answer through default reactors.
//
// Threading: gRPC calls the methods on its threads; the store and the model are thread-safe.
#ifndef ADAPTD_SERVER_SERVICE_H_
#define ADAPTD_SERVER_SERVICE_H_

#include <memory>
#include <optional>
#include <string>

#include "adaptd/engine/model.h"
#include "adaptd/session_store/store.h"
#include "adaptd/v1/adaptd.grpc.pb.h"
#include "auth.h"
#include "chat_call.h"
#include "quotas.h"
#include "routing.h"

namespace adaptd::server {

struct ServiceOptions {
  std::string model_name;
  std::string replica_id;
  std::string chat_format;
  std::string system_prompt;  // opens a chat context that has none (empty: none)
  int max_new_tokens = 4096;
  size_t memory_budget_bytes = size_t{2} << 30;
  int64_t max_context_tokens = 1024;
  int64_t ntp_update_budget_bytes = int64_t{1} << 30;  // one ntp_gradient update's memory (--ntp_update_mib)
  size_t max_import_bytes = size_t{256} << 20;
  QuotaOptions quotas;
  std::string store_path;  // for the store's size on disk (metrics)
  std::string backup_dir;  // BackupStore's target (empty: no backups)
  std::vector<std::string> admin_tenants;  // may call BackupStore
  Ownership ownership;  // the sessions this replica serves (default: all)
  v1::SessionOptions session_defaults;  // for the fields a new session's options leave unset
};

// The bytes of the regular files under `path` (0 if it cannot be read).
int64_t DirectoryBytes(const std::string& path);
// Finishes a unary call with `status` on a default reactor.
grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* ctx, const absl::Status& status);

class AdaptdService final : public adaptd::v1::Adaptd::CallbackService {
 public:
  AdaptdService(const engine::Model& model, const engine::Tokenizer& tokenizer, engine::Executor& executor,
                session_store::SessionStore& store, Metrics& metrics, ApiKeys keys, ServiceOptions options)
      : model_(model),
        tokenizer_(tokenizer),
        executor_(executor),
        store_(store),
        metrics_(metrics),
        sessions_(model, store, options.memory_budget_bytes, options.max_context_tokens, options.ntp_update_budget_bytes,
                  {[&metrics](double s) { metrics.Load(s); }, [&metrics] { metrics.SnapshotFailed(); }}),
        keys_(std::move(keys)),
        options_(std::move(options)),
        quotas_(options_.quotas, store, keys_.Tenants()) {}

  grpc::ServerUnaryReactor* CreateSession(grpc::CallbackServerContext* ctx, const v1::CreateSessionRequest* req,
                                          v1::Session* resp) override;
  grpc::ServerUnaryReactor* GetSession(grpc::CallbackServerContext* ctx, const v1::GetSessionRequest* req,
                                       v1::Session* resp) override;
  grpc::ServerUnaryReactor* ListSessions(grpc::CallbackServerContext* ctx, const v1::ListSessionsRequest* req,
                                         v1::ListSessionsResponse* resp) override;
  grpc::ServerUnaryReactor* DeleteSession(grpc::CallbackServerContext* ctx, const v1::DeleteSessionRequest* req,
                                          v1::DeleteSessionResponse* resp) override;
  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* ctx, const v1::GetServerInfoRequest* req,
                                          v1::ServerInfo* resp) override;
  grpc::ServerUnaryReactor* BackupStore(grpc::CallbackServerContext* ctx, const v1::BackupStoreRequest* req,
                                        v1::BackupStoreResponse* resp) override;
  grpc::ServerWriteReactor<v1::ChatResponse>* Chat(grpc::CallbackServerContext* ctx, const v1::ChatRequest* req) override;
  grpc::ServerWriteReactor<v1::ChatResponse>* Generate(grpc::CallbackServerContext* ctx,
                                                       const v1::GenerateRequest* req) override;
  grpc::ServerUnaryReactor* Score(grpc::CallbackServerContext* ctx, const v1::ScoreRequest* req,
                                  v1::ScoreResponse* resp) override;
  grpc::ServerUnaryReactor* Ingest(grpc::CallbackServerContext* ctx, const v1::IngestRequest* req,
                                   v1::IngestResponse* resp) override;

  // lifecycle.cc
  grpc::ServerUnaryReactor* ForkSession(grpc::CallbackServerContext* ctx, const v1::ForkSessionRequest* req,
                                        v1::Session* resp) override;
  grpc::ServerUnaryReactor* ResetSession(grpc::CallbackServerContext* ctx, const v1::ResetSessionRequest* req,
                                         v1::Session* resp) override;
  grpc::ServerUnaryReactor* RollbackSession(grpc::CallbackServerContext* ctx, const v1::RollbackSessionRequest* req,
                                            v1::Session* resp) override;
  grpc::ServerWriteReactor<v1::ExportSessionResponse>* ExportSession(grpc::CallbackServerContext* ctx,
                                                                     const v1::ExportSessionRequest* req) override;
  grpc::ServerReadReactor<v1::ImportSessionRequest>* ImportSession(grpc::CallbackServerContext* ctx,
                                                                   v1::Session* resp) override;
  grpc::ServerUnaryReactor* MigrateSession(grpc::CallbackServerContext* ctx, const v1::MigrateSessionRequest* req,
                                           v1::Session* resp) override;

  // contexts.cc
  grpc::ServerUnaryReactor* CreateContext(grpc::CallbackServerContext* ctx, const v1::CreateContextRequest* req,
                                          v1::Context* resp) override;
  grpc::ServerUnaryReactor* ListContexts(grpc::CallbackServerContext* ctx, const v1::ListContextsRequest* req,
                                         v1::ListContextsResponse* resp) override;
  grpc::ServerUnaryReactor* SwitchContext(grpc::CallbackServerContext* ctx, const v1::SwitchContextRequest* req,
                                          v1::Context* resp) override;
  grpc::ServerUnaryReactor* ListTurns(grpc::CallbackServerContext* ctx, const v1::ListTurnsRequest* req,
                                      v1::ListTurnsResponse* resp) override;

  Metrics::Gauges Gauges();
  // Deletes the sessions idle past the store's TTL (and drops them from memory); returns how many.
  absl::StatusOr<int> ExpireIdle();
  // Once no call is left and the engine has stopped: finishes the commits and snapshots the
  // workers hold, then snapshots every session whose policy deferred it; returns how many.
  absl::StatusOr<int> Shutdown();
  const ApiKeys& keys() const { return keys_; }

 private:
  // The caller's tenant, from the authorization header, admitted by its rate limit; with
  // `session_id`, also checks the routing header x-adaptd-session (when sent) names that session.
  absl::StatusOr<std::string> Tenant(grpc::CallbackServerContext* ctx, const std::string* session_id = nullptr);
  // The id a new session (create, fork, import) gets: `requested`, if this replica owns it
  // (else FAILED_PRECONDITION), or a generated one it owns ("s-" and 24 hex digits).
  absl::StatusOr<std::string> NewSessionId(const std::string& requested) const;
  // Creates a context (`to` empty) or switches to `to`: one event, committed and snapshotted as
  // a turn's; *resp describes the context made current.
  absl::Status ChangeContext(const session_store::SessionKey& key, std::optional<uint32_t> to,
                             const std::string& request_id, v1::Context* resp);
  // ListTurns' work: reads the session's log (not its state: no lease).
  absl::Status ReadTurns(const session_store::SessionKey& key, const v1::ListTurnsRequest& req,
                         v1::ListTurnsResponse* resp);
  // Score's work: an error to finish the call with, or OK once the call is answered or posted.
  absl::Status StartScore(const std::string& tenant, const v1::ScoreRequest& req, v1::ScoreResponse* resp,
                          grpc::ServerUnaryReactor* reactor);
  // Scores `ids` as the continuation of `state`, learning within them (the state changes).
  absl::Status ScoreOn(engine::SessionState& state, const std::vector<int32_t>& ids, v1::ScoreResponse* resp) const;
  // The Session resource of a stored session.
  // With `with_state`, a loaded session's learning state too (not for lists: it reads the weights).
  absl::Status ToSession(const session_store::SessionInfo& info, v1::Session* out, bool with_state = true);
  // The stored session as a resource (after a change).
  absl::Status Describe(const session_store::SessionKey& key, v1::Session* out);
  ChatDeps TurnDeps() {
    return {model_, executor_, sessions_, tokenizer_, worker_, metrics_, quotas_, options_.max_new_tokens,
            options_.system_prompt};
  }

  const engine::Model& model_;
  const engine::Tokenizer& tokenizer_;
  engine::Executor& executor_;
  session_store::SessionStore& store_;
  Metrics& metrics_;
  SessionManager sessions_;
  ApiKeys keys_;
  ServiceOptions options_;
  Quotas quotas_;
  Worker scorer_;  // scores, off the gRPC threads and out of the commits' way
  Worker admin_;   // backups: long, one at a time
  Worker worker_;  // last: destroyed first, finishing the turns it holds
};


}  // namespace adaptd::server

#endif  // ADAPTD_SERVER_SERVICE_H_
