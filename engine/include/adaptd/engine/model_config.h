// The model description read from a Hugging Face checkpoint's config.json: Qwen3 or Llama
// architecture, RoPE (both the rope_theta/rope_scaling and the newer rope_parameters schemas)
// and the In-Place TTT fields with the official inference defaults.
#ifndef ADAPTD_ENGINE_MODEL_CONFIG_H_
#define ADAPTD_ENGINE_MODEL_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "adaptd/engine/safetensors.h"

namespace adaptd::engine {

enum class Architecture { kQwen3, kLlama };

struct RopeConfig {
  enum class Type { kDefault, kLlama3 };
  Type type = Type::kDefault;
  double theta = 10000.0;
  // llama3 scaling only.
  double factor = 1.0;
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
};

struct TttConfig {
  enum class Target { kHiddenStates, kInputEmbed };
  bool enabled = false;             // ttt_mode
  std::vector<int> layers;          // ttt_layers that exist in the model, ascending (with ttt_mode)
  std::vector<int> fast_layers;     // the same, whatever ttt_mode: where ntp_gradient learns
  bool proj = true;                 // ttt_proj
  double lr = 0.3;                  // ttt_lr (eta)
  int64_t chunk = 8192;             // ttt_chunk (C)
  Target target = Target::kHiddenStates;
  // ntp_gradient's step (ttt_ntp_step): plain SGD, or SGD preconditioned by training-data
  // gradient RMS (Krause et al. 2018; ntp_stats.safetensors beside the model, engine/README.md).
  enum class NtpStep { kSgd, kRms };
  NtpStep ntp_step = NtpStep::kSgd;
};

struct ModelConfig {
  Architecture architecture = Architecture::kQwen3;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  bool qk_norm = false;  // Qwen3 normalises q and k per head
  DType dtype = DType::kF32;
  RopeConfig rope;
  TttConfig ttt;
};

// Parses config.json text. INVALID_ARGUMENT names the field for bad JSON, a missing or
// ill-typed field or an out-of-range value; UNIMPLEMENTED for an architecture, activation,
// rope type or bias option the engine does not support.
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text);

// The text of <dir>/config.json (NOT_FOUND when absent).
absl::StatusOr<std::string> ReadConfigJson(const std::string& dir);

}  // namespace adaptd::engine

#endif  // ADAPTD_ENGINE_MODEL_CONFIG_H_
