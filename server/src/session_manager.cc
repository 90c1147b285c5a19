// Loading replays the log through Model::Forward: the state equals the one that served the
// turns within the engine's batching tolerance, and bit-exactly when the latest event has its
// snapshot (always, under the default policy of a snapshot after every event; under the others
// when the session left memory by eviction or shutdown, not by a crash).
#include "session_manager.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "adaptd/engine/chat.h"
#include "logging.h"

namespace adaptd::server {
namespace {

// Snapshot payload: "ADS2", flags (1: assistant turn open, 2: the window's first turn is the
// pinned system prompt), the last token (int32), the number
// of turns in the KV window (u32) and each one's tokens (u32 count, int32s), then the engine's
// session bytes (exact, with the KV window). A session with more than one context writes "ADS3"
// and, after the window's turns, the current context (u32), the number of contexts (u32) and
// each one as last left: its last token (int32), its flags (1: assistant turn open, 2: its first
// turn is the pinned system prompt) and its whole window's turns as above (the current one's
// entry is not written: the window is it). A binary older than contexts refuses ADS3 as not its
// format (DATA_LOSS), as it refuses the 'C' events of such a log.
constexpr char kSnapshotMagic[] = "ADS2";
constexpr char kSnapshotContextsMagic[] = "ADS3";

void AppendTurns(std::string& out, const std::vector<std::vector<int32_t>>& turns) {
  const auto count = static_cast<uint32_t>(turns.size());
  out.append(reinterpret_cast<const char*>(&count), 4);
  for (const auto& t : turns) {
    const auto n = static_cast<uint32_t>(t.size());
    out.append(reinterpret_cast<const char*>(&n), 4);
    out.append(reinterpret_cast<const char*>(t.data()), t.size() * 4);
  }
}

// Reads what AppendTurns wrote at `at` (advanced past it); false when it overruns `p`.
bool ReadTurns(const std::string& p, size_t& at, std::vector<std::vector<int32_t>>& turns) {
  uint32_t count = 0;
  if (at + 4 > p.size()) return false;
  std::memcpy(&count, p.data() + at, 4);
  at += 4;
  if (count > (p.size() - at) / 4) return false;  // each turn takes 4 bytes at least
  for (uint32_t i = 0; i < count; ++i) {
    uint32_t n = 0;
    if (at + 4 > p.size()) return false;
    std::memcpy(&n, p.data() + at, 4);
    if (n > (p.size() - at - 4) / 4) return false;
    std::vector<int32_t> t(n);
    std::memcpy(t.data(), p.data() + at + 4, size_t{n} * 4);
    turns.push_back(std::move(t));
    at += 4 + size_t{n} * 4;
  }
  return true;
}
constexpr size_t kSnapshotHeader = 4 + 1 + 4;  // magic, flags, last token
constexpr char kSnapshotEncoding[] = "server1+exact+kv";

bool SnapshotDue(const v1::SessionOptions& options, uint64_t version, uint64_t snapshotted) {
  switch (options.snapshot_policy()) {
    case v1::SNAPSHOT_ON_EVICTION:
      return false;
    case v1::SNAPSHOT_EVERY_N_EVENTS:
      return version - snapshotted >= static_cast<uint64_t>(options.snapshot_every_events());
    default:
      return true;
  }
}

}  // namespace

absl::Status SessionManager::FitWindow(LiveSession& session, int64_t prompt_tokens, int64_t max_new_tokens) const {
  int64_t used = 0;
  for (const auto& t : session.window) used += static_cast<int64_t>(t.size());
  const size_t pinned = session.pinned_head ? 1 : 0;  // the system prompt stays at the head
  size_t drop = pinned;
  while (drop < session.window.size() && used + prompt_tokens + max_new_tokens > session.max_context_tokens) {
    used -= static_cast<int64_t>(session.window[drop++].size());
  }
  if (used + prompt_tokens + max_new_tokens > session.max_context_tokens) {  // callers check first
    return absl::InvalidArgumentError(absl::StrCat("the turn (", prompt_tokens, " tokens + ", max_new_tokens,
                                                   " to generate) does not fit the context beside the system prompt"));
  }
  if (drop == pinned) return absl::OkStatus();
  session.window.erase(session.window.begin() + pinned, session.window.begin() + drop);
  // The same fast state (dW, tails, N) with the kept turns re-read.
  std::vector<int32_t> kept;
  for (const auto& t : session.window) kept.insert(kept.end(), t.begin(), t.end());
  auto state = model_.RereadWindow(*session.state, kept);
  if (!state.ok()) return state.status();
  session.state = *std::move(state);
  return absl::OkStatus();
}

ContextWindow LiveSession::Context(uint32_t id) const {
  if (id != context) return contexts.at(id);
  return {window, last_token, assistant_open, pinned_head};
}

absl::Status SessionManager::SwitchContext(LiveSession& session, uint32_t to) const {
  if (to > session.contexts.size()) {
    return absl::NotFoundError(absl::StrCat("session ", session.key.session, " has no context ", to));
  }
  if (to == session.contexts.size() && to >= kMaxContexts) {
    return absl::ResourceExhaustedError(absl::StrCat("a session holds at most ", kMaxContexts, " contexts"));
  }
  if (to == session.context) return absl::OkStatus();
  const bool fresh = to == session.contexts.size();
  session.contexts[session.context] = session.Context(session.context);
  if (fresh) {  // a new one keeps the system prompt (its KV rows are the window's first) and no BOS again
    ContextWindow next;
    next.pinned = session.pinned_head;
    if (next.pinned) {
      next.turns = {session.window[0]};
      next.last_token = session.window[0].back();
    }
    session.contexts.push_back(std::move(next));
  }
  ContextWindow& next = session.contexts[to];
  // The window rule, as for a turn with nothing to add: a window saved under a larger context
  // (another --max_context_tokens) drops its oldest turns, never the system prompt.
  int64_t used = 0;
  for (const auto& t : next.turns) used += static_cast<int64_t>(t.size());
  const size_t keep = next.pinned ? 1 : 0;
  while (next.turns.size() > keep && used > session.max_context_tokens) {
    used -= static_cast<int64_t>(next.turns[keep].size());
    next.turns.erase(next.turns.begin() + keep);
  }
  session.window = next.turns;
  session.pinned_head = next.pinned;
  session.last_token = next.last_token;
  session.assistant_open = next.assistant_open;
  session.context = to;
  if (fresh || session.window.empty()) return model_.RewindWindow(*session.state, session.PinnedTokens());
  std::vector<int32_t> kept;
  for (const auto& t : session.window) kept.insert(kept.end(), t.begin(), t.end());
  auto state = model_.RereadWindow(*session.state, kept, /*tail=*/false);  // the same fast state, this window
  if (!state.ok()) return state.status();
  session.state = *std::move(state);
  return absl::OkStatus();
}

engine::SessionOptions EngineOptions(const v1::SessionOptions& options) {
  engine::SessionOptions o;
  const std::string& rule = options.update_rule();
  o.rule = rule == "off" ? engine::UpdateRule::kOff
           : rule == "ntp_gradient" ? engine::UpdateRule::kNtpGradient
                                    : engine::UpdateRule::kInplace;
  if (options.clip_tau() != 0) o.clip_tau = options.clip_tau();
  o.decay = options.decay();
  if (options.max_delta_norm() != 0) o.max_delta_norm = options.max_delta_norm();
  if (options.lr_scale() != 0) o.lr_scale = options.lr_scale();
  return o;
}

absl::Status ValidateOptions(const v1::SessionOptions& o) {
  const std::string& rule = o.update_rule();
  if (!rule.empty() && rule != "inplace" && rule != "off" && rule != "ntp_gradient") {
    return absl::InvalidArgumentError(absl::StrCat("options.update_rule '", rule, "' (inplace, off or ntp_gradient)"));
  }
  if (o.max_context_tokens() < 0 || o.max_context_tokens() > (1 << 20)) {
    return absl::InvalidArgumentError("options.max_context_tokens must be in [0, 2^20]");
  }
  const std::string& f = o.chat_format();
  if (!f.empty() && !engine::ParseChatFormat(f).ok()) {
    return absl::InvalidArgumentError(absl::StrCat("options.chat_format '", f, "' (chatml, qwen3, llama3 or raw)"));
  }
  for (const std::string& role : o.roles_not_learned()) {
    if (role != "system" && role != "user" && role != "assistant") {
      return absl::InvalidArgumentError(
          absl::StrCat("options.roles_not_learned: '", role, "' (system, user or assistant)"));
    }
  }
  if (!v1::SnapshotPolicy_IsValid(o.snapshot_policy())) {
    return absl::InvalidArgumentError(absl::StrCat("options.snapshot_policy: unknown value ", o.snapshot_policy()));
  }
  const bool every_n = o.snapshot_policy() == v1::SNAPSHOT_EVERY_N_EVENTS;
  if (every_n ? o.snapshot_every_events() < 1 || o.snapshot_every_events() > 10000 : o.snapshot_every_events() != 0) {
    return absl::InvalidArgumentError(
        "options.snapshot_every_events: in [1, 10000] with SNAPSHOT_EVERY_N_EVENTS, else 0");
  }
  if (auto s = engine::ValidateSessionOptions(EngineOptions(o)); !s.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("options: ", s.message()));
  }
  return absl::OkStatus();
}

absl::Status CheckNtpUpdateMemory(const engine::Model& model, const v1::SessionOptions& o, int64_t default_window,
                                  int64_t budget_bytes) {
  if (o.update_rule() != "ntp_gradient") return absl::OkStatus();
  const int64_t window = o.max_context_tokens() > 0 ? o.max_context_tokens() : default_window;
  const int64_t bytes = model.NtpUpdateBytes(window);
  if (bytes <= budget_bytes) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "options: an ntp_gradient update over a window of ", window, " tokens takes about ", bytes >> 20,
      " MiB, over the server's --ntp_update_mib ", budget_bytes >> 20, ": ask for a smaller max_context_tokens"));
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
    session.pinned_head = false;
    session.last_token = -1;
    session.assistant_open = false;
    for (ContextWindow& c : session.contexts) c = {};  // every context empty; their ids stay
    return absl::OkStatus();
  }
  if (event.kind == LogEvent::Kind::kContext) return SwitchContext(session, event.context);
  if (!event.keep_in_context) {  // back to the window before it (its tokens are the KV rows)
    int64_t kept = 0;
    for (const auto& t : session.window) kept += static_cast<int64_t>(t.size());
    return model_.RewindWindow(*session.state, kept);
  }
  if (!event.tokens.empty()) session.last_token = event.tokens.back();
  session.assistant_open = event.assistant_open;
  if (event.pinned_tokens > 0 && session.window.empty()) {
    session.window.emplace_back(event.tokens.begin(), event.tokens.begin() + event.pinned_tokens);
    session.window.emplace_back(event.tokens.begin() + event.pinned_tokens, event.tokens.end());
    session.pinned_head = true;
  } else {
    session.window.push_back(event.tokens);
  }
  return absl::OkStatus();
}

absl::Status SessionManager::Replay(LiveSession& session, const LogEvent& event) const {
  if (event.kind == LogEvent::Kind::kTurn) {
    if (auto w = FitWindow(session, event.prompt_tokens, event.max_new_tokens); !w.ok()) return w;
    // The tokens in runs of the same learn flag, as the turn fed them.
    const auto tokens = absl::MakeConstSpan(event.tokens);
    const std::vector<uint8_t> flags = LearnFlags(event);
    for (size_t begin = 0, end = 0; begin < tokens.size(); begin = end) {
      end = std::find(flags.begin() + begin, flags.end(), flags[begin] ^ 1) - flags.begin();
      if (auto r = model_.Forward(*session.state, tokens.subspan(begin, end - begin), flags[begin] != 0); !r.ok()) {
        return r.status();
      }
    }
  }
  if (event.kind == LogEvent::Kind::kContext && (event.context > session.contexts.size() || event.context >= kMaxContexts)) {
    return absl::DataLossError(absl::StrCat("a logged switch to context ", event.context, ", which cannot exist"));
  }
  return Settle(session, event);
}

absl::StatusOr<std::unique_ptr<LiveSession>> SessionManager::Load(const session_store::SessionKey& key,
                                                                  uint64_t* snapshotted, bool migrate) {
  auto loaded = store_.Load(key, /*allow_lossy_base=*/false, model_.fingerprint());
  if (!loaded.ok()) return loaded.status();
  *snapshotted = loaded->snapshot ? loaded->snapshot->version : 0;
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
  if (auto s = CheckNtpUpdateMemory(model_, meta.options(), default_context_, ntp_budget_); !s.ok()) {
    return absl::FailedPreconditionError(absl::StrCat("session ", key.session, ": ", s.message()));
  }
  auto live = std::make_unique<LiveSession>();
  live->key = key;
  live->options = meta.options();
  live->max_context_tokens = meta.options().max_context_tokens() > 0 ? meta.options().max_context_tokens() : default_context_;
  if (loaded->snapshot) {
    const std::string& p = loaded->snapshot_payload;
    auto corrupt = [&] { return absl::DataLossError(absl::StrCat("session ", key.session, ": snapshot is not the server's format")); };
    const bool contexts = p.size() >= kSnapshotHeader && p.compare(0, 4, kSnapshotContextsMagic) == 0;
    if (p.size() < kSnapshotHeader || (p.compare(0, 4, kSnapshotMagic) != 0 && !contexts)) return corrupt();
    live->assistant_open = p[4] & 1;
    live->pinned_head = p[4] & 2;
    std::memcpy(&live->last_token, p.data() + 5, 4);
    size_t at = kSnapshotHeader;
    if (!ReadTurns(p, at, live->window)) return corrupt();  // the window's turns
    if (live->pinned_head && (live->window.empty() || live->window[0].empty())) return corrupt();
    for (const auto& t : live->window) {  // re-read by the window rule: ids the model can take
      if (!t.empty() && !model_.ValidateIds(t).ok()) return corrupt();
    }
    if (contexts) {
      uint32_t current = 0, count = 0;
      if (at + 8 > p.size()) return corrupt();
      std::memcpy(&current, p.data() + at, 4);
      std::memcpy(&count, p.data() + at + 4, 4);
      at += 8;
      if (count < 2 || count > kMaxContexts || current >= count) return corrupt();
      live->context = current;
      live->contexts.assign(count, {});
      for (uint32_t c = 0; c < count; ++c) {
        if (c == current) continue;
        ContextWindow& w = live->contexts[c];
        if (at + 5 > p.size()) return corrupt();
        std::memcpy(&w.last_token, p.data() + at, 4);
        w.assistant_open = p[at + 4] & 1;
        w.pinned = p[at + 4] & 2;
        at += 5;
        if (!ReadTurns(p, at, w.turns)) return corrupt();
        if (w.pinned && (w.turns.empty() || w.turns[0].empty())) return corrupt();
        for (const auto& t : w.turns) {  // re-read at a switch: ids the model can take
          if (!t.empty() && !model_.ValidateIds(t).ok()) return corrupt();
        }
      }
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

void SessionManager::AwaitSnapshot(std::unique_lock<std::mutex>& lock, const Id& id) {
  snapshot_done_.wait(lock, [&] {
    auto it = sessions_.find(id);
    return it == sessions_.end() || !it->second.snapshotting;
  });
}

absl::StatusOr<LiveSession*> SessionManager::Acquire(const session_store::SessionKey& key) {
  {
    std::unique_lock<std::mutex> lock(mu_);
    AwaitSnapshot(lock, {key.tenant, key.session});
    auto it = sessions_.find({key.tenant, key.session});
    if (it != sessions_.end()) {
      if (it->second.busy) return absl::AbortedError("session busy: another call is using it");
      it->second.busy = true;
      it->second.used = ++clock_;
      return it->second.live.get();
    }
    sessions_[{key.tenant, key.session}].busy = true;  // reserved while it loads
  }
  uint64_t snapshotted = 0;
  const auto start = std::chrono::steady_clock::now();
  auto live = Load(key, &snapshotted);
  if (live.ok()) observer_.loaded(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  std::lock_guard<std::mutex> lock(mu_);
  auto& entry = sessions_[{key.tenant, key.session}];
  if (!live.ok()) {
    sessions_.erase({key.tenant, key.session});
    return live.status();
  }
  entry.live = *std::move(live);
  entry.used = ++clock_;
  entry.snapshotted = snapshotted;
  ++stats_.loads;
  stats_.replayed_events += static_cast<int64_t>(entry.live->version - snapshotted);
  return entry.live.get();
}

void SessionManager::Release(const session_store::SessionKey& key, size_t bytes) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sessions_.find({key.tenant, key.session});
    if (it == sessions_.end()) return;
    it->second.busy = false;
    it->second.used = ++clock_;
    if (bytes > 0) it->second.bytes = bytes;
  }
  EvictOverBudget();
}

void SessionManager::EvictOverBudget() {
  std::unique_lock<std::mutex> lock(mu_);
  std::set<Id> tried;  // each session once per pass: one taken or changed meanwhile waits
  for (;;) {
    size_t total = 0;
    for (const auto& [id, e] : sessions_) total += e.bytes;
    if (total <= budget_) return;
    auto victim = sessions_.end();
    for (auto it = sessions_.begin(); it != sessions_.end(); ++it) {
      const Entry& e = it->second;
      if (e.busy || e.snapshotting || !e.live || tried.count(it->first)) continue;
      if (victim == sessions_.end() || e.used < victim->second.used) victim = it;
    }
    if (victim == sessions_.end()) return;
    const Id id = victim->first;
    tried.insert(id);
    if (auto written = SnapshotIfDirty(lock, id); !written.ok()) {  // never discard: it stays
      observer_.snapshot_failed();
      LogLine("error").Str("error", "snapshot before eviction: " + written.status().ToString())
          .Str("tenant", id.first).Str("session", id.second).Write();
      continue;
    }
    auto it = sessions_.find(id);
    if (it == sessions_.end() || it->second.busy || it->second.snapshotting || !it->second.live ||
        it->second.snapshotted != it->second.live->version) {
      continue;  // taken or changed while its snapshot was written
    }
    sessions_.erase(it);
    ++stats_.evictions;
  }
}

absl::StatusOr<bool> SessionManager::SnapshotIfDirty(std::unique_lock<std::mutex>& lock, const Id& id) {
  auto it = sessions_.find(id);
  if (it == sessions_.end() || it->second.busy || it->second.snapshotting || !it->second.live) return false;
  const LiveSession& live = *it->second.live;
  if (it->second.snapshotted == live.version) return false;
  // No call can take, change or drop the session while `snapshotting` is set (they wait), so it
  // is read without mu_, which other sessions' calls need meanwhile.
  it->second.snapshotting = true;
  const uint64_t version = live.version;
  lock.unlock();
  auto bytes = EncodeSnapshot(live);
  const absl::Status written = bytes.ok() ? StoreSnapshot(live.key, version, *bytes) : bytes.status();
  lock.lock();
  it = sessions_.find(id);  // still there: nothing erases a snapshotting entry
  it->second.snapshotting = false;
  snapshot_done_.notify_all();
  if (!written.ok()) return written;
  ++stats_.deferred_snapshots;
  it->second.snapshotted = std::max(it->second.snapshotted, version);
  return true;
}

absl::StatusOr<int> SessionManager::SnapshotDirty() {
  std::unique_lock<std::mutex> lock(mu_);
  std::vector<Id> ids;
  for (const auto& [id, e] : sessions_) ids.push_back(id);
  int written = 0;
  absl::Status first_error;
  for (const Id& id : ids) {  // one failure does not keep the others from their snapshots
    auto w = SnapshotIfDirty(lock, id);
    if (w.ok()) written += *w;
    if (!w.ok() && first_error.ok()) first_error = w.status();
  }
  if (!first_error.ok()) return first_error;
  return written;
}

void SessionManager::DropExpired(const std::vector<session_store::SessionKey>& keys) {
  std::unique_lock<std::mutex> lock(mu_);
  for (const auto& key : keys) {
    AwaitSnapshot(lock, {key.tenant, key.session});
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
    copy->pinned_head = (*live)->pinned_head;
    copy->context = (*live)->context;
    copy->contexts = (*live)->contexts;
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

void SessionManager::Unhold(const session_store::SessionKey& key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sessions_.find({key.tenant, key.session});
  if (it == sessions_.end()) return;
  if (it->second.live == nullptr) {
    sessions_.erase(it);  // the placeholder Hold made
  } else {
    it->second.busy = false;
  }
}

absl::Status SessionManager::Hold(const session_store::SessionKey& key) {
  std::unique_lock<std::mutex> lock(mu_);
  AwaitSnapshot(lock, {key.tenant, key.session});
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
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sessions_.find({key.tenant, key.session});
    if (it != sessions_.end()) {
      done.due = SnapshotDue(session.options, session.version, it->second.snapshotted);
      it->second.busy = false;
      it->second.used = ++clock_;
      if (done.snapshot.ok()) it->second.bytes = done.snapshot->size();
    }
  }
  return done;  // the caller acknowledges, then writes the snapshot or evicts

}

absl::Status SessionManager::Migrate(const session_store::SessionKey& key) {
  auto info = store_.Get(key);
  if (!info.ok()) return info.status();
  v1::Session meta;
  if (!meta.ParseFromString(info->metadata)) return absl::DataLossError("session metadata is unreadable");
  if (meta.model_fingerprint() == model_.fingerprint()) return absl::OkStatus();  // bound already
  if (auto s = Hold(key); !s.ok()) return s;
  uint64_t snapshotted = 0;  // another model's: not this one's
  auto live = Load(key, &snapshotted, /*migrate=*/true);
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
  const bool written = snapshot.ok() && StoreSnapshot(key, (*live)->version, *snapshot).ok();
  {
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
  }
  EvictOverBudget();
  return absl::OkStatus();
}

absl::StatusOr<std::string> SessionManager::EncodeSnapshot(const LiveSession& session) const {
  auto bytes = model_.EncodeSession(*session.state, {engine::StateEncoding::kExact, /*include_kv=*/true});
  if (!bytes.ok()) return bytes.status();
  const bool contexts = session.contexts.size() > 1;
  std::string payload(contexts ? kSnapshotContextsMagic : kSnapshotMagic);
  payload.push_back(static_cast<char>((session.assistant_open ? 1 : 0) | (session.pinned_head ? 2 : 0)));
  payload.append(reinterpret_cast<const char*>(&session.last_token), 4);
  AppendTurns(payload, session.window);
  if (contexts) {
    const auto count = static_cast<uint32_t>(session.contexts.size());
    payload.append(reinterpret_cast<const char*>(&session.context), 4);
    payload.append(reinterpret_cast<const char*>(&count), 4);
    for (uint32_t c = 0; c < count; ++c) {
      if (c == session.context) continue;
      const ContextWindow& w = session.contexts[c];
      payload.append(reinterpret_cast<const char*>(&w.last_token), 4);
      payload.push_back(static_cast<char>((w.assistant_open ? 1 : 0) | (w.pinned ? 2 : 0)));
      AppendTurns(payload, w.turns);
    }
  }
  payload += *bytes;
  return payload;
}

absl::StatusOr<std::pair<double, size_t>> SessionManager::WriteSnapshot(const Committed& c) {
  if (!c.snapshot.ok()) {
    EvictOverBudget();  // others may go; this one stays until a snapshot is written
    return c.snapshot.status();
  }
  const auto start = std::chrono::steady_clock::now();
  if (auto s = StoreSnapshot(c.key, c.version, *c.snapshot); !s.ok()) {
    EvictOverBudget();
    return s;
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sessions_.find({c.key.tenant, c.key.session});
    if (it != sessions_.end()) it->second.snapshotted = std::max(it->second.snapshotted, c.version);
  }
  EvictOverBudget();
  return std::make_pair(seconds, c.snapshot->size());
}

absl::Status SessionManager::StoreSnapshot(const session_store::SessionKey& key, uint64_t version,
                                           const std::string& bytes) {
  return store_.WriteSnapshot(key, {version, model_.fingerprint(), kSnapshotEncoding, false}, bytes);
}

}  // namespace adaptd::server
