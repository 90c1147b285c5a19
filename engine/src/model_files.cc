// Resolving a model path into its files.
#include "model_files.h"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace adaptd::engine {

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

absl::StatusOr<ModelFiles> FindModelFiles(const std::string& path, const std::string& ttt_json) {
  namespace fs = std::filesystem;
  std::error_code ec;
  ModelFiles files;
  if (fs::is_regular_file(path, ec)) {
    if (fs::path(path).extension() != ".gguf") {
      return absl::NotFoundError(absl::StrCat(path, " is a file but not a .gguf file; a model is an HF directory or a GGUF file"));
    }
    files.gguf = path;
    files.dir = fs::path(path).parent_path().string();
    if (files.dir.empty()) files.dir = ".";
  } else if (fs::is_directory(path, ec)) {
    files.dir = path;
    if (!fs::exists(fs::path(path) / "config.json", ec)) {
      std::vector<std::string> found;
      for (const auto& e : fs::directory_iterator(path, ec)) {
        if (e.path().extension() == ".gguf" && fs::is_regular_file(e.path(), ec)) found.push_back(e.path().string());
      }
      if (found.empty()) return absl::NotFoundError(absl::StrCat("no config.json and no .gguf file in ", path));
      if (found.size() > 1) {
        return absl::InvalidArgumentError(absl::StrCat(path, " holds several GGUF files (", absl::StrJoin(found, ", "),
                                                       "): name one"));
      }
      files.gguf = found[0];
    }
  } else {
    return absl::NotFoundError(absl::StrCat("model path ", path, " does not exist"));
  }
  const fs::path adapter = fs::path(files.dir) / "ttt_adapter.safetensors";
  if (fs::exists(adapter, ec)) {
    if (files.gguf.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(adapter.string(), ": an In-Place adapter applies to a GGUF base; ",
                                                     "an HF checkpoint holds its TTT tensors itself"));
    }
    files.adapter = adapter.string();
  }
  if (files.gguf.empty()) {
    if (!ttt_json.empty()) {
      return absl::InvalidArgumentError("a TTT config file applies to GGUF models; an HF checkpoint's config.json holds its ttt_* fields");
    }
    return files;
  }
  if (!ttt_json.empty()) {
    if (!fs::is_regular_file(ttt_json, ec)) return absl::NotFoundError(absl::StrCat("TTT config ", ttt_json, " not found"));
    files.ttt_json = ttt_json;
  } else if (fs::is_regular_file(fs::path(files.dir) / "ttt.json", ec)) {
    files.ttt_json = (fs::path(files.dir) / "ttt.json").string();
  }
  return files;
}

}  // namespace adaptd::engine
