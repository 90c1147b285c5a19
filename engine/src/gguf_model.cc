// GGUF metadata to config.json fields, and GGUF tensor names to HF names.
#include "gguf_model.h"

#include <openssl/evp.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <memory>
#include <regex>
#include <set>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "model_files.h"
#include "status_macros.h"

namespace adaptd::engine {
namespace {

using nlohmann::json;

// The `<arch>.` keys that change nothing the engine computes, or that the mapping below reads.
const std::set<std::string>& KnownArchKeys() {
  static const auto* keys = new std::set<std::string>{
      "block_count", "context_length", "embedding_length", "feed_forward_length", "vocab_size",
      "attention.head_count", "attention.head_count_kv", "attention.key_length", "attention.value_length",
      "attention.layer_norm_rms_epsilon", "rope.dimension_count", "rope.freq_base",
      "rope.scaling.type", "rope.scaling.factor", "rope.scaling.original_context_length",
      "rope.scaling.attn_factor",
  };
  return *keys;
}

absl::StatusOr<json> ReadTttJson(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadTextFile(path));
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  static const std::set<std::string> kFields = {"ttt_mode", "ttt_layers", "ttt_chunk",  "ttt_lr",
                                                "ttt_proj", "ttt_target", "ttt_ntp_step"};
  for (const auto& [k, v] : j.items()) {
    if (!kFields.count(k)) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": unknown field '", k, "' (ttt_mode, ttt_layers, ttt_chunk, ttt_lr, ttt_proj, ttt_target, ttt_ntp_step)"));
    }
  }
  if (j.contains("ttt_mode") && j["ttt_mode"] != false) {
    return absl::UnimplementedError(absl::StrCat(path, ": ttt_mode needs trained TTT modules, which a GGUF file does "
                                                 "not hold: leave it out; an In-Place adapter beside the GGUF file "
                                                 "(ttt_adapter.safetensors) brings them and sets it"));
  }
  return j;
}

absl::Status Unimplemented(const std::string& path, const std::string& what) {
  return absl::UnimplementedError(absl::StrCat("GGUF file ", path, ": ", what));
}

}  // namespace

absl::StatusOr<json> GgufConfigJson(const GgufFile& f, const std::string& ttt_json) {
  ASSIGN_OR_RETURN(std::string arch, f.GetString("general.architecture"));
  json j;
  if (arch == "llama") {
    j["architectures"] = {"LlamaForCausalLM"};
  } else if (arch == "qwen3") {
    j["architectures"] = {"Qwen3ForCausalLM"};
  } else {
    return Unimplemented(f.path(), absl::StrCat("architecture '", arch, "' (llama and qwen3 are read)"));
  }
  const std::string a = arch + ".";
  for (const auto& [key, value] : f.metadata()) {
    if (absl::StartsWith(key, a) && !KnownArchKeys().count(key.substr(a.size()))) {
      return Unimplemented(f.path(), absl::StrCat("metadata ", key, " changes the model in a way the engine does not implement"));
    }
  }
  auto required = [&](const std::string& key) { return f.GetInt(a + key); };
  auto optional_int = [&](const std::string& key, int64_t fallback) -> absl::StatusOr<int64_t> {
    if (f.Find(a + key) == nullptr) return fallback;
    return f.GetInt(a + key);
  };
  ASSIGN_OR_RETURN(int64_t layers, required("block_count"));
  ASSIGN_OR_RETURN(int64_t d, required("embedding_length"));
  ASSIGN_OR_RETURN(int64_t ffn, required("feed_forward_length"));
  ASSIGN_OR_RETURN(int64_t heads, required("attention.head_count"));
  if (heads <= 0 || d % heads != 0) {
    // head_dim may differ from d / heads (Qwen3), but its default needs them to divide.
    if (f.Find(a + "attention.key_length") == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("GGUF file ", f.path(), ": the head count must divide the width"));
    }
  }
  ASSIGN_OR_RETURN(int64_t kv_heads, optional_int("attention.head_count_kv", heads));
  ASSIGN_OR_RETURN(int64_t head_dim, optional_int("attention.key_length", heads > 0 ? d / heads : 0));
  ASSIGN_OR_RETURN(int64_t value_dim, optional_int("attention.value_length", head_dim));
  if (value_dim != head_dim) {
    return Unimplemented(f.path(), absl::StrCat("value head size ", value_dim, " differs from key head size ", head_dim));
  }
  ASSIGN_OR_RETURN(int64_t rope_dims, optional_int("rope.dimension_count", head_dim));
  if (rope_dims != head_dim) {
    return Unimplemented(f.path(), absl::StrCat("partial rotary embedding (", rope_dims, " of ", head_dim, " dimensions)"));
  }
  std::string scaling = "none";
  if (f.Find(a + "rope.scaling.type") != nullptr) {
    ASSIGN_OR_RETURN(scaling, f.GetString(a + "rope.scaling.type"));
  }
  double factor = 1.0;
  if (f.Find(a + "rope.scaling.factor") != nullptr) {
    ASSIGN_OR_RETURN(factor, f.GetFloat(a + "rope.scaling.factor"));
  }
  double attn_factor = 1.0;
  if (f.Find(a + "rope.scaling.attn_factor") != nullptr) {
    ASSIGN_OR_RETURN(attn_factor, f.GetFloat(a + "rope.scaling.attn_factor"));
  }
  if (scaling != "none" || factor != 1.0 || attn_factor != 1.0) {
    return Unimplemented(f.path(), absl::StrCat("RoPE scaling '", scaling, "' with factor ", factor,
                                                " and attention factor ", attn_factor));
  }
  double theta = 10000.0, eps = 0;
  if (f.Find(a + "rope.freq_base") != nullptr) {
    ASSIGN_OR_RETURN(theta, f.GetFloat(a + "rope.freq_base"));
  }
  ASSIGN_OR_RETURN(eps, f.GetFloat(a + "attention.layer_norm_rms_epsilon"));
  if (!std::isfinite(theta) || !std::isfinite(eps)) {
    return absl::InvalidArgumentError(absl::StrCat("GGUF file ", f.path(), ": rope.freq_base and the RMS epsilon must be finite"));
  }
  ASSIGN_OR_RETURN(int64_t context, optional_int("context_length", 4096));
  const GgufTensor* embed = f.FindTensor("token_embd.weight");
  if (embed == nullptr) return absl::NotFoundError(absl::StrCat("GGUF file ", f.path(), " lacks tensor token_embd.weight"));
  ASSIGN_OR_RETURN(int64_t vocab, optional_int("vocab_size", embed->dims.size() == 2 ? embed->dims[1] : 0));
  j["num_hidden_layers"] = layers;
  j["hidden_size"] = d;
  j["intermediate_size"] = ffn;
  j["num_attention_heads"] = heads;
  j["num_key_value_heads"] = kv_heads;
  j["head_dim"] = head_dim;
  j["rms_norm_eps"] = eps;
  j["rope_theta"] = theta;
  j["max_position_embeddings"] = context;
  j["vocab_size"] = vocab;
  j["tie_word_embeddings"] = f.FindTensor("output.weight") == nullptr;
  j["torch_dtype"] = "float32";
  j["ttt_layers"] = json::array();  // not defaulted: ntp_gradient needs them named
  if (!ttt_json.empty()) {
    ASSIGN_OR_RETURN(json ttt, ReadTttJson(ttt_json));
    j.update(ttt);
  }
  return j;
}

absl::StatusOr<std::map<std::string, GgufSource>> GgufTensorsByHfName(const GgufFile& f, const ModelConfig& c) {
  static const std::pair<const char*, const char*> kLayer[] = {
      {"attn_norm", "input_layernorm"},     {"ffn_norm", "post_attention_layernorm"},
      {"attn_q", "self_attn.q_proj"},       {"attn_k", "self_attn.k_proj"},
      {"attn_v", "self_attn.v_proj"},       {"attn_output", "self_attn.o_proj"},
      {"attn_q_norm", "self_attn.q_norm"},  {"attn_k_norm", "self_attn.k_norm"},
      {"ffn_gate", "mlp.gate_proj"},        {"ffn_up", "mlp.up_proj"},
      {"ffn_down", "mlp.down_proj"},
  };
  const bool permuted = c.architecture == Architecture::kLlama;
  std::map<std::string, GgufSource> out;
  for (const GgufTensor& t : f.tensors()) {
    std::string hf;
    int64_t heads = 0;
    if (t.name == "token_embd.weight") {
      hf = "model.embed_tokens.weight";
    } else if (t.name == "output_norm.weight") {
      hf = "model.norm.weight";
    } else if (t.name == "output.weight") {
      hf = "lm_head.weight";
    } else if (t.name == "rope_freqs.weight") {
      return Unimplemented(f.path(), "rope_freqs.weight (Llama-3.x RoPE frequency factors)");
    } else {
      std::vector<std::string> parts = absl::StrSplit(t.name, '.');
      int layer = -1;
      // The layer number as llama.cpp writes it ("01" or "+1" would alias layer 1).
      if (parts.size() == 4 && parts[0] == "blk" && absl::SimpleAtoi(parts[1], &layer) &&
          absl::StrCat(layer) == parts[1] && parts[3] == "weight") {
        for (const auto& [g, h] : kLayer) {
          if (parts[2] == g) hf = absl::StrCat("model.layers.", layer, ".", h, ".weight");
        }
        if (permuted && parts[2] == "attn_q") heads = c.num_heads;
        if (permuted && parts[2] == "attn_k") heads = c.num_kv_heads;
      }
    }
    if (hf.empty()) {
      return absl::InvalidArgumentError(absl::StrCat("GGUF file ", f.path(), ": tensor ", t.name, " is not one the engine reads"));
    }
    if (!out.emplace(hf, GgufSource{&t, heads}).second) {
      return absl::InvalidArgumentError(absl::StrCat("GGUF file ", f.path(), ": two tensors map to ", hf));
    }
  }
  return out;
}

namespace {

// The SHA-256 of the file at `path`, in hex (what sha256sum prints).
absl::StatusOr<std::string> Sha256File(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (ctx == nullptr || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) {
    return absl::InternalError("SHA-256 unavailable");
  }
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    if (EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(in.gcount())) != 1) {
      return absl::InternalError("SHA-256 failed");
    }
  }
  if (in.bad()) return absl::DataLossError(absl::StrCat("reading ", path));
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_DigestFinal_ex(ctx.get(), md, &n) != 1) return absl::InternalError("SHA-256 failed");
  static constexpr char kHex[] = "0123456789abcdef";
  std::string hex;
  for (unsigned int i = 0; i < n; ++i) {
    hex += kHex[md[i] >> 4];
    hex += kHex[md[i] & 15];
  }
  return hex;
}

}  // namespace

absl::Status ApplyAdapter(const GgufFile& base, const SafetensorsFile& adapter, bool bound_by_ttt_json, json& config) {
  const std::string& path = adapter.path();
  const auto meta = [&](const char* key) -> absl::StatusOr<std::string> {
    auto it = adapter.metadata().find(key);
    if (it == adapter.metadata().end()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": no metadata '", key, "' (tools/train/adapter.py writes it)"));
    }
    return it->second;
  };
  ASSIGN_OR_RETURN(std::string format, meta("format"));
  if (format != "adaptd-ttt-adapter-1") {
    return absl::InvalidArgumentError(absl::StrCat(path, ": format '", format, "' is not adaptd-ttt-adapter-1"));
  }
  ASSIGN_OR_RETURN(std::string want, meta("base_sha256"));
  ASSIGN_OR_RETURN(std::string have, Sha256File(base.path()));
  if (want != have) {
    return absl::FailedPreconditionError(absl::StrCat(path, " was trained over a base of sha256 ", want, "; ",
                                                      base.path(), " is ", have, ": not its base"));
  }
  ASSIGN_OR_RETURN(std::string ttt_text, meta("ttt"));
  json ttt = json::parse(ttt_text, nullptr, /*allow_exceptions=*/false);
  if (!ttt.is_object()) return absl::InvalidArgumentError(absl::StrCat(path, ": metadata 'ttt' is not a JSON object"));
  static const std::set<std::string> kFields = {"ttt_mode", "ttt_layers", "ttt_chunk", "ttt_lr", "ttt_proj", "ttt_target"};
  for (const auto& [k, v] : ttt.items()) {
    if (!kFields.count(k)) return absl::InvalidArgumentError(absl::StrCat(path, ": metadata 'ttt' has unknown field '", k, "'"));
  }
  if (!ttt.contains("ttt_mode") || ttt["ttt_mode"] != true || !ttt.contains("ttt_layers")) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": metadata 'ttt' must have ttt_mode true and ttt_layers"));
  }
  // The update as served with and without the adapter's fields, parsed as the model will be.
  json merged = config;
  merged.update(ttt);
  auto with = ParseModelConfig(merged.dump());
  if (!with.ok()) return absl::InvalidArgumentError(absl::StrCat(path, ": metadata 'ttt': ", with.status().message()));
  if (bound_by_ttt_json) {
    ASSIGN_OR_RETURN(ModelConfig served, ParseModelConfig(config.dump()));
    const auto describe = [](const TttConfig& t) {
      return absl::StrCat("ttt_layers [", absl::StrJoin(t.fast_layers, ", "), "], ttt_chunk ", t.chunk, ", ttt_lr ", t.lr,
                          ", ttt_proj ", t.proj ? "true" : "false", ", ttt_target ",
                          t.target == TttConfig::Target::kInputEmbed ? "input_embed" : "hidden_states");
    };
    const TttConfig &a = with->ttt, &b = served.ttt;
    if (a.fast_layers != b.fast_layers || a.chunk != b.chunk || a.lr != b.lr || a.proj != b.proj || a.target != b.target) {
      return absl::FailedPreconditionError(absl::StrCat(path, " was trained with ", describe(a), "; ttt.json serves ",
                                                        describe(b)));
    }
  }
  config = std::move(merged);
  static const std::regex kName(R"(model\.layers\.(0|[1-9][0-9]{0,3})\.mlp\.ttt_(conv|proj)\.weight)");
  for (const auto& [name, v] : adapter.tensors()) {
    if (!std::regex_match(name, kName)) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor ", name, " is not a layer's ttt_conv or ttt_proj weight"));
    }
    if (v.dtype != DType::kF32) return absl::InvalidArgumentError(absl::StrCat(path, ": tensor ", name, " must be F32"));
    for (int64_t i = 0, n = v.NumElements(); i < n; ++i) {
      float x;  // the data need not be aligned
      std::memcpy(&x, v.data + 4 * i, 4);
      if (!std::isfinite(x)) return absl::InvalidArgumentError(absl::StrCat(path, ": tensor ", name, " is not finite"));
    }
  }
  return absl::OkStatus();
}

}  // namespace adaptd::engine
