// A GGUF checkpoint seen as the engine's HF layout: its metadata as config.json fields and its
// tensors under HF names (model_config.cc and weights.cc then treat both formats alike).
// Private to engine/.
#ifndef ADAPTD_ENGINE_SRC_GGUF_MODEL_H_
#define ADAPTD_ENGINE_SRC_GGUF_MODEL_H_

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "adaptd/engine/gguf.h"
#include "adaptd/engine/model_config.h"
#include "adaptd/engine/safetensors.h"
#include "nlohmann/json.hpp"

namespace adaptd::engine {

// config.json fields equivalent to the file's metadata (architectures llama and qwen3), with
// the ttt_* fields of `ttt_json` (a file of only those fields) or, without one, no TTT layers:
// a GGUF model's TTT settings are never defaulted. Every `<arch>.*` key is mapped or refused:
// UNIMPLEMENTED names an architecture, key or value that would change the math unimplemented
// (RoPE scaling, partial rotary, MoE, ...); NOT_FOUND a missing key; INVALID_ARGUMENT an
// ill-typed or non-finite one, or a bad ttt.json.
absl::StatusOr<nlohmann::json> GgufConfigJson(const GgufFile& file, const std::string& ttt_json);

// A tensor of the checkpoint under its HF name.
struct GgufSource {
  const GgufTensor* tensor;
  // llama.cpp's converter interleaves the two RoPE halves of each head's rows of Q and K in
  // `llama` files; > 0: undo that for this many heads.
  int64_t permuted_heads = 0;
};
// Every tensor of `file` under its HF name; INVALID_ARGUMENT for a tensor name the engine does
// not know, UNIMPLEMENTED for rope_freqs (Llama-3.x frequency factors).
absl::StatusOr<std::map<std::string, GgufSource>> GgufTensorsByHfName(const GgufFile& file, const ModelConfig& config);

// An In-Place TTT adapter beside a GGUF base (tools/train/adapter.py; engine/README.md
// "Adapters"): the trained ttt_conv / ttt_proj of the TTT layers, F32, with metadata `format`
// (adaptd-ttt-adapter-1), `base_sha256` (the GGUF file it was trained over) and `ttt` (the
// ttt_* fields it was trained with). Checks it and merges its ttt_* fields (ttt_mode true among
// them) into `config`: FAILED_PRECONDITION for another base, or, when `bound_by_ttt_json` (a
// ttt.json made `config`'s update), for an update other than the one ttt.json serves (layers,
// chunk, lr, proj and target as parsed, defaults included: the update it learned would not be
// the one served); INVALID_ARGUMENT for another format, bad metadata, or a tensor that is not an
// F32, finite ttt_conv / ttt_proj weight. Shapes are checked, and tensors of layers that are not
// TTT layers refused, where they load (a missing one is NOT_FOUND there).
absl::Status ApplyAdapter(const GgufFile& base, const SafetensorsFile& adapter, bool bound_by_ttt_json,
                          nlohmann::json& config);

}  // namespace adaptd::engine

#endif  // ADAPTD_ENGINE_SRC_GGUF_MODEL_H_
