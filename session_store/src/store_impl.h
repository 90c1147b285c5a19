// RocksStore: the SessionStore on RocksDB. Column families:
//   sessions   [tenant][session]                  -> session record (records.h)
//   events     [tenant][session][seq u64]         -> event record
//   snapshots  [tenant][session][version u64]     -> manifest
//   pieces     [tenant][session][version][write id][i u32] -> piece of a small payload
//              (written with its manifest through the WAL; never overwritten)
//   bulk       the same keys for large payloads: each snapshot one SST file written by
//              SstFileWriter and ingested (written once), no compaction (never copied),
//              removed whole by DeleteFilesInRange
//   idem       [tenant][session][request id]      -> version u64 + result
//   meta       "secret"                           -> the key of page-token MACs
// Private to session_store/.
#ifndef ADAPTD_SESSION_STORE_SRC_STORE_IMPL_H_
#define ADAPTD_SESSION_STORE_SRC_STORE_IMPL_H_

#include <array>
#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "adaptd/session_store/store.h"
#include "records.h"
#include "rocksdb/db.h"

namespace adaptd::session_store {

// rocksdb::Status -> absl::Status with `what` as context: NotFound -> NOT_FOUND, Corruption ->
// DATA_LOSS, no space -> RESOURCE_EXHAUSTED, other I/O errors -> UNAVAILABLE.
absl::Status FromRocks(const rocksdb::Status& s, const std::string& what);
int64_t NowUnixMs();

class RocksStore : public SessionStore {
 public:
  enum Cf { kSessions, kEvents, kSnapshots, kPieces, kIdem, kMeta, kBulk, kNumCf };

  explicit RocksStore(StoreOptions options) : options_(std::move(options)) {}
  ~RocksStore() override;
  absl::Status OpenDb();

  absl::Status Create(const SessionKey& key, const std::string& metadata) override;
  absl::StatusOr<SessionInfo> Get(const SessionKey& key) override;
  absl::StatusOr<ListPage> List(const std::string& tenant, int page_size, const std::string& page_token) override;
  absl::StatusOr<AppendResult> Append(const SessionKey& key, uint64_t expected_version, const std::string& event,
                                      const std::string& request_id, const std::string& result) override;
  absl::StatusOr<std::optional<AppendResult>> LookupRequest(const SessionKey& key, const std::string& request_id) override;
  absl::Status WriteSnapshot(const SessionKey& key, const SnapshotInfo& info, const std::string& payload) override;
  absl::Status SetMetadata(const SessionKey& key, const std::string& metadata) override;
  absl::StatusOr<LoadResult> Load(const SessionKey& key, bool allow_lossy_base, const std::string& fingerprint) override;
  absl::StatusOr<std::vector<SnapshotInfo>> ListSnapshots(const SessionKey& key) override;
  absl::Status Fork(const SessionKey& from, const SessionKey& to, uint64_t version) override;
  absl::Status Rollback(const SessionKey& key, uint64_t version) override;
  absl::Status Delete(const SessionKey& key) override;
  absl::StatusOr<std::vector<SessionKey>> ExpireIdle() override;
  absl::StatusOr<std::string> Export(const SessionKey& key) override;
  absl::Status Import(const SessionKey& key, const std::string& blob) override;
  absl::Status Backup(const std::string& backup_dir) override;
  absl::StatusOr<uint64_t> ApproximateBytes(const std::string& tenant) override;
  absl::Status CompactAll() override;
  absl::StatusOr<std::vector<Event>> ReadEvents(const SessionKey& key, uint64_t after, uint64_t upto) override;

 private:
  friend class SessionLock;
  std::mutex& LockFor(const SessionKey& key);

  // The session record; NOT_FOUND if absent or expired.
  absl::StatusOr<SessionInfo> ReadSession(const SessionKey& key);
  // Every public method starts here: if an I/O fault stopped the database, recover first
  // (Resume, or reopen once the disk takes writes again); then hold the database shared.
  absl::StatusOr<std::shared_lock<std::shared_mutex>> Enter();
  absl::Status Recover();         // with db_mu_ held exclusively
  absl::Status ProbeWritable();   // writes and syncs a small file next to the database
  void CloseDb();
  // Runs a write; an I/O fault flags the database for recovery at the next call.
  rocksdb::Status WithRecovery(const std::function<rocksdb::Status()>& op);
  // Writes `batch` with the WAL synced.
  absl::Status Commit(rocksdb::WriteBatch* batch, const std::string& what);
  // The pieces of `payload` for manifest *m (version set; write_id, pieces, size and checksum
  // filled in): into `batch` when small, else written without the WAL and flushed.
  absl::Status WritePieces(const SessionKey& key, const std::string& payload, Manifest* m, rocksdb::WriteBatch* batch);
  std::string PieceKey(const SessionKey& key, const Manifest& m, uint32_t i) const;
  // The newest valid snapshot at or before `version` (of model `fingerprint` unless empty):
  // corrupt ones are quarantined.
  absl::Status FindSnapshot(const SessionKey& key, uint64_t version, bool allow_lossy, const std::string& fingerprint,
                            std::optional<Manifest>* found,
                            std::string* payload, std::vector<uint64_t>* quarantined);
  // Adds to `batch` the deletion of the snapshots retention no longer keeps once `added`
  // (being published in the batch) is; their versions go to *dropped.
  absl::Status Retain(const SessionKey& key, const Manifest& added, rocksdb::WriteBatch* batch,
                      std::vector<uint64_t>* dropped);
  // Removes the bulk files of keys in [begin, end) (after the manifests naming them are gone).
  void DropBulk(const std::string& begin, const std::string& end);
  void DeleteRecords(const SessionKey& key, rocksdb::WriteBatch* batch);
  uint64_t NewGeneration();  // unique across restarts (from the write-id clock)
  // Deletes what an expired session left, before records (snapshot pieces are written outside
  // the final batch) are written under its key.
  absl::Status ClearLeftovers(const SessionKey& key);
  std::string SnapshotKey(const SessionKey& key, uint64_t version) const;

  StoreOptions options_;
  std::unique_ptr<rocksdb::Env> env_;
  rocksdb::DB* db_ = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> cf_;
  rocksdb::Options bulk_options_;  // for SstFileWriter
  std::string secret_;  // 16 bytes
  std::array<std::mutex, 64> session_mu_;
  std::shared_mutex db_mu_;  // shared by calls, exclusive for recovery (which may reopen db_)
  std::atomic<bool> needs_recovery_{false};
  std::atomic<uint64_t> next_write_id_{0};  // from the clock at open: unique across restarts
};

}  // namespace adaptd::session_store

#endif  // ADAPTD_SESSION_STORE_SRC_STORE_IMPL_H_
