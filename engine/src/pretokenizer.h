// Pre-tokenization: the Split regexes of GPT-2, Qwen2/Qwen3 and Llama-3 as hand-written
// scanners (exactly the regex semantics, look-ahead included, in one pass without a regex
// engine), and the Metaspace split.
#ifndef ADAPTD_ENGINE_PRETOKENIZER_H_
#define ADAPTD_ENGINE_PRETOKENIZER_H_

#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace adaptd::engine {

// The alternatives that distinguish the three known patterns (all end in
// `\s+(?!\S)|\s+`).
struct SplitGrammar {
  bool ignore_case_contractions = false;  // (?i:'s|'t|...) rather than 's|'t|...
  bool any_letter_prefix = false;         // [^\r\n\p{L}\p{N}]?\p{L}+ rather than ` ?\p{L}+`
  int max_digits = 0;                     // \p{N} run length limit, 0: unbounded
  bool space_before_digits = false;       // ` ?\p{N}+`
  bool newlines_after_punct = false;      // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
  bool newline_run = false;               // `\s*[\r\n]+`
};

// The regex text of a known pattern, as tokenizer.json files write it.
enum class KnownSplit { kGpt2, kQwen2, kLlama3 };
std::string_view KnownSplitRegex(KnownSplit which);

// The grammar of a tokenizer.json Split regex; UNIMPLEMENTED naming any other pattern.
absl::StatusOr<SplitGrammar> GrammarForRegex(std::string_view pattern);
SplitGrammar Gpt2Grammar();  // ByteLevel's use_regex

// Appends the pieces of valid UTF-8 `text` (matches and, were there any, the gaps between
// them: "Isolated") to *out; they concatenate to `text`.
void SplitIsolated(std::string_view text, const SplitGrammar& grammar, std::vector<std::string_view>* out);

// The Digits pre-tokenizer: numbers (\p{N}) split from other characters, each digit its own
// piece (`individual`) or runs of digits together.
void SplitDigits(std::string_view text, bool individual, std::vector<std::string_view>* out);

// Splits before every `delimiter` ("MergedWithNext"): "▁a▁▁b" -> "▁a", "▁", "▁b".
void SplitBefore(std::string_view text, std::string_view delimiter, std::vector<std::string_view>* out);

}  // namespace adaptd::engine

#endif  // ADAPTD_ENGINE_PRETOKENIZER_H_
