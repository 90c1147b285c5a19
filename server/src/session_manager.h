// Sessions in memory: each session's engine state, loaded on demand from the store (latest
// snapshot, then its later turns replayed), leased to one mutating call at a time, committed
// turn by turn (event synced before the call is acknowledged, then a snapshot).
//
// Threading: all methods are thread-safe. A leased LiveSession belongs to its lessee until
// Release (the engine thread uses its state while a request runs).
#ifndef ADAPTD_SERVER_SESSION_MANAGER_H_
#define ADAPTD_SERVER_SESSION_MANAGER_H_

#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "adaptd/engine/model.h"
#include "adaptd/session_store/store.h"
#include "adaptd/v1/adaptd.pb.h"
#include "log_event.h"

namespace adaptd::server {

// The engine's options of a session's (validated by engine::ValidateSessionOptions).
engine::SessionOptions EngineOptions(const v1::SessionOptions& options);
// INVALID_ARGUMENT naming the field for session options out of range.
absl::Status ValidateOptions(const v1::SessionOptions& options);
// INVALID_ARGUMENT when an ntp_gradient session's window (its max_context_tokens, else
// `default_window`) would make one update take more than `budget_bytes` (Model::NtpUpdateBytes).
absl::Status CheckNtpUpdateMemory(const engine::Model& model, const v1::SessionOptions& options, int64_t default_window,
                                  int64_t budget_bytes);

// A conversation within a session (its memory is the session's fast weights): the turns it had
// in the KV window when it was last left, and how its last turn ended.
struct ContextWindow {
  std::vector<std::vector<int32_t>> turns;  // the whole window: with `pinned`, the system prompt first
  int32_t last_token = -1;
  bool assistant_open = false;
  bool pinned = false;  // turns[0] is its pinned system prompt
  // Its turns past the system prompt.
  size_t Turns() const { return turns.size() - (pinned ? 1 : 0); }
};
// Contexts a session may hold (RESOURCE_EXHAUSTED past it): each keeps up to a window of tokens
// in memory and in every snapshot.
inline constexpr uint32_t kMaxContexts = 256;

struct LiveSession {
  session_store::SessionKey key;
  v1::SessionOptions options;
  std::unique_ptr<engine::SessionState> state;
  uint64_t version = 0;
  int32_t last_token = -1;  // the last token kept in the context (-1: none since creation or reset)
  bool assistant_open = false;
  int64_t max_context_tokens = 0;
  std::vector<std::vector<int32_t>> window;  // the turns whose tokens are in the KV window
  bool pinned_head = false;  // window[0] is the system prompt, which never leaves it
  // Tokens of the window that the window rule keeps whatever comes (the pinned system prompt).
  int64_t PinnedTokens() const { return pinned_head ? static_cast<int64_t>(window[0].size()) : 0; }
  uint32_t context = 0;                         // the current context
  std::vector<ContextWindow> contexts{1};       // each context as last left (the current one's: stale)
  // The context as it stands now (the current one from the live window).
  ContextWindow Context(uint32_t id) const;
};

class SessionManager {
 public:
  // `memory_budget_bytes`: loaded sessions past it are evicted, least recently used first; one
  // whose latest event has no snapshot yet gets one first (an evicted session reloads
  // bit-exactly, without replay).
  // What the manager reports as it goes (the server's metrics); called on the caller's thread.
  struct Observer {
    std::function<void(double seconds)> loaded;
    std::function<void()> snapshot_failed;
  };
  // `ntp_update_budget_bytes`: a stored ntp_gradient session whose window's update would take
  // more is refused at load (CheckNtpUpdateMemory), whatever its origin (an import, a restart
  // with another default window or budget).
  SessionManager(const engine::Model& model, session_store::SessionStore& store, size_t memory_budget_bytes,
                 int64_t default_max_context_tokens, int64_t ntp_update_budget_bytes, Observer observer)
      : model_(model),
        store_(store),
        budget_(memory_budget_bytes),
        default_context_(default_max_context_tokens),
        ntp_budget_(ntp_update_budget_bytes),
        observer_(std::move(observer)) {}

  // The window rule, before a turn of `prompt_tokens` with room for `max_new_tokens`: drops whole
  // old turns (never the pinned system prompt at the head) until it fits and re-reads the rest
  // without learning (positions from 0). A function of the log alone, so replay repeats it.
  // INVALID_ARGUMENT when even the system prompt alone leaves no room (callers check first).
  absl::Status FitWindow(LiveSession& session, int64_t prompt_tokens, int64_t max_new_tokens) const;

  // Makes context `to` current (a new one when to == contexts.size()): the current one's turns
  // are kept aside, and the window becomes the pinned system prompt and `to`'s turns, re-read
  // without learning (the fast weights stay). A function of the log alone, so replay repeats it.
  // NOT_FOUND for a context that does not exist; RESOURCE_EXHAUSTED past kMaxContexts.
  absl::Status SwitchContext(LiveSession& session, uint32_t to) const;

  // The session, loaded if needed, leased to the caller. ABORTED ("session busy") while another
  // call holds it; NOT_FOUND; FAILED_PRECONDITION for a session of another model.
  absl::StatusOr<LiveSession*> Acquire(const session_store::SessionKey& key);
  // `bytes`: the session's size in memory now, when known (its snapshot's size).
  void Release(const session_store::SessionKey& key, size_t bytes = 0);
  // Releases and drops the session from memory in one step (its state no longer matches the log).
  void ReleaseAndDrop(const session_store::SessionKey& key);
  // Holds the session against every other call, without loading it, while its records are
  // rewritten (delete, rollback; ABORTED if a call holds it). ReleaseAndDrop ends the hold.
  absl::Status Hold(const session_store::SessionKey& key);
  // Ends a Hold whose rewrite failed (nothing changed): a loaded session stays as it was.
  void Unhold(const session_store::SessionKey& key);

  // An independent copy of the session (its state, window and bookkeeping; ABORTED while a
  // call holds it).
  absl::StatusOr<std::unique_ptr<LiveSession>> Clone(const session_store::SessionKey& key);

  // Commits an event of the leased session and releases it: appends it to the log (synced) with
  // the request id and the reply a retry gets, applies it to the session's bookkeeping (a reset:
  // to its state too), takes the snapshot's bytes and releases the session. The caller then
  // acknowledges, and writes the snapshot if due or else evicts. On failure the session is
  // dropped from memory (its state no longer matches the log) and nothing was acknowledged.
  struct Committed {
    session_store::SessionKey key;
    uint64_t version = 0;
    absl::StatusOr<std::string> snapshot;
    bool due = true;  // the session's snapshot policy wants it written now
  };
  absl::StatusOr<Committed> Commit(LiveSession& session, const LogEvent& event, const std::string& request_id = "",
                                   const std::string& reply = "");
  // Rebinds a session of another model to the served one: replays its whole log here, writes a
  // snapshot and the new fingerprint. OK at once if it is bound already; FAILED_PRECONDITION if
  // the log does not fit this model (ids outside its vocabulary); ABORTED while a call holds it.
  absl::Status Migrate(const session_store::SessionKey& key);
  absl::StatusOr<std::optional<session_store::AppendResult>> LookupRequest(const session_store::SessionKey& key,
                                                                           const std::string& request_id) {
    return store_.LookupRequest(key, request_id);
  }
  // Writes a committed event's snapshot (the state with its KV window at that version; it
  // restores bit-exactly) and evicts over the budget. Returns the seconds it took and the bytes
  // written.
  absl::StatusOr<std::pair<double, size_t>> WriteSnapshot(const Committed& committed);
  // Evicts least recently used sessions while over the budget; a session without a snapshot of
  // its latest event gets one first (written without the lock held). After a commit whose
  // snapshot is not due, the caller runs it once the event is acknowledged.
  void EvictOverBudget();
  // Writes a snapshot of every loaded session whose latest event has none (at shutdown, once no
  // call holds any); returns how many were written.
  absl::StatusOr<int> SnapshotDirty();

  // Drops these sessions (the store expired them) from memory, unless a call holds one (its
  // commit then fails: the session is gone).
  void DropExpired(const std::vector<session_store::SessionKey>& keys);
  // Whether the session is loaded in memory; with `state`, also its learning state when no call
  // holds it (computed under the manager's lock: for one session at a time, not for lists).
  bool InMemory(const session_store::SessionKey& key, v1::SessionState* state = nullptr);

  struct Stats {
    size_t loaded = 0, bytes = 0;
    int64_t loads = 0, evictions = 0;
    int64_t replayed_events = 0;     // events fed again at loads (those after the snapshot)
    int64_t deferred_snapshots = 0;  // written as a session left memory, not after its event
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
    // An eviction or the shutdown flush is encoding and writing its snapshot, without mu_: the
    // entry stays, and calls that would take or drop it wait (snapshot_done_).
    bool snapshotting = false;
  };
  // Waits (mu_ held by `lock`) until the entry of `id`, if any, is not snapshotting.
  void AwaitSnapshot(std::unique_lock<std::mutex>& lock, const Id& id);
  // The session from its latest snapshot of this model and the events after it. With `migrate`,
  // a session bound to another model loads too (from its whole log).
  // *snapshotted: the version of the snapshot it started from (0: none).
  absl::StatusOr<std::unique_ptr<LiveSession>> Load(const session_store::SessionKey& key, uint64_t* snapshotted,
                                                    bool migrate = false);
  // Feeds one logged event into the session as serving did: the window rule and the tokens,
  // then Settle.
  absl::Status Replay(LiveSession& session, const LogEvent& event) const;
  // What follows an event once its tokens entered: the window, last token and open assistant
  // reply; an Ingest that keeps no context rewinds the KV window; a reset starts afresh.
  absl::Status Settle(LiveSession& session, const LogEvent& event) const;
  absl::StatusOr<std::unique_ptr<engine::SessionState>> FreshState(const v1::SessionOptions& options) const;
  absl::StatusOr<std::string> EncodeSnapshot(const LiveSession& session) const;
  absl::Status StoreSnapshot(const session_store::SessionKey& key, uint64_t version, const std::string& bytes);
  // Writes the snapshot of a loaded session no call holds, if it lacks one; false if none was
  // needed. `lock` (mu_) is released while the snapshot is encoded and written.
  absl::StatusOr<bool> SnapshotIfDirty(std::unique_lock<std::mutex>& lock, const Id& id);

  const engine::Model& model_;
  session_store::SessionStore& store_;
  std::mutex mu_;
  std::map<Id, Entry> sessions_;  // guarded by mu_
  std::condition_variable snapshot_done_;  // an entry's snapshotting ended
  const size_t budget_;
  const int64_t default_context_;
  const int64_t ntp_budget_;
  const Observer observer_;
  uint64_t clock_ = 0;            // guarded by mu_
  Stats stats_;                   // guarded by mu_ (loaded and bytes computed on demand)
};

}  // namespace adaptd::server

#endif  // ADAPTD_SERVER_SESSION_MANAGER_H_
