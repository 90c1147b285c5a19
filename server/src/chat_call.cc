// The Chat call: a server-streaming reactor over the Executor. Start (gRPC thread): validate,
// lease the session, render the turn, enqueue. OnResult (engine thread, quick): stream text
// through the detokenizer and the stop strings. Complete (worker thread): commit the turn
// (synced), take the snapshot's bytes, release the session, send usage and end the call, then
// write the snapshot.
#include "chat_call.h"

#include <algorithm>
#include <chrono>
#include <deque>

#include "absl/strings/str_cat.h"
#include "adaptd/engine/chat.h"
#include "adaptd/engine/sampler.h"

namespace adaptd::server {
namespace {

constexpr int kDefaultMaxNewTokens = 256;
constexpr size_t kMaxMessages = 64;
constexpr size_t kMaxContentBytes = 1 << 20;
constexpr size_t kMaxStops = 4, kMaxStopBytes = 64;

class ChatReactor : public grpc::ServerWriteReactor<v1::ChatResponse> {
 public:
  ChatReactor(ChatDeps deps, absl::StatusOr<std::string> tenant, const v1::ChatRequest* req, bool raw)
      : deps_(deps), raw_(raw) {
    absl::Status s = tenant.status();
    if (s.ok()) s = Start(*std::move(tenant), *req);
    if (!s.ok()) End(ToGrpc(s));
  }
  void OnWriteDone(bool ok) override {
    std::unique_lock<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) queue_.clear();  // the client is gone; the turn still completes and commits
    if (!queue_.empty()) queue_.pop_front();
    Drive(std::move(lock));
  }
  void OnCancel() override {  // the client left or its deadline passed (a gRPC thread)
    std::lock_guard<std::mutex> lock(mu_);
    if (request_id_ != 0 && !final_seen_) deps_.executor.Cancel(request_id_);
  }
  void OnDone() override { delete this; }

 private:
  absl::Status Start(std::string tenant, const v1::ChatRequest& req);
  absl::Status Validate(const v1::ChatRequest& req);
  void OnResult(const engine::GenerateResult& r);                    // engine thread
  void Complete(absl::Status engine_status);                         // worker thread

  // Queues a message; `last` ends the call with `status` once everything is written.
  void Push(v1::ChatResponse msg, bool last = false, grpc::Status status = grpc::Status::OK) {
    std::unique_lock<std::mutex> lock(mu_);
    queue_.push_back(std::move(msg));
    if (last) {
      finish_ = true;
      finish_status_ = status;
    }
    Drive(std::move(lock));
  }
  // Ends the call with `status` once what is queued is written.
  void End(grpc::Status status) {
    std::unique_lock<std::mutex> lock(mu_);
    finish_ = true;
    finish_status_ = status;
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
    Finish(status);
  }

  ChatDeps deps_;
  const bool raw_;
  session_store::SessionKey key_;
  LiveSession* live_ = nullptr;
  std::unique_ptr<engine::ChatRenderer> renderer_;
  std::unique_ptr<engine::StreamDecoder> stream_;
  std::unique_ptr<engine::StopStringMatcher> stops_;
  std::vector<int32_t> stop_ids_;
  engine::GenerateRequest request_;
  int64_t updates_before_ = 0, rejected_before_ = 0;
  std::vector<int32_t> generated_;   // every emitted token (all entered the model)
  std::string replied_text_;         // the text sent
  std::string request_id_text_;      // the client's request id (may be empty)
  const std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  bool stop_string_ = false;

  std::mutex mu_;
  std::deque<v1::ChatResponse> queue_;  // queue_.front() is being written while writing_
  bool writing_ = false, finish_ = false, finished_ = false, final_seen_ = false;
  grpc::Status finish_status_;
  uint64_t request_id_ = 0;
};

absl::Status ChatReactor::Validate(const v1::ChatRequest& req) {
  if (req.messages().empty()) return absl::InvalidArgumentError("messages: a turn needs at least one message");
  if (static_cast<size_t>(req.messages_size()) > kMaxMessages) return absl::InvalidArgumentError("messages: at most 64");
  size_t bytes = 0;
  for (const auto& m : req.messages()) bytes += m.content().size();
  if (bytes > kMaxContentBytes) return absl::InvalidArgumentError("messages: at most 1 MiB of content");
  if (req.max_new_tokens() < 0 || req.max_new_tokens() > deps_.max_new_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("max_new_tokens must be in [0, ", deps_.max_new_tokens, "]"));
  }
  if (static_cast<size_t>(req.stop_size()) > kMaxStops) return absl::InvalidArgumentError("stop: at most 4 strings");
  for (const auto& s : req.stop()) {
    if (s.empty() || s.size() > kMaxStopBytes) return absl::InvalidArgumentError("stop: each 1 to 64 bytes");
  }
  return absl::OkStatus();
}

absl::Status ChatReactor::Start(std::string tenant, const v1::ChatRequest& req) {
  if (auto s = Validate(req); !s.ok()) return s;
  engine::SamplingParams sampling;
  sampling.temperature = req.sampling().temperature();
  sampling.top_k = req.sampling().top_k();
  sampling.top_p = req.sampling().top_p() == 0 ? 1.0 : req.sampling().top_p();
  sampling.min_p = req.sampling().min_p();
  sampling.repetition_penalty = req.sampling().repetition_penalty() == 0 ? 1.0 : req.sampling().repetition_penalty();
  sampling.seed = req.sampling().seed();
  if (auto s = engine::ValidateSamplingParams(sampling); !s.ok()) return s;

  key_ = {std::move(tenant), req.session_id()};
  request_id_text_ = req.request_id();
  auto live = deps_.sessions.Acquire(key_);
  if (!live.ok()) return live.status();
  live_ = *live;
  if (!request_id_text_.empty()) {  // a retry of a committed turn gets its recorded reply
    auto seen = deps_.sessions.LookupRequest(key_, request_id_text_);
    if (!seen.ok() || seen->has_value()) {
      deps_.sessions.Release(key_);
      if (!seen.ok()) return seen.status();
      v1::ChatResponse recorded;
      if (!recorded.ParseFromString((*seen)->result)) return absl::DataLossError("recorded reply is unreadable");
      Push(std::move(recorded), true);
      return absl::OkStatus();
    }
  }
  auto fail = [this](absl::Status s) {
    deps_.sessions.Release(key_);
    return s;
  };
  engine::ChatFormat format = engine::DetectChatFormat(deps_.tokenizer);
  if (!live_->options.chat_format().empty() && !raw_) {
    auto f = engine::ParseChatFormat(live_->options.chat_format());
    if (!f.ok()) return fail(f.status());
    format = *f;
  }
  auto renderer = engine::ChatRenderer::Create(deps_.tokenizer, format);
  if (!renderer.ok()) return fail(renderer.status());
  renderer_ = std::make_unique<engine::ChatRenderer>(*std::move(renderer));
  std::vector<engine::ChatMessage> messages;
  for (const auto& m : req.messages()) messages.push_back({m.role(), m.content()});
  std::vector<int32_t> prompt;
  if (live_->assistant_open) {  // close the previous reply (its stop token may be in already)
    const auto end = renderer_->AssistantEnd();
    const size_t skip = !end.empty() && live_->last_token == end[0] ? 1 : 0;
    prompt.insert(prompt.end(), end.begin() + skip, end.end());
  }
  auto turn = raw_ ? deps_.tokenizer.Encode(messages[0].content)
                   : renderer_->Render(messages, /*first=*/live_->version == 0, /*generation_prompt=*/true);
  if (!turn.ok()) return fail(turn.status());
  if (turn->empty()) return fail(absl::InvalidArgumentError("the prompt encodes to no tokens"));
  prompt.insert(prompt.end(), turn->begin(), turn->end());

  const int max_new = req.max_new_tokens() == 0 ? kDefaultMaxNewTokens : req.max_new_tokens();
  if (static_cast<int64_t>(prompt.size()) + max_new > live_->max_context_tokens) {
    return fail(absl::InvalidArgumentError(absl::StrCat("the turn (", prompt.size(), " prompt tokens + max_new_tokens ",
                                                        max_new, ") does not fit the session's context of ",
                                                        live_->max_context_tokens, " tokens")));
  }
  if (auto s = deps_.sessions.FitWindow(*live_, static_cast<int64_t>(prompt.size()), max_new); !s.ok()) {
    deps_.sessions.ReleaseAndDrop(key_);  // the state may be half rebuilt
    return s;
  }
  stream_ = std::make_unique<engine::StreamDecoder>(deps_.tokenizer, /*skip_special=*/true);
  stops_ = std::make_unique<engine::StopStringMatcher>(std::vector<std::string>(req.stop().begin(), req.stop().end()));
  stop_ids_ = renderer_->StopIds();
  updates_before_ = live_->state->updates_applied();
  rejected_before_ = live_->state->updates_rejected();
  request_ = {live_->state.get(), prompt, !req.dry_run(), max_new, stop_ids_, sampling};
  std::lock_guard<std::mutex> lock(mu_);  // OnCancel reads request_id_
  auto id = deps_.executor.Enqueue(request_, [this](const engine::GenerateResult& r) { OnResult(r); });
  if (!id.ok()) return fail(id.status());
  request_id_ = *id;
  return absl::OkStatus();
}

void ChatReactor::OnResult(const engine::GenerateResult& r) {
  if (generated_.empty() && !r.tokens.empty()) {
    deps_.metrics.FirstToken(std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
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
  if (r.final && !stop_string_) {
    const std::string rest = stops_->Add(stream_->Finish()).text + stops_->Finish();
    msg.mutable_text()->append(rest);
    replied_text_ += rest;
  }
  if (!msg.text().empty() || msg.token_ids_size() > 0) Push(std::move(msg));
  if (r.final) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      final_seen_ = true;
    }
    absl::Status status = r.status;
    deps_.worker.Post([this, status] { Complete(status); });
  }
}

void ChatReactor::Complete(absl::Status engine_status) {
  // Cancelled after generation began (a stop string, the client gone): the prompt and every
  // emitted token entered the model, so the turn is complete and commits. Cancelled before:
  // the prompt was fed only in part, which no event describes.
  if (engine_status.code() == absl::StatusCode::kCancelled && !generated_.empty()) engine_status = absl::OkStatus();
  SessionManager& sessions = deps_.sessions;
  LiveSession* live = live_;
  const session_store::SessionKey key = key_;
  if (!engine_status.ok()) {  // the state no longer matches the log: reload it next time
    sessions.ReleaseAndDrop(key);
    End(ToGrpc(engine_status));
    return;
  }
  TurnEvent turn;
  turn.tokens = request_.prompt;
  turn.tokens.insert(turn.tokens.end(), generated_.begin(), generated_.end());
  turn.learned = request_.learn;
  turn.assistant_open = !raw_ && renderer_->format() != engine::ChatFormat::kRaw;
  turn.prompt_tokens = static_cast<uint32_t>(request_.prompt.size());
  turn.max_new_tokens = static_cast<uint32_t>(request_.max_new_tokens);
  v1::ChatResponse last;
  auto* usage = last.mutable_usage();
  usage->set_prompt_tokens(static_cast<int64_t>(request_.prompt.size()));
  usage->set_completion_tokens(static_cast<int64_t>(generated_.size()));
  usage->set_updates_applied(live->state->updates_applied() - updates_before_);
  usage->set_updates_rejected(live->state->updates_rejected() - rejected_before_);
  usage->set_version(live->version + 1);
  const bool stopped = stop_string_ || (!generated_.empty() && std::find(stop_ids_.begin(), stop_ids_.end(),
                                                                         generated_.back()) != stop_ids_.end());
  last.set_finish_reason(stopped ? "stop" : "length");
  // The reply a retry of this request id gets: everything in one message.
  v1::ChatResponse record = last;
  record.set_text(replied_text_);
  for (int32_t t : generated_) record.add_token_ids(t);
  const auto commit_start = std::chrono::steady_clock::now();
  const absl::Status committed = sessions.CommitTurn(*live, turn, request_id_text_, record.SerializeAsString());
  Metrics& metrics = deps_.metrics;
  metrics.Commit(std::chrono::duration<double>(std::chrono::steady_clock::now() - commit_start).count());
  metrics.Tokens(usage->prompt_tokens(), usage->completion_tokens());
  metrics.Updates(usage->updates_applied(), usage->updates_rejected());
  if (!committed.ok()) {  // not durable: the client must not believe it was
    sessions.ReleaseAndDrop(key);
    End(ToGrpc(committed));
    return;
  }
  // The snapshot's bytes are taken now, the session released, the turn acknowledged, and only
  // then is the snapshot written (a failure leaves the log to replay).
  auto snapshot = sessions.EncodeSnapshot(*live);
  sessions.Release(key, snapshot.ok() ? snapshot->second.size() : 0);
  Push(std::move(last), true);  // acknowledged; `this` may be gone from here on
  if (snapshot.ok()) {
    const auto t = std::chrono::steady_clock::now();
    if (sessions.WriteSnapshot(key, snapshot->first, snapshot->second).ok()) {
      metrics.Snapshot(std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count(),
                       static_cast<int64_t>(snapshot->second.size()));
    }
  }
}

}  // namespace

grpc::ServerWriteReactor<v1::ChatResponse>* StartChat(ChatDeps deps, absl::StatusOr<std::string> tenant,
                                                      const v1::ChatRequest* req, bool raw) {
  return new ChatReactor(deps, std::move(tenant), req, raw);
}

}  // namespace adaptd::server
