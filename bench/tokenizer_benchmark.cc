// adaptd-bench-tokenizer: single-thread encode throughput of the C++ tokenizer on a text file of
// documents (bench/tokenizer_bench.py writes it and compares with HF `tokenizers`).
//
//   adaptd-bench-tokenizer --tokenizer tokenizer.json --docs docs.json [--rounds 3]
// Prints one JSON line: {"bytes": B, "tokens": T, "seconds": [per round]}.
#include <chrono>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "adaptd/engine/tokenizer.h"
#include "nlohmann/json.hpp"

ABSL_FLAG(std::string, tokenizer, "", "tokenizer.json");
ABSL_FLAG(std::string, docs, "", "JSON array of documents");
ABSL_FLAG(int, rounds, 3, "timed passes over the documents");

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  auto tok = adaptd::engine::Tokenizer::Load(absl::GetFlag(FLAGS_tokenizer));
  if (!tok.ok()) {
    std::cerr << tok.status() << "\n";
    return 1;
  }
  std::ifstream in(absl::GetFlag(FLAGS_docs));
  std::stringstream ss;
  ss << in.rdbuf();
  const auto docs = nlohmann::json::parse(ss.str()).get<std::vector<std::string>>();
  size_t bytes = 0, tokens = 0;
  for (const auto& d : docs) bytes += d.size();
  nlohmann::json seconds = nlohmann::json::array();
  for (int r = 0; r < absl::GetFlag(FLAGS_rounds); ++r) {
    tokens = 0;
    const auto start = std::chrono::steady_clock::now();
    for (const auto& d : docs) tokens += (*tok)->Encode(d)->size();
    seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::cout << nlohmann::json{{"bytes", bytes}, {"tokens", tokens}, {"seconds", seconds}}.dump() << "\n";
  return 0;
}
