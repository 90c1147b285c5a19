// SessionStore: durable, tenant-scoped sessions on RocksDB, event-sourced
// (../../shared/design/architecture.md, "Session state"): per session a small metadata
// record, an append-only event log (the truth), snapshots of the fast state (opaque bytes the
// engine encodes, under a self-describing header), and idempotency records of request ids.
//
// Contracts:
// - Append returns OK only after the event, the session's new version and the request id's
//   record are on disk together (one WriteBatch, WAL synced; concurrent appends share a sync).
// - A snapshot is published atomically: a large one's pieces are written without the WAL and
//   flushed into blob files (written once, never copied by compaction), then one small synced
//   manifest record makes it visible; a small one goes in one synced batch with its manifest.
//   A reader never sees half of one.
// - Every key starts with the tenant: no call with tenant A reads or changes tenant B's records.
// - Load returns the latest valid snapshot (a corrupt one is quarantined and reported, an older
//   one or a full replay used instead) and the events after it; a corrupt event is DATA_LOSS
//   naming the session and sequence number.
// - I/O failures: RESOURCE_EXHAUSTED (disk full), UNAVAILABLE (I/O error); nothing written is
//   corrupted, and the store recovers by itself once the fault clears.
//
// Threading: all methods may be called concurrently; operations on one session are
// serialised inside (expected-version checks are atomic).
#ifndef ADAPTD_SESSION_STORE_STORE_H_
#define ADAPTD_SESSION_STORE_STORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace adaptd::session_store {

class FaultInjection;

// A session's address. Ids: 1..128 bytes of [A-Za-z0-9._~-] (INVALID_ARGUMENT otherwise).
struct SessionKey {
  std::string tenant;
  std::string session;
};

struct SessionInfo {
  SessionKey key;
  std::string metadata;          // opaque to the store (the server's options)
  uint64_t version = 0;          // sequence number of the last event (0: none)
  uint64_t generation = 0;       // changes when the history is rewritten (create, rollback)
  uint64_t snapshots_written = 0;
  int64_t created_unix_ms = 0;
  int64_t last_used_unix_ms = 0;
};

struct SnapshotInfo {
  uint64_t version = 0;      // the state after this event
  std::string fingerprint;   // the model the state belongs to
  std::string encoding;      // the engine's name for the payload encoding
  bool lossy = false;        // lossy encodings are no replay base unless asked for
  uint64_t payload_bytes = 0;
};

struct Event {
  uint64_t seq = 0;
  std::string payload;
};

struct LoadResult {
  SessionInfo info;
  std::optional<SnapshotInfo> snapshot;  // absent: replay from the start
  std::string snapshot_payload;
  std::vector<Event> events;             // seq > snapshot version (or all), in order
  std::vector<uint64_t> quarantined;     // versions of snapshots found corrupt just now
};

struct AppendResult {
  uint64_t version = 0;     // the version the event got (for a duplicate: the recorded one)
  bool duplicate = false;   // the request id was seen: nothing appended
  std::string result;       // what the first request recorded with the id
};

struct ListPage {
  std::vector<SessionInfo> sessions;
  std::string next_page_token;  // empty: no more
};

// Sizes the store accepts (INVALID_ARGUMENT beyond them).
inline constexpr size_t kMaxMetadataBytes = 64 << 10;
inline constexpr size_t kMaxEventBytes = 16 << 20;
inline constexpr size_t kMaxResultBytes = 1 << 20;
inline constexpr uint64_t kMaxSnapshotBytes = 2ull << 30;

struct StoreOptions {
  std::string path;
  int64_t idle_ttl_seconds = 0;         // 0: sessions never expire
  int keep_last_snapshots = 2;          // retention: the newest K ...
  int keep_every_nth_snapshot = 0;      // ... and every M-th written (0: none)
  uint64_t max_piece_bytes = 8 << 20;   // snapshot payload pieces
  // Payloads up to this size are written with their manifest in one synced batch (through the
  // WAL: written twice, but one fsync); larger ones bypass the WAL and are flushed.
  uint64_t inline_snapshot_bytes = 4 << 20;
  // Memtables of all column families together (RocksDB flushes past it): the store's share of
  // the process's memory, beside its block cache.
  uint64_t memtable_bytes = 64 << 20;
  std::shared_ptr<FaultInjection> faults;  // tests: disk full, I/O errors, power loss
};

class SessionStore {
 public:
  // Opens (creating if needed) the store at options.path. UNAVAILABLE if the directory cannot
  // be used (e.g. locked by another process).
  static absl::StatusOr<std::unique_ptr<SessionStore>> Open(const StoreOptions& options);
  virtual ~SessionStore() = default;

  // ALREADY_EXISTS if the session exists.
  virtual absl::Status Create(const SessionKey& key, const std::string& metadata) = 0;
  // NOT_FOUND if absent or expired.
  virtual absl::StatusOr<SessionInfo> Get(const SessionKey& key) = 0;
  // Replaces the session's metadata (synced); its version and history stay.
  virtual absl::Status SetMetadata(const SessionKey& key, const std::string& metadata) = 0;
  // The tenant's sessions ordered by id length, then bytewise; at most page_size (1..1000) per
  // page. INVALID_ARGUMENT for a page token that was not issued by this store for this tenant.
  virtual absl::StatusOr<ListPage> List(const std::string& tenant, int page_size, const std::string& page_token) = 0;

  // Appends an event at version expected_version + 1. FAILED_PRECONDITION if the session's
  // version differs; NOT_FOUND if absent. A non-empty request_id makes the call idempotent:
  // a repeat returns the first call's version and `result` without appending.
  virtual absl::StatusOr<AppendResult> Append(const SessionKey& key, uint64_t expected_version,
                                              const std::string& event, const std::string& request_id = "",
                                              const std::string& result = "") = 0;

  // What Append recorded for `request_id`, if it has seen it (duplicate = true). NOT_FOUND for
  // an absent session.
  virtual absl::StatusOr<std::optional<AppendResult>> LookupRequest(const SessionKey& key,
                                                                    const std::string& request_id) = 0;

  // Publishes a snapshot of the state at info.version (<= the session's version) and applies
  // retention. INVALID_ARGUMENT for a version past the session's; FAILED_PRECONDITION if the
  // session's history was rewritten (rollback, delete and create) while the payload was written.
  virtual absl::Status WriteSnapshot(const SessionKey& key, const SnapshotInfo& info, const std::string& payload) = 0;

  // The latest valid snapshot (lossy ones only with allow_lossy_base; with a `fingerprint`, only
  // that model's) and the events after it.
  virtual absl::StatusOr<LoadResult> Load(const SessionKey& key, bool allow_lossy_base = false,
                                          const std::string& fingerprint = "") = 0;

  // The session's events after..upto, in order (DATA_LOSS for a missing or corrupt one); the
  // caller bounds the range (events are up to kMaxEventBytes each).
  virtual absl::StatusOr<std::vector<Event>> ReadEvents(const SessionKey& key, uint64_t after, uint64_t upto) = 0;

  // The session's published snapshots, oldest first (retention has kept these).
  virtual absl::StatusOr<std::vector<SnapshotInfo>> ListSnapshots(const SessionKey& key) = 0;

  // A new session `to` of the same tenant with `from`'s metadata, events 1..version and its
  // latest snapshot at or before version, owned by `to` (copies). ALREADY_EXISTS, NOT_FOUND,
  // INVALID_ARGUMENT (another tenant, a version past the end).
  virtual absl::Status Fork(const SessionKey& from, const SessionKey& to, uint64_t version) = 0;
  // Drops events and snapshots after `version` (and their request ids). INVALID_ARGUMENT past
  // the session's version.
  virtual absl::Status Rollback(const SessionKey& key, uint64_t version) = 0;
  // Removes every record of the session at once (physically at the next compaction).
  virtual absl::Status Delete(const SessionKey& key) = 0;
  // Deletes the sessions idle for longer than the TTL; returns which.
  virtual absl::StatusOr<std::vector<SessionKey>> ExpireIdle() = 0;

  // One session as a portable, checksummed blob (metadata, events, latest valid snapshot).
  virtual absl::StatusOr<std::string> Export(const SessionKey& key) = 0;
  // ALREADY_EXISTS; DATA_LOSS for a corrupt blob; INVALID_ARGUMENT for one that is not a blob.
  virtual absl::Status Import(const SessionKey& key, const std::string& blob) = 0;

  // A consistent backup of the whole store into backup_dir (incremental, verified).
  virtual absl::Status Backup(const std::string& backup_dir) = 0;
  // Restores the latest backup into db_path (which must not be open).
  static absl::Status RestoreLatestBackup(const std::string& backup_dir, const std::string& db_path);

  // About how many bytes the tenant's records take on disk and in memtables (quotas).
  virtual absl::StatusOr<uint64_t> ApproximateBytes(const std::string& tenant) = 0;

  // Compacts everything (deleted data leaves the files); for operators and tests.
  virtual absl::Status CompactAll() = 0;
};

}  // namespace adaptd::session_store

#endif  // ADAPTD_SESSION_STORE_STORE_H_
