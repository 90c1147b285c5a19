// Sessions in memory: each session's engine state, loaded on demand from the store (latest
// snapshot, then its later turns replayed), leased to one mutating call at a time, committed
// turn by turn (event synced before the call is acknowledged, then a snapshot).
//
// Threading: all methods are thread-safe. A leased LiveSession belongs to its lessee until
// Release (the engine thread uses its state while a request runs).
#ifndef ADAPTD_SERVER_SESSION_MANAGER_H_
#define ADAPTD_SERVER_SESSION_MANAGER_H_

#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "adaptd/engine/model.h"
#include "adaptd/session_store/store.h"
#include "adaptd/v1/adaptd.pb.h"

namespace adaptd::server {

// One turn as the log keeps it: every token that entered the model (template, prompt,
// generated, stop), whether they were learned, and whether the turn ended inside the
// assistant's message (the next turn closes it first).
struct TurnEvent {
  std::vector<int32_t> tokens;
  bool learned = true;
  bool assistant_open = false;
  uint32_t prompt_tokens = 0;  // tokens[0, prompt_tokens) were the prompt
  uint32_t max_new_tokens = 0;  // the reply's reserved room (the window rule reads it)
};
std::string EncodeTurn(const TurnEvent& turn);
absl::StatusOr<TurnEvent> DecodeTurn(const std::string& bytes);

struct LiveSession {
  session_store::SessionKey key;
  v1::SessionOptions options;
  std::unique_ptr<engine::SessionState> state;
  uint64_t version = 0;
  int32_t last_token = -1;  // the last token that entered the model
  bool assistant_open = false;
  int64_t max_context_tokens = 0;
  std::vector<std::vector<int32_t>> window;  // the turns whose tokens are in the KV window
};

class SessionManager {
 public:
  // `memory_budget_bytes`: loaded sessions past it are evicted, least recently used first, once
  // their latest turn is in a snapshot (an evicted session reloads bit-exactly).
  SessionManager(const engine::Model& model, session_store::SessionStore& store, size_t memory_budget_bytes,
                 int64_t default_max_context_tokens)
      : model_(model), store_(store), budget_(memory_budget_bytes), default_context_(default_max_context_tokens) {}

  // The window rule, before a turn of `prompt_tokens` with room for `max_new_tokens`: drops whole
  // old turns until it fits and re-reads the rest without learning (positions from 0). A
  // function of the log alone, so replay repeats it.
  absl::Status FitWindow(LiveSession& session, int64_t prompt_tokens, int64_t max_new_tokens) const;

  // The session, loaded if needed, leased to the caller. ABORTED ("session busy") while another
  // call holds it; NOT_FOUND; FAILED_PRECONDITION for a session of another model.
  absl::StatusOr<LiveSession*> Acquire(const session_store::SessionKey& key);
  // `bytes`: the session's size in memory now, when known (its snapshot's size).
  void Release(const session_store::SessionKey& key, size_t bytes = 0);
  // Releases and drops the session from memory in one step (its state no longer matches the log).
  void ReleaseAndDrop(const session_store::SessionKey& key);
  // Holds the session against every other call while it is deleted (ABORTED if a call holds
  // it); EndDelete drops it from memory.
  absl::Status BeginDelete(const session_store::SessionKey& key);
  void EndDelete(const session_store::SessionKey& key) { ReleaseAndDrop(key); }

  // An independent copy of the session's state (ABORTED while a call holds it).
  absl::StatusOr<std::unique_ptr<engine::SessionState>> CloneState(const session_store::SessionKey& key);

  // Appends the turn to the log (synced) with the request id and the reply a retry gets, and
  // advances the version.
  absl::Status CommitTurn(LiveSession& session, const TurnEvent& turn, const std::string& request_id = "",
                          const std::string& reply = "");
  absl::StatusOr<std::optional<session_store::AppendResult>> LookupRequest(const session_store::SessionKey& key,
                                                                           const std::string& request_id) {
    return store_.LookupRequest(key, request_id);
  }
  // A snapshot of the state with its KV window at the session's version (restores bit-exact):
  // its bytes, taken while the session is leased, and their version; written later, unleased.
  absl::StatusOr<std::pair<uint64_t, std::string>> EncodeSnapshot(const LiveSession& session) const;
  // Writes it and, once written, lets the session be evicted (and evicts over the budget).
  absl::Status WriteSnapshot(const session_store::SessionKey& key, uint64_t version, const std::string& payload);

  struct Stats {
    size_t loaded = 0, bytes = 0;
    int64_t loads = 0, evictions = 0;
  };
  Stats GetStats();

 private:
  using Id = std::pair<std::string, std::string>;
  struct Entry {
    std::unique_ptr<LiveSession> live;
    bool busy = false;
    size_t bytes = 0;
    uint64_t used = 0;         // LRU clock
    uint64_t snapshotted = 0;  // the version of its newest written snapshot
  };
  absl::StatusOr<std::unique_ptr<LiveSession>> Load(const session_store::SessionKey& key);
  void EvictOverBudgetLocked();

  const engine::Model& model_;
  session_store::SessionStore& store_;
  std::mutex mu_;
  std::map<Id, Entry> sessions_;  // guarded by mu_
  const size_t budget_;
  const int64_t default_context_;
  uint64_t clock_ = 0;            // guarded by mu_
  Stats stats_;                   // guarded by mu_ (loaded and bytes computed on demand)
};

}  // namespace adaptd::server

#endif  // ADAPTD_SERVER_SESSION_MANAGER_H_
