// Tokenizer (decoding half): tokenizer.json vocabulary and added tokens, the ByteLevel
// character-to-byte map, lossy UTF-8, streaming.
#include "adaptd/engine/tokenizer.h"

#include <fstream>
#include <map>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace adaptd::engine {
namespace {

// GPT-2's byte-to-character table, inverted: printable bytes map to themselves, the other 68
// bytes to U+0100 onwards in byte order. Keyed by the character's code point.
std::map<uint32_t, uint8_t> ByteLevelDecodeTable() {
  std::map<uint32_t, uint8_t> table;
  uint32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    table[printable ? b : next++] = static_cast<uint8_t>(b);
  }
  return table;
}

// Code points of valid UTF-8 `s` (token strings in tokenizer.json are valid UTF-8 JSON strings).
std::vector<uint32_t> CodePoints(const std::string& s) {
  std::vector<uint32_t> out;
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<uint8_t>(s[i]);
    const int n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    uint32_t cp = n == 1 ? c : c & (0xFF >> (n + 1));
    for (int k = 1; k < n && i + k < s.size(); ++k) cp = (cp << 6) | (static_cast<uint8_t>(s[i + k]) & 0x3F);
    out.push_back(cp);
    i += n;
  }
  return out;
}

// Bytes of the ByteLevel token string `token`; a token with any character outside the table
// stands for its own UTF-8 text, whole (as HF's ByteLevel decoder does).
std::string ByteLevelBytes(const std::string& token, const std::map<uint32_t, uint8_t>& table) {
  std::string out;
  for (uint32_t cp : CodePoints(token)) {
    auto it = table.find(cp);
    if (it == table.end()) return token;
    out.push_back(static_cast<char>(it->second));
  }
  return out;
}

// Length of the valid UTF-8 sequence starting at s[i] (1-4), or -k when only its first k bytes
// form a valid prefix (k >= 1: a maximal invalid subpart, or an incomplete tail at the end).
int SequenceLength(const std::string& s, size_t i) {
  const auto b = static_cast<uint8_t>(s[i]);
  if (b < 0x80) return 1;
  int len;
  uint8_t lo = 0x80, hi = 0xBF;  // range of the second byte
  if (b >= 0xC2 && b <= 0xDF) {
    len = 2;
  } else if (b >= 0xE0 && b <= 0xEF) {
    len = 3;
    if (b == 0xE0) lo = 0xA0;
    if (b == 0xED) hi = 0x9F;
  } else if (b >= 0xF0 && b <= 0xF4) {
    len = 4;
    if (b == 0xF0) lo = 0x90;
    if (b == 0xF4) hi = 0x8F;
  } else {
    return -1;
  }
  for (int k = 1; k < len; ++k) {
    if (i + k >= s.size()) return -k;
    const auto c = static_cast<uint8_t>(s[i + k]);
    if (k == 1 ? (c < lo || c > hi) : (c < 0x80 || c > 0xBF)) return -k;
  }
  return len;
}

}  // namespace

std::string Utf8Lossy(const std::string& bytes, std::string* tail) {
  static constexpr char kReplacement[] = "\xEF\xBF\xBD";
  std::string out;
  for (size_t i = 0; i < bytes.size();) {
    const int n = SequenceLength(bytes, i);
    if (n > 0) {
      out.append(bytes, i, n);
      i += n;
    } else if (tail != nullptr && i + (-n) == bytes.size() && static_cast<uint8_t>(bytes[i]) >= 0xC2 &&
               static_cast<uint8_t>(bytes[i]) <= 0xF4) {
      *tail = bytes.substr(i);  // a character still arriving
      return out;
    } else {
      out += kReplacement;
      i += -n;
    }
  }
  if (tail != nullptr) tail->clear();
  return out;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream text;
  text << in.rdbuf();
  const auto j = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return absl::InvalidArgumentError(path + ": not a JSON object");
  auto type_of = [&j](const char* key) -> std::string {
    if (!j.contains(key) || !j[key].is_object() || !j[key].contains("type") || !j[key]["type"].is_string()) return "";
    return j[key]["type"].get<std::string>();
  };
  if (type_of("model") != "BPE") return absl::UnimplementedError(absl::StrCat(path, ": model type '", type_of("model"), "'"));
  if (type_of("decoder") != "ByteLevel") {
    return absl::UnimplementedError(absl::StrCat(path, ": decoder '", type_of("decoder"), "' (only ByteLevel so far)"));
  }
  auto tok = std::unique_ptr<Tokenizer>(new Tokenizer());
  const auto table = ByteLevelDecodeTable();
  try {
    std::map<int64_t, std::pair<std::string, bool>> entries;  // id -> bytes, special
    for (const auto& [token, id] : j.at("model").at("vocab").items()) {
      if (!id.is_number_integer()) return absl::InvalidArgumentError(absl::StrCat(path, ": id of '", token, "' is not an integer"));
      entries[id.get<int64_t>()] = {ByteLevelBytes(token, table), false};
    }
    for (const auto& a : j.value("added_tokens", nlohmann::json::array())) {
      if (!a.at("id").is_number_integer()) return absl::InvalidArgumentError(path + ": an added token id is not an integer");
      entries[a.at("id").get<int64_t>()] = {ByteLevelBytes(a.at("content").get<std::string>(), table),
                                            a.value("special", false)};
    }
    if (entries.empty() || entries.begin()->first != 0 || entries.rbegin()->first != int64_t(entries.size()) - 1) {
      return absl::InvalidArgumentError(path + ": token ids are not 0..n-1");
    }
    for (auto& [id, e] : entries) {
      tok->bytes_.push_back(std::move(e.first));
      tok->special_.push_back(e.second);
    }
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", e.what()));
  }
  return tok;
}

bool Tokenizer::IsSpecial(int32_t id) const { return id >= 0 && id < vocab_size() && special_[id]; }

absl::StatusOr<std::string> Tokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= vocab_size()) {
    return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is outside the vocabulary [0, ", vocab_size(), ")"));
  }
  return bytes_[id];
}

absl::StatusOr<std::string> Tokenizer::Decode(absl::Span<const int32_t> ids, bool skip_special) const {
  std::string bytes;
  for (int32_t id : ids) {
    auto b = TokenBytes(id);
    if (!b.ok()) return b.status();
    if (!(skip_special && special_[id])) bytes += *b;
  }
  return Utf8Lossy(bytes);
}

absl::StatusOr<std::string> StreamDecoder::Add(int32_t id) {
  auto b = tokenizer_.TokenBytes(id);
  if (!b.ok()) return b.status();
  if (skip_special_ && tokenizer_.IsSpecial(id)) return std::string();
  return Utf8Lossy(pending_ + *b, &pending_);
}

std::string StreamDecoder::Finish() {
  std::string rest = Utf8Lossy(pending_);
  pending_.clear();
  return rest;
}

}  // namespace adaptd::engine
