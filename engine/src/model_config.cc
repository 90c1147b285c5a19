// config.json parsing and validation.
#include "adaptd/engine/model_config.h"

#include <cmath>
#include <set>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "model_files.h"
#include "status_macros.h"

namespace adaptd::engine {
namespace {

using nlohmann::json;

absl::Status Bad(const std::string& field, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("config.json: field '", field, "' ", what));
}

// An integer field in [lo, hi]; `fallback` < 0 means required.
absl::StatusOr<int64_t> Int(const json& j, const std::string& field, int64_t lo, int64_t hi,
                            int64_t fallback = -1) {
  if (!j.contains(field) || j[field].is_null()) {
    if (fallback >= 0) return fallback;
    return Bad(field, "is missing");
  }
  if (!j[field].is_number_integer()) return Bad(field, "must be an integer");
  int64_t v = j[field].get<int64_t>();
  if (v < lo || v > hi) return Bad(field, absl::StrCat("= ", v, " is outside [", lo, ", ", hi, "]"));
  return v;
}

absl::StatusOr<double> Num(const json& j, const std::string& field, double fallback) {
  if (!j.contains(field) || j[field].is_null()) return fallback;
  if (!j[field].is_number()) return Bad(field, "must be a number");
  return j[field].get<double>();
}

absl::StatusOr<bool> Bool(const json& j, const std::string& field, bool fallback) {
  if (!j.contains(field) || j[field].is_null()) return fallback;
  if (!j[field].is_boolean()) return Bad(field, "must be true or false");
  return j[field].get<bool>();
}

absl::Status ParseRope(const json& j, RopeConfig& rope) {
  // Newer schema: rope_parameters {rope_type, rope_theta, ...}; older: rope_theta + rope_scaling.
  const bool v2 = j.contains("rope_parameters") && j["rope_parameters"].is_object();
  const json& params = v2 ? j["rope_parameters"] : j;
  ASSIGN_OR_RETURN(rope.theta, Num(params, "rope_theta", 10000.0));
  if (!(rope.theta > 0)) return Bad("rope_theta", "must be positive");
  const json* scaling = v2 ? &params : nullptr;
  if (!v2 && j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    if (!j["rope_scaling"].is_object()) return Bad("rope_scaling", "must be an object or null");
    scaling = &j["rope_scaling"];
  }
  if (scaling == nullptr) return absl::OkStatus();
  std::string type = "default";
  for (const char* key : {"rope_type", "type"}) {
    if (scaling->contains(key) && (*scaling)[key].is_string()) {
      type = (*scaling)[key].get<std::string>();
      break;
    }
  }
  if (type == "default") return absl::OkStatus();
  if (type != "llama3") {
    return absl::UnimplementedError(
        absl::StrCat("config.json: rope scaling type '", type, "' is not supported (default and llama3 are)"));
  }
  rope.type = RopeConfig::Type::kLlama3;
  ASSIGN_OR_RETURN(rope.factor, Num(*scaling, "factor", 8.0));
  ASSIGN_OR_RETURN(rope.low_freq_factor, Num(*scaling, "low_freq_factor", 1.0));
  ASSIGN_OR_RETURN(rope.high_freq_factor, Num(*scaling, "high_freq_factor", 4.0));
  ASSIGN_OR_RETURN(rope.original_max_position_embeddings,
                   Int(*scaling, "original_max_position_embeddings", 1, int64_t{1} << 24, 8192));
  if (!(rope.factor >= 1) || !(rope.high_freq_factor > rope.low_freq_factor) || !(rope.low_freq_factor > 0)) {
    return Bad("rope_scaling", "needs factor >= 1 and high_freq_factor > low_freq_factor > 0");
  }
  return absl::OkStatus();
}

absl::Status ParseTtt(const json& j, int64_t num_layers, TttConfig& ttt) {
  ASSIGN_OR_RETURN(ttt.enabled, Bool(j, "ttt_mode", false));
  ASSIGN_OR_RETURN(ttt.proj, Bool(j, "ttt_proj", true));
  ASSIGN_OR_RETURN(ttt.lr, Num(j, "ttt_lr", 0.3));
  if (!std::isfinite(ttt.lr)) return Bad("ttt_lr", "must be finite");
  ASSIGN_OR_RETURN(ttt.chunk, Int(j, "ttt_chunk", 1, int64_t{1} << 20, 8192));
  std::string target = "hidden_states";
  if (j.contains("ttt_target") && !j["ttt_target"].is_null()) {
    if (!j["ttt_target"].is_string()) return Bad("ttt_target", "must be a string");
    target = j["ttt_target"].get<std::string>();
  }
  if (target == "hidden_states") {
    ttt.target = TttConfig::Target::kHiddenStates;
  } else if (target == "input_embed") {
    ttt.target = TttConfig::Target::kInputEmbed;
  } else {
    return Bad("ttt_target", absl::StrCat("= '", target, "' must be hidden_states or input_embed"));
  }
  std::string step = "sgd";
  if (j.contains("ttt_ntp_step") && !j["ttt_ntp_step"].is_null()) {
    if (!j["ttt_ntp_step"].is_string()) return Bad("ttt_ntp_step", "must be a string");
    step = j["ttt_ntp_step"].get<std::string>();
  }
  if (step != "sgd" && step != "rms") return Bad("ttt_ntp_step", absl::StrCat("= '", step, "' must be sgd or rms"));
  ttt.ntp_step = step == "rms" ? TttConfig::NtpStep::kRms : TttConfig::NtpStep::kSgd;
  std::set<int> layers;
  if (j.contains("ttt_layers") && !j["ttt_layers"].is_null()) {
    if (!j["ttt_layers"].is_array()) return Bad("ttt_layers", "must be a list of integers");
    for (const auto& v : j["ttt_layers"]) {
      if (!v.is_number_integer()) return Bad("ttt_layers", "must be a list of integers");
      int64_t l = v.get<int64_t>();
      if (l >= 0 && l < num_layers) layers.insert(static_cast<int>(l));  // others are ignored
    }
  } else {
    for (int l = 0; l <= 30; l += 6) {
      if (l < num_layers) layers.insert(l);
    }
  }
  ttt.layers.clear();
  if (ttt.enabled) ttt.layers.assign(layers.begin(), layers.end());
  ttt.fast_layers.assign(layers.begin(), layers.end());
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text) {
  json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return absl::InvalidArgumentError("config.json: not valid JSON");
  if (!j.is_object()) return absl::InvalidArgumentError("config.json: not a JSON object");
  ModelConfig c;
  std::string arch;
  if (j.contains("architectures") && j["architectures"].is_array() && !j["architectures"].empty() &&
      j["architectures"][0].is_string()) {
    arch = j["architectures"][0].get<std::string>();
  }
  if (arch == "Qwen3ForCausalLM") {
    c.architecture = Architecture::kQwen3;
    c.qk_norm = true;
  } else if (arch == "LlamaForCausalLM") {
    c.architecture = Architecture::kLlama;
  } else {
    return absl::UnimplementedError(absl::StrCat(
        "config.json: architecture '", arch, "' is not supported (Qwen3ForCausalLM, LlamaForCausalLM are)"));
  }
  constexpr int64_t kMaxDim = int64_t{1} << 17;
  ASSIGN_OR_RETURN(c.vocab_size, Int(j, "vocab_size", 1, int64_t{1} << 22));
  ASSIGN_OR_RETURN(c.hidden_size, Int(j, "hidden_size", 1, kMaxDim));
  ASSIGN_OR_RETURN(c.intermediate_size, Int(j, "intermediate_size", 1, kMaxDim * 4));
  ASSIGN_OR_RETURN(c.num_layers, Int(j, "num_hidden_layers", 1, 1024));
  ASSIGN_OR_RETURN(c.num_heads, Int(j, "num_attention_heads", 1, 4096));
  ASSIGN_OR_RETURN(c.num_kv_heads, Int(j, "num_key_value_heads", 1, 4096, c.num_heads));
  if (c.num_heads % c.num_kv_heads != 0) {
    return Bad("num_key_value_heads", "must divide num_attention_heads");
  }
  const int64_t default_head_dim = c.hidden_size % c.num_heads == 0 ? c.hidden_size / c.num_heads : 0;
  ASSIGN_OR_RETURN(c.head_dim, Int(j, "head_dim", 2, 1024, default_head_dim));
  if (c.head_dim < 2 || c.head_dim % 2 != 0) return Bad("head_dim", "must be even and >= 2");
  ASSIGN_OR_RETURN(c.max_position_embeddings, Int(j, "max_position_embeddings", 1, int64_t{1} << 24, 4096));
  ASSIGN_OR_RETURN(c.rms_norm_eps, Num(j, "rms_norm_eps", 1e-6));
  if (!(c.rms_norm_eps > 0)) return Bad("rms_norm_eps", "must be positive");
  ASSIGN_OR_RETURN(c.tie_word_embeddings, Bool(j, "tie_word_embeddings", false));
  std::string act = j.value("hidden_act", std::string("silu"));
  if (act != "silu") return absl::UnimplementedError(absl::StrCat("config.json: hidden_act '", act, "' is not supported (silu is)"));
  for (const char* field : {"attention_bias", "mlp_bias"}) {
    bool on = false;
    ASSIGN_OR_RETURN(on, Bool(j, field, false));
    if (on) return absl::UnimplementedError(absl::StrCat("config.json: ", field, " true is not supported"));
  }
  std::string dtype = "float32";
  for (const char* key : {"dtype", "torch_dtype"}) {
    if (j.contains(key) && j[key].is_string()) {
      dtype = j[key].get<std::string>();
      break;
    }
  }
  if (dtype == "float32") {
    c.dtype = DType::kF32;
  } else if (dtype == "bfloat16") {
    c.dtype = DType::kBF16;
  } else if (dtype == "float16") {
    c.dtype = DType::kF16;
  } else {
    return Bad("torch_dtype", absl::StrCat("= '", dtype, "' must be float32, bfloat16 or float16"));
  }
  RETURN_IF_ERROR(ParseRope(j, c.rope));
  RETURN_IF_ERROR(ParseTtt(j, c.num_layers, c.ttt));
  return c;
}

absl::StatusOr<std::string> ReadConfigJson(const std::string& dir) {
  auto text = ReadTextFile(dir + "/config.json");
  if (!text.ok()) return absl::NotFoundError(absl::StrCat("no config.json in ", dir));
  return text;
}

}  // namespace adaptd::engine
