// Text to ids in HF `tokenizers` order: split off added tokens matched in the raw text, normalize
// each remaining section, split off added tokens matched in normalized text, pre-tokenize,
// then BPE each piece.
#include <algorithm>
#include <deque>

#include "absl/status/status.h"
#include "tokenizer_pipeline.h"
#include "unicode.h"

namespace adaptd::engine {

std::string ReplaceAll(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  size_t begin = 0;
  for (size_t at = s.find(from); at != std::string_view::npos && !from.empty(); at = s.find(from, begin)) {
    out.append(s, begin, at - begin).append(to);
    begin = at + from.size();
  }
  out.append(s, begin, std::string_view::npos);
  return out;
}

namespace {

// The code point that ends s[0, end) (valid UTF-8, end > 0).
uint32_t LastCodePoint(std::string_view s, size_t end) {
  size_t i = end - 1;
  while (i > 0 && (static_cast<uint8_t>(s[i]) & 0xC0) == 0x80) --i;
  return unicode::Next(s, &i);
}

// A section of text between added tokens, or an added token (id >= 0).
struct Section {
  std::string_view text;
  size_t begin;
  int32_t id;
};

// Splits `text` around the added tokens `matcher` finds, with HF's flags: a special token is
// plain text unless `parse_special`; single_word needs non-word neighbours; lstrip
// and rstrip take the adjacent whitespace into the token.
std::vector<Section> SplitAddedTokens(std::string_view text, const AddedTokenMatcher& matcher,
                                      const std::vector<AddedToken>& added, bool parse_special) {
  std::vector<Section> out;
  size_t emitted = 0;  // end of the last section pushed
  for (size_t from = 0; from < text.size();) {
    const auto m = matcher.Find(text, from);
    if (m.end == 0) break;
    from = m.end;
    const AddedToken& t = added[m.index];
    if (t.special && !parse_special) continue;
    if (t.single_word) {
      const bool word_before = m.begin > 0 && unicode::IsWordCharacter(LastCodePoint(text, m.begin));
      size_t i = m.end;
      const bool word_after = m.end < text.size() && unicode::IsWordCharacter(unicode::Next(text, &i));
      if (word_before || word_after) continue;
    }
    size_t begin = m.begin, end = m.end;
    if (t.lstrip) {
      while (begin > emitted && unicode::IsWhitespace(LastCodePoint(text, begin))) {
        size_t i = begin - 1;
        while ((static_cast<uint8_t>(text[i]) & 0xC0) == 0x80) --i;
        begin = i;
      }
    }
    if (t.rstrip) {
      for (size_t i = end; i < text.size() && unicode::IsWhitespace(unicode::Next(text, &i));) end = i;
      from = end;
    }
    if (emitted < begin) out.push_back({text.substr(emitted, begin - emitted), emitted, -1});
    out.push_back({text.substr(begin, end - begin), begin, t.id});
    emitted = end;
  }
  if (emitted < text.size()) out.push_back({text.substr(emitted), emitted, -1});
  return out;
}

}  // namespace

void AddedTokenMatcher::Add(const std::string& pattern, int index) {
  if (pattern.empty()) return;
  int node = 0;
  for (char ch : pattern) {
    const auto b = static_cast<uint8_t>(ch);
    int child = Child(node, b);
    if (child < 0) {
      child = static_cast<int>(nodes_.size());
      nodes_.emplace_back();
      auto& next = nodes_[node].next;
      next.insert(std::lower_bound(next.begin(), next.end(), std::make_pair(b, 0)), {b, child});
    }
    node = child;
  }
  if (nodes_[node].index < 0) nodes_[node].index = index;  // the first of equal contents wins
  first_byte_[static_cast<uint8_t>(pattern[0])] = true;
}

int AddedTokenMatcher::Child(int node, uint8_t byte) const {
  const auto& next = nodes_[node].next;
  auto it = std::lower_bound(next.begin(), next.end(), std::make_pair(byte, 0));
  return it != next.end() && it->first == byte ? it->second : -1;
}

AddedTokenMatcher::Match AddedTokenMatcher::Find(std::string_view text, size_t from) const {
  for (size_t i = from; i < text.size(); ++i) {
    if (!first_byte_[static_cast<uint8_t>(text[i])]) continue;
    Match best{0, 0, -1};
    for (size_t j = i, node = 0; j < text.size();) {
      const int child = Child(static_cast<int>(node), static_cast<uint8_t>(text[j++]));
      if (child < 0) break;
      node = static_cast<size_t>(child);
      if (nodes_[node].index >= 0) best = {i, j, nodes_[node].index};
    }
    if (best.end != 0) return best;
  }
  return {0, 0, -1};
}

absl::StatusOr<std::string> Tokenizer::Pipeline::Normalize(std::string_view text) const {
  std::string s(text);
  for (const auto& step : normalizers) {
    switch (step.kind) {
      case NormalizerStep::kNfc:
      case NormalizerStep::kNfkc: {
        auto n = unicode::Normalize(s, step.kind == NormalizerStep::kNfc ? unicode::NormalForm::kNfc
                                                                         : unicode::NormalForm::kNfkc);
        if (!n.ok()) return n.status();
        s = *std::move(n);
        break;
      }
      case NormalizerStep::kPrepend:
        if (!s.empty()) s.insert(0, step.text);
        break;
      case NormalizerStep::kReplace:
        s = ReplaceAll(s, step.text, step.replacement);
        break;
    }
  }
  return s;
}

absl::Status Tokenizer::Pipeline::Encode(std::string_view text, bool parse_special, std::vector<int32_t>* ids) const {
  if (!unicode::IsValidUtf8(text)) return absl::InvalidArgumentError("text is not valid UTF-8");
  for (const Section& raw : SplitAddedTokens(text, raw_added, added, parse_special)) {
    if (raw.id >= 0) {
      ids->push_back(raw.id);
      continue;
    }
    auto normalized = Normalize(raw.text);
    if (!normalized.ok()) return normalized.status();
    for (const Section& s : SplitAddedTokens(*normalized, normalized_added, added, parse_special)) {
      if (s.id >= 0) {
        ids->push_back(s.id);
      } else {
        PreTokenizeAndEncode(s.text, raw.begin == 0 && s.begin == 0, ids);
      }
    }
  }
  return absl::OkStatus();
}

void Tokenizer::Pipeline::PreTokenizeAndEncode(std::string_view text, bool at_start, std::vector<int32_t>* ids) const {
  std::deque<std::string> owned;  // pieces a step rewrote
  std::vector<std::string_view> pieces{text}, next;
  for (const auto& step : pre_tokenizers) {
    next.clear();
    for (size_t i = 0; i < pieces.size(); ++i) {
      std::string_view p = pieces[i];
      switch (step.kind) {
        case PreTokenizerStep::kSplit:
          SplitIsolated(p, step.grammar, &next);
          break;
        case PreTokenizerStep::kByteLevel:
          if (step.add_prefix_space && (p.empty() || p[0] != ' ')) p = owned.emplace_back(" " + std::string(p));
          if (step.use_regex) {
            SplitIsolated(p, Gpt2Grammar(), &next);
          } else {
            next.push_back(p);
          }
          break;
        case PreTokenizerStep::kDigits:
          SplitDigits(p, step.individual_digits, &next);
          break;
        case PreTokenizerStep::kMetaspace: {
          std::string& q = owned.emplace_back(ReplaceAll(p, " ", step.replacement));
          const bool prepend = step.prepend == PreTokenizerStep::kAlways ||
                               (step.prepend == PreTokenizerStep::kFirst && at_start && i == 0);
          if (prepend && q.compare(0, step.replacement.size(), step.replacement) != 0) q.insert(0, step.replacement);
          if (step.split) {
            SplitBefore(q, step.replacement, &next);
          } else {
            next.push_back(q);
          }
          break;
        }
      }
    }
    pieces.swap(next);
  }
  for (std::string_view p : pieces) {
    if (!p.empty()) bpe->Encode(p, ids);
  }
}

}  // namespace adaptd::engine
