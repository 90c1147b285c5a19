// Unicode facts the tokenizer needs: UTF-8 walking, the character classes of the pre-tokenizer
// regexes (\p{L}, \p{N}, \s as Oniguruma defines them), Rust's char predicates for added-token
// matching, and NFC/NFKC. Classes and normal forms come from ICU (Debian's libicu, Unicode 15.0).
#ifndef ADAPTD_ENGINE_UNICODE_H_
#define ADAPTD_ENGINE_UNICODE_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

namespace adaptd::engine::unicode {

// The code point at s[*i] of valid UTF-8 `s`; advances *i past it.
inline uint32_t Next(std::string_view s, size_t* i) {
  const auto b = static_cast<uint8_t>(s[*i]);
  if (b < 0x80) {
    ++*i;
    return b;
  }
  const int n = b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
  uint32_t cp = b & (0x7F >> n);
  for (int k = 1; k < n; ++k) cp = (cp << 6) | (static_cast<uint8_t>(s[*i + k]) & 0x3F);
  *i += n;
  return cp;
}

// Byte length of the UTF-8 sequence that starts with lead byte `b`.
inline int SequenceBytes(uint8_t b) { return b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4; }

// Length of the valid UTF-8 sequence starting at s[i] (1-4), or -k when only its first k bytes
// form a valid prefix (k >= 1: a maximal invalid subpart, or an incomplete tail at the end).
int SequenceLength(std::string_view s, size_t i);
bool IsValidUtf8(std::string_view s);
void AppendUtf8(uint32_t cp, std::string* out);

enum Class : uint8_t {
  kLetter = 1,   // \p{L}
  kNumber = 2,   // \p{N}
  kSpace = 4,    // \s: the White_Space property
  kNewline = 8,  // \r or \n (also kSpace)
};
uint8_t Classify(uint32_t cp);

// Rust's char::is_whitespace and Unicode regex \w (Alphabetic, marks, Nd, Pc, Join_Control):
// HF's added-token matching uses them.
bool IsWhitespace(uint32_t cp);
bool IsWordCharacter(uint32_t cp);

enum class NormalForm { kNfc, kNfkc };
// `s` (valid UTF-8) in the normal form. INTERNAL if ICU fails.
absl::StatusOr<std::string> Normalize(std::string_view s, NormalForm form);

}  // namespace adaptd::engine::unicode

#endif  // ADAPTD_ENGINE_UNICODE_H_
