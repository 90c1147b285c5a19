// Loading replays the log through Model::Forward: the state equals the one that served the
// turns within the engine's batching tolerance, and bit-exactly when the latest turn has its
// snapshot (the policy here: a snapshot after every turn).
#include "session_manager.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace adaptd::server {
namespace {

// Snapshot payload: "ADS2", flags (1: assistant turn open), the last token (int32), the number
// of turns in the KV window (u32) and each one's tokens (u32 count, int32s), then the engine's
// session bytes (exact, with the KV window).
constexpr char kSnapshotMagic[] = "ADS2";
constexpr size_t kSnapshotHeader = 4 + 1 + 4 + 4;
constexpr char kSnapshotEncoding[] = "server1+exact+kv";

}  // namespace

// Turn event: 'T', flags (1 learned, 2 assistant open, 4 not kept in context, 8 the tokens after
// the prompt not learned), prompt tokens
// u32, max new tokens u32, token count u32, the tokens (int32, little-endian). Reset: 'R'.
std::string EncodeEvent(const LogEvent& e) {
  std::string out(1, static_cast<char>(e.kind));
  if (e.kind == LogEvent::Kind::kReset) return out;
  out.push_back(static_cast<char>((e.learned ? 1 : 0) | (e.assistant_open ? 2 : 0) | (e.keep_in_context ? 0 : 4) |
                                  (e.learn_generated ? 0 : 8)));
  const uint32_t head[3] = {e.prompt_tokens, e.max_new_tokens, static_cast<uint32_t>(e.tokens.size())};
  out.append(reinterpret_cast<const char*>(head), sizeof head);
  out.append(reinterpret_cast<const char*>(e.tokens.data()), e.tokens.size() * 4);
  return out;
}

absl::StatusOr<LogEvent> DecodeEvent(const std::string& bytes) {
  LogEvent e;
  if (bytes.size() == 1 && bytes[0] == static_cast<char>(LogEvent::Kind::kReset)) {
    e.kind = LogEvent::Kind::kReset;
    return e;
  }
  uint32_t head[3];
  if (bytes.size() < 14 || bytes[0] != static_cast<char>(LogEvent::Kind::kTurn)) return absl::DataLossError("not an event of the server's");
  std::memcpy(head, bytes.data() + 2, sizeof head);
  if (bytes.size() != 14 + size_t{head[2]} * 4 || head[0] > head[2]) return absl::DataLossError("turn event of the wrong size");
  e.learned = bytes[1] & 1;
  e.assistant_open = bytes[1] & 2;
  e.keep_in_context = !(bytes[1] & 4);
  e.learn_generated = !(bytes[1] & 8);
  e.prompt_tokens = head[0];
  e.max_new_tokens = head[1];
  e.tokens.resize(head[2]);
  std::memcpy(e.tokens.data(), bytes.data() + 14, size_t{head[2]} * 4);
  return e;
}

absl::Status SessionManager::FitWindow(LiveSession& session, int64_t prompt_tokens, int64_t max_new_tokens) const {
  int64_t used = 0;
  for (const auto& t : session.window) used += static_cast<int64_t>(t.size());
  size_t drop = 0;
  while (drop < session.window.size() && used + prompt_tokens + max_new_tokens > session.max_context_tokens) {
    used -= static_cast<int64_t>(session.window[drop++].size());
  }
  if (drop == 0) return absl::OkStatus();
  session.window.erase(session.window.begin(), session.window.begin() + drop);
  // The same fast state (dW, tails, N) with an empty window, then the kept turns re-read.
  auto bare = model_.EncodeSession(*session.state, {engine::StateEncoding::kExact, /*include_kv=*/false});
  if (!bare.ok()) return bare.status();
  auto state = model_.DecodeSession(*bare);
  if (!state.ok()) return state.status();
  std::vector<int32_t> kept;
  for (const auto& t : session.window) kept.insert(kept.end(), t.begin(), t.end());
  if (!kept.empty()) {
    if (auto r = model_.Forward(**state, kept, /*learn=*/false); !r.ok()) return r.status();
  }
  session.state = *std::move(state);
  return absl::OkStatus();
}

engine::SessionOptions EngineOptions(const v1::SessionOptions& options) {
  engine::SessionOptions o;
  o.rule = options.update_rule() == "off" ? engine::UpdateRule::kOff : engine::UpdateRule::kInplace;
  if (options.clip_tau() != 0) o.clip_tau = options.clip_tau();
  o.decay = options.decay();
  if (options.max_delta_norm() != 0) o.max_delta_norm = options.max_delta_norm();
  if (options.lr_scale() != 0) o.lr_scale = options.lr_scale();
  return o;
}

absl::Status ValidateOptions(const v1::SessionOptions& o) {
  const std::string& rule = o.update_rule();
  if (!rule.empty() && rule != "inplace" && rule != "off") {
    return absl::InvalidArgumentError(absl::StrCat("options.update_rule '", rule, "' (inplace or off)"));
  }
  if (o.max_context_tokens() < 0 || o.max_context_tokens() > (1 << 20)) {
    return absl::InvalidArgumentError("options.max_context_tokens must be in [0, 2^20]");
  }
  const std::string& f = o.chat_format();
  if (!f.empty() && f != "qwen3" && f != "llama3" && f != "raw") {
    return absl::InvalidArgumentError(absl::StrCat("options.chat_format '", f, "' (qwen3, llama3 or raw)"));
  }
  if (auto s = engine::ValidateSessionOptions(EngineOptions(o)); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("options: ", s.message()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<engine::SessionState>> SessionManager::FreshState(const v1::SessionOptions& options) const {
  return model_.NewSession(EngineOptions(options));
}

absl::Status SessionManager::Settle(LiveSession& session, const LogEvent& event) const {
  if (event.kind == LogEvent::Kind::kReset) {
    auto state = FreshState(session.options);
    if (!state.ok()) return state.status();
    session.state = *std::move(state);
    session.window.clear();
    session.last_token = -1;
    session.assistant_open = false;
    return absl::OkStatus();
  }
  if (!event.keep_in_context) {  // back to the window before it (its tokens are the KV rows)
    int64_t kept = 0;
    for (const auto& t : session.window) kept += static_cast<int64_t>(t.size());
    return model_.RewindWindow(*session.state, kept);
  }
  if (!event.tokens.empty()) session.last_token = event.tokens.back();
  session.assistant_open = event.assistant_open;
  session.window.push_back(event.tokens);
  return absl::OkStatus();
}

absl::Status SessionManager::Replay(LiveSession& session, const LogEvent& event) const {
  if (event.kind == LogEvent::Kind::kTurn) {
    if (auto w = FitWindow(session, event.prompt_tokens, event.max_new_tokens); !w.ok()) return w;
    // The prompt, then the generated tokens (learned unless the session learns prompts only).
    const auto tokens = absl::MakeConstSpan(event.tokens);
    const size_t split = event.learned && !event.learn_generated ? event.prompt_tokens : tokens.size();
    for (auto [part, learn] : {std::pair(tokens.subspan(0, split), event.learned), std::pair(tokens.subspan(split), false)}) {
      if (part.empty()) continue;
      if (auto r = model_.Forward(*session.state, part, learn); !r.ok()) return r.status();
    }
  }
  return Settle(session, event);
}

absl::StatusOr<std::unique_ptr<LiveSession>> SessionManager::Load(const session_store::SessionKey& key, bool migrate) {
  auto loaded = store_.Load(key, /*allow_lossy_base=*/false, model_.fingerprint());
  if (!loaded.ok()) return loaded.status();
  v1::Session meta;
  if (!meta.ParseFromString(loaded->info.metadata)) return absl::DataLossError("session metadata is unreadable");
  if (meta.model_fingerprint() != model_.fingerprint() && !migrate) {
    return absl::FailedPreconditionError(absl::StrCat("session ", key.session, " belongs to model ",
                                                      meta.model_fingerprint(), ", not the served ",
                                                      model_.fingerprint(), "; migrate it first"));
  }
  if (auto s = ValidateOptions(meta.options()); !s.ok()) {  // an imported blob is not to be trusted
    return absl::FailedPreconditionError(absl::StrCat("session ", key.session, ": ", s.message()));
  }
  auto live = std::make_unique<LiveSession>();
  live->key = key;
  live->options = meta.options();
  live->max_context_tokens = meta.options().max_context_tokens() > 0 ? meta.options().max_context_tokens() : default_context_;
  if (loaded->snapshot) {
    const std::string& p = loaded->snapshot_payload;
    auto corrupt = [&] { return absl::DataLossError(absl::StrCat("session ", key.session, ": snapshot is not the server's format")); };
    if (p.size() < kSnapshotHeader || p.compare(0, 4, kSnapshotMagic) != 0) return corrupt();
    live->assistant_open = p[4] & 1;
    std::memcpy(&live->last_token, p.data() + 5, 4);
    uint32_t turns = 0;
    std::memcpy(&turns, p.data() + 9, 4);
    size_t at = kSnapshotHeader;
    for (uint32_t i = 0; i < turns; ++i) {  // the window's turns
      uint32_t n = 0;
      if (at + 4 > p.size()) return corrupt();
      std::memcpy(&n, p.data() + at, 4);
      if (n > (p.size() - at - 4) / 4) return corrupt();
      std::vector<int32_t> t(n);
      std::memcpy(t.data(), p.data() + at + 4, size_t{n} * 4);
      live->window.push_back(std::move(t));
      at += 4 + size_t{n} * 4;
    }
    auto state = model_.DecodeSession(std::string_view(p).substr(at));
    if (!state.ok()) return state.status();
    live->state = *std::move(state);
  } else {
    auto state = FreshState(meta.options());
    if (!state.ok()) return state.status();
    live->state = *std::move(state);
  }
  for (const auto& e : loaded->events) {
    auto event = DecodeEvent(e.payload);
    if (!event.ok()) return absl::DataLossError(absl::StrCat("session ", key.session, " event ", e.seq, ": ", event.status().message()));
    if (auto s = Replay(*live, *event); !s.ok()) return s;
  }
  live->version = loaded->info.version;
  return live;
}

absl::StatusOr<LiveSession*> SessionManager::Acquire(const session_store::SessionKey& key) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sessions_.find({key.tenant, key.session});
    if (it != sessions_.end()) {
      if (it->second.busy) return absl::AbortedError("session busy: another call is using it");
      it->second.busy = true;
      it->second.used = ++clock_;
      return it->second.live.get();
    }
    sessions_[{key.tenant, key.session}].busy = true;  // reserved while it loads
  }
  auto live = Load(key);
  std::lock_guard<std::mutex> lock(mu_);
  auto& entry = sessions_[{key.tenant, key.session}];
  if (!live.ok()) {
    sessions_.erase({key.tenant, key.session});
    return live.status();
  }
  entry.live = *std::move(live);
  entry.used = ++clock_;
  entry.snapshotted = 0;
  ++stats_.loads;
  return entry.live.get();
}

void SessionManager::Release(const session_store::SessionKey& key, size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find({key.tenant, key.session});
  if (it == sessions_.end()) return;
  it->second.busy = false;
  it->second.used = ++clock_;
  if (bytes > 0) it->second.bytes = bytes;
  EvictOverBudgetLocked();
}

void SessionManager::EvictOverBudgetLocked() {
  size_t total = 0;
  for (const auto& [id, e] : sessions_) total += e.bytes;
  while (total > budget_) {
    auto victim = sessions_.end();
    for (auto it = sessions_.begin(); it != sessions_.end(); ++it) {
      const Entry& e = it->second;
      if (e.busy || !e.live || e.snapshotted != e.live->version) continue;  // never discard
      if (victim == sessions_.end() || e.used < victim->second.used) victim = it;
    }
    if (victim == sessions_.end()) return;
    total -= victim->second.bytes;
    sessions_.erase(victim);
    ++stats_.evictions;
  }
}

void SessionManager::DropExpired(const std::vector<session_store::SessionKey>& keys) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& key : keys) {
    auto it = sessions_.find({key.tenant, key.session});
    if (it != sessions_.end() && !it->second.busy) sessions_.erase(it);
  }
}

bool SessionManager::InMemory(const session_store::SessionKey& key, v1::SessionState* state) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find({key.tenant, key.session});
  if (it == sessions_.end() || it->second.live == nullptr) return false;
  if (state != nullptr && !it->second.busy) {  // not busy: no other thread touches the state
    const engine::SessionState& s = *it->second.live->state;
    state->set_tokens_learned(s.n_learned());
    state->set_context_tokens(s.position());
    state->set_updates_applied(s.updates_applied());
    state->set_updates_rejected(s.updates_rejected());
    if (auto norms = model_.DeltaNorms(s); norms.ok()) {
      for (double n : *norms) state->add_delta_norms(n);
    }
  }
  return true;
}

SessionManager::Stats SessionManager::GetStats() {
  std::lock_guard<std::mutex> lock(mu_);
  Stats s = stats_;
  for (const auto& [id, e] : sessions_) {
    s.loaded += e.live != nullptr;
    s.bytes += e.bytes;
  }
  return s;
}

absl::StatusOr<std::unique_ptr<LiveSession>> SessionManager::Clone(const session_store::SessionKey& key) {
  auto live = Acquire(key);
  if (!live.ok()) return live.status();
  auto state = model_.Clone(*(*live)->state);
  std::unique_ptr<LiveSession> copy;
  if (state.ok()) {
    copy = std::make_unique<LiveSession>();
    copy->key = key;
    copy->options = (*live)->options;
    copy->version = (*live)->version;
    copy->last_token = (*live)->last_token;
    copy->assistant_open = (*live)->assistant_open;
    copy->max_context_tokens = (*live)->max_context_tokens;
    copy->window = (*live)->window;
    copy->state = *std::move(state);
  }
  Release(key);
  if (!state.ok()) return state.status();
  return copy;
}

void SessionManager::ReleaseAndDrop(const session_store::SessionKey& key) {
  std::lock_guard<std::mutex> lock(mu_);
  sessions_.erase({key.tenant, key.session});
}

absl::Status SessionManager::Hold(const session_store::SessionKey& key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& entry = sessions_[{key.tenant, key.session}];
  if (entry.busy) return absl::AbortedError("session busy: another call is using it");
  entry.busy = true;
  return absl::OkStatus();
}

absl::StatusOr<SessionManager::Committed> SessionManager::Commit(LiveSession& session, const LogEvent& event,
                                                                 const std::string& request_id,
                                                                 const std::string& reply) {
  const session_store::SessionKey key = session.key;
  auto r = store_.Append(key, session.version, EncodeEvent(event), request_id, reply);
  if (r.ok() && r->duplicate) r = absl::AbortedError("the request id was committed by another call");
  if (r.ok()) session.version = r->version;
  const absl::Status settled = r.ok() ? Settle(session, event) : r.status();
  if (!settled.ok()) {
    ReleaseAndDrop(key);
    return settled;
  }
  Committed done{key, session.version, EncodeSnapshot(session)};
  Release(key, done.snapshot.ok() ? done.snapshot->size() : 0);
  return done;
}

absl::Status SessionManager::Migrate(const session_store::SessionKey& key) {
  auto info = store_.Get(key);
  if (!info.ok()) return info.status();
  v1::Session meta;
  if (!meta.ParseFromString(info->metadata)) return absl::DataLossError("session metadata is unreadable");
  if (meta.model_fingerprint() == model_.fingerprint()) return absl::OkStatus();  // bound already
  if (auto s = Hold(key); !s.ok()) return s;
  auto live = Load(key, /*migrate=*/true);
  if (!live.ok()) {
    ReleaseAndDrop(key);
    if (live.status().code() != absl::StatusCode::kInvalidArgument) return live.status();
    return absl::FailedPreconditionError(
        absl::StrCat("the session's log does not fit the served model: ", live.status().message()));
  }
  // The new binding first, then a snapshot of this model: should the process die in between, the
  // next load finds no snapshot of this model and replays the log (the old model's snapshots
  // stay untouched either way).
  meta.set_model_fingerprint(model_.fingerprint());
  if (auto s = store_.SetMetadata(key, meta.SerializeAsString()); !s.ok()) {
    ReleaseAndDrop(key);
    return s;
  }
  auto snapshot = EncodeSnapshot(**live);  // a failure here costs only a replay at the next load
  const bool written = snapshot.ok() &&
      store_.WriteSnapshot(key, {(*live)->version, model_.fingerprint(), kSnapshotEncoding, false}, *snapshot).ok();
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find({key.tenant, key.session});
  if (it == sessions_.end()) return absl::OkStatus();
  Entry& e = it->second;
  e.snapshotted = written ? (*live)->version : 0;
  e.live = *std::move(live);
  e.busy = false;
  e.used = ++clock_;
  e.bytes = snapshot.ok() ? snapshot->size() : 0;
  ++stats_.loads;
  EvictOverBudgetLocked();
  return absl::OkStatus();
}

absl::StatusOr<std::string> SessionManager::EncodeSnapshot(const LiveSession& session) const {
  auto bytes = model_.EncodeSession(*session.state, {engine::StateEncoding::kExact, /*include_kv=*/true});
  if (!bytes.ok()) return bytes.status();
  std::string payload(kSnapshotMagic);
  payload.push_back(static_cast<char>(session.assistant_open ? 1 : 0));
  payload.append(reinterpret_cast<const char*>(&session.last_token), 4);
  const auto turns = static_cast<uint32_t>(session.window.size());
  payload.append(reinterpret_cast<const char*>(&turns), 4);
  for (const auto& t : session.window) {
    const auto n = static_cast<uint32_t>(t.size());
    payload.append(reinterpret_cast<const char*>(&n), 4);
    payload.append(reinterpret_cast<const char*>(t.data()), t.size() * 4);
  }
  payload += *bytes;
  return payload;
}

absl::StatusOr<std::pair<double, size_t>> SessionManager::WriteSnapshot(const Committed& c) {
  if (!c.snapshot.ok()) return c.snapshot.status();
  const auto start = std::chrono::steady_clock::now();
  auto s = store_.WriteSnapshot(c.key, {c.version, model_.fingerprint(), kSnapshotEncoding, false}, *c.snapshot);
  if (!s.ok()) return s;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find({c.key.tenant, c.key.session});
  if (it != sessions_.end()) {
    it->second.snapshotted = std::max(it->second.snapshotted, c.version);
    EvictOverBudgetLocked();
  }
  return std::make_pair(seconds, c.snapshot->size());
}

}  // namespace adaptd::server
