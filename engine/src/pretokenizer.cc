// The scanners try the regex alternatives in order at each position, as a backtracking engine
// does; every character is a letter, a number, whitespace or "other", so some alternative
// always matches and pieces never leave gaps.
#include "pretokenizer.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "unicode.h"

namespace adaptd::engine {
namespace {

constexpr std::string_view kGpt2 = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kLlama3 =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

using unicode::kLetter;
using unicode::kNewline;
using unicode::kNumber;
using unicode::kSpace;

struct Char {
  uint32_t cp;
  uint8_t cls;
  uint32_t offset;  // byte offset in the text
};

bool IsOther(uint8_t cls) { return (cls & (kLetter | kNumber | kSpace)) == 0; }

// Lower-case ASCII letter `cp` stands for under (?i): itself, its capital, and for 's' the long
// s (U+017F), which Unicode case folding maps to 's'.
bool FoldEquals(uint32_t cp, char lower, bool ignore_case) {
  if (cp == static_cast<uint32_t>(lower)) return true;
  if (!ignore_case) return false;
  return cp == static_cast<uint32_t>(lower - 'a' + 'A') || (lower == 's' && cp == 0x17F);
}

// Length in characters of the match at chars[i], for each alternative in order.
class Scanner {
 public:
  Scanner(const std::vector<Char>& c, const SplitGrammar& g) : c_(c), g_(g) {}

  size_t MatchAt(size_t i) const {
    if (size_t n = Contraction(i)) return n;
    if (size_t n = Letters(i)) return n;
    if (size_t n = Digits(i)) return n;
    if (size_t n = Other(i)) return n;
    if (size_t n = Whitespace(i)) return n;
    return 1;  // unreachable: every character is in one of the classes
  }

 private:
  bool Is(size_t i, uint8_t cls) const { return i < c_.size() && (c_[i].cls & cls); }
  bool IsCp(size_t i, uint32_t cp) const { return i < c_.size() && c_[i].cp == cp; }
  size_t RunOf(size_t i, uint8_t cls) const {
    size_t j = i;
    while (Is(j, cls)) ++j;
    return j - i;
  }

  size_t Contraction(size_t i) const {
    if (!IsCp(i, '\'')) return 0;
    const bool ci = g_.ignore_case_contractions;
    for (const char* suffix : {"s", "t", "re", "ve", "m", "ll", "d"}) {
      size_t k = 0;
      while (suffix[k] && i + 1 + k < c_.size() && FoldEquals(c_[i + 1 + k].cp, suffix[k], ci)) ++k;
      if (!suffix[k]) return 1 + k;
    }
    return 0;
  }

  size_t Letters(size_t i) const {
    if (i >= c_.size()) return 0;
    const bool prefix = g_.any_letter_prefix ? !Is(i, kLetter | kNumber | kNewline) : IsCp(i, ' ');
    if (prefix && Is(i + 1, kLetter)) return 1 + RunOf(i + 1, kLetter);
    return RunOf(i, kLetter);
  }

  size_t Digits(size_t i) const {
    const size_t space = g_.space_before_digits && IsCp(i, ' ') && Is(i + 1, kNumber) ? 1 : 0;
    size_t n = RunOf(i + space, kNumber);
    if (n == 0) return 0;
    if (g_.max_digits > 0 && n > static_cast<size_t>(g_.max_digits)) n = g_.max_digits;
    return space + n;
  }

  size_t Other(size_t i) const {
    auto other = [this](size_t j) { return j < c_.size() && IsOther(c_[j].cls); };
    const size_t space = IsCp(i, ' ') && other(i + 1) ? 1 : 0;
    size_t j = i + space;
    while (other(j)) ++j;
    if (j == i + space) return 0;
    if (g_.newlines_after_punct) j += RunOf(j, kNewline);
    return j - i;
  }

  size_t Whitespace(size_t i) const {
    const size_t run = RunOf(i, kSpace);
    if (run == 0) return 0;
    if (g_.newline_run) {  // \s*[\r\n]+ : up to the run's last newline
      for (size_t k = run; k > 0; --k) {
        if (Is(i + k - 1, kNewline)) return k;
      }
    }
    if (i + run == c_.size()) return run;  // \s+(?!\S) at the end
    if (run >= 2) return run - 1;          // \s+(?!\S) leaves one space before the \S
    return run;                            // \s+
  }

  const std::vector<Char>& c_;
  const SplitGrammar& g_;
};

}  // namespace

std::string_view KnownSplitRegex(KnownSplit which) {
  return which == KnownSplit::kQwen2 ? kQwen2 : which == KnownSplit::kLlama3 ? kLlama3 : kGpt2;
}

absl::StatusOr<SplitGrammar> GrammarForRegex(std::string_view pattern) {
  SplitGrammar g;
  if (pattern == kGpt2) return Gpt2Grammar();
  if (pattern == kQwen2 || pattern == kLlama3) {
    g.ignore_case_contractions = true;
    g.any_letter_prefix = true;
    g.max_digits = pattern == kQwen2 ? 1 : 3;
    g.newlines_after_punct = true;
    g.newline_run = true;
    return g;
  }
  return absl::UnimplementedError(absl::StrCat(
      "Split regex '", std::string(pattern), "' (supported: the GPT-2, Qwen2/Qwen3 and Llama-3 patterns)"));
}

SplitGrammar Gpt2Grammar() {
  SplitGrammar g;
  g.space_before_digits = true;
  return g;
}

void SplitIsolated(std::string_view text, const SplitGrammar& grammar, std::vector<std::string_view>* out) {
  std::vector<Char> chars;
  chars.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const auto offset = static_cast<uint32_t>(i);
    const uint32_t cp = unicode::Next(text, &i);
    chars.push_back({cp, unicode::Classify(cp), offset});
  }
  const Scanner scanner(chars, grammar);
  for (size_t i = 0; i < chars.size();) {
    const size_t n = scanner.MatchAt(i);
    const size_t begin = chars[i].offset;
    const size_t end = i + n < chars.size() ? chars[i + n].offset : text.size();
    out->push_back(text.substr(begin, end - begin));
    i += n;
  }
}

void SplitBefore(std::string_view text, std::string_view delimiter, std::vector<std::string_view>* out) {
  size_t begin = 0;
  for (size_t at = text.find(delimiter, 1); at != std::string_view::npos; at = text.find(delimiter, at + 1)) {
    out->push_back(text.substr(begin, at - begin));
    begin = at;
  }
  if (begin < text.size()) out->push_back(text.substr(begin));
}

void SplitDigits(std::string_view text, bool individual, std::vector<std::string_view>* out) {
  size_t begin = 0;
  bool in_number = false;
  for (size_t i = 0; i < text.size();) {
    const size_t at = i;
    const bool number = (unicode::Classify(unicode::Next(text, &i)) & unicode::kNumber) != 0;
    // A piece ends where numbers and other characters meet, and after every digit (individual).
    if (at > begin && (number != in_number || (number && individual))) {
      out->push_back(text.substr(begin, at - begin));
      begin = at;
    }
    in_number = number;
  }
  if (begin < text.size()) out->push_back(text.substr(begin));
}

}  // namespace adaptd::engine
