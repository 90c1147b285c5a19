// Where a checkpoint's parts are: a Hugging Face directory (config.json, safetensors,
// tokenizer.json) or a GGUF file (given itself, or as the one .gguf in a directory), with the
// In-Place TTT settings of a GGUF model in a ttt.json beside it. Private to engine/.
#ifndef ADAPTD_ENGINE_SRC_MODEL_FILES_H_
#define ADAPTD_ENGINE_SRC_MODEL_FILES_H_

#include <string>

#include "absl/status/statusor.h"

namespace adaptd::engine {

struct ModelFiles {
  std::string dir;       // the HF directory, or the GGUF file's directory
  std::string gguf;      // the GGUF file; empty for an HF checkpoint
  std::string ttt_json;  // a GGUF model's TTT settings; empty when it has none
  std::string adapter;   // <dir>/ttt_adapter.safetensors: an In-Place adapter of a GGUF base; empty: none
};

// The bytes of the file at `path`; NOT_FOUND when it cannot be read.
absl::StatusOr<std::string> ReadTextFile(const std::string& path);

// NOT_FOUND when `path` is neither an HF directory (with config.json) nor a .gguf file nor a
// directory holding exactly one; INVALID_ARGUMENT for a directory holding several. `ttt_json`
// (LoadOptions::ttt_config) overrides <dir>/ttt.json for a GGUF model and is refused for an HF
// one (whose config.json holds the TTT fields). A ttt_adapter.safetensors beside an HF checkpoint
// is INVALID_ARGUMENT (its config.json and tensors hold TTT themselves).
absl::StatusOr<ModelFiles> FindModelFiles(const std::string& path, const std::string& ttt_json = "");

}  // namespace adaptd::engine

#endif  // ADAPTD_ENGINE_SRC_MODEL_FILES_H_
