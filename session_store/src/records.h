// The store's on-disk layout: keys (length-prefixed tenant and session, then big-endian
// numbers, so iteration order is append order and no two ids collide), record values, and the
// checksums and keyed hash they use. Private to session_store/.
#ifndef ADAPTD_SESSION_STORE_SRC_RECORDS_H_
#define ADAPTD_SESSION_STORE_SRC_RECORDS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "adaptd/session_store/store.h"

namespace adaptd::session_store {

absl::Status ValidateId(std::string_view what, std::string_view id);
absl::Status ValidateKey(const SessionKey& key);

// [len][tenant]
std::string TenantPrefix(std::string_view tenant);
// [len][tenant][len][session]
std::string SessionPrefix(const SessionKey& key);
// The smallest string greater than every string starting with `prefix`.
std::string PrefixEnd(std::string prefix);
// The session of a key that starts with a session prefix.
std::optional<SessionKey> ParseSessionPrefix(std::string_view key, size_t* consumed);

void PutU32(std::string* out, uint32_t v);  // big-endian
void PutU64(std::string* out, uint64_t v);
uint32_t GetU32(std::string_view s, size_t at);
uint64_t GetU64(std::string_view s, size_t at);
void PutString(std::string* out, std::string_view s);  // u32 length + bytes
// Reads a PutString value at *at; false if it does not fit.
bool GetString(std::string_view s, size_t* at, std::string* out);

uint32_t Crc32c(std::string_view data, uint32_t crc = 0);
// SipHash-2-4 of `data` under a 16-byte key: page tokens are authenticated with it.
uint64_t SipHash24(std::string_view key16, std::string_view data);

// The session record (sessions column family).
std::string EncodeSessionRecord(const SessionInfo& info);
std::optional<SessionInfo> DecodeSessionRecord(const SessionKey& key, std::string_view value);

// An event record: crc32c of the payload, then the payload.
std::string EncodeEvent(std::string_view payload);
std::optional<std::string> DecodeEvent(std::string_view value);

// A snapshot manifest: the header of a published snapshot.
struct Manifest {
  SnapshotInfo info;
  uint64_t ordinal = 0;   // the session's n-th snapshot (retention keeps every M-th)
  uint64_t write_id = 0;  // names this write's pieces: pieces are never overwritten
  bool bulk = false;      // the pieces are one ingested file in the `bulk` column family
  uint32_t pieces = 0;
  uint32_t payload_crc = 0;
};
std::string EncodeManifest(const Manifest& m);
std::optional<Manifest> DecodeManifest(std::string_view value);

}  // namespace adaptd::session_store

#endif  // ADAPTD_SESSION_STORE_SRC_RECORDS_H_
