// Token ids to text for Hugging Face tokenizer.json files with a ByteLevel decoder (GPT-2,
// Qwen2/Qwen3, Llama-3 style), identical to HF `tokenizers` decode; and a streaming decoder
// that emits only complete UTF-8 characters. (Encoding arrives with the text issue.)
//
// Threading: a Tokenizer is immutable after Load and may be shared; a StreamDecoder belongs to
// one request.
#ifndef ADAPTD_ENGINE_TOKENIZER_H_
#define ADAPTD_ENGINE_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace adaptd::engine {

class Tokenizer {
 public:
  // Reads tokenizer.json. NOT_FOUND when missing; INVALID_ARGUMENT for malformed JSON or
  // entries; UNIMPLEMENTED naming the model or decoder type it does not support.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& path);

  int64_t vocab_size() const { return static_cast<int64_t>(bytes_.size()); }
  bool IsSpecial(int32_t id) const;

  // The raw bytes token `id` stands for (not necessarily valid UTF-8 on its own).
  // INVALID_ARGUMENT for an id outside the vocabulary.
  absl::StatusOr<std::string> TokenBytes(int32_t id) const;

  // The text of `ids`; invalid UTF-8 becomes U+FFFD per maximal invalid subpart, as HF does.
  absl::StatusOr<std::string> Decode(absl::Span<const int32_t> ids, bool skip_special = false) const;

 private:
  Tokenizer() = default;
  std::vector<std::string> bytes_;  // per id
  std::vector<bool> special_;
};

// Incremental decoding of generated tokens: the pieces returned by Add and Finish concatenate
// to Decode of all ids, and each piece is valid UTF-8 made of whole characters.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special = false)
      : tokenizer_(tokenizer), skip_special_(skip_special) {}
  // The text completed by `id` (often empty while a multi-byte character is incomplete).
  absl::StatusOr<std::string> Add(int32_t id);
  // Whatever is left (an incomplete character becomes U+FFFD).
  std::string Finish();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::string pending_;  // bytes of an incomplete but so far valid UTF-8 sequence
};

// Bytes to UTF-8 text, replacing each maximal invalid subpart with U+FFFD (Unicode 6.0 best
// practice, Rust's String::from_utf8_lossy). With `tail`, a trailing valid prefix of a character
// is not decoded but left in *tail.
std::string Utf8Lossy(const std::string& bytes, std::string* tail = nullptr);

}  // namespace adaptd::engine

#endif  // ADAPTD_ENGINE_TOKENIZER_H_
