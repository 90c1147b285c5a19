// API keys per tenant: a file of "tenant sha256-hex-of-key" lines (# comments), so the server
// never holds the keys themselves. A call authenticates with `authorization: Bearer <key>`.
#ifndef ADAPTD_SERVER_AUTH_H_
#define ADAPTD_SERVER_AUTH_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace adaptd::server {

class ApiKeys {
 public:
  // INVALID_ARGUMENT naming the line for a malformed entry; NOT_FOUND for a missing file.
  static absl::StatusOr<ApiKeys> Load(const std::string& path);
  // The tenant of `authorization` ("Bearer <key>"); UNAUTHENTICATED otherwise.
  absl::StatusOr<std::string> Authenticate(const std::string& authorization) const;

  static std::string Sha256Hex(const std::string& data);
  // Every tenant with a key, once each.
  std::vector<std::string> Tenants() const;

 private:
  struct Entry {
    std::string tenant;
    std::string hash;  // lower-case hex
  };
  std::vector<Entry> entries_;
};

}  // namespace adaptd::server

#endif  // ADAPTD_SERVER_AUTH_H_
