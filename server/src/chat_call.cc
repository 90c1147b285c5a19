// The turn calls (Chat, Generate, Ingest): reactors over the Executor.
#include "chat_call.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <optional>

#include "absl/strings/str_cat.h"
#include "adaptd/engine/chat.h"
#include "adaptd/engine/sampler.h"
#include "logging.h"

namespace adaptd::server {
namespace {

constexpr int kDefaultMaxNewTokens = 256;
constexpr size_t kMaxMessages = 64;
constexpr size_t kMaxContentBytes = 1 << 20;
constexpr size_t kMaxStops = 4, kMaxStopBytes = 64;

bool RoleLearned(const v1::SessionOptions& options, const std::string& role) {
  const auto& skipped = options.roles_not_learned();
  return std::find(skipped.begin(), skipped.end(), role) == skipped.end();
}

// One turn of a session, whatever the call delivers it: Start (gRPC thread) validates,
// leases the session, builds the prompt and enqueues it; OnResult (engine thread, quick) turns
// tokens into text through the detokenizer and the stop strings; Complete (worker thread)
// commits, releases, delivers the last message (the acknowledgement), then writes the snapshot.
class Turn {
 public:
  Turn(ChatDeps deps, TurnKind kind) : deps_(deps), kind_(kind) {}
  virtual ~Turn() = default;

  absl::Status Start(std::string tenant, const v1::ChatRequest& req);
  absl::Status Start(std::string tenant, const v1::IngestRequest& req);
  // The client left or its deadline passed (a gRPC thread).
  void Cancel() {
    std::lock_guard<std::mutex> lock(mu_);
    if (request_id_ != 0 && !final_seen_) deps_.executor.Cancel(request_id_);
  }

 protected:
  // Delivers `msg` (if any); `last` ends the call with `status` once everything is delivered.
  // `this` may be gone once the last message is delivered.
  virtual void Deliver(std::optional<v1::ChatResponse> msg, bool last, grpc::Status status) = 0;
  void End(grpc::Status status) { Deliver(std::nullopt, true, status); }
  // Returns the tenant's turn slot; called just before the status goes out, so a client that
  // has its answer can start the next turn at once.
  void ReturnSlot() { slot_.reset(); }

 private:
  // Leases the session and sets up the renderer. A retry of a committed request id delivers the
  // recorded reply instead and sets *replied (the session is released).
  // An ephemeral turn runs on a copy of the session instead (nothing to look up or release).
  absl::Status Lease(std::string tenant, const std::string& session_id, const std::string& request_id, bool* replied,
                     bool ephemeral = false);
  // Ends the lease (`drop`: and drops the session from memory, its state no longer matching the
  // log); an ephemeral turn's copy is simply left.
  void Unlease(bool drop = false) {
    if (own_ != nullptr) return;
    drop ? deps_.sessions.ReleaseAndDrop(key_) : deps_.sessions.Release(key_);
  }
  absl::Status Fail(absl::Status s) {  // before anything was enqueued
    Unlease();
    return s;
  }
  // The tokens that close an open assistant reply (its stop token may be in already).
  std::vector<int32_t> CloseOpenReply() const;
  // Applies the window rule and enqueues the prompt.
  absl::Status Enqueue(std::vector<int32_t> prompt, int max_new, bool learn, const engine::SamplingParams& sampling,
                       std::vector<uint8_t> prompt_learn = {});
  void OnResult(const engine::GenerateResult& r);  // engine thread
  void Complete(absl::Status engine_status);       // worker thread

  ChatDeps deps_;
  const TurnKind kind_;
  Quotas::TurnSlot slot_;  // returned when the call finishes
  session_store::SessionKey key_;
  LiveSession* live_ = nullptr;
  std::unique_ptr<LiveSession> own_;  // an ephemeral turn's copy of the session (live_ points at it)
  v1::Turn record_;                   // what ListTurns will show of the turn (kind, messages)
  std::unique_ptr<engine::ChatRenderer> renderer_;
  std::unique_ptr<engine::StreamDecoder> stream_;
  std::unique_ptr<engine::StopStringMatcher> stops_;
  std::vector<int32_t> stop_ids_;
  engine::GenerateRequest request_;
  bool keep_in_context_ = true;
  uint32_t pinned_tokens_ = 0;  // the prompt's leading system prompt, kept at the window's head
  int64_t updates_before_ = 0, rejected_before_ = 0;
  double update_seconds_before_ = 0;
  std::vector<int32_t> generated_;   // every emitted token (all entered the model)
  std::string replied_text_;         // the text sent
  std::string request_id_text_;      // the client's request id (may be empty)
  const std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point last_token_at_;  // engine thread
  bool stop_string_ = false;

  std::mutex mu_;
  bool final_seen_ = false;  // guarded by mu_
  uint64_t request_id_ = 0;  // guarded by mu_
};

absl::Status ValidateChat(const v1::ChatRequest& req, int max_new_tokens) {
  if (req.messages().empty()) return absl::InvalidArgumentError("messages: a turn needs at least one message");
  if (static_cast<size_t>(req.messages_size()) > kMaxMessages) return absl::InvalidArgumentError("messages: at most 64");
  size_t bytes = 0;
  for (const auto& m : req.messages()) bytes += m.content().size();
  if (bytes > kMaxContentBytes) return absl::InvalidArgumentError("messages: at most 1 MiB of content");
  for (int i = 0; i < req.messages_size(); ++i) {
    if (auto s = CheckUtf8(absl::StrCat("messages[", i, "].content"), req.messages(i).content()); !s.ok()) return s;
  }
  if (req.max_new_tokens() < 0 || req.max_new_tokens() > max_new_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens must be in [0, ", max_new_tokens, "]"));
  }
  if (static_cast<size_t>(req.stop_size()) > kMaxStops) return absl::InvalidArgumentError("stop: at most 4 strings");
  for (const auto& s : req.stop()) {
    if (s.empty() || s.size() > kMaxStopBytes) return absl::InvalidArgumentError("stop: each 1 to 64 bytes");
    if (auto u = CheckUtf8("stop", s); !u.ok()) return u;
  }
  return absl::OkStatus();
}

absl::Status Turn::Lease(std::string tenant, const std::string& session_id, const std::string& request_id,
                         bool* replied, bool ephemeral) {
  if (!ephemeral) {
    if (auto s = deps_.quotas.CheckStorage(tenant); !s.ok()) return s;
  }
  auto slot = deps_.quotas.BeginTurn(tenant);
  if (!slot.ok()) return slot.status();
  slot_ = *std::move(slot);
  key_ = {std::move(tenant), session_id};
  request_id_text_ = request_id;
  *replied = false;
  if (ephemeral) {
    auto copy = deps_.sessions.Clone(key_);
    if (!copy.ok()) return copy.status();
    own_ = *std::move(copy);
    live_ = own_.get();
  } else {
    auto live = deps_.sessions.Acquire(key_);
    if (!live.ok()) return live.status();
    live_ = *live;
  }
  if (!request_id_text_.empty()) {  // a retry of a committed turn gets its recorded reply
    auto seen = deps_.sessions.LookupRequest(key_, request_id_text_);
    if (!seen.ok()) return Fail(seen.status());
    if (seen->has_value()) {
      deps_.sessions.Release(key_);
      v1::ChatResponse recorded;
      if (!recorded.ParseFromString((*seen)->result)) return absl::DataLossError("recorded reply is unreadable");
      *replied = true;
      Deliver(std::move(recorded), true, grpc::Status::OK);
      return absl::OkStatus();
    }
  }
  engine::ChatFormat format = engine::DetectChatFormat(deps_.tokenizer);
  if (!live_->options.chat_format().empty() && kind_ == TurnKind::kChat) {
    auto f = engine::ParseChatFormat(live_->options.chat_format());
    if (!f.ok()) return Fail(f.status());
    format = *f;
  }
  auto renderer = engine::ChatRenderer::Create(deps_.tokenizer, format);
  if (!renderer.ok()) return Fail(renderer.status());
  renderer_ = std::make_unique<engine::ChatRenderer>(*std::move(renderer));
  return absl::OkStatus();
}

std::vector<int32_t> Turn::CloseOpenReply() const {
  if (!live_->assistant_open) return {};
  const auto end = renderer_->AssistantEnd();
  const size_t skip = !end.empty() && live_->last_token == end[0] ? 1 : 0;
  return std::vector<int32_t>(end.begin() + skip, end.end());
}

absl::Status Turn::Start(std::string tenant, const v1::ChatRequest& req) {
  if (auto s = ValidateChat(req, deps_.max_new_tokens); !s.ok()) return s;
  engine::SamplingParams sampling;
  sampling.temperature = req.sampling().temperature();
  sampling.top_k = req.sampling().top_k();
  sampling.top_p = req.sampling().top_p() == 0 ? 1.0 : req.sampling().top_p();
  sampling.min_p = req.sampling().min_p();
  sampling.repetition_penalty = req.sampling().repetition_penalty() == 0 ? 1.0 : req.sampling().repetition_penalty();
  sampling.seed = req.sampling().seed();
  if (auto s = engine::ValidateSamplingParams(sampling); !s.ok()) return s;

  if (req.ephemeral() && !req.request_id().empty()) {
    return absl::InvalidArgumentError("request_id: an ephemeral turn records nothing to retry");
  }
  bool replied = false;
  if (auto s = Lease(std::move(tenant), req.session_id(), req.request_id(), &replied, req.ephemeral()); !s.ok() || replied) {
    return s;
  }
  std::vector<engine::ChatMessage> messages;
  for (const auto& m : req.messages()) messages.push_back({m.role(), m.content()});
  record_.set_kind(kind_ == TurnKind::kRaw ? "generate" : "chat");
  *record_.mutable_messages() = req.messages();
  // The first turn of a context in a chat format opens with the system prompt (the client's,
  // else the server's default), which then stays at the head of the window.
  const bool opens = kind_ == TurnKind::kChat && renderer_->format() != engine::ChatFormat::kRaw &&
                     live_->last_token < 0 && live_->window.empty();
  if (opens && messages[0].role != "system" && !deps_.system_prompt.empty()) {
    messages.insert(messages.begin(), {"system", deps_.system_prompt});
  }
  const bool pins = opens && messages[0].role == "system";
  std::vector<int32_t> prompt = CloseOpenReply();
  std::vector<size_t> ends;
  auto turn = kind_ == TurnKind::kRaw ? deps_.tokenizer.Encode(messages[0].content)
                                      : renderer_->Render(messages, /*first=*/live_->last_token < 0,
                                                          /*generation_prompt=*/true, &ends);
  if (!turn.ok()) return Fail(turn.status());
  if (turn->empty()) return Fail(absl::InvalidArgumentError("the prompt encodes to no tokens"));
  // The session's per-role policy: a message's tokens (its template's too) follow its role; the
  // closing of the previous reply, the generation prompt and the reply follow the assistant's.
  // The pinned system prompt is learned only when the session asks for it.
  std::vector<uint8_t> flags;
  const bool skip_system = pins && !live_->options.learn_system_prompt();
  if (kind_ == TurnKind::kChat && (live_->options.roles_not_learned_size() > 0 || skip_system)) {
    flags.assign(prompt.size() + turn->size(), RoleLearned(live_->options, "assistant"));
    size_t begin = prompt.size();
    for (size_t i = 0; i < messages.size(); ++i) {
      const bool learned = RoleLearned(live_->options, messages[i].role) && !(i == 0 && skip_system);
      std::fill(flags.begin() + begin, flags.begin() + prompt.size() + ends[i], learned);
      begin = prompt.size() + ends[i];
    }
  }
  pinned_tokens_ = pins ? static_cast<uint32_t>(prompt.size() + ends[0]) : 0;
  prompt.insert(prompt.end(), turn->begin(), turn->end());
  stream_ = std::make_unique<engine::StreamDecoder>(deps_.tokenizer, /*skip_special=*/true);
  stops_ = std::make_unique<engine::StopStringMatcher>(std::vector<std::string>(req.stop().begin(), req.stop().end()));
  stop_ids_ = renderer_->StopIds();
  return Enqueue(std::move(prompt), req.max_new_tokens() == 0 ? kDefaultMaxNewTokens : req.max_new_tokens(),
                 !req.dry_run(), sampling, std::move(flags));
}

absl::Status Turn::Start(std::string tenant, const v1::IngestRequest& req) {
  if (req.text().empty() == req.token_ids().empty()) {
    return absl::InvalidArgumentError("ingest takes one of text or token_ids");
  }
  if (req.text().size() > kMaxContentBytes || static_cast<size_t>(req.token_ids_size()) > kMaxContentBytes / 4) {
    return absl::InvalidArgumentError("ingest: at most 1 MiB of text or 256 Ki token ids");
  }
  if (auto s = CheckUtf8("text", req.text()); !s.ok()) return s;
  bool replied = false;
  if (auto s = Lease(std::move(tenant), req.session_id(), req.request_id(), &replied); !s.ok() || replied) return s;
  keep_in_context_ = req.keep_in_context();
  record_.set_kind("ingest");
  std::vector<int32_t> prompt = keep_in_context_ ? CloseOpenReply() : std::vector<int32_t>{};
  if (req.text().empty()) {
    if (auto s = deps_.model.ValidateIds(req.token_ids()); !s.ok()) return Fail(s);
    prompt.insert(prompt.end(), req.token_ids().begin(), req.token_ids().end());
  } else {
    auto ids = deps_.tokenizer.Encode(req.text());
    if (!ids.ok()) return Fail(ids.status());
    if (ids->empty()) return Fail(absl::InvalidArgumentError("the text encodes to no tokens"));
    prompt.insert(prompt.end(), ids->begin(), ids->end());
  }
  return Enqueue(std::move(prompt), 0, /*learn=*/true, {});
}

absl::Status Turn::Enqueue(std::vector<int32_t> prompt, int max_new, bool learn, const engine::SamplingParams& sampling,
                           std::vector<uint8_t> prompt_learn) {
  if (live_->PinnedTokens() + static_cast<int64_t>(prompt.size()) + max_new > live_->max_context_tokens) {
    return Fail(absl::InvalidArgumentError(absl::StrCat(
        kind_ == TurnKind::kIngest ? "the text (" : "the turn (", prompt.size(), " tokens + max_new_tokens ", max_new,
        ") does not fit the session's context of ", live_->max_context_tokens, " tokens",
        live_->PinnedTokens() > 0 ? absl::StrCat(" beside its system prompt of ", live_->PinnedTokens()) : "",
        kind_ == TurnKind::kIngest ? ": ingest it in pieces" : "")));
  }
  if (auto s = deps_.sessions.FitWindow(*live_, static_cast<int64_t>(prompt.size()), max_new); !s.ok()) {
    Unlease(/*drop=*/true);  // the state may be half rebuilt
    return s;
  }
  updates_before_ = live_->state->updates_applied();
  rejected_before_ = live_->state->updates_rejected();
  update_seconds_before_ = live_->state->update_seconds();
  request_ = {live_->state.get(), std::move(prompt), learn, max_new, stop_ids_, sampling,
              /*learn_generated=*/!live_->options.learn_prompt_only() &&
                  (kind_ != TurnKind::kChat || RoleLearned(live_->options, "assistant")),
              learn ? std::move(prompt_learn) : std::vector<uint8_t>{}};
  std::lock_guard<std::mutex> lock(mu_);  // Cancel reads request_id_
  auto id = deps_.executor.Enqueue(request_, [this](const engine::GenerateResult& r) { OnResult(r); });
  if (!id.ok()) {  // the window rule may have rebuilt the state: reload it from the log next time
    Unlease(/*drop=*/true);
    return id.status();
  }
  request_id_ = *id;
  return absl::OkStatus();
}

void Turn::OnResult(const engine::GenerateResult& r) {
  const auto now = std::chrono::steady_clock::now();
  if (!r.tokens.empty()) {
    if (generated_.empty()) {
      deps_.metrics.FirstToken(std::chrono::duration<double>(now - start_).count());
    } else {
      deps_.metrics.InterToken(std::chrono::duration<double>(now - last_token_at_).count(), r.tokens.size());
    }
    last_token_at_ = now;
  }
  v1::ChatResponse msg;
  for (int32_t t : r.tokens) {
    generated_.push_back(t);
    if (stop_string_) continue;  // still recorded: it entered the model
    msg.add_token_ids(t);
    auto piece = stops_->Add(stream_->Add(t).value_or(""));
    msg.mutable_text()->append(piece.text);
    replied_text_ += piece.text;
    if (piece.stopped) {
      stop_string_ = true;
      const uint64_t id = r.request_id;
      auto* executor = &deps_.executor;
      deps_.worker.Post([executor, id] { executor->Cancel(id); });
    }
  }
  if (r.final && !stop_string_ && stream_ != nullptr) {
    const std::string rest = stops_->Add(stream_->Finish()).text + stops_->Finish();
    msg.mutable_text()->append(rest);
    replied_text_ += rest;
  }
  if (!msg.text().empty() || msg.token_ids_size() > 0) Deliver(std::move(msg), false, grpc::Status::OK);
  if (r.final) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      final_seen_ = true;
    }
    absl::Status status = r.status;
    deps_.worker.Post([this, status] { Complete(status); });
  }
}

void Turn::Complete(absl::Status engine_status) {
  // Cancelled after generation began (a stop string, the client gone): the prompt and every
  // emitted token entered the model, so the turn is complete and commits. Cancelled before:
  // the prompt was fed only in part, which no event describes.
  if (engine_status.code() == absl::StatusCode::kCancelled && !generated_.empty()) engine_status = absl::OkStatus();
  SessionManager& sessions = deps_.sessions;
  if (!engine_status.ok()) {  // the state no longer matches the log: reload it next time
    Unlease(/*drop=*/true);
    End(ToGrpc(engine_status));
    return;
  }
  LogEvent event;
  event.tokens = request_.prompt;
  event.tokens.insert(event.tokens.end(), generated_.begin(), generated_.end());
  event.learned = request_.learn;
  event.learn_generated = request_.learn_generated;
  event.prompt_learn = request_.prompt_learn;
  event.assistant_open = kind_ == TurnKind::kChat && renderer_->format() != engine::ChatFormat::kRaw;
  event.keep_in_context = keep_in_context_;
  event.prompt_tokens = static_cast<uint32_t>(request_.prompt.size());
  event.max_new_tokens = static_cast<uint32_t>(request_.max_new_tokens);
  event.pinned_tokens = pinned_tokens_;
  v1::ChatResponse last;
  auto* usage = last.mutable_usage();
  usage->set_prompt_tokens(static_cast<int64_t>(request_.prompt.size()));
  usage->set_completion_tokens(static_cast<int64_t>(generated_.size()));
  usage->set_updates_applied(live_->state->updates_applied() - updates_before_);
  usage->set_updates_rejected(live_->state->updates_rejected() - rejected_before_);
  usage->set_version(live_->version + (own_ != nullptr ? 0 : 1));
  usage->set_update_seconds(live_->state->update_seconds() - update_seconds_before_);
  if (usage->updates_applied() > 0) {
    if (auto norms = deps_.model.DeltaNorms(*live_->state); norms.ok() && !norms->empty()) {
      deps_.metrics.DeltaNorm(*std::max_element(norms->begin(), norms->end()));
    }
  }
  if (kind_ != TurnKind::kIngest) {
    const bool stopped = stop_string_ || (!generated_.empty() && std::find(stop_ids_.begin(), stop_ids_.end(),
                                                                           generated_.back()) != stop_ids_.end());
    last.set_finish_reason(stopped ? "stop" : "length");
  }
  record_.set_reply(replied_text_);
  record_.set_finish_reason(last.finish_reason());
  record_.set_create_time_unix_ms(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
  record_.set_prompt_tokens(usage->prompt_tokens());
  record_.set_completion_tokens(usage->completion_tokens());
  record_.set_learned(request_.learn);
  event.record = record_.SerializeAsString();
  // The reply a retry of this request id gets: everything in one message.
  v1::ChatResponse record = last;
  record.set_text(replied_text_);
  for (int32_t t : generated_) record.add_token_ids(t);
  Metrics& metrics = deps_.metrics;
  if (kind_ == TurnKind::kIngest) {
    metrics.Tokens(0, 0, usage->prompt_tokens());
  } else {
    metrics.Tokens(usage->prompt_tokens(), usage->completion_tokens());
  }
  metrics.Updates(usage->updates_applied(), usage->updates_rejected(), usage->update_seconds());
  if (own_ != nullptr) {  // ephemeral: the copy goes with the call, nothing to commit
    Deliver(std::move(last), true, grpc::Status::OK);
    return;
  }
  const auto commit_start = std::chrono::steady_clock::now();
  auto committed = sessions.Commit(*live_, event, request_id_text_, record.SerializeAsString());
  metrics.Commit(std::chrono::duration<double>(std::chrono::steady_clock::now() - commit_start).count());
  if (!committed.ok()) {  // not durable: the client must not believe it was
    End(ToGrpc(committed.status()));
    return;
  }
  // Acknowledged, then the snapshot (a failure leaves the log to replay).
  Deliver(std::move(last), true, grpc::Status::OK);  // `this` may be gone from here on
  WriteSnapshot(sessions, metrics, *committed);
}

// Chat and Generate: the turn's text streams as it is generated.
class ChatReactor : public grpc::ServerWriteReactor<v1::ChatResponse>, public Turn {
 public:
  ChatReactor(ChatDeps deps, absl::StatusOr<std::string> tenant, const v1::ChatRequest* req, TurnKind kind)
      : Turn(deps, kind) {
    absl::Status s = tenant.status();
    if (s.ok()) s = Start(*std::move(tenant), *req);
    if (!s.ok()) End(ToGrpc(s));
  }
  void OnWriteDone(bool ok) override {
    std::unique_lock<std::mutex> lock(write_mu_);
    writing_ = false;
    if (!ok) queue_.clear();  // the client is gone; the turn still completes and commits
    if (!queue_.empty()) queue_.pop_front();
    Drive(std::move(lock));
  }
  void OnCancel() override { Cancel(); }
  void OnDone() override { delete this; }

 private:
  void Deliver(std::optional<v1::ChatResponse> msg, bool last, grpc::Status status) override {
    std::unique_lock<std::mutex> lock(write_mu_);
    if (msg) queue_.push_back(*std::move(msg));
    if (last) {
      finish_ = true;
      finish_status_ = status;
    }
    Drive(std::move(lock));
  }
  // Starts the next write, or finishes the call. Finish runs after the lock is released: OnDone
  // may delete this at once, so nothing touches a member after it.
  void Drive(std::unique_lock<std::mutex> lock) {
    if (writing_) return;
    if (!queue_.empty()) {
      writing_ = true;
      StartWrite(&queue_.front());
      return;
    }
    if (!finish_ || finished_) return;
    finished_ = true;
    const grpc::Status status = finish_status_;
    lock.unlock();
    ReturnSlot();
    Finish(status);
  }

  std::mutex write_mu_;
  std::deque<v1::ChatResponse> queue_;  // queue_.front() is being written while writing_
  bool writing_ = false, finish_ = false, finished_ = false;
  grpc::Status finish_status_;
};

// Ingest: one answer, the usage, once the text is learned and durable.
class IngestReactor : public grpc::ServerUnaryReactor, public Turn {
 public:
  IngestReactor(ChatDeps deps, absl::StatusOr<std::string> tenant, const v1::IngestRequest* req,
                v1::IngestResponse* resp)
      : Turn(deps, TurnKind::kIngest), resp_(resp) {
    absl::Status s = tenant.status();
    if (s.ok()) s = Start(*std::move(tenant), *req);
    if (!s.ok()) End(ToGrpc(s));
  }
  void OnCancel() override { Cancel(); }
  void OnDone() override { delete this; }

 private:
  void Deliver(std::optional<v1::ChatResponse> msg, bool last, grpc::Status status) override {
    if (!last) return;  // an ingest generates nothing
    if (msg && msg->has_usage()) *resp_->mutable_usage() = msg->usage();
    ReturnSlot();
    Finish(status);
  }
  v1::IngestResponse* resp_;
};

}  // namespace

void WriteSnapshot(SessionManager& sessions, Metrics& metrics, const SessionManager::Committed& committed) {
  if (!committed.due) return sessions.EvictOverBudget();  // the policy defers it to eviction or shutdown
  auto written = sessions.WriteSnapshot(committed);
  if (written.ok()) {
    metrics.Snapshot(written->first, static_cast<int64_t>(written->second));
  } else {  // not lost: the log replays it (and eviction tries again first)
    metrics.SnapshotFailed();
    LogLine("error").Str("error", "snapshot: " + written.status().ToString()).Str("tenant", committed.key.tenant)
        .Str("session", committed.key.session).Write();
  }
}

grpc::ServerWriteReactor<v1::ChatResponse>* StartChat(ChatDeps deps, absl::StatusOr<std::string> tenant,
                                                      const v1::ChatRequest* req, TurnKind kind) {
  return new ChatReactor(deps, std::move(tenant), req, kind);
}

grpc::ServerUnaryReactor* StartIngest(ChatDeps deps, absl::StatusOr<std::string> tenant,
                                      const v1::IngestRequest* req, v1::IngestResponse* resp) {
  return new IngestReactor(deps, std::move(tenant), req, resp);
}

}  // namespace adaptd::server
