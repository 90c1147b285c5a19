// The tokenizer of a GGUF file: its tokenizer.ggml.* metadata written as the tokenizer.json the
// same vocabulary would have, then loaded by the one tokenizer.json path (tokenizer.cc).
#include <string>

#include "absl/strings/str_cat.h"
#include "adaptd/engine/gguf.h"
#include "adaptd/engine/tokenizer.h"
#include "model_files.h"
#include "nlohmann/json.hpp"
#include "pretokenizer.h"
#include "status_macros.h"

namespace adaptd::engine {
namespace {

using nlohmann::json;
using VType = GgufValue::Type;

constexpr int kControl = 3, kUserDefined = 4;  // llama.cpp's token types

json ByteLevel(bool use_regex) {
  return {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", use_regex}};
}

json Split(KnownSplit which) {
  return {{"type", "Split"},
          {"pattern", {{"Regex", std::string(KnownSplitRegex(which))}}},
          {"behavior", "Isolated"},
          {"invert", false}};
}

struct Front {
  json normalizer, pre_tokenizer;
};

// The normalizer and pre-tokenizer HF's tokenizer.json has for llama.cpp's pre-tokenizer name.
absl::StatusOr<Front> PreTokenizer(const std::string& pre, const std::string& path) {
  if (pre == "smollm") {
    return Front{nullptr, {{"type", "Sequence"},
                           {"pretokenizers", {{{"type", "Digits"}, {"individual_digits", true}}, ByteLevel(true)}}}};
  }
  if (pre == "gpt-2") return Front{nullptr, ByteLevel(true)};
  if (pre == "qwen2") {  // Qwen2/2.5/3 normalise to NFC first
    return Front{{{"type", "NFC"}},
                 {{"type", "Sequence"}, {"pretokenizers", {Split(KnownSplit::kQwen2), ByteLevel(false)}}}};
  }
  if (pre == "llama-bpe" || pre == "llama3") {
    return Front{nullptr, {{"type", "Sequence"}, {"pretokenizers", {Split(KnownSplit::kLlama3), ByteLevel(false)}}}};
  }
  return absl::UnimplementedError(absl::StrCat("GGUF file ", path, ": pre-tokenizer '", pre,
                                               "' (smollm, gpt-2, qwen2 and llama-bpe are read)"));
}

absl::StatusOr<std::string> GgufTokenizerJson(const GgufFile& f) {
  ASSIGN_OR_RETURN(std::string model, f.GetString("tokenizer.ggml.model"));
  if (model != "gpt2") {
    return absl::UnimplementedError(absl::StrCat("GGUF file ", f.path(), ": tokenizer model '", model, "' (gpt2 is read)"));
  }
  std::string pre = "gpt-2";
  if (f.Find("tokenizer.ggml.pre") != nullptr) {
    ASSIGN_OR_RETURN(pre, f.GetString("tokenizer.ggml.pre"));
  }
  ASSIGN_OR_RETURN(Front front, PreTokenizer(pre, f.path()));
  ASSIGN_OR_RETURN(const auto* tokens, f.GetArray("tokenizer.ggml.tokens", VType::kString));
  const std::vector<GgufValue>* types = nullptr;
  if (f.Find("tokenizer.ggml.token_type") != nullptr) {
    ASSIGN_OR_RETURN(types, f.GetArray("tokenizer.ggml.token_type", VType::kI32));
    if (types->size() != tokens->size()) {
      return absl::InvalidArgumentError(absl::StrCat("GGUF file ", f.path(), ": ", types->size(), " token types for ",
                                                     tokens->size(), " tokens"));
    }
  }
  json vocab = json::object(), added = json::array(), merges = json::array();
  for (size_t id = 0; id < tokens->size(); ++id) {
    const std::string& t = (*tokens)[id].s;
    const int64_t type = types ? (*types)[id].i : 1;
    if (type == kControl || type == kUserDefined) {
      added.push_back({{"id", id}, {"content", t}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                       {"normalized", false}, {"special", type == kControl}});
    }
    if (vocab.contains(t)) {
      return absl::InvalidArgumentError(absl::StrCat("GGUF file ", f.path(), ": token '", t, "' appears twice"));
    }
    vocab[t] = id;
  }
  if (f.Find("tokenizer.ggml.merges") != nullptr) {
    ASSIGN_OR_RETURN(const auto* m, f.GetArray("tokenizer.ggml.merges", VType::kString));
    for (const GgufValue& v : *m) merges.push_back(v.s);
  }
  json j = {{"version", "1.0"},
            {"added_tokens", added},
            {"normalizer", front.normalizer},
            {"pre_tokenizer", front.pre_tokenizer},
            {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
            {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"fuse_unk", false},
                       {"byte_fallback", false}, {"ignore_merges", false}, {"vocab", vocab}, {"merges", merges}}}};
  try {
    return j.dump();
  } catch (const json::exception&) {
    return absl::InvalidArgumentError(absl::StrCat("GGUF file ", f.path(), ": a token or merge is not valid UTF-8"));
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::LoadForModel(const std::string& model_path) {
  try {
    return LoadForModelImpl(model_path);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat("loading the tokenizer of ", model_path, ": out of memory"));
  }
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::LoadForModelImpl(const std::string& model_path) {
  ASSIGN_OR_RETURN(ModelFiles files, FindModelFiles(model_path));
  if (files.gguf.empty()) {
    ASSIGN_OR_RETURN(auto tokenizer, Load(files.dir + "/tokenizer.json"));
    if (auto text = ReadTextFile(files.dir + "/tokenizer_config.json"); text.ok()) {
      const json config = json::parse(*text, nullptr, /*allow_exceptions=*/false);
      if (config.is_object() && config.contains("chat_template") && config["chat_template"].is_string()) {
        tokenizer->chat_template_ = config["chat_template"].get<std::string>();
      }
    }
    return tokenizer;
  }
  ASSIGN_OR_RETURN(auto file, GgufFile::Open(files.gguf));
  ASSIGN_OR_RETURN(std::string text, GgufTokenizerJson(*file));
  ASSIGN_OR_RETURN(auto tokenizer, FromJson(text, files.gguf));
  if (const GgufValue* t = file->Find("tokenizer.chat_template"); t != nullptr && t->type == VType::kString) {
    tokenizer->chat_template_ = t->s;
  }
  return tokenizer;
}

}  // namespace adaptd::engine
