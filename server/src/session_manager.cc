// Loading replays the log through Model::Forward: the state equals the one that served the
// turns within the engine's batching tolerance, and bit-exactly when the latest turn has its
// snapshot (the policy here: a snapshot after every turn).
#include "session_manager.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace adaptd::server {
namespace {

constexpr char kTurnMagic = 'T';
// Snapshot payload: "ADS2", flags (1: assistant turn open), the last token (int32), the number
// of turns in the KV window (u32) and each one's tokens (u32 count, int32s), then the engine's
// session bytes (exact, with the KV window).
constexpr char kSnapshotMagic[] = "ADS2";
constexpr size_t kSnapshotHeader = 4 + 1 + 4 + 4;

}  // namespace

// Turn event: 'T', flags (1 learned, 2 assistant open), prompt tokens u32, max new tokens u32,
// token count u32, the tokens (int32, little-endian).
std::string EncodeTurn(const TurnEvent& turn) {
  std::string out(1, kTurnMagic);
  out.push_back(static_cast<char>((turn.learned ? 1 : 0) | (turn.assistant_open ? 2 : 0)));
  const uint32_t head[3] = {turn.prompt_tokens, turn.max_new_tokens, static_cast<uint32_t>(turn.tokens.size())};
  out.append(reinterpret_cast<const char*>(head), sizeof head);
  out.append(reinterpret_cast<const char*>(turn.tokens.data()), turn.tokens.size() * 4);
  return out;
}

absl::StatusOr<TurnEvent> DecodeTurn(const std::string& bytes) {
  uint32_t head[3];
  if (bytes.size() < 14 || bytes[0] != kTurnMagic) return absl::DataLossError("not a turn event");
  std::memcpy(head, bytes.data() + 2, sizeof head);
  if (bytes.size() != 14 + size_t{head[2]} * 4 || head[0] > head[2]) return absl::DataLossError("turn event of the wrong size");
  TurnEvent turn;
  turn.learned = bytes[1] & 1;
  turn.assistant_open = bytes[1] & 2;
  turn.prompt_tokens = head[0];
  turn.max_new_tokens = head[1];
  turn.tokens.resize(head[2]);
  std::memcpy(turn.tokens.data(), bytes.data() + 14, size_t{head[2]} * 4);
  return turn;
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

absl::StatusOr<std::unique_ptr<LiveSession>> SessionManager::Load(const session_store::SessionKey& key) {
  auto loaded = store_.Load(key);
  if (!loaded.ok()) return loaded.status();
  v1::Session meta;
  if (!meta.ParseFromString(loaded->info.metadata)) return absl::DataLossError("session metadata is unreadable");
  if (meta.model_fingerprint() != model_.fingerprint()) {
    return absl::FailedPreconditionError(absl::StrCat("session ", key.session, " belongs to model ",
                                                      meta.model_fingerprint(), ", not the served ",
                                                      model_.fingerprint(), "; migrate it first"));
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
    engine::SessionOptions o;
    o.rule = meta.options().update_rule() == "off" ? engine::UpdateRule::kOff : engine::UpdateRule::kInplace;
    auto state = model_.NewSession(o);
    if (!state.ok()) return state.status();
    live->state = *std::move(state);
  }
  for (const auto& e : loaded->events) {
    auto turn = DecodeTurn(e.payload);
    if (!turn.ok()) return absl::DataLossError(absl::StrCat("session ", key.session, " event ", e.seq, ": ", turn.status().message()));
    if (auto w = FitWindow(*live, turn->prompt_tokens, turn->max_new_tokens); !w.ok()) return w;
    if (!turn->tokens.empty()) {
      if (auto r = model_.Forward(*live->state, turn->tokens, turn->learned); !r.ok()) return r.status();
    }
    live->window.push_back(turn->tokens);
  }
  // The last turn (replayed, or recorded in the snapshot's header) decides how the next starts.
  if (!loaded->events.empty()) {
    auto last = DecodeTurn(loaded->events.back().payload);
    if (!last->tokens.empty()) live->last_token = last->tokens.back();
    live->assistant_open = last->assistant_open;
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
      const bool recoverable = e.live && e.snapshotted == e.live->version;  // never discard
      if (!e.busy && recoverable && (victim == sessions_.end() || e.used < victim->second.used)) victim = it;
    }
    if (victim == sessions_.end()) return;
    total -= victim->second.bytes;
    sessions_.erase(victim);
    ++stats_.evictions;
  }
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

absl::StatusOr<std::unique_ptr<engine::SessionState>> SessionManager::CloneState(const session_store::SessionKey& key) {
  auto live = Acquire(key);
  if (!live.ok()) return live.status();
  auto copy = model_.Clone(*(*live)->state);
  Release(key);
  return copy;
}

void SessionManager::ReleaseAndDrop(const session_store::SessionKey& key) {
  std::lock_guard<std::mutex> lock(mu_);
  sessions_.erase({key.tenant, key.session});
}

absl::Status SessionManager::BeginDelete(const session_store::SessionKey& key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto& entry = sessions_[{key.tenant, key.session}];
  if (entry.busy) return absl::AbortedError("session busy: another call is using it");
  entry.busy = true;
  return absl::OkStatus();
}

absl::Status SessionManager::CommitTurn(LiveSession& session, const TurnEvent& turn, const std::string& request_id,
                                        const std::string& reply) {
  auto r = store_.Append(session.key, session.version, EncodeTurn(turn), request_id, reply);
  if (!r.ok()) return r.status();
  if (r->duplicate) return absl::AbortedError("the request id was committed by another call");
  session.version = r->version;
  if (!turn.tokens.empty()) session.last_token = turn.tokens.back();
  session.assistant_open = turn.assistant_open;
  session.window.push_back(turn.tokens);
  return absl::OkStatus();
}

absl::StatusOr<std::pair<uint64_t, std::string>> SessionManager::EncodeSnapshot(const LiveSession& session) const {
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
  return std::make_pair(session.version, std::move(payload));
}

absl::Status SessionManager::WriteSnapshot(const session_store::SessionKey& key, uint64_t version,
                                           const std::string& payload) {
  auto s = store_.WriteSnapshot(key, {version, model_.fingerprint(), "server1+exact+kv", false}, payload);
  if (!s.ok()) return s;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find({key.tenant, key.session});
  if (it != sessions_.end()) {
    it->second.snapshotted = std::max(it->second.snapshotted, version);
    EvictOverBudgetLocked();
  }
  return s;
}

}  // namespace adaptd::server
