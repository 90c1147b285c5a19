// A loaded checkpoint and the per-session state it runs: forward passes with In-Place TTT.
//
// This header is free of LibTorch types (the wheel's include tree carries protobuf headers that
// would shadow Debian's in server/ files), so the tensors live behind Impl pointers.
// Threading: a Model is immutable after Load and may be shared; a SessionState is used by one
// thread at a time (the engine thread). No exception leaves these functions.
#ifndef ADAPTD_ENGINE_MODEL_H_
#define ADAPTD_ENGINE_MODEL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "adaptd/engine/model_config.h"

namespace adaptd::engine {

// How a session holds its fast weights (architecture.md "numeric modes").
enum class NumericMode {
  kSplit,   // W0 in the model dtype + dW in fp32, output Z W0^T + Z dW^T (default)
  kParity,  // W whole in the model dtype, updated in place (the official code)
};

struct LoadOptions {
  std::string device = "cpu";     // "cpu", "cuda" or "cuda:<i>"
  std::optional<DType> dtype;     // compute dtype; default: the checkpoint's config dtype
  // Applied to the config after the weights are loaded and checked against the file's own
  // config, before anything is derived from it (the tests' negative controls).
  std::function<void(ModelConfig&)> edit_config;
};

struct SessionOptions {
  NumericMode numeric = NumericMode::kSplit;
  std::optional<double> clip_tau;  // Frobenius bound of each chunk's eta*(UP)^T Z
};

class SessionState;

class Model {
 public:
  // Loads <dir>/config.json and model.safetensors (or the sharded index). Errors name the field
  // or tensor: NOT_FOUND (missing file or tensor), INVALID_ARGUMENT (misshaped or unexpected
  // tensor, bad config), DATA_LOSS (corrupt file), UNIMPLEMENTED (unsupported feature).
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& dir, const LoadOptions& options = {});
  ~Model();

  const ModelConfig& config() const;
  // Stable across loads and machines: a hash of the config and every tensor's name and bytes.
  const std::string& fingerprint() const;

  std::unique_ptr<SessionState> NewSession(const SessionOptions& options = {}) const;

  // Feeds `ids` to `session` (continuing its KV window and fast state) and returns their logits,
  // [ids.size(), vocab] row-major fp32. learn=false: the tokens see the current fast weights but
  // N, the tail and W stay. INVALID_ARGUMENT for an id outside the vocabulary or an empty input.
  absl::StatusOr<std::vector<float>> Forward(SessionState& session, absl::Span<const int32_t> ids,
                                             bool learn = true) const;

  // The effective fast weight W0 + dW of TTT layer `layer` as fp32 [d, f] row-major.
  absl::StatusOr<std::vector<float>> FastWeight(const SessionState& session, int layer) const;

  struct Impl;

 private:
  explicit Model(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

class SessionState {
 public:
  ~SessionState();
  int64_t n_learned() const;  // N: learned tokens (drives chunk phase)
  int64_t position() const;   // P: next position in the KV window
  int64_t updates_applied() const;

  struct Impl;
  explicit SessionState(std::unique_ptr<Impl> impl);
  Impl& impl() { return *impl_; }
  const Impl& impl() const { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace adaptd::engine

#endif  // ADAPTD_ENGINE_MODEL_H_
