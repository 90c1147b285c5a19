// Session resource methods. Every method: authenticate, validate, call the store, convert.
#include "service.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <random>

#include "absl/strings/str_cat.h"
#include "logging.h"

namespace adaptd::server {
namespace {

}  // namespace

absl::Status CheckUtf8(std::string_view field, const std::string& text) {
  if (engine::Utf8Lossy(text) == text) return absl::OkStatus();
  return absl::InvalidArgumentError(std::string(field) + " is not valid UTF-8");
}

grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* ctx, const absl::Status& status) {
  auto* reactor = ctx->DefaultReactor();
  reactor->Finish(ToGrpc(status));
  return reactor;
}

int64_t DirectoryBytes(const std::string& path) {
  std::error_code ec;
  int64_t bytes = 0;
  // Non-throwing all the way: files may vanish under the walk (compactions, backups).
  for (std::filesystem::recursive_directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code fec;
    if (!it->is_regular_file(fec)) continue;
    const auto size = it->file_size(fec);
    if (!fec) bytes += static_cast<int64_t>(size);
  }
  return bytes;
}

absl::StatusOr<std::string> AdaptdService::NewSessionId(const std::string& requested) const {
  if (!requested.empty()) {
    if (auto s = options_.ownership.Check(requested); !s.ok()) return s;
    return requested;
  }
  static thread_local std::mt19937_64 rng(std::random_device{}());
  static constexpr char kHex[] = "0123456789abcdef";
  for (;;) {  // about as many tries as there are replicas
    std::string id = "s-";
    for (int i = 0; i < 24; ++i) id.push_back(kHex[rng() % 16]);
    if (options_.ownership.Owns(id)) return id;
  }
}

grpc::Status ToGrpc(const absl::Status& status) {
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::StatusOr<std::string> AdaptdService::Tenant(grpc::CallbackServerContext* ctx, const std::string* session_id) {
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  if (it == md.end()) return absl::UnauthenticatedError("missing \"authorization: Bearer <api key>\"");
  auto tenant = keys_.Authenticate(std::string(it->second.data(), it->second.size()));
  if (!tenant.ok()) return tenant;
  if (auto s = quotas_.Admit(*tenant); !s.ok()) return s;
  if (session_id == nullptr) return tenant;
  auto route = md.find("x-adaptd-session");
  if (route != md.end() && std::string(route->second.data(), route->second.size()) != *session_id) {
    return absl::InvalidArgumentError("the x-adaptd-session header names another session than the request");
  }
  if (auto s = options_.ownership.Check(*session_id); !s.ok()) return s;
  return tenant;
}

absl::Status AdaptdService::ToSession(const session_store::SessionInfo& info, v1::Session* out, bool with_state) {
  v1::Session stored;  // the metadata is the Session as created: options and fingerprint
  if (!stored.ParseFromString(info.metadata)) return absl::DataLossError("session metadata is unreadable");
  *out->mutable_options() = stored.options();
  out->set_model_fingerprint(stored.model_fingerprint());
  out->set_session_id(info.key.session);
  out->set_name("sessions/" + info.key.session);
  out->set_version(info.version);
  out->set_create_time_unix_ms(info.created_unix_ms);
  out->set_last_used_unix_ms(info.last_used_unix_ms);
  auto snapshots = store_.ListSnapshots(info.key);
  if (snapshots.ok() && !snapshots->empty()) out->set_snapshot_version(snapshots->back().version);
  v1::SessionState state;
  const bool loaded = sessions_.InMemory(info.key, with_state ? &state : nullptr);
  out->set_tier(loaded ? "memory" : "store");
  if (loaded && state.delta_norms_size() > 0) *out->mutable_state() = state;
  return absl::OkStatus();
}

absl::Status AdaptdService::Describe(const session_store::SessionKey& key, v1::Session* out) {
  auto info = store_.Get(key);
  return info.ok() ? ToSession(*info, out) : info.status();
}

grpc::ServerUnaryReactor* AdaptdService::CreateSession(grpc::CallbackServerContext* ctx,
                                                       const v1::CreateSessionRequest* req, v1::Session* resp) {
  auto tenant = Tenant(ctx);
  if (!tenant.ok()) return Done(ctx, tenant.status());
  // The server's defaults under the request's options: the request's set fields win (proto3
  // presence: the optional ones even at 0), its roles and its snapshot policy (with its N)
  // replace the defaults' whole.
  v1::SessionOptions options = options_.session_defaults;
  if (req->options().roles_not_learned_size() > 0) options.clear_roles_not_learned();
  if (req->options().snapshot_policy() != v1::SNAPSHOT_POLICY_UNSPECIFIED) options.clear_snapshot_every_events();
  options.MergeFrom(req->options());
  if (auto s = ValidateOptions(options); !s.ok()) return Done(ctx, s);
  if (auto s = CheckNtpUpdateMemory(model_, options, options_.max_context_tokens, options_.ntp_update_budget_bytes);
      !s.ok()) {
    return Done(ctx, s);
  }
  auto id = NewSessionId(req->session_id());
  if (!id.ok()) return Done(ctx, id.status());
  v1::Session stored;
  *stored.mutable_options() = options;
  stored.set_model_fingerprint(model_.fingerprint());
  const session_store::SessionKey key{*tenant, *id};
  if (auto s = quotas_.ReserveSession(*tenant); !s.ok()) return Done(ctx, s);
  const absl::Status created = store_.Create(key, stored.SerializeAsString());
  Audit("create", key.tenant, key.session, created);
  if (!created.ok()) {
    quotas_.SessionAdded(*tenant, -1);
    return Done(ctx, created);
  }
  auto info = store_.Get(key);
  return Done(ctx, info.ok() ? ToSession(*info, resp) : info.status());
}

grpc::ServerUnaryReactor* AdaptdService::GetSession(grpc::CallbackServerContext* ctx, const v1::GetSessionRequest* req,
                                                    v1::Session* resp) {
  auto tenant = Tenant(ctx, &req->session_id());
  if (!tenant.ok()) return Done(ctx, tenant.status());
  auto info = store_.Get({*tenant, req->session_id()});
  return Done(ctx, info.ok() ? ToSession(*info, resp) : info.status());
}

grpc::ServerUnaryReactor* AdaptdService::ListSessions(grpc::CallbackServerContext* ctx,
                                                      const v1::ListSessionsRequest* req,
                                                      v1::ListSessionsResponse* resp) {
  auto tenant = Tenant(ctx);
  if (!tenant.ok()) return Done(ctx, tenant.status());
  if (req->page_size() < 0) return Done(ctx, absl::InvalidArgumentError("page_size must not be negative"));
  const int size = req->page_size() == 0 ? 50 : std::min(req->page_size(), 1000);  // AIP-158: coerce
  auto page = store_.List(*tenant, size, req->page_token());
  if (!page.ok()) return Done(ctx, page.status());
  for (const auto& info : page->sessions) {
    if (auto s = ToSession(info, resp->add_sessions(), /*with_state=*/false); !s.ok()) return Done(ctx, s);
  }
  resp->set_next_page_token(page->next_page_token);
  return Done(ctx, absl::OkStatus());
}

grpc::ServerUnaryReactor* AdaptdService::DeleteSession(grpc::CallbackServerContext* ctx,
                                                       const v1::DeleteSessionRequest* req,
                                                       v1::DeleteSessionResponse*) {
  auto tenant = Tenant(ctx, &req->session_id());
  if (!tenant.ok()) return Done(ctx, tenant.status());
  const session_store::SessionKey key{*tenant, req->session_id()};
  if (auto s = sessions_.Hold(key); !s.ok()) return Done(ctx, s);  // ABORTED while a turn runs
  const absl::Status deleted = store_.Delete(key);
  Audit("delete", key.tenant, key.session, deleted);
  if (!deleted.ok()) {
    sessions_.Unhold(key);
    return Done(ctx, deleted);
  }
  sessions_.ReleaseAndDrop(key);
  quotas_.SessionAdded(*tenant, -1);
  return Done(ctx, deleted);
}

grpc::ServerWriteReactor<v1::ChatResponse>* AdaptdService::Chat(grpc::CallbackServerContext* ctx,
                                                                const v1::ChatRequest* req) {
  return StartChat(TurnDeps(), Tenant(ctx, &req->session_id()), req, TurnKind::kChat);
}

grpc::ServerWriteReactor<v1::ChatResponse>* AdaptdService::Generate(grpc::CallbackServerContext* ctx,
                                                                    const v1::GenerateRequest* req) {
  // The same turn machinery as Chat, with one raw message (the reactor copies what it needs
  // from the request while it starts).
  auto chat = std::make_unique<v1::ChatRequest>();
  chat->set_session_id(req->session_id());
  auto* m = chat->add_messages();
  m->set_role("user");
  m->set_content(req->prompt());
  *chat->mutable_sampling() = req->sampling();
  chat->set_max_new_tokens(req->max_new_tokens());
  *chat->mutable_stop() = req->stop();
  chat->set_dry_run(req->dry_run());
  chat->set_request_id(req->request_id());
  return StartChat(TurnDeps(), Tenant(ctx, &req->session_id()), chat.get(), TurnKind::kRaw);
}

grpc::ServerUnaryReactor* AdaptdService::Ingest(grpc::CallbackServerContext* ctx, const v1::IngestRequest* req,
                                                v1::IngestResponse* resp) {
  return StartIngest(TurnDeps(), Tenant(ctx, &req->session_id()), req, resp);
}

absl::Status AdaptdService::ScoreOn(engine::SessionState& state, const std::vector<int32_t>& ids,
                                    v1::ScoreResponse* resp) const {
  const int64_t before = state.updates_applied();
  auto logits = model_.Forward(state, ids, /*learn=*/true);
  if (!logits.ok()) return logits.status();
  const int64_t V = model_.config().vocab_size;
  double total = 0;
  for (size_t i = 0; i + 1 < ids.size(); ++i) {
    const float* row = logits->data() + i * V;
    double m = row[0], sum = 0;
    for (int64_t v = 1; v < V; ++v) m = std::max<double>(m, row[v]);
    for (int64_t v = 0; v < V; ++v) sum += std::exp(row[v] - m);
    const double lp = row[ids[i + 1]] - m - std::log(sum);
    resp->add_logprobs(static_cast<float>(lp));
    total -= lp;
  }
  for (int32_t id : ids) resp->add_token_ids(id);
  resp->set_nll(total / static_cast<double>(ids.size() - 1));
  resp->set_updates_applied(state.updates_applied() - before);
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* AdaptdService::Score(grpc::CallbackServerContext* ctx, const v1::ScoreRequest* req,
                                               v1::ScoreResponse* resp) {
  auto* reactor = ctx->DefaultReactor();
  auto tenant = Tenant(ctx, &req->session_id());
  absl::Status s = tenant.ok() ? StartScore(*tenant, *req, resp, reactor) : tenant.status();
  if (!s.ok()) reactor->Finish(ToGrpc(s));
  return reactor;
}

absl::Status AdaptdService::StartScore(const std::string& tenant, const v1::ScoreRequest& req, v1::ScoreResponse* resp,
                                       grpc::ServerUnaryReactor* reactor) {
  if (req.text().size() > (1u << 20)) return absl::InvalidArgumentError("text: at most 1 MiB");
  if (auto s = CheckUtf8("text", req.text()); !s.ok()) return s;
  auto ids = tokenizer_.Encode(req.text());
  if (!ids.ok()) return ids.status();
  if (ids->size() < 2 || ids->size() > 8192) {
    return absl::InvalidArgumentError(absl::StrCat("text must be 2 to 8192 tokens, not ", ids->size()));
  }
  auto slot = quotas_.BeginTurn(tenant);  // a score holds a copy of the session: bounded like turns
  if (!slot.ok()) return slot.status();
  const session_store::SessionKey key{tenant, req.session_id()};
  const auto too_long = absl::InvalidArgumentError("text: longer than the session's context (beside its system prompt)");
  // The window keeps the pinned system prompt whatever leaves it.
  auto does_not_fit = [n = static_cast<int64_t>(ids->size())](const LiveSession& s) {
    return s.PinnedTokens() + n > s.max_context_tokens;
  };
  if (!req.adapt()) {  // on a copy: the session is untouched
    auto copy = sessions_.Clone(key);
    if (!copy.ok()) return copy.status();
    if (does_not_fit(**copy)) return too_long;
    scorer_.Post([this, reactor, resp, slot = *slot, ids = *std::move(ids),
                  copy = std::shared_ptr<LiveSession>(std::move(*copy))]() mutable {
      // The window as a turn of these tokens would find it, then the tokens.
      absl::Status s = sessions_.FitWindow(*copy, static_cast<int64_t>(ids.size()), 0);
      if (s.ok()) s = ScoreOn(*copy->state, ids, resp);
      slot.reset();  // before the answer: the client may start its next turn at once
      reactor->Finish(ToGrpc(s));
    });
    return absl::OkStatus();
  }
  if (auto s = quotas_.CheckStorage(tenant); !s.ok()) return s;
  auto live = sessions_.Acquire(key);
  if (!live.ok()) return live.status();
  if (!req.request_id().empty()) {  // a retry of a committed adapting Score gets its scores
    auto seen = sessions_.LookupRequest(key, req.request_id());
    if (!seen.ok() || seen->has_value()) {
      sessions_.Release(key);
      if (!seen.ok()) return seen.status();
      if (!resp->ParseFromString((*seen)->result)) return absl::DataLossError("recorded scores are unreadable");
      reactor->Finish(grpc::Status::OK);
      return absl::OkStatus();
    }
  }
  if (does_not_fit(**live)) {
    sessions_.Release(key);
    return too_long;
  }
  // Learned as an Ingest without context: the window rule, the tokens, then the rewind.
  scorer_.Post([this, reactor, resp, key, slot = *slot, live = *live, ids = *std::move(ids),
                request_id = req.request_id()]() mutable {
    const auto finish = [&](const absl::Status& st) {
      slot.reset();  // before the answer: the client may start its next turn at once
      reactor->Finish(ToGrpc(st));
    };
    const double seconds_before = live->state->update_seconds();
    const int64_t rejected_before = live->state->updates_rejected();
    absl::Status s = sessions_.FitWindow(*live, static_cast<int64_t>(ids.size()), 0);
    if (s.ok()) s = ScoreOn(*live->state, ids, resp);
    if (!s.ok()) {
      sessions_.ReleaseAndDrop(key);  // the state may be partly changed
      return finish(s);
    }
    LogEvent event;
    event.tokens = ids;
    event.keep_in_context = false;
    event.prompt_tokens = static_cast<uint32_t>(ids.size());
    v1::Turn record;
    record.set_kind("score");
    record.set_prompt_tokens(static_cast<int64_t>(ids.size()));
    record.set_learned(true);
    event.record = record.SerializeAsString();
    resp->set_version(live->version + 1);
    metrics_.Tokens(0, 0, static_cast<int64_t>(ids.size()));
    metrics_.Updates(resp->updates_applied(), live->state->updates_rejected() - rejected_before,
                     live->state->update_seconds() - seconds_before);
    auto committed = sessions_.Commit(*live, event, request_id, resp->SerializeAsString());
    if (!committed.ok()) return finish(committed.status());
    finish(absl::OkStatus());  // acknowledged; then the snapshot
    WriteSnapshot(sessions_, metrics_, *committed);
  });
  return absl::OkStatus();
}

absl::StatusOr<int> AdaptdService::ExpireIdle() {
  auto expired = store_.ExpireIdle();
  if (!expired.ok()) return expired.status();
  if (expired->empty()) return 0;
  sessions_.DropExpired(*expired);
  quotas_.Recount();
  for (const auto& key : *expired) Audit("expire", key.tenant, key.session, absl::OkStatus());
  return static_cast<int>(expired->size());
}

grpc::ServerUnaryReactor* AdaptdService::BackupStore(grpc::CallbackServerContext* ctx, const v1::BackupStoreRequest*,
                                                     v1::BackupStoreResponse* resp) {
  auto tenant = Tenant(ctx);
  if (!tenant.ok()) return Done(ctx, tenant.status());
  const auto& admins = options_.admin_tenants;
  if (std::find(admins.begin(), admins.end(), *tenant) == admins.end()) {
    return Done(ctx, absl::PermissionDeniedError(absl::StrCat("tenant ", *tenant, " may not back up the store")));
  }
  if (options_.backup_dir.empty()) return Done(ctx, absl::FailedPreconditionError("the server has no --backup_dir"));
  auto* reactor = ctx->DefaultReactor();
  admin_.Post([this, reactor, resp, tenant = *tenant] {
    const auto start = std::chrono::steady_clock::now();
    const absl::Status backed_up = store_.Backup(options_.backup_dir);
    resp->set_seconds(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    resp->set_backup_dir_bytes(DirectoryBytes(options_.backup_dir));
    Audit("backup", tenant, "", backed_up, absl::StrCat(resp->seconds(), " s"));
    reactor->Finish(ToGrpc(backed_up));
  });
  return reactor;
}

absl::StatusOr<int> AdaptdService::Shutdown() {
  admin_.Stop();
  scorer_.Stop();
  worker_.Stop();
  return sessions_.SnapshotDirty();
}

Metrics::Gauges AdaptdService::Gauges() {
  const auto s = sessions_.GetStats();
  const auto e = executor_.GetStats();
  Metrics::Gauges g{static_cast<int64_t>(s.loaded), static_cast<int64_t>(s.bytes), s.loads, s.evictions,
                    s.replayed_events, s.deferred_snapshots, e.forward_seconds, e.steps, e.step_requests, e.active,
                    quotas_.StoredSessions(), quotas_.ActiveTurns()};
  if (!options_.store_path.empty()) {
    std::error_code ec;
    g.store_bytes = DirectoryBytes(options_.store_path);
    if (const auto space = std::filesystem::space(options_.store_path, ec); !ec) {
      g.disk_bytes = static_cast<int64_t>(space.capacity);
      g.disk_free_bytes = static_cast<int64_t>(space.available);
    }
  }
  return g;
}

grpc::ServerUnaryReactor* AdaptdService::GetServerInfo(grpc::CallbackServerContext* ctx,
                                                       const v1::GetServerInfoRequest*, v1::ServerInfo* resp) {
  auto tenant = Tenant(ctx);
  if (!tenant.ok()) return Done(ctx, tenant.status());
  const auto& c = model_.config();
  resp->set_model_name(options_.model_name);
  resp->set_model_fingerprint(model_.fingerprint());
  for (int layer : c.ttt.layers) resp->add_ttt_layers(layer);
  for (int layer : c.ttt.fast_layers) resp->add_fast_layers(layer);
  resp->set_ttt_chunk(c.ttt.chunk);
  resp->set_ttt_lr(c.ttt.lr);
  resp->set_system_prompt(options_.system_prompt);
  resp->set_weight_format(model_.weight_format().Name());
  resp->set_base_fingerprint(model_.base_fingerprint());
  resp->set_vocab_size(c.vocab_size);
  resp->set_replica_id(options_.replica_id);
  resp->set_chat_format(options_.chat_format);
  resp->set_max_new_tokens(options_.max_new_tokens);
  const auto stats = sessions_.GetStats();
  resp->set_sessions_in_memory(static_cast<int64_t>(stats.loaded));
  resp->set_session_loads(stats.loads);
  resp->set_session_evictions(stats.evictions);
  return Done(ctx, absl::OkStatus());
}

}  // namespace adaptd::server
