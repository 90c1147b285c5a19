// Byte-pair encoding of one pre-tokenized word, merge by merge in rank order exactly as HF
// `tokenizers` does (lowest rank first, leftmost first among equal ranks), with byte fallback,
// unknown-token fusing and `ignore_merges`.
//
// Threading: immutable after construction except the word cache, which is internally locked.
#ifndef ADAPTD_ENGINE_BPE_H_
#define ADAPTD_ENGINE_BPE_H_

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace adaptd::engine {

struct BpeOptions {
  bool by_bytes = false;  // initial symbols are bytes (ByteLevel) rather than characters
  bool byte_fallback = false;
  bool fuse_unk = false;
  bool ignore_merges = false;
  std::optional<std::string> unk_token;
};

class Bpe {
 public:
  // `vocab`: symbol string -> id (bytes for ByteLevel models); `merges` in rank order. Fails
  // when a merge names a string outside the vocabulary or yields one. Ids in `reserved` (the
  // special tokens) are never produced from text: merges that would make one are dropped, and
  // a character or word spelled like one is not looked up as it (HF does both; user text
  // could then become a special token).
  static absl::StatusOr<std::unique_ptr<Bpe>> Create(absl::flat_hash_map<std::string, int32_t> vocab,
                                                     const std::vector<std::pair<std::string, std::string>>& merges,
                                                     const std::vector<int32_t>& reserved, BpeOptions options);

  // Appends the ids of `word` to *out.
  void Encode(std::string_view word, std::vector<int32_t>* out) const;

  std::optional<int32_t> Find(std::string_view symbol) const;

 private:
  // Find, but not a reserved id.
  std::optional<int32_t> FindUsable(std::string_view symbol) const;

  explicit Bpe(BpeOptions options) : options_(std::move(options)) {}
  void EncodeUncached(std::string_view word, std::vector<int32_t>* out) const;
  void InitialSymbols(std::string_view word, std::vector<int32_t>* ids) const;

  BpeOptions options_;
  absl::flat_hash_map<std::string, int32_t> vocab_;
  absl::flat_hash_set<int32_t> reserved_;
  absl::flat_hash_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (left, right) -> (rank, id)
  std::optional<int32_t> unk_id_;
  std::array<int32_t, 256> byte_ids_;      // by_bytes: the single-byte symbols (-1: absent)
  std::array<int32_t, 256> fallback_ids_;  // byte_fallback: <0xXX> (-1: absent)

  static constexpr size_t kCacheCapacity = 1 << 16;
  static constexpr size_t kCacheMaxWord = 64;
  mutable absl::Mutex cache_mu_;
  mutable absl::flat_hash_map<std::string, std::vector<int32_t>> cache_ ABSL_GUARDED_BY(cache_mu_);
};

}  // namespace adaptd::engine

#endif  // ADAPTD_ENGINE_BPE_H_
