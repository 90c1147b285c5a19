// Export / import of one session as a portable blob, for moving sessions between replicas:
//   "ADAPTDEX" format u32 | metadata | version u64 | event count u64, (seq u64, payload)* |
//   has snapshot u8 [, manifest, payload] | crc32c u32 of everything before.
// Strings are PutString (u32 length + bytes).
#include "absl/strings/str_cat.h"
#include "store_impl.h"

namespace adaptd::session_store {
namespace {

constexpr char kMagic[] = "ADAPTDEX";
constexpr uint32_t kFormat = 1;

}  // namespace

absl::StatusOr<std::string> RocksStore::Export(const SessionKey& key) {
  auto open = Enter();
  if (!open.ok()) return open.status();
  std::lock_guard<std::mutex> lock(LockFor(key));
  auto info = ReadSession(key);
  if (!info.ok()) return info.status();
  std::optional<Manifest> m;
  std::string payload;
  std::vector<uint64_t> quarantined;
  if (auto s = FindSnapshot(key, info->version, /*allow_lossy=*/false, "", &m, &payload, &quarantined); !s.ok()) return s;
  auto events = ReadEvents(key, 0, info->version);
  if (!events.ok()) return events.status();
  std::string blob(kMagic);
  PutU32(&blob, kFormat);
  PutString(&blob, info->metadata);
  PutU64(&blob, info->version);
  PutU64(&blob, events->size());
  for (const auto& e : *events) {
    PutU64(&blob, e.seq);
    PutString(&blob, e.payload);
  }
  blob.push_back(m ? 1 : 0);
  if (m) {
    PutString(&blob, EncodeManifest(*m));
    PutString(&blob, payload);
  }
  PutU32(&blob, Crc32c(blob));
  return blob;
}

absl::Status RocksStore::Import(const SessionKey& key, const std::string& blob) {
  auto open = Enter();
  if (!open.ok()) return open.status();
  if (auto s = ValidateKey(key); !s.ok()) return s;
  const size_t head = sizeof(kMagic) - 1;
  if (blob.size() < head + 4 + 4 || blob.compare(0, head, kMagic) != 0) {
    return absl::InvalidArgumentError("not an exported session");
  }
  if (GetU32(blob, head) != kFormat) return absl::InvalidArgumentError(absl::StrCat("export format ", GetU32(blob, head)));
  const std::string_view body(blob.data(), blob.size() - 4);
  if (Crc32c(body) != GetU32(blob, blob.size() - 4)) return absl::DataLossError("exported session: checksum mismatch");
  auto corrupt = [] { return absl::DataLossError("exported session: malformed"); };
  SessionInfo info;
  info.key = key;
  size_t at = head + 4;
  if (!GetString(body, &at, &info.metadata) || info.metadata.size() > kMaxMetadataBytes || at + 16 > body.size()) {
    return corrupt();
  }
  info.version = GetU64(body, at);
  const uint64_t count = GetU64(body, at + 8);
  at += 16;
  if (count != info.version || count > (body.size() - at) / 12) return corrupt();  // an event takes >= 12 bytes
  std::vector<Event> events(count);
  for (uint64_t i = 0; i < count; ++i) {
    if (at + 8 > body.size()) return corrupt();
    events[i].seq = GetU64(body, at);
    at += 8;
    if (events[i].seq != i + 1 || !GetString(body, &at, &events[i].payload)) return corrupt();
  }
  if (at >= body.size()) return corrupt();
  const bool has_snapshot = body[at++] != 0;
  std::optional<Manifest> m;
  std::string manifest, payload;
  if (has_snapshot) {
    if (!GetString(body, &at, &manifest) || !GetString(body, &at, &payload)) return corrupt();
    m = DecodeManifest(manifest);
    if (!m || m->info.version > info.version || Crc32c(payload) != m->payload_crc) return corrupt();
  }
  if (at != body.size()) return corrupt();

  std::lock_guard<std::mutex> lock(LockFor(key));
  if (ReadSession(key).ok()) return absl::AlreadyExistsError(absl::StrCat("session ", key.tenant, "/", key.session, " exists"));
  if (auto s = ClearLeftovers(key); !s.ok()) return s;
  rocksdb::WriteBatch b;
  const std::string prefix = SessionPrefix(key);
  for (const auto& e : events) {
    std::string k = prefix;
    PutU64(&k, e.seq);
    b.Put(cf_[kEvents], k, EncodeEvent(e.payload));
  }
  info.generation = NewGeneration();
  info.created_unix_ms = info.last_used_unix_ms = NowUnixMs();
  if (m) {
    if (auto s = WritePieces(key, payload, &*m, &b); !s.ok()) return s;
    info.snapshots_written = m->ordinal = 1;
    b.Put(cf_[kSnapshots], SnapshotKey(key, m->info.version), EncodeManifest(*m));
  }
  b.Put(cf_[kSessions], prefix, EncodeSessionRecord(info));
  auto s = Commit(&b, "import session");
  if (!s.ok() && m && m->bulk) DropBulk(PieceKey(key, *m, 0), PieceKey(key, *m, m->pieces));
  return s;
}

}  // namespace adaptd::session_store
