// Opening the database, session records, listing, expiry, deletion, backups; the status
// mapping. The event log and snapshots are in store_log.cc, export/import in portable.cc.
#include <chrono>
#include <filesystem>
#include <random>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "fault_fs.h"
#include "rocksdb/convenience.h"
#include "rocksdb/table.h"
#include "rocksdb/utilities/backup_engine.h"
#include "store_impl.h"

namespace adaptd::session_store {

absl::Status FromRocks(const rocksdb::Status& s, const std::string& what) {
  if (s.ok()) return absl::OkStatus();
  const std::string msg = absl::StrCat(what, ": ", s.ToString());
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsNoSpace()) return absl::ResourceExhaustedError(msg);
  if (s.IsIOError() || s.IsBusy() || s.IsTryAgain() || s.IsAborted()) return absl::UnavailableError(msg);
  if (s.IsInvalidArgument()) return absl::InvalidArgumentError(msg);
  return absl::InternalError(msg);
}

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

absl::StatusOr<std::unique_ptr<SessionStore>> SessionStore::Open(const StoreOptions& options) {
  if (options.path.empty()) return absl::InvalidArgumentError("store path is empty");
  if (options.keep_last_snapshots < 1 || options.keep_every_nth_snapshot < 0 || options.max_piece_bytes < 1024 ||
      options.max_piece_bytes > (64u << 20) || options.idle_ttl_seconds < 0 ||
      options.idle_ttl_seconds > 100ll * 365 * 86400) {
    return absl::InvalidArgumentError("store options: keep_last_snapshots >= 1, keep_every_nth_snapshot >= 0, "
                                      "max_piece_bytes in [1 KiB, 64 MiB], idle_ttl_seconds in [0, 100 years]");
  }
  auto store = std::make_unique<RocksStore>(options);
  if (auto s = store->OpenDb(); !s.ok()) return s;
  return std::unique_ptr<SessionStore>(std::move(store));
}

RocksStore::~RocksStore() { CloseDb(); }

void RocksStore::CloseDb() {
  if (db_ == nullptr) return;
  for (auto* h : cf_) db_->DestroyColumnFamilyHandle(h);
  cf_.clear();
  db_->Close();
  delete db_;
  db_ = nullptr;
}

absl::Status RocksStore::OpenDb() {
  rocksdb::Options db_options;
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.max_background_jobs = 2;
  db_options.db_write_buffer_size = options_.memtable_bytes;
  db_options.avoid_flush_during_shutdown = true;  // the WAL has it: a close is like a crash
  // No auto-resume thread: Enter() recovers, synchronously, under the exclusive lock. RocksDB
  // 7.8's own retry thread can end (cancelled by Close before it ran) with its recovery still
  // marked in progress, and Close then waits forever (facebook/rocksdb#11440; seen here as a
  // hang in about 1 run in 30 of StoreTest.DiskFullAndIoErrorsFailCleanlyAndRecover).
  db_options.max_bgerror_resume_count = 0;
  if (options_.faults) {
    env_ = rocksdb::NewCompositeEnv(NewFaultFileSystem(rocksdb::FileSystem::Default(), options_.faults->state()));
    db_options.env = env_.get();
  }
  rocksdb::ColumnFamilyOptions pieces;
  pieces.compression = rocksdb::kNoCompression;
  rocksdb::BlockBasedTableOptions fast_checksums;
  fast_checksums.checksum = rocksdb::kXXH3;
  rocksdb::ColumnFamilyOptions bulk = pieces;
  bulk.disable_auto_compactions = true;  // ingested files are never rewritten
  bulk.table_factory.reset(rocksdb::NewBlockBasedTableFactory(fast_checksums));
  bulk_options_ = rocksdb::Options(db_options, bulk);
  std::vector<rocksdb::ColumnFamilyDescriptor> cfs = {
      {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()},
      {"events", rocksdb::ColumnFamilyOptions()},
      {"snapshots", rocksdb::ColumnFamilyOptions()},
      {"pieces", pieces},
      {"idem", rocksdb::ColumnFamilyOptions()},
      {"meta", rocksdb::ColumnFamilyOptions()},
      {"bulk", bulk}};
  // A crash between writing a large snapshot's file and ingesting it leaves the file behind.
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(options_.path, ec)) {
    if (e.path().filename().string().rfind("ingest-", 0) == 0) std::filesystem::remove(e.path(), ec);
  }
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  auto s = rocksdb::DB::Open(db_options, options_.path, cfs, &handles, &db_);
  if (!s.ok()) return absl::UnavailableError(absl::StrCat("open session store ", options_.path, ": ", s.ToString()));
  cf_ = handles;  // index 0 (default) holds the session records
  std::string secret;
  s = db_->Get(rocksdb::ReadOptions(), cf_[kMeta], "secret", &secret);
  if (s.IsNotFound()) {
    std::random_device rd;
    secret.clear();
    for (int i = 0; i < 16; ++i) secret.push_back(static_cast<char>(rd()));
    rocksdb::WriteBatch b;
    b.Put(cf_[kMeta], "secret", secret);
    if (auto c = Commit(&b, "store secret"); !c.ok()) return c;
  } else if (!s.ok() || secret.size() != 16) {
    return absl::DataLossError("session store: the page-token secret is unreadable");
  }
  secret_ = secret;
  next_write_id_ = static_cast<uint64_t>(NowUnixMs()) << 16;
  return absl::OkStatus();
}

std::mutex& RocksStore::LockFor(const SessionKey& key) {
  return session_mu_[std::hash<std::string>()(SessionPrefix(key)) % session_mu_.size()];
}

rocksdb::Status RocksStore::WithRecovery(const std::function<rocksdb::Status()>& op) {
  auto s = op();
  if (s.IsIOError() || s.IsNoSpace()) needs_recovery_ = true;
  return s;
}

absl::StatusOr<std::shared_lock<std::shared_mutex>> RocksStore::Enter() {
  if (needs_recovery_) {  // while the fault lasts this fails and reads go on; writes fail again
    std::unique_lock<std::shared_mutex> lock(db_mu_);
    if (needs_recovery_ && Recover().ok()) needs_recovery_ = false;
  }
  std::shared_lock<std::shared_mutex> lock(db_mu_);
  if (db_ == nullptr) return absl::UnavailableError("session store is closed");
  return lock;
}

absl::Status RocksStore::Recover() {
  if (db_ != nullptr && db_->Resume().ok()) return absl::OkStatus();
  // Resume cannot undo a failed WAL write (RocksDB 7.8): once the disk takes writes again,
  // reopen, which recovers from the WAL's synced prefix.
  if (auto s = ProbeWritable(); !s.ok()) return s;
  CloseDb();
  return OpenDb();
}

absl::Status RocksStore::ProbeWritable() {
  rocksdb::Env* env = env_ ? env_.get() : rocksdb::Env::Default();
  const std::string path = options_.path + "/WRITE_PROBE";
  std::unique_ptr<rocksdb::FSWritableFile> file;
  auto fs = env->GetFileSystem();
  rocksdb::IOStatus s = fs->NewWritableFile(path, rocksdb::FileOptions(), &file, nullptr);
  if (s.ok()) s = file->Append(std::string(4096, '\0'), rocksdb::IOOptions(), nullptr);
  if (s.ok()) s = file->Sync(rocksdb::IOOptions(), nullptr);
  if (file) (void)file->Close(rocksdb::IOOptions(), nullptr);
  (void)fs->DeleteFile(path, rocksdb::IOOptions(), nullptr);
  return FromRocks(s, "session store still cannot write");
}

absl::Status RocksStore::Commit(rocksdb::WriteBatch* batch, const std::string& what) {
  rocksdb::WriteOptions wo;
  wo.sync = true;
  return FromRocks(WithRecovery([&] { return db_->Write(wo, batch); }), what);
}

absl::StatusOr<SessionInfo> RocksStore::ReadSession(const SessionKey& key) {
  if (auto s = ValidateKey(key); !s.ok()) return s;
  std::string value;
  auto s = db_->Get(rocksdb::ReadOptions(), cf_[kSessions], SessionPrefix(key), &value);
  const std::string name = absl::StrCat("session ", key.tenant, "/", key.session);
  if (s.IsNotFound()) return absl::NotFoundError(name + " not found");
  if (!s.ok()) return FromRocks(s, name);
  auto info = DecodeSessionRecord(key, value);
  if (!info) return absl::DataLossError(name + ": corrupt session record");
  if (options_.idle_ttl_seconds > 0 && NowUnixMs() - info->last_used_unix_ms > options_.idle_ttl_seconds * 1000) {
    return absl::NotFoundError(name + " not found (expired)");
  }
  return *info;
}

absl::Status RocksStore::Create(const SessionKey& key, const std::string& metadata) {
  auto open = Enter();
  if (!open.ok()) return open.status();
  if (auto s = ValidateKey(key); !s.ok()) return s;
  if (metadata.size() > kMaxMetadataBytes) return absl::InvalidArgumentError("session metadata is over 64 KiB");
  std::lock_guard<std::mutex> lock(LockFor(key));
  auto existing = ReadSession(key);
  if (existing.ok()) return absl::AlreadyExistsError(absl::StrCat("session ", key.tenant, "/", key.session, " exists"));
  if (existing.status().code() != absl::StatusCode::kNotFound) return existing.status();
  rocksdb::WriteBatch b;
  DeleteRecords(key, &b);  // an expired session's leftovers
  SessionInfo info;
  info.key = key;
  info.metadata = metadata;
  info.generation = NewGeneration();
  info.created_unix_ms = info.last_used_unix_ms = NowUnixMs();
  b.Put(cf_[kSessions], SessionPrefix(key), EncodeSessionRecord(info));
  auto s = Commit(&b, "create session");
  if (s.ok()) DropBulk(SessionPrefix(key), PrefixEnd(SessionPrefix(key)));  // leftovers
  return s;
}

uint64_t RocksStore::NewGeneration() { return ++next_write_id_; }

absl::StatusOr<SessionInfo> RocksStore::Get(const SessionKey& key) {
  auto open = Enter();
  if (!open.ok()) return open.status();
  return ReadSession(key);
}

absl::Status RocksStore::SetMetadata(const SessionKey& key, const std::string& metadata) {
  auto open = Enter();
  if (!open.ok()) return open.status();
  if (metadata.size() > kMaxMetadataBytes) return absl::InvalidArgumentError("session metadata is over 64 KiB");
  std::lock_guard<std::mutex> lock(LockFor(key));
  auto info = ReadSession(key);
  if (!info.ok()) return info.status();
  info->metadata = metadata;
  rocksdb::WriteBatch b;
  b.Put(cf_[kSessions], SessionPrefix(key), EncodeSessionRecord(*info));
  return Commit(&b, "set session metadata");
}

absl::StatusOr<ListPage> RocksStore::List(const std::string& tenant, int page_size, const std::string& page_token) {
  auto open = Enter();
  if (!open.ok()) return open.status();
  if (auto s = ValidateId("tenant", tenant); !s.ok()) return s;
  if (page_size < 1 || page_size > 1000) return absl::InvalidArgumentError("page_size must be in [1, 1000]");
  auto mac = [&](const std::string& after) {  // binds the token to this store and tenant
    std::string h;
    PutU64(&h, SipHash24(secret_, tenant + '\0' + after));
    return absl::BytesToHexString(h);
  };
  std::string start = TenantPrefix(tenant);
  if (!page_token.empty()) {
    const std::vector<std::string> parts = absl::StrSplit(page_token, '.');
    if (parts.size() != 2 || parts[1] != mac(absl::HexStringToBytes(parts[0]))) {
      return absl::InvalidArgumentError("page_token is not one this store issued for this tenant");
    }
    start = SessionPrefix({tenant, absl::HexStringToBytes(parts[0])}) + '\0';
  }
  const std::string end = PrefixEnd(TenantPrefix(tenant));
  rocksdb::Slice upper(end);
  rocksdb::ReadOptions ro;
  ro.iterate_upper_bound = &upper;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, cf_[kSessions]));
  ListPage page;
  for (it->Seek(start); it->Valid(); it->Next()) {
    size_t used;
    auto key = ParseSessionPrefix(it->key().ToStringView(), &used);
    if (!key || used != it->key().size()) continue;
    auto info = DecodeSessionRecord(*key, it->value().ToStringView());
    if (!info) return absl::DataLossError(absl::StrCat("session ", key->tenant, "/", key->session, ": corrupt record"));
    if (options_.idle_ttl_seconds > 0 && NowUnixMs() - info->last_used_unix_ms > options_.idle_ttl_seconds * 1000) continue;
    if (static_cast<int>(page.sessions.size()) == page_size) {
      const std::string& last = page.sessions.back().key.session;
      page.next_page_token = absl::StrCat(absl::BytesToHexString(last), ".", mac(last));
      break;
    }
    page.sessions.push_back(*std::move(info));
  }
  if (auto s = FromRocks(it->status(), "list sessions"); !s.ok()) return s;
  return page;
}

void RocksStore::DeleteRecords(const SessionKey& key, rocksdb::WriteBatch* batch) {
  const std::string prefix = SessionPrefix(key), end = PrefixEnd(prefix);
  for (Cf cf : {kEvents, kSnapshots, kPieces, kIdem}) batch->DeleteRange(cf_[cf], prefix, end);
  batch->DeleteRange(cf_[kMeta], "q" + prefix, "q" + end);  // quarantined manifests
  batch->Delete(cf_[kSessions], prefix);
}

absl::Status RocksStore::ClearLeftovers(const SessionKey& key) {
  rocksdb::WriteBatch b;
  DeleteRecords(key, &b);
  auto s = Commit(&b, "clear expired session");
  if (s.ok()) DropBulk(SessionPrefix(key), PrefixEnd(SessionPrefix(key)));
  return s;
}

void RocksStore::DropBulk(const std::string& begin, const std::string& end) {
  const rocksdb::Slice b(begin), e(end);
  // Best effort: a failure leaves unreferenced files, which no manifest names.
  (void)rocksdb::DeleteFilesInRange(db_, cf_[kBulk], &b, &e, /*include_end=*/false);
}

absl::Status RocksStore::Delete(const SessionKey& key) {
  auto open = Enter();
  if (!open.ok()) return open.status();
  if (auto s = ValidateKey(key); !s.ok()) return s;
  std::lock_guard<std::mutex> lock(LockFor(key));
  if (auto info = ReadSession(key); !info.ok()) return info.status();
  rocksdb::WriteBatch b;
  DeleteRecords(key, &b);
  auto s = Commit(&b, "delete session");
  if (s.ok()) DropBulk(SessionPrefix(key), PrefixEnd(SessionPrefix(key)));
  return s;
}

absl::StatusOr<std::vector<SessionKey>> RocksStore::ExpireIdle() {
  auto open = Enter();
  if (!open.ok()) return open.status();
  if (options_.idle_ttl_seconds <= 0) return std::vector<SessionKey>{};
  std::vector<SessionKey> idle;
  {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf_[kSessions]));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      size_t used;
      auto key = ParseSessionPrefix(it->key().ToStringView(), &used);
      if (!key) continue;
      auto info = DecodeSessionRecord(*key, it->value().ToStringView());
      if (info && NowUnixMs() - info->last_used_unix_ms > options_.idle_ttl_seconds * 1000) idle.push_back(*key);
    }
    if (auto s = FromRocks(it->status(), "scan sessions"); !s.ok()) return s;
  }
  std::vector<SessionKey> deleted;
  for (const auto& key : idle) {
    std::lock_guard<std::mutex> lock(LockFor(key));
    if (ReadSession(key).status().code() != absl::StatusCode::kNotFound) continue;  // used meanwhile
    rocksdb::WriteBatch b;
    DeleteRecords(key, &b);
    if (auto s = Commit(&b, "expire session"); !s.ok()) return s;
    DropBulk(SessionPrefix(key), PrefixEnd(SessionPrefix(key)));
    deleted.push_back(key);
  }
  return deleted;
}

absl::Status RocksStore::Backup(const std::string& backup_dir) {
  auto open = Enter();
  if (!open.ok()) return open.status();
  rocksdb::BackupEngine* engine = nullptr;
  auto s = rocksdb::BackupEngine::Open(db_->GetEnv(), rocksdb::BackupEngineOptions(backup_dir), &engine);
  if (!s.ok()) return FromRocks(s, "open backup " + backup_dir);
  std::unique_ptr<rocksdb::BackupEngine> owner(engine);
  rocksdb::BackupID id = 0;
  s = engine->CreateNewBackup(rocksdb::CreateBackupOptions(), db_, &id);
  if (s.ok()) s = engine->VerifyBackup(id, /*verify_with_checksum=*/true);
  return FromRocks(s, "backup to " + backup_dir);
}

absl::Status SessionStore::RestoreLatestBackup(const std::string& backup_dir, const std::string& db_path) {
  rocksdb::BackupEngineReadOnly* engine = nullptr;
  auto s = rocksdb::BackupEngineReadOnly::Open(rocksdb::Env::Default(), rocksdb::BackupEngineOptions(backup_dir), &engine);
  if (!s.ok()) return FromRocks(s, "open backup " + backup_dir);
  std::unique_ptr<rocksdb::BackupEngineReadOnly> owner(engine);
  return FromRocks(engine->RestoreDBFromLatestBackup(db_path, db_path), "restore " + db_path);
}

absl::StatusOr<uint64_t> RocksStore::ApproximateBytes(const std::string& tenant) {
  auto open = Enter();
  if (!open.ok()) return open.status();
  if (auto s = ValidateId("tenant", tenant); !s.ok()) return s;
  const std::string begin = TenantPrefix(tenant), end = PrefixEnd(begin);
  const rocksdb::Range range(begin, end);
  rocksdb::SizeApproximationOptions o;
  o.include_memtables = true;
  o.include_files = true;
  uint64_t total = 0;
  for (rocksdb::ColumnFamilyHandle* cf : cf_) {
    uint64_t bytes = 0;
    if (auto s = FromRocks(db_->GetApproximateSizes(o, cf, &range, 1, &bytes), "approximate sizes"); !s.ok()) return s;
    total += bytes;
  }
  return total;
}

absl::Status RocksStore::CompactAll() {
  auto open = Enter();
  if (!open.ok()) return open.status();
  if (auto s = FromRocks(db_->Flush(rocksdb::FlushOptions(), cf_), "flush"); !s.ok()) return s;
  rocksdb::CompactRangeOptions o;
  o.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForce;
  for (int cf = 0; cf < kNumCf; ++cf) {
    if (cf == kBulk) continue;  // one file per snapshot, dropped whole; never rewritten
    if (auto s = FromRocks(db_->CompactRange(o, cf_[cf], nullptr, nullptr), "compact"); !s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace adaptd::session_store
