// Merging uses a heap of candidate pairs over a linked list of symbols: O(n log n) in the word
// length, so a megabyte of one repeated character costs no more than a megabyte of prose.
#include "bpe.h"

#include <queue>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "unicode.h"

namespace adaptd::engine {
namespace {

uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

struct Candidate {
  int32_t rank;
  int32_t pos;
  int32_t id;
  bool operator<(const Candidate& o) const {  // the top of the heap: lowest rank, then leftmost
    return rank != o.rank ? rank > o.rank : pos > o.pos;
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<Bpe>> Bpe::Create(absl::flat_hash_map<std::string, int32_t> vocab,
                                                 const std::vector<std::pair<std::string, std::string>>& merges,
                                                 const std::vector<int32_t>& reserved, BpeOptions options) {
  auto bpe = std::unique_ptr<Bpe>(new Bpe(std::move(options)));
  bpe->vocab_ = std::move(vocab);
  bpe->reserved_.insert(reserved.begin(), reserved.end());
  for (int32_t rank = 0; rank < static_cast<int32_t>(merges.size()); ++rank) {
    const auto& [left, right] = merges[rank];
    auto l = bpe->Find(left), r = bpe->Find(right), m = bpe->Find(left + right);
    if (!l || !r || !m) {
      return absl::InvalidArgumentError(absl::StrCat("merge ", rank, " ('", left, "', '", right,
                                                     "') uses or makes a token outside the vocabulary"));
    }
    if (bpe->reserved_.contains(*m)) continue;
    bpe->merges_.insert_or_assign(PairKey(*l, *r), std::make_pair(rank, *m));  // a repeat's later rank wins, as in HF
  }
  const auto& o = bpe->options_;
  if (o.unk_token) {
    bpe->unk_id_ = bpe->Find(*o.unk_token);
    if (!bpe->unk_id_) return absl::InvalidArgumentError(absl::StrCat("unk_token '", *o.unk_token, "' is not in the vocabulary"));
  }
  for (int b = 0; b < 256; ++b) {
    bpe->byte_ids_[b] = bpe->FindUsable(std::string(1, static_cast<char>(b))).value_or(-1);
    bpe->fallback_ids_[b] = bpe->FindUsable(absl::StrFormat("<0x%02X>", b)).value_or(-1);
  }
  return bpe;
}

std::optional<int32_t> Bpe::Find(std::string_view symbol) const {
  auto it = vocab_.find(absl::string_view(symbol.data(), symbol.size()));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

std::optional<int32_t> Bpe::FindUsable(std::string_view symbol) const {
  auto id = Find(symbol);
  if (id && reserved_.contains(*id)) return std::nullopt;
  return id;
}

void Bpe::Encode(std::string_view word, std::vector<int32_t>* out) const {
  if (word.size() > kCacheMaxWord) {
    EncodeUncached(word, out);
    return;
  }
  {
    absl::ReaderMutexLock lock(&cache_mu_);
    auto it = cache_.find(absl::string_view(word.data(), word.size()));
    if (it != cache_.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return;
    }
  }
  const size_t first = out->size();
  EncodeUncached(word, out);
  absl::MutexLock lock(&cache_mu_);
  if (cache_.size() < kCacheCapacity) cache_.try_emplace(std::string(word), out->begin() + first, out->end());
}

// HF's initial symbols: one per character (per byte for ByteLevel); a character outside the
// vocabulary becomes its <0xXX> byte tokens, else the unknown token, else nothing. Like HF, an
// unknown token waits until the next known character (fusing with following unknowns), so byte
// tokens can pass it.
void Bpe::InitialSymbols(std::string_view word, std::vector<int32_t>* ids) const {
  bool unk_pending = false;
  for (size_t i = 0; i < word.size();) {
    const size_t n = options_.by_bytes ? 1 : unicode::SequenceBytes(static_cast<uint8_t>(word[i]));
    const std::string_view ch = word.substr(i, n);
    i += n;
    std::optional<int32_t> id;
    if (n > 1) {
      id = FindUsable(ch);
    } else if (const int32_t b = byte_ids_[static_cast<uint8_t>(ch[0])]; b >= 0) {
      id = b;
    }
    if (id) {
      if (unk_pending) ids->push_back(*unk_id_);
      unk_pending = false;
      ids->push_back(*id);
      continue;
    }
    if (options_.byte_fallback) {
      bool all = true;
      for (char b : ch) all &= fallback_ids_[static_cast<uint8_t>(b)] >= 0;
      if (all) {
        for (char b : ch) ids->push_back(fallback_ids_[static_cast<uint8_t>(b)]);
        continue;
      }
    }
    if (!unk_id_) continue;
    if (unk_pending && !options_.fuse_unk) ids->push_back(*unk_id_);
    unk_pending = true;
  }
  if (unk_pending) ids->push_back(*unk_id_);
}

void Bpe::EncodeUncached(std::string_view word, std::vector<int32_t>* out) const {
  if (options_.ignore_merges) {
    if (auto id = FindUsable(word)) {
      out->push_back(*id);
      return;
    }
  }
  std::vector<int32_t> id;
  InitialSymbols(word, &id);
  const auto n = static_cast<int32_t>(id.size());
  if (n <= 1) {
    out->insert(out->end(), id.begin(), id.end());
    return;
  }
  std::vector<int32_t> prev(n), next(n);
  std::vector<bool> alive(n, true);
  std::priority_queue<Candidate> heap;
  auto consider = [&](int32_t pos) {
    if (pos < 0 || next[pos] >= n) return;
    auto it = merges_.find(PairKey(id[pos], id[next[pos]]));
    if (it != merges_.end()) heap.push({it->second.first, pos, it->second.second});
  };
  for (int32_t i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1;
  }
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);
  while (!heap.empty()) {
    const Candidate c = heap.top();
    heap.pop();
    if (!alive[c.pos] || next[c.pos] >= n) continue;
    const int32_t right = next[c.pos];
    auto it = merges_.find(PairKey(id[c.pos], id[right]));
    if (it == merges_.end() || it->second.second != c.id) continue;  // stale: a neighbour changed
    id[c.pos] = c.id;
    alive[right] = false;
    next[c.pos] = next[right];
    if (next[right] < n) prev[next[right]] = c.pos;
    consider(prev[c.pos]);
    consider(c.pos);
  }
  for (int32_t i = 0; i < n; i = next[i]) out->push_back(id[i]);
}

}  // namespace adaptd::engine
