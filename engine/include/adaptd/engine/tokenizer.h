// Hugging Face tokenizer.json BPE tokenizers in C++, token for token identical to HF
// `tokenizers`: byte-level (GPT-2, Qwen2/Qwen3, Llama-3) and SentencePiece-style (metaspace,
// byte fallback); and a streaming decoder that emits only complete UTF-8 characters.
//
// Threading: a Tokenizer is immutable after Load (its word cache locks itself) and may be shared
// by threads; a StreamDecoder belongs to one request.
#ifndef ADAPTD_ENGINE_TOKENIZER_H_
#define ADAPTD_ENGINE_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace adaptd::engine {

class Tokenizer {
 public:
  // Reads tokenizer.json. NOT_FOUND when missing; INVALID_ARGUMENT for malformed JSON or
  // entries; UNIMPLEMENTED naming the component (model, normalizer, pre-tokenizer, decoder,
  // Split regex, BPE option) it does not support.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& path);
  // The same from tokenizer.json text; `source` names it in errors.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view text, const std::string& source);
  // The tokenizer of a checkpoint as Model::Load finds it (model_files.h): its tokenizer.json,
  // or for a GGUF file the tokenizer in its metadata (tokenizer.ggml.*: model gpt2, the
  // pre-tokenizer by its name, control tokens special), with no tokenizer.json needed. Errors
  // as Load; UNIMPLEMENTED naming a GGUF tokenizer model or pre-tokenizer it does not know.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> LoadForModel(const std::string& model_path);
  ~Tokenizer();

  // The ids of `text` as HF encodes it with add_special_tokens=False. Text is text: a special
  // token's string in it is encoded as plain characters unless `parse_special` (for templates
  // written by the renderer, never for user content); non-special added tokens always match.
  // INVALID_ARGUMENT for invalid UTF-8.
  absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text, bool parse_special = false) const;

  // The id of the token spelled `token` in tokenizer.json (an added token's content, or a vocab
  // entry as written there), if any.
  std::optional<int32_t> TokenId(std::string_view token) const;

  int64_t vocab_size() const { return static_cast<int64_t>(bytes_.size()); }
  // The checkpoint's chat template (Jinja source) as LoadForModel found it: GGUF
  // tokenizer.chat_template or tokenizer_config.json's chat_template; empty when none.
  const std::string& chat_template() const { return chat_template_; }
  bool IsSpecial(int32_t id) const;

  // The raw bytes token `id` stands for (not necessarily valid UTF-8 on its own).
  // INVALID_ARGUMENT for an id outside the vocabulary.
  absl::StatusOr<std::string> TokenBytes(int32_t id) const;

  // The text of `ids`, as HF decodes it: invalid UTF-8 becomes U+FFFD per maximal invalid
  // subpart (ByteLevel decoder), or per token of an invalid run of <0xXX> tokens (ByteFallback).
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids, bool skip_special = false) const;

 private:
  friend class StreamDecoder;
  struct Pipeline;
  Tokenizer();
  static absl::StatusOr<std::unique_ptr<Tokenizer>> LoadForModelImpl(const std::string& model_path);
  // Bytes of `id` as the first token of a text: the Metaspace decoder drops its replacement
  // characters there.
  std::string FirstTokenBytes(int32_t id) const;
  bool IsByteToken(int32_t id) const { return !byte_token_.empty() && byte_token_[id]; }
  // Appends a run of <0xXX> tokens' bytes (`tokens` of them) to *text, as ByteFallback does,
  // and clears it.
  static void FlushByteRun(std::string* run, int* tokens, std::string* text);

  std::vector<std::string> bytes_;  // per id, what the decoder makes of it
  std::vector<bool> special_;
  std::vector<std::string> tokens_;  // per id, as spelled in tokenizer.json
  std::vector<bool> byte_token_;     // per id, with a ByteFallback decoder: <0xXX>
  std::unique_ptr<Pipeline> pipeline_;
  std::string metaspace_;  // the Metaspace decoder's replacement (empty: none)
  int strip_leading_spaces_ = 0;  // Strip decoder
  std::string chat_template_;
};

// Incremental decoding of generated tokens: the pieces returned by Add and Finish concatenate
// to Decode of all ids, and each piece is valid UTF-8 made of whole characters.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special = false)
      : tokenizer_(tokenizer), skip_special_(skip_special), strip_left_(tokenizer.strip_leading_spaces_) {}
  // The text completed by `id` (often empty while a multi-byte character is incomplete, and
  // with a ByteFallback decoder while a run of <0xXX> tokens lasts: an invalid byte in it turns
  // the whole run into U+FFFD).
  absl::StatusOr<std::string> Add(int32_t id);
  // Whatever is left (an incomplete character becomes U+FFFD).
  std::string Finish();

 private:
  std::string Emit(std::string bytes);

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  bool first_ = true;
  int strip_left_;
  std::string byte_run_;  // a run of <0xXX> tokens (ByteFallback)
  int byte_run_tokens_ = 0;
  std::string pending_;  // bytes of an incomplete but so far valid UTF-8 sequence
};

// Bytes to UTF-8 text, replacing each maximal invalid subpart with U+FFFD (Unicode 6.0 best
// practice, Rust's String::from_utf8_lossy). With `tail`, a trailing valid prefix of a character
// is not decoded but left in *tail.
std::string Utf8Lossy(const std::string& bytes, std::string* tail = nullptr);

}  // namespace adaptd::engine

#endif  // ADAPTD_ENGINE_TOKENIZER_H_
