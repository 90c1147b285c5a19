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
  enum Kind { kSplit, kByteLevel, kMetaspace } kind;
  SplitGrammar grammar;           // kSplit
  bool add_prefix_space = false;  // kByteLevel
  bool use_regex = false;         // kByteLevel
  std::string replacement;        // kMetaspace
  enum Prepend { kAlways, kFirst, kNever } prepend = kAlways;
  bool split = true;              // kMetaspace
};

// Leftmost-longest search for added-token contents in a text.
class AddedTokenMatcher {
 public:
  void Add(std::string pattern, int index);
  struct Match {
    size_t begin, end;
    int index;
  };
  // The leftmost match at or after `from`, the longest there; end == 0 when none.
  Match Find(std::string_view text, size_t from) const;

 private:
  std::vector<std::pair<std::string, int>> patterns_;
  std::array<std::vector<int>, 256> by_first_byte_;  // indices into patterns_, longest first
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
