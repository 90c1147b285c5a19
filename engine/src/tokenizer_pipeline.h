// The encoding half of a Tokenizer, as tokenizer.json describes it: added tokens, normalizer,
// pre-tokenizer and BPE model. Built by Tokenizer::Load (tokenizer.cc), run by
// tokenizer_encode.cc.
#ifndef ADAPTD_ENGINE_TOKENIZER_PIPELINE_H_
#define ADAPTD_ENGINE_TOKENIZER_PIPELINE_H_

#include <array>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "adaptd/engine/tokenizer.h"
#include "bpe.h"
#include "pretokenizer.h"

namespace adaptd::engine {

// `s` with every `from` replaced by `to` (an empty `from` replaces nothing).
std::string ReplaceAll(std::string_view s, std::string_view from, std::string_view to);

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool special = false;
};

struct NormalizerStep {
  enum Kind { kNfc, kNfkc, kPrepend, kReplace } kind;
  std::string text;         // kPrepend: the prefix; kReplace: the pattern
  std::string replacement;  // kReplace
};

struct PreTokenizerStep {
  enum Kind { kSplit, kByteLevel, kMetaspace, kDigits } kind;
  SplitGrammar grammar;           // kSplit
  bool add_prefix_space = false;  // kByteLevel
  bool use_regex = false;         // kByteLevel
  std::string replacement;        // kMetaspace
  enum Prepend { kAlways, kFirst, kNever } prepend = kAlways;
  bool split = true;              // kMetaspace
  bool individual_digits = false; // kDigits
};

// Leftmost-longest search for added-token contents in a text, on a byte trie: O(text length x
// longest token) however many tokens share a prefix.
class AddedTokenMatcher {
 public:
  void Add(const std::string& pattern, int index);
  struct Match {
    size_t begin, end;
    int index;
  };
  // The leftmost match at or after `from`, the longest there; end == 0 when none.
  Match Find(std::string_view text, size_t from) const;

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int>> next;  // sorted by byte
    int index = -1;                             // a pattern ends here
  };
  int Child(int node, uint8_t byte) const;
  std::vector<Node> nodes_{1};
  std::array<bool, 256> first_byte_{};
};

struct Tokenizer::Pipeline {
  std::vector<AddedToken> added;
  AddedTokenMatcher raw_added;         // normalized == false: matched in the input
  AddedTokenMatcher normalized_added;  // matched after normalization
  std::vector<NormalizerStep> normalizers;
  std::vector<PreTokenizerStep> pre_tokenizers;
  std::unique_ptr<Bpe> bpe;

  absl::StatusOr<std::string> Normalize(std::string_view text) const;
  absl::Status Encode(std::string_view text, bool parse_special, std::vector<int32_t>* ids) const;

 private:
  void PreTokenizeAndEncode(std::string_view text, bool at_start, std::vector<int32_t>* ids) const;
};

}  // namespace adaptd::engine

#endif  // ADAPTD_ENGINE_TOKENIZER_PIPELINE_H_
