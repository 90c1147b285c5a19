// Tokenizer: reading tokenizer.json into the encoding pipeline (tokenizer_pipeline.h) and the
// per-token decoding tables; decoding, lossy UTF-8, streaming.
#include "adaptd/engine/tokenizer.h"

#include <cstring>
#include <map>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "model_files.h"
#include "status_macros.h"
#include "tokenizer_pipeline.h"
#include "unicode.h"

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

// The bytes the ByteLevel token string `token` spells, if every character is in the table.
std::optional<std::string> ByteLevelSpelling(const std::string& token, const std::map<uint32_t, uint8_t>& table) {
  std::string out;
  for (uint32_t cp : CodePoints(token)) {
    auto it = table.find(cp);
    if (it == table.end()) return std::nullopt;
    out.push_back(static_cast<char>(it->second));
  }
  return out;
}

// What HF's ByteLevel decoder makes of `token`: its bytes, or, with any character outside the
// table, its own UTF-8 text whole.
std::string ByteLevelBytes(const std::string& token, const std::map<uint32_t, uint8_t>& table) {
  return ByteLevelSpelling(token, table).value_or(token);
}


using Json = nlohmann::json;

std::string TypeOf(const Json& j) {
  return j.is_object() && j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>() : "";
}

// The String pattern of a Replace/Split component; UNIMPLEMENTED for a Regex.
absl::StatusOr<std::string> StringPattern(const Json& j, const char* what) {
  const Json& p = j.at("pattern");
  if (p.contains("String")) return p.at("String").get<std::string>();
  return absl::UnimplementedError(absl::StrCat(what, " with pattern ", p.dump(), " (only String patterns)"));
}

constexpr int kMaxNesting = 8;  // Sequence in Sequence: no real file nests deeper

absl::Status ParseNormalizer(const Json& j, std::vector<NormalizerStep>* steps, int depth = 0) {
  if (j.is_null()) return absl::OkStatus();
  if (depth > kMaxNesting) return absl::InvalidArgumentError("normalizer Sequences nest too deep");
  const std::string type = TypeOf(j);
  if (type == "Sequence") {
    for (const auto& n : j.at("normalizers")) RETURN_IF_ERROR(ParseNormalizer(n, steps, depth + 1));
  } else if (type == "NFC" || type == "NFKC") {
    steps->push_back({type == "NFC" ? NormalizerStep::kNfc : NormalizerStep::kNfkc, "", ""});
  } else if (type == "Prepend") {
    steps->push_back({NormalizerStep::kPrepend, j.at("prepend").get<std::string>(), ""});
  } else if (type == "Replace") {
    ASSIGN_OR_RETURN(std::string pattern, StringPattern(j, "Replace normalizer"));
    steps->push_back({NormalizerStep::kReplace, pattern, j.at("content").get<std::string>()});
  } else {
    return absl::UnimplementedError(absl::StrCat("normalizer '", type, "'"));
  }
  return absl::OkStatus();
}

absl::StatusOr<PreTokenizerStep::Prepend> PrependScheme(const Json& j) {
  if (!j.contains("prepend_scheme")) {  // older files: add_prefix_space
    return j.value("add_prefix_space", true) ? PreTokenizerStep::kAlways : PreTokenizerStep::kNever;
  }
  const std::string s = j.at("prepend_scheme").get<std::string>();
  if (s == "always") return PreTokenizerStep::kAlways;
  if (s == "first") return PreTokenizerStep::kFirst;
  if (s == "never") return PreTokenizerStep::kNever;
  return absl::InvalidArgumentError(absl::StrCat("Metaspace prepend_scheme '", s, "'"));
}

absl::Status ParsePreTokenizer(const Json& j, std::vector<PreTokenizerStep>* steps, int depth = 0) {
  if (j.is_null()) return absl::OkStatus();
  if (depth > kMaxNesting) return absl::InvalidArgumentError("pre-tokenizer Sequences nest too deep");
  const std::string type = TypeOf(j);
  PreTokenizerStep step;
  if (type == "Sequence") {
    for (const auto& p : j.at("pretokenizers")) RETURN_IF_ERROR(ParsePreTokenizer(p, steps, depth + 1));
    return absl::OkStatus();
  } else if (type == "Split") {
    const std::string behavior = j.at("behavior").get<std::string>();
    if (behavior != "Isolated" || j.value("invert", false)) {
      return absl::UnimplementedError(absl::StrCat("Split pre-tokenizer with behavior '", behavior, "'",
                                                   j.value("invert", false) ? " inverted" : "", " (only Isolated)"));
    }
    if (!j.at("pattern").contains("Regex")) return absl::UnimplementedError("Split pre-tokenizer without a Regex pattern");
    step.kind = PreTokenizerStep::kSplit;
    ASSIGN_OR_RETURN(step.grammar, GrammarForRegex(j.at("pattern").at("Regex").get<std::string>()));
  } else if (type == "ByteLevel") {
    step.kind = PreTokenizerStep::kByteLevel;
    step.add_prefix_space = j.value("add_prefix_space", false);
    step.use_regex = j.value("use_regex", true);
  } else if (type == "Digits") {
    step.kind = PreTokenizerStep::kDigits;
    step.individual_digits = j.value("individual_digits", false);
  } else if (type == "Metaspace") {
    step.kind = PreTokenizerStep::kMetaspace;
    step.replacement = j.at("replacement").get<std::string>();
    if (CodePoints(step.replacement).size() != 1) {
      return absl::InvalidArgumentError("Metaspace replacement must be one character");
    }
    ASSIGN_OR_RETURN(step.prepend, PrependScheme(j));
    step.split = j.value("split", true);
  } else {
    return absl::UnimplementedError(absl::StrCat("pre-tokenizer '", type, "'"));
  }
  steps->push_back(std::move(step));
  return absl::OkStatus();
}

// How the decoder turns one token into bytes (ByteLevel, Metaspace, or a Sequence of Replace,
// ByteFallback, Fuse and Strip as SentencePiece conversions write it).
struct DecoderSpec {
  bool byte_level = false;
  std::vector<std::pair<std::string, std::string>> replace;
  bool byte_fallback = false;
  std::string metaspace;
  int strip_leading_spaces = 0;
};

absl::Status ParseDecoder(const Json& j, DecoderSpec* spec, int depth = 0) {
  const std::string type = TypeOf(j);
  if (depth > kMaxNesting) return absl::InvalidArgumentError("decoder Sequences nest too deep");
  if (type == "Sequence") {
    for (const auto& d : j.at("decoders")) RETURN_IF_ERROR(ParseDecoder(d, spec, depth + 1));
  } else if (type == "ByteLevel") {
    spec->byte_level = true;
  } else if (type == "Metaspace") {
    spec->replace.emplace_back(j.at("replacement").get<std::string>(), " ");
    ASSIGN_OR_RETURN(auto prepend, PrependScheme(j));
    if (prepend != PreTokenizerStep::kNever) spec->metaspace = j.at("replacement").get<std::string>();
  } else if (type == "Replace") {
    ASSIGN_OR_RETURN(std::string pattern, StringPattern(j, "Replace decoder"));
    spec->replace.emplace_back(pattern, j.at("content").get<std::string>());
  } else if (type == "ByteFallback") {
    spec->byte_fallback = true;
  } else if (type == "Fuse") {
  } else if (type == "Strip" && j.at("content").get<std::string>() == " " && j.at("stop").get<int>() == 0) {
    spec->strip_leading_spaces = j.at("start").get<int>();
  } else {
    return absl::UnimplementedError(absl::StrCat("decoder ", j.dump()));
  }
  return absl::OkStatus();
}

// <0xXX> -> the byte.
std::optional<char> ByteToken(const std::string& t) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return std::nullopt;
  const char* hi = std::strchr(kHex, t[3]);
  const char* lo = std::strchr(kHex, t[4]);
  if (hi == nullptr || lo == nullptr || *hi == 0 || *lo == 0) return std::nullopt;
  return static_cast<char>((hi - kHex) * 16 + (lo - kHex));
}

std::string DecodedBytes(const std::string& token, const DecoderSpec& spec, const std::map<uint32_t, uint8_t>& table) {
  if (spec.byte_level) return ByteLevelBytes(token, table);
  if (spec.byte_fallback) {
    if (auto b = ByteToken(token)) return std::string(1, *b);
  }
  std::string s = token;
  for (const auto& [from, to] : spec.replace) s = ReplaceAll(s, from, to);
  return s;
}

// BPE options from the model object; UNIMPLEMENTED for what Adaptd does not implement.
absl::StatusOr<BpeOptions> ParseBpeOptions(const Json& m, bool by_bytes) {
  if (TypeOf(m) != "BPE") return absl::UnimplementedError(absl::StrCat("model type '", TypeOf(m), "' (only BPE)"));
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (m.contains(key) && !m[key].is_null() && m[key] != "") {
      return absl::UnimplementedError(absl::StrCat("BPE ", key, " ", m[key].dump()));
    }
  }
  if (m.contains("dropout") && !m["dropout"].is_null() && m["dropout"].get<double>() != 0.0) {
    return absl::UnimplementedError("BPE dropout (encoding would not be deterministic)");
  }
  BpeOptions o;
  o.by_bytes = by_bytes;
  o.byte_fallback = m.value("byte_fallback", false);
  o.fuse_unk = m.value("fuse_unk", false);
  o.ignore_merges = m.value("ignore_merges", false);
  if (m.contains("unk_token") && !m["unk_token"].is_null()) o.unk_token = m["unk_token"].get<std::string>();
  return o;
}

// Merges as "left right" strings or [left, right] pairs.
absl::StatusOr<std::vector<std::pair<std::string, std::string>>> ParseMerges(const Json& merges) {
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(merges.size());
  for (const auto& m : merges) {
    if (m.is_array() && m.size() == 2) {
      out.emplace_back(m[0].get<std::string>(), m[1].get<std::string>());
      continue;
    }
    const std::string s = m.get<std::string>();
    const size_t space = s.find(' ');
    if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("merge '", s, "' is not two tokens"));
    }
    out.emplace_back(s.substr(0, space), s.substr(space + 1));
  }
  return out;
}

}  // namespace

std::string Utf8Lossy(const std::string& bytes, std::string* tail) {
  static constexpr char kReplacement[] = "\xEF\xBF\xBD";
  std::string out;
  for (size_t i = 0; i < bytes.size();) {
    const int n = unicode::SequenceLength(bytes, i);
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

Tokenizer::Tokenizer() = default;
Tokenizer::~Tokenizer() = default;

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadTextFile(path));
  return FromJson(text, path);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view text, const std::string& path) {
  const auto j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return absl::InvalidArgumentError(path + ": not a JSON object");
  auto with_path = [&path](const absl::Status& s) { return absl::Status(s.code(), absl::StrCat(path, ": ", s.message())); };
  try {
    auto tok = std::unique_ptr<Tokenizer>(new Tokenizer());
    auto p = std::make_unique<Pipeline>();
    if (auto s = ParseNormalizer(j.value("normalizer", Json()), &p->normalizers); !s.ok()) return with_path(s);
    if (auto s = ParsePreTokenizer(j.value("pre_tokenizer", Json()), &p->pre_tokenizers); !s.ok()) return with_path(s);
    DecoderSpec decoder;
    if (auto s = ParseDecoder(j.value("decoder", Json()), &decoder); !s.ok()) return with_path(s);
    bool by_bytes = false;
    for (const auto& step : p->pre_tokenizers) by_bytes |= step.kind == PreTokenizerStep::kByteLevel;
    auto options = ParseBpeOptions(j.at("model"), by_bytes);
    if (!options.ok()) return with_path(options.status());

    const auto table = ByteLevelDecodeTable();
    std::map<int64_t, std::pair<std::string, bool>> entries;  // id -> token, special
    absl::flat_hash_map<std::string, int32_t> vocab;          // symbol -> id for the BPE model
    auto symbol = [&](const std::string& t) { return by_bytes ? ByteLevelBytes(t, table) : t; };
    for (const auto& [token, id] : j.at("model").at("vocab").items()) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": id of '", token, "' is not a valid token id"));
      }
      entries[id.get<int64_t>()] = {token, false};
      // A ByteLevel token with characters outside the byte table can never come out of text
      // (HF's pre-tokenizer maps every byte into the table); keying it by its UTF-8 could
      // shadow the token that does.
      if (by_bytes && !ByteLevelSpelling(token, table)) continue;
      vocab[symbol(token)] = static_cast<int32_t>(id.get<int64_t>());
    }
    for (const auto& a : j.value("added_tokens", Json::array())) {
      if (!a.at("id").is_number_integer() || a.at("id").get<int64_t>() < 0 || a.at("id").get<int64_t>() > INT32_MAX) {
        return absl::InvalidArgumentError(path + ": an added token id is not a valid token id");
      }
      AddedToken t{static_cast<int32_t>(a.at("id").get<int64_t>()), a.at("content").get<std::string>(),
                   a.value("single_word", false), a.value("lstrip", false), a.value("rstrip", false),
                   a.value("normalized", false), a.value("special", false)};
      entries[t.id] = {t.content, t.special};
      p->added.push_back(std::move(t));
    }
    if (entries.empty() || entries.begin()->first != 0 || entries.rbegin()->first != int64_t(entries.size()) - 1) {
      return absl::InvalidArgumentError(path + ": token ids are not 0..n-1");
    }
    for (auto& [id, e] : entries) {
      if (decoder.byte_fallback) tok->byte_token_.push_back(ByteToken(e.first).has_value());
      tok->bytes_.push_back(DecodedBytes(e.first, decoder, table));
      tok->tokens_.push_back(std::move(e.first));
      tok->special_.push_back(e.second);
    }
    auto merges = ParseMerges(j.at("model").value("merges", Json::array()));
    if (!merges.ok()) return with_path(merges.status());
    for (auto& m : *merges) m = {symbol(m.first), symbol(m.second)};
    std::vector<int32_t> special_ids;
    for (const auto& a : p->added) {
      if (a.special) special_ids.push_back(a.id);
    }
    auto bpe = Bpe::Create(std::move(vocab), *merges, special_ids, *std::move(options));
    if (!bpe.ok()) return with_path(bpe.status());
    p->bpe = *std::move(bpe);
    for (int i = 0; i < static_cast<int>(p->added.size()); ++i) {
      const AddedToken& t = p->added[i];
      if (!t.normalized) {
        p->raw_added.Add(t.content, i);
        continue;
      }
      auto n = p->Normalize(t.content);
      if (!n.ok()) return n.status();
      p->normalized_added.Add(*std::move(n), i);
    }
    tok->pipeline_ = std::move(p);
    tok->metaspace_ = decoder.metaspace;
    tok->strip_leading_spaces_ = decoder.strip_leading_spaces;
    return tok;
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", e.what()));
  }
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text, bool parse_special) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 1);
  RETURN_IF_ERROR(pipeline_->Encode(text, parse_special, &ids));
  return ids;
}

std::optional<int32_t> Tokenizer::TokenId(std::string_view token) const {
  for (const auto& a : pipeline_->added) {
    if (a.content == token) return a.id;
  }
  for (size_t id = 0; id < tokens_.size(); ++id) {
    if (tokens_[id] == token) return static_cast<int32_t>(id);
  }
  return std::nullopt;
}

bool Tokenizer::IsSpecial(int32_t id) const { return id >= 0 && id < vocab_size() && special_[id]; }

absl::StatusOr<std::string> Tokenizer::TokenBytes(int32_t id) const {
  if (id < 0 || id >= vocab_size()) {
    return absl::InvalidArgumentError(absl::StrCat("token id ", id, " is outside the vocabulary [0, ", vocab_size(), ")"));
  }
  return bytes_[id];
}

std::string Tokenizer::FirstTokenBytes(int32_t id) const {
  if (metaspace_.empty()) return bytes_[id];
  return ReplaceAll(tokens_[id], metaspace_, "");
}

void Tokenizer::FlushByteRun(std::string* run, int* tokens, std::string* text) {
  static constexpr char kReplacement[] = "\xEF\xBF\xBD";
  if (unicode::IsValidUtf8(*run)) {
    *text += *run;
  } else {
    for (int i = 0; i < *tokens; ++i) *text += kReplacement;
  }
  run->clear();
  *tokens = 0;
}

absl::StatusOr<std::string> Tokenizer::Decode(absl::Span<const int32_t> ids, bool skip_special) const {
  std::string bytes, run;
  int run_tokens = 0;
  bool first = true;
  for (int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) return TokenBytes(id).status();
    if (skip_special && special_[id]) continue;
    if (IsByteToken(id)) {
      run += bytes_[id];
      ++run_tokens;
    } else {
      FlushByteRun(&run, &run_tokens, &bytes);
      bytes += first ? FirstTokenBytes(id) : bytes_[id];
    }
    first = false;
  }
  FlushByteRun(&run, &run_tokens, &bytes);
  size_t strip = 0;
  while (strip < bytes.size() && strip < static_cast<size_t>(strip_leading_spaces_) && bytes[strip] == ' ') ++strip;
  return Utf8Lossy(bytes.substr(strip));
}

absl::StatusOr<std::string> StreamDecoder::Add(int32_t id) {
  if (id < 0 || id >= tokenizer_.vocab_size()) return tokenizer_.TokenBytes(id).status();
  if (skip_special_ && tokenizer_.IsSpecial(id)) return std::string();
  const bool first = first_;
  first_ = false;
  if (tokenizer_.IsByteToken(id)) {
    byte_run_ += tokenizer_.bytes_[id];
    ++byte_run_tokens_;
    return std::string();
  }
  std::string bytes;
  Tokenizer::FlushByteRun(&byte_run_, &byte_run_tokens_, &bytes);
  return Emit(bytes + (first ? tokenizer_.FirstTokenBytes(id) : tokenizer_.bytes_[id]));
}

std::string StreamDecoder::Emit(std::string bytes) {
  size_t strip = 0;
  while (strip_left_ > 0 && strip < bytes.size() && bytes[strip] == ' ') {
    ++strip;
    --strip_left_;
  }
  if (strip < bytes.size()) strip_left_ = 0;
  return Utf8Lossy(pending_ + bytes.substr(strip), &pending_);
}

std::string StreamDecoder::Finish() {
  std::string bytes;
  Tokenizer::FlushByteRun(&byte_run_, &byte_run_tokens_, &bytes);
  std::string rest = Emit(bytes);
  rest += Utf8Lossy(pending_);
  pending_.clear();
  return rest;
}

}  // namespace adaptd::engine
