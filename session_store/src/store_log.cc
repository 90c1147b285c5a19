// The event log and snapshots: append with expected version and request ids, atomic snapshot
// publication and retention, load with quarantine of corrupt snapshots, fork and rollback.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "rocksdb/sst_file_writer.h"
#include "store_impl.h"

namespace adaptd::session_store {
namespace {

std::string Name(const SessionKey& key) { return absl::StrCat(key.tenant, "/", key.session); }

std::string SeqKey(const std::string& prefix, uint64_t seq) {
  std::string k = prefix;
  PutU64(&k, seq);
  return k;
}

}  // namespace

std::string RocksStore::SnapshotKey(const SessionKey& key, uint64_t version) const {
  return SeqKey(SessionPrefix(key), version);
}

absl::StatusOr<AppendResult> RocksStore::Append(const SessionKey& key, uint64_t expected_version,
                                                const std::string& event, const std::string& request_id,
                                                const std::string& result) {
  auto open = Enter();
  if (!open.ok()) return open.status();
  if (auto s = ValidateKey(key); !s.ok()) return s;
  if (!request_id.empty()) {
    if (auto s = ValidateId("request", request_id); !s.ok()) return s;
  }
  if (event.size() > kMaxEventBytes || result.size() > kMaxResultBytes) {
    return absl::InvalidArgumentError("event over 16 MiB or result over 1 MiB");
  }
  std::lock_guard<std::mutex> lock(LockFor(key));
  const std::string prefix = SessionPrefix(key);
  if (!request_id.empty()) {
    std::string seen;
    auto s = db_->Get(rocksdb::ReadOptions(), cf_[kIdem], prefix + request_id, &seen);
    if (s.ok() && seen.size() >= 8) return AppendResult{GetU64(seen, 0), true, seen.substr(8)};
    if (!s.ok() && !s.IsNotFound()) return FromRocks(s, "read request id");
  }
  auto info = ReadSession(key);
  if (!info.ok()) return info.status();
  if (info->version != expected_version) {
    return absl::FailedPreconditionError(absl::StrCat("session ", Name(key), " is at version ", info->version,
                                                      ", not ", expected_version));
  }
  info->version += 1;
  info->last_used_unix_ms = NowUnixMs();
  rocksdb::WriteBatch b;  // event, version and request id: all or nothing
  b.Put(cf_[kEvents], SeqKey(prefix, info->version), EncodeEvent(event));
  b.Put(cf_[kSessions], prefix, EncodeSessionRecord(*info));
  if (!request_id.empty()) {
    std::string record;
    PutU64(&record, info->version);
    b.Put(cf_[kIdem], prefix + request_id, record + result);
  }
  if (auto s = Commit(&b, "append event"); !s.ok()) return s;
  return AppendResult{info->version, false, result};
}

absl::StatusOr<std::optional<AppendResult>> RocksStore::LookupRequest(const SessionKey& key,
                                                                      const std::string& request_id) {
  auto open = Enter();
  if (!open.ok()) return open.status();
  if (auto s = ValidateId("request", request_id); !s.ok()) return s;
  if (auto info = ReadSession(key); !info.ok()) return info.status();
  std::string seen;
  auto s = db_->Get(rocksdb::ReadOptions(), cf_[kIdem], SessionPrefix(key) + request_id, &seen);
  if (s.IsNotFound()) return std::optional<AppendResult>();
  if (!s.ok()) return FromRocks(s, "read request id");
  if (seen.size() < 8) return absl::DataLossError("request id record is corrupt");
  return std::optional<AppendResult>(AppendResult{GetU64(seen, 0), true, seen.substr(8)});
}

std::string RocksStore::PieceKey(const SessionKey& key, const Manifest& m, uint32_t i) const {
  std::string k = SnapshotKey(key, m.info.version);
  PutU64(&k, m.write_id);
  PutU32(&k, i);
  return k;
}

absl::Status RocksStore::WritePieces(const SessionKey& key, const std::string& payload, Manifest* m,
                                     rocksdb::WriteBatch* batch) {
  m->write_id = ++next_write_id_;
  m->bulk = false;
  m->info.payload_bytes = payload.size();
  m->payload_crc = Crc32c(payload);
  const uint64_t piece = options_.max_piece_bytes;
  m->pieces = static_cast<uint32_t>(std::max<uint64_t>(1, (payload.size() + piece - 1) / piece));
  auto slice = [&](uint32_t i) {
    const uint64_t at = i * piece;
    return rocksdb::Slice(payload.data() + at, std::min<uint64_t>(piece, payload.size() - at));
  };
  if (payload.size() <= options_.inline_snapshot_bytes) {
    for (uint32_t i = 0; i < m->pieces; ++i) batch->Put(cf_[kPieces], PieceKey(key, *m, i), slice(i));
    return absl::OkStatus();
  }
  // Large: one SST file of the pieces, written once and synced by SstFileWriter, then moved
  // into the database by ingestion (its own synced MANIFEST edit).
  m->bulk = true;
  const std::string file = absl::StrCat(options_.path, "/ingest-", m->write_id, ".sst");
  rocksdb::SstFileWriter writer(rocksdb::EnvOptions(), bulk_options_, cf_[kBulk], /*invalidate_page_cache=*/false,
                               rocksdb::Env::IO_TOTAL, /*skip_filters=*/true);
  rocksdb::Status s = writer.Open(file);
  for (uint32_t i = 0; s.ok() && i < m->pieces; ++i) s = writer.Put(PieceKey(key, *m, i), slice(i));
  if (s.ok()) s = writer.Finish();
  if (s.ok()) {
    rocksdb::IngestExternalFileOptions ingest;
    ingest.move_files = true;
    s = WithRecovery([&] { return db_->IngestExternalFile(cf_[kBulk], {file}, ingest); });
  }
  if (!s.ok()) {
    std::remove(file.c_str());
    if (s.IsIOError() || s.IsNoSpace()) needs_recovery_ = true;
  }
  return FromRocks(s, "write snapshot pieces");
}

absl::Status RocksStore::Retain(const SessionKey& key, const Manifest& added, rocksdb::WriteBatch* batch,
                              std::vector<uint64_t>* dropped) {
  const std::string prefix = SessionPrefix(key), end = PrefixEnd(prefix);
  rocksdb::Slice upper(end);
  rocksdb::ReadOptions ro;
  ro.iterate_upper_bound = &upper;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, cf_[kSnapshots]));
  std::vector<std::pair<uint64_t, uint64_t>> all;  // version, ordinal
  for (it->Seek(prefix); it->Valid(); it->Next()) {
    const uint64_t version = GetU64(it->key().ToStringView(), prefix.size());
    auto m = DecodeManifest(it->value().ToStringView());
    if (version != added.info.version) all.emplace_back(version, m ? m->ordinal : 0);
  }
  if (auto s = FromRocks(it->status(), "read manifests"); !s.ok()) return s;
  all.emplace_back(added.info.version, added.ordinal);
  std::sort(all.begin(), all.end());
  const size_t keep_last = static_cast<size_t>(options_.keep_last_snapshots);
  const int every = options_.keep_every_nth_snapshot;
  for (size_t i = 0; i + keep_last < all.size(); ++i) {
    const auto [version, ordinal] = all[i];
    if (version == added.info.version) continue;  // the one being published stays
    if (every > 0 && ordinal > 0 && ordinal % every == 0) continue;
    batch->Delete(cf_[kSnapshots], SnapshotKey(key, version));
    batch->DeleteRange(cf_[kPieces], SnapshotKey(key, version), SnapshotKey(key, version + 1));
    dropped->push_back(version);
  }
  return absl::OkStatus();
}

absl::Status RocksStore::WriteSnapshot(const SessionKey& key, const SnapshotInfo& info, const std::string& payload) {
  auto open = Enter();
  if (!open.ok()) return open.status();
  if (auto s = ValidateKey(key); !s.ok()) return s;
  if (info.fingerprint.size() > 256 || info.encoding.size() > 256 || payload.size() > kMaxSnapshotBytes) {
    return absl::InvalidArgumentError("snapshot fingerprint and encoding are at most 256 bytes, payloads 2 GiB");
  }
  uint64_t generation;
  if (auto current = ReadSession(key); !current.ok()) {
    return current.status();
  } else if (info.version > current->version) {
    return absl::InvalidArgumentError(absl::StrCat("snapshot version ", info.version, " is past session ", Name(key),
                                                   "'s version ", current->version));
  } else {
    generation = current->generation;
  }
  Manifest m;
  m.info = info;
  // Large pieces are written outside the session lock (appends go on meanwhile); the manifest
  // is published under it, after checking the session still holds that version.
  rocksdb::WriteBatch b;
  if (auto s = WritePieces(key, payload, &m, &b); !s.ok()) return s;
  std::lock_guard<std::mutex> lock(LockFor(key));
  auto current = ReadSession(key);
  if (!current.ok() || current->version < info.version || current->generation != generation) {
    rocksdb::WriteBatch drop;
    drop.DeleteRange(cf_[kPieces], PieceKey(key, m, 0), PieceKey(key, m, m.pieces));
    (void)Commit(&drop, "drop orphaned snapshot pieces");
    DropBulk(PieceKey(key, m, 0), PieceKey(key, m, m.pieces));
    return current.ok() ? absl::FailedPreconditionError(absl::StrCat("session ", Name(key), "'s history was rewritten "
                                                                     "while the snapshot was written"))
                        : current.status();
  }
  // A snapshot at the same version is replaced: its pieces go with it.
  std::optional<Manifest> replaced;
  {
    std::string old_manifest;
    if (db_->Get(rocksdb::ReadOptions(), cf_[kSnapshots], SnapshotKey(key, info.version), &old_manifest).ok()) {
      replaced = DecodeManifest(old_manifest);
      if (replaced) b.DeleteRange(cf_[kPieces], PieceKey(key, *replaced, 0), PieceKey(key, *replaced, replaced->pieces));
    }
  }
  current->snapshots_written += 1;
  m.ordinal = current->snapshots_written;
  b.Put(cf_[kSnapshots], SnapshotKey(key, info.version), EncodeManifest(m));
  b.Put(cf_[kSessions], SessionPrefix(key), EncodeSessionRecord(*current));
  std::vector<uint64_t> dropped;
  if (auto s = Retain(key, m, &b, &dropped); !s.ok()) return s;
  if (auto s = Commit(&b, "publish snapshot"); !s.ok()) {
    if (m.bulk) DropBulk(PieceKey(key, m, 0), PieceKey(key, m, m.pieces));
    return s;
  }
  for (uint64_t v : dropped) DropBulk(SnapshotKey(key, v), SnapshotKey(key, v + 1));
  if (replaced && replaced->bulk) DropBulk(PieceKey(key, *replaced, 0), PieceKey(key, *replaced, replaced->pieces));
  return absl::OkStatus();
}

absl::Status RocksStore::FindSnapshot(const SessionKey& key, uint64_t version, bool allow_lossy,
                                      const std::string& fingerprint, std::optional<Manifest>* found, std::string* payload,
                                      std::vector<uint64_t>* quarantined) {
  const std::string prefix = SessionPrefix(key);
  rocksdb::WriteBatch quarantine;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), cf_[kSnapshots]));
  for (it->SeekForPrev(SnapshotKey(key, version)); it->Valid() && it->key().starts_with(prefix); it->Prev()) {
    const uint64_t v = GetU64(it->key().ToStringView(), prefix.size());
    auto m = DecodeManifest(it->value().ToStringView());
    bool ok = m.has_value();
    if (ok && m->info.lossy && !allow_lossy) continue;
    if (ok && !fingerprint.empty() && m->info.fingerprint != fingerprint) continue;
    std::string bytes;
    if (ok) bytes.reserve(m->info.payload_bytes);
    rocksdb::ReadOptions pieces;
    pieces.verify_checksums = false;  // the payload's own CRC-32C below checks every byte once
    for (uint32_t i = 0; ok && i < m->pieces; ++i) {
      rocksdb::PinnableSlice piece;
      const auto s = db_->Get(pieces, cf_[m->bulk ? kBulk : kPieces], PieceKey(key, *m, i), &piece);
      if (!s.ok() && !s.IsNotFound() && !s.IsCorruption()) {
        return FromRocks(s, "read snapshot of " + Name(key));  // transient: not the snapshot's fault
      }
      ok = s.ok() && m->info.version == v;
      bytes.append(piece.data(), piece.size());
    }
    if (ok && bytes.size() == m->info.payload_bytes && Crc32c(bytes) == m->payload_crc) {
      *found = m;
      *payload = std::move(bytes);
      break;
    }
    // Corrupt: moved aside (kept for inspection, deleted with the session) and reported.
    quarantine.Put(cf_[kMeta], "q" + it->key().ToString(), it->value());
    quarantine.Delete(cf_[kSnapshots], it->key());
    quarantined->push_back(v);
  }
  if (auto s = FromRocks(it->status(), "read snapshots of " + Name(key)); !s.ok() && quarantined->empty()) return s;
  if (quarantine.Count() > 0) return Commit(&quarantine, "quarantine snapshot");
  return absl::OkStatus();
}

absl::StatusOr<std::vector<Event>> RocksStore::ReadEvents(const SessionKey& key, uint64_t after, uint64_t upto) {
  const std::string prefix = SessionPrefix(key), end = SeqKey(prefix, upto + 1);
  rocksdb::Slice upper(end);
  rocksdb::ReadOptions ro;
  ro.iterate_upper_bound = &upper;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, cf_[kEvents]));
  std::vector<Event> events;
  uint64_t next = after + 1;
  for (it->Seek(SeqKey(prefix, next)); it->Valid() && next <= upto; it->Next(), ++next) {
    const uint64_t seq = GetU64(it->key().ToStringView(), prefix.size());
    if (seq != next) return absl::DataLossError(absl::StrCat("session ", Name(key), ": event ", next, " is missing"));
    auto payload = DecodeEvent(it->value().ToStringView());
    if (!payload) return absl::DataLossError(absl::StrCat("session ", Name(key), ": event ", seq, " is corrupt"));
    events.push_back({seq, *std::move(payload)});
  }
  if (!it->status().ok()) {
    return absl::DataLossError(absl::StrCat("session ", Name(key), ": event ", next, " is unreadable: ", it->status().ToString()));
  }
  if (next <= upto) return absl::DataLossError(absl::StrCat("session ", Name(key), ": event ", next, " is missing"));
  return events;
}

absl::StatusOr<LoadResult> RocksStore::Load(const SessionKey& key, bool allow_lossy_base, const std::string& fingerprint) {
  auto open = Enter();
  if (!open.ok()) return open.status();
  std::lock_guard<std::mutex> lock(LockFor(key));
  auto info = ReadSession(key);
  if (!info.ok()) return info.status();
  LoadResult r;
  std::optional<Manifest> m;
  if (auto s = FindSnapshot(key, info->version, allow_lossy_base, fingerprint, &m, &r.snapshot_payload, &r.quarantined); !s.ok()) {
    return s;
  }
  if (m) r.snapshot = m->info;
  auto events = ReadEvents(key, m ? m->info.version : 0, info->version);
  if (!events.ok()) return events.status();
  r.events = *std::move(events);
  info->last_used_unix_ms = NowUnixMs();  // not synced: a lost touch only shortens the idle time
  db_->Put(rocksdb::WriteOptions(), cf_[kSessions], SessionPrefix(key), EncodeSessionRecord(*info));
  r.info = *std::move(info);
  return r;
}

absl::StatusOr<std::vector<SnapshotInfo>> RocksStore::ListSnapshots(const SessionKey& key) {
  auto open = Enter();
  if (!open.ok()) return open.status();
  if (auto info = ReadSession(key); !info.ok()) return info.status();
  const std::string prefix = SessionPrefix(key), end = PrefixEnd(prefix);
  rocksdb::Slice upper(end);
  rocksdb::ReadOptions ro;
  ro.iterate_upper_bound = &upper;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, cf_[kSnapshots]));
  std::vector<SnapshotInfo> out;
  for (it->Seek(prefix); it->Valid(); it->Next()) {
    auto m = DecodeManifest(it->value().ToStringView());
    if (m) out.push_back(m->info);
  }
  if (auto s = FromRocks(it->status(), "list snapshots of " + Name(key)); !s.ok()) return s;
  return out;
}

absl::Status RocksStore::Fork(const SessionKey& from, const SessionKey& to, uint64_t version) {
  auto open = Enter();
  if (!open.ok()) return open.status();
  if (auto s = ValidateKey(to); !s.ok()) return s;
  if (from.tenant != to.tenant) return absl::InvalidArgumentError("a fork stays in its tenant");
  std::mutex* a = &LockFor(from);
  std::mutex* b = &LockFor(to);
  if (a > b) std::swap(a, b);
  std::lock_guard<std::mutex> la(*a);
  std::unique_lock<std::mutex> lb(*b, std::defer_lock);
  if (a != b) lb.lock();
  auto src = ReadSession(from);
  if (!src.ok()) return src.status();
  if (auto dst = ReadSession(to); dst.ok()) {
    return absl::AlreadyExistsError(absl::StrCat("session ", Name(to), " exists"));
  }
  if (version > src->version) {
    return absl::InvalidArgumentError(absl::StrCat("fork version ", version, " is past session ", Name(from),
                                                   "'s version ", src->version));
  }
  std::optional<Manifest> m;
  std::string payload;
  std::vector<uint64_t> quarantined;
  if (auto s = FindSnapshot(from, version, /*allow_lossy=*/false, "", &m, &payload, &quarantined); !s.ok()) return s;
  auto events = ReadEvents(from, 0, version);
  if (!events.ok()) return events.status();
  if (auto s = ClearLeftovers(to); !s.ok()) return s;
  rocksdb::WriteBatch batch;
  const std::string prefix = SessionPrefix(to);
  for (const auto& e : *events) batch.Put(cf_[kEvents], SeqKey(prefix, e.seq), EncodeEvent(e.payload));
  SessionInfo info;
  info.key = to;
  info.metadata = src->metadata;
  info.version = version;
  info.generation = NewGeneration();
  info.created_unix_ms = info.last_used_unix_ms = NowUnixMs();
  if (m) {
    if (auto s = WritePieces(to, payload, &*m, &batch); !s.ok()) return s;
    info.snapshots_written = m->ordinal = 1;
    batch.Put(cf_[kSnapshots], SnapshotKey(to, m->info.version), EncodeManifest(*m));
  }
  batch.Put(cf_[kSessions], prefix, EncodeSessionRecord(info));
  auto s = Commit(&batch, "fork session");
  if (!s.ok() && m && m->bulk) DropBulk(PieceKey(to, *m, 0), PieceKey(to, *m, m->pieces));
  return s;
}

absl::Status RocksStore::Rollback(const SessionKey& key, uint64_t version) {
  auto open = Enter();
  if (!open.ok()) return open.status();
  std::lock_guard<std::mutex> lock(LockFor(key));
  auto info = ReadSession(key);
  if (!info.ok()) return info.status();
  if (version > info->version) {
    return absl::InvalidArgumentError(absl::StrCat("rollback version ", version, " is past session ", Name(key),
                                                   "'s version ", info->version));
  }
  const std::string prefix = SessionPrefix(key), end = PrefixEnd(prefix);
  rocksdb::WriteBatch b;
  b.DeleteRange(cf_[kEvents], SeqKey(prefix, version + 1), end);
  b.DeleteRange(cf_[kSnapshots], SeqKey(prefix, version + 1), end);
  b.DeleteRange(cf_[kPieces], SeqKey(prefix, version + 1), end);
  {
    rocksdb::Slice upper(end);
    rocksdb::ReadOptions ro;
    ro.iterate_upper_bound = &upper;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, cf_[kIdem]));
    for (it->Seek(prefix); it->Valid(); it->Next()) {
      if (it->value().size() >= 8 && GetU64(it->value().ToStringView(), 0) > version) b.Delete(cf_[kIdem], it->key());
    }
    if (auto s = FromRocks(it->status(), "read request ids"); !s.ok()) return s;
  }
  info->version = version;
  info->generation = NewGeneration();
  info->last_used_unix_ms = NowUnixMs();
  b.Put(cf_[kSessions], prefix, EncodeSessionRecord(*info));
  if (auto s = Commit(&b, "rollback session"); !s.ok()) return s;
  DropBulk(SeqKey(prefix, version + 1), end);
  return absl::OkStatus();
}

}  // namespace adaptd::session_store
