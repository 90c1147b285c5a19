// Key checks compare hashes in constant time over every entry, so timing reveals neither which
// tenant matched nor how much of a key was right.
#include "auth.h"

#include <algorithm>

#include <openssl/evp.h>

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace adaptd::server {

std::vector<std::string> ApiKeys::Tenants() const {
  std::vector<std::string> out;
  for (const Entry& e : entries_) {
    if (std::find(out.begin(), out.end(), e.tenant) == out.end()) out.push_back(e.tenant);
  }
  return out;
}

std::string ApiKeys::Sha256Hex(const std::string& data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(data.data(), data.size(), digest, &n, EVP_sha256(), nullptr);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned int i = 0; i < n; ++i) {
    hex.push_back(kHex[digest[i] >> 4]);
    hex.push_back(kHex[digest[i] & 15]);
  }
  return hex;
}

absl::StatusOr<ApiKeys> ApiKeys::Load(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read the API key file ", path));
  ApiKeys keys;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    const absl::string_view text = absl::StripAsciiWhitespace(line);
    if (text.empty() || text[0] == '#') continue;
    std::vector<std::string> parts = absl::StrSplit(text, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    bool hex = parts.size() == 2 && parts[1].size() == 64;
    for (size_t i = 0; hex && i < 64; ++i) hex = absl::ascii_isxdigit(parts[1][i]);
    if (!hex) return absl::InvalidArgumentError(absl::StrCat(path, ":", n, ": expected \"tenant sha256-hex\""));
    for (char c : parts[0]) {
      if (!absl::ascii_isalnum(c) && c != '.' && c != '_' && c != '~' && c != '-') hex = false;
    }
    if (!hex || parts[0].size() > 128) {
      return absl::InvalidArgumentError(absl::StrCat(path, ":", n, ": tenant ids are 1-128 of [A-Za-z0-9._~-]"));
    }
    const std::string hash = absl::AsciiStrToLower(parts[1]);
    for (const auto& e : keys.entries_) {
      if (e.hash == hash) return absl::InvalidArgumentError(absl::StrCat(path, ":", n, ": a key listed twice"));
    }
    keys.entries_.push_back({parts[0], hash});
  }
  if (keys.entries_.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": no API keys"));
  return keys;
}

absl::StatusOr<std::string> ApiKeys::Authenticate(const std::string& authorization) const {
  // "Bearer" is case-insensitive (RFC 7235); spaces around the key do not count.
  const absl::string_view text = absl::StripAsciiWhitespace(authorization);
  if (text.size() <= 7 || !absl::EqualsIgnoreCase(text.substr(0, 7), "bearer ")) {
    return absl::UnauthenticatedError("missing \"authorization: Bearer <api key>\"");
  }
  const std::string hash = Sha256Hex(std::string(absl::StripAsciiWhitespace(text.substr(7))));
  const std::string* tenant = nullptr;
  for (const auto& e : entries_) {
    unsigned char diff = 0;
    for (size_t i = 0; i < hash.size(); ++i) diff |= static_cast<unsigned char>(hash[i] ^ e.hash[i]);
    if (diff == 0) tenant = &e.tenant;
  }
  if (tenant == nullptr) return absl::UnauthenticatedError("unknown API key");
  return *tenant;
}

}  // namespace adaptd::server
