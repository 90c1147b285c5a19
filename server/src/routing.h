// Which replica owns a session (deploy/README.md "Routing"): the session id's CRC-32 (zlib's,
// which HAProxy's `crc32` converter also computes) modulo the bucket count picks a line of the
// ownership map, "bucket replica" per line, that tools/routing.py makes by rendezvous hashing
// over a fixed replica list. HAProxy routes by the same map; each server refuses the sessions
// it does not own, so a session never reaches a replica without its state.
#ifndef ADAPTD_SERVER_ROUTING_H_
#define ADAPTD_SERVER_ROUTING_H_

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace adaptd::server {

class Ownership {
 public:
  Ownership() = default;  // one replica: it owns every session

  // The map at `path` as seen by replica `self`. INVALID_ARGUMENT for a malformed map (buckets
  // not numbered 0..n-1 in order, n outside [1, 65536]) or one that does not name `self`.
  static absl::StatusOr<Ownership> Load(const std::string& path, const std::string& self);

  const std::string& Owner(std::string_view session_id) const;
  bool Owns(std::string_view session_id) const { return buckets_.empty() || Owner(session_id) == self_; }
  // FAILED_PRECONDITION naming the owner for a session this replica does not own.
  absl::Status Check(std::string_view session_id) const;
  size_t buckets() const { return buckets_.size(); }

 private:
  std::string self_;
  std::vector<std::string> buckets_;
};

}  // namespace adaptd::server

#endif  // ADAPTD_SERVER_ROUTING_H_
