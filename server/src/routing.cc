#include "routing.h"

#include <zlib.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace adaptd::server {

absl::StatusOr<Ownership> Ownership::Load(const std::string& path, const std::string& self) {
  std::ifstream in(path);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("ownership map ", path, ": cannot read it"));
  Ownership o;
  o.self_ = self;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    size_t bucket = 0;
    std::string replica, rest;
    if (!(fields >> bucket >> replica) || (fields >> rest) || bucket != o.buckets_.size()) {
      return absl::InvalidArgumentError(absl::StrCat("ownership map ", path, " line ", n, ": expected \"",
                                                     o.buckets_.size(), " REPLICA\""));
    }
    if (o.buckets_.size() == 65536) return absl::InvalidArgumentError("ownership map: over 65536 buckets");
    o.buckets_.push_back(replica);
  }
  if (o.buckets_.empty()) return absl::InvalidArgumentError(absl::StrCat("ownership map ", path, ": no buckets"));
  if (std::find(o.buckets_.begin(), o.buckets_.end(), self) == o.buckets_.end()) {
    return absl::InvalidArgumentError(absl::StrCat("ownership map ", path, " gives replica ", self, " no bucket"));
  }
  return o;
}

const std::string& Ownership::Owner(std::string_view session_id) const {
  if (buckets_.empty()) return self_;
  const uLong crc = crc32(0L, reinterpret_cast<const Bytef*>(session_id.data()), static_cast<uInt>(session_id.size()));
  return buckets_[crc % buckets_.size()];
}

absl::Status Ownership::Check(std::string_view session_id) const {
  if (Owns(session_id)) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat("session ", std::string(session_id), " belongs to replica ",
                                                    Owner(session_id), ", not ", self_,
                                                    ": route by the x-adaptd-session header"));
}

}  // namespace adaptd::server
