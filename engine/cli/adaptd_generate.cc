// adaptd-generate: the engine from the command line, token ids in and out (text arrives with
// the tokenizer). Greedy generation through the Executor, or --score: the NLL of each chunk
// of the input with TTT on and off, and the updates applied.
//
//   adaptd-generate --model DIR --ids 1,2,3 [--max_new_tokens 32] [--dtype bf16] [--text]
//   adaptd-generate --model DIR --ids_file ids.txt --score
#include <cmath>
#include <cstdio>
#include <fstream>
#include <future>
#include <iostream>
#include <sstream>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "adaptd/engine/executor.h"
#include "adaptd/engine/model.h"
#include "adaptd/engine/tokenizer.h"

ABSL_FLAG(std::string, model, "", "checkpoint directory (config.json + safetensors)");
ABSL_FLAG(std::string, ids, "", "comma-separated input token ids");
ABSL_FLAG(std::string, ids_file, "", "file of whitespace- or comma-separated token ids");
ABSL_FLAG(int, max_new_tokens, 32, "greedy tokens to generate");
ABSL_FLAG(bool, score, false, "print the NLL of each chunk with TTT on and off instead of generating");
ABSL_FLAG(std::string, device, "cpu", "cpu, cuda or cuda:<i>");
ABSL_FLAG(std::string, dtype, "", "compute dtype f32|bf16|f16 (default: the checkpoint's)");
ABSL_FLAG(int, threads, 0, "CPU threads for the engine (0: LibTorch's default)");
ABSL_FLAG(bool, text, false, "print generated tokens as text (the model's tokenizer.json), streamed");

namespace adaptd::engine {
namespace {

absl::StatusOr<std::vector<int32_t>> ReadIds() {
  std::string text = absl::GetFlag(FLAGS_ids);
  if (!absl::GetFlag(FLAGS_ids_file).empty()) {
    std::ifstream in(absl::GetFlag(FLAGS_ids_file));
    if (!in) return absl::NotFoundError("cannot read " + absl::GetFlag(FLAGS_ids_file));
    std::stringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  std::vector<int32_t> ids;
  for (absl::string_view piece : absl::StrSplit(text, absl::ByAnyChar(", \n\t"), absl::SkipEmpty())) {
    int32_t id;
    if (!absl::SimpleAtoi(piece, &id)) return absl::InvalidArgumentError(absl::StrCat("not a token id: '", piece, "'"));
    ids.push_back(id);
  }
  if (ids.empty()) return absl::InvalidArgumentError("no input ids (--ids or --ids_file)");
  return ids;
}

// NLL of each next-token prediction of ids under a session with `rule`.
absl::StatusOr<std::vector<double>> TokenNll(const Model& model, UpdateRule rule, const std::vector<int32_t>& ids,
                                             int64_t* updates) {
  SessionOptions o;
  o.rule = rule;
  auto session = model.NewSession(o);
  if (!session.ok()) return session.status();
  auto logits = model.Forward(**session, ids);
  if (!logits.ok()) return logits.status();
  const int64_t V = model.config().vocab_size;
  std::vector<double> nll;
  for (size_t i = 0; i + 1 < ids.size(); ++i) {
    const float* row = logits->data() + i * V;
    double m = row[0], sum = 0;
    for (int64_t v = 1; v < V; ++v) m = std::max<double>(m, row[v]);
    for (int64_t v = 0; v < V; ++v) sum += std::exp(row[v] - m);
    nll.push_back(m + std::log(sum) - row[ids[i + 1]]);
  }
  *updates = (*session)->updates_applied();
  return nll;
}

int Score(const Model& model, const std::vector<int32_t>& ids) {
  int64_t updates = 0, unused = 0;
  auto on = TokenNll(model, UpdateRule::kInplace, ids, &updates);
  auto off = TokenNll(model, UpdateRule::kOff, ids, &unused);
  if (!on.ok() || !off.ok()) {
    std::cerr << (on.ok() ? off.status() : on.status()) << "\n";
    return 1;
  }
  const int64_t C = model.config().ttt.chunk;
  std::printf("chunk  tokens  nll_ttt  nll_off  (C = %lld; predictions of token i+1 from tokens <= i)\n",
              static_cast<long long>(C));
  double tot_on = 0, tot_off = 0;
  for (size_t a = 0; a < on->size(); a += C) {
    const size_t b = std::min(on->size(), a + static_cast<size_t>(C));
    double s_on = 0, s_off = 0;
    for (size_t i = a; i < b; ++i) s_on += (*on)[i], s_off += (*off)[i];
    tot_on += s_on, tot_off += s_off;
    std::printf("%5zu  %6zu  %7.4f  %7.4f\n", a / C, b - a, s_on / (b - a), s_off / (b - a));
  }
  std::printf("all    %6zu  %7.4f  %7.4f\nupdates applied: %lld\n", on->size(), tot_on / on->size(),
              tot_off / on->size(), static_cast<long long>(updates));
  return 0;
}

int Generate(const Model& model, const std::vector<int32_t>& ids) {
  auto executor = Executor::Create(model, {}).value();
  auto session = model.NewSession();
  if (!session.ok()) {
    std::cerr << session.status() << "\n";
    return 1;
  }
  std::unique_ptr<Tokenizer> tokenizer;
  if (absl::GetFlag(FLAGS_text)) {
    auto t = Tokenizer::Load(absl::GetFlag(FLAGS_model) + "/tokenizer.json");
    if (!t.ok()) {
      std::cerr << t.status() << "\n";
      return 1;
    }
    tokenizer = *std::move(t);
  }
  std::unique_ptr<StreamDecoder> stream;
  if (tokenizer) stream = std::make_unique<StreamDecoder>(*tokenizer);
  std::promise<absl::Status> done;
  auto id = executor->Enqueue({session->get(), ids, true, absl::GetFlag(FLAGS_max_new_tokens), {}, {}},
                              [&](const GenerateResult& r) {
                                for (int32_t t : r.tokens) {
                                  if (stream) {
                                    std::printf("%s", stream->Add(t).value_or("").c_str());
                                  } else {
                                    std::printf("%d ", t);
                                  }
                                }
                                if (r.final && stream) std::printf("%s", stream->Finish().c_str());
                                std::fflush(stdout);
                                if (r.final) done.set_value(r.status);
                              });
  if (!id.ok()) {
    std::cerr << id.status() << "\n";
    return 1;
  }
  absl::Status status = done.get_future().get();
  std::printf("\n");
  std::fprintf(stderr, "N = %lld, updates applied = %lld\n", static_cast<long long>((*session)->n_learned()),
               static_cast<long long>((*session)->updates_applied()));
  if (!status.ok()) std::cerr << status << "\n";
  return status.ok() ? 0 : 1;
}

int Main() {
  if (absl::GetFlag(FLAGS_threads) > 0) SetComputeThreads(absl::GetFlag(FLAGS_threads));
  LoadOptions options;
  options.device = absl::GetFlag(FLAGS_device);
  const std::string dtype = absl::GetFlag(FLAGS_dtype);
  if (dtype == "f32") options.dtype = DType::kF32;
  if (dtype == "bf16") options.dtype = DType::kBF16;
  if (dtype == "f16") options.dtype = DType::kF16;
  if (!dtype.empty() && !options.dtype) {
    std::cerr << "--dtype must be f32, bf16 or f16\n";
    return 2;
  }
  auto ids = ReadIds();
  if (!ids.ok()) {
    std::cerr << ids.status() << "\n";
    return 2;
  }
  auto model = Model::Load(absl::GetFlag(FLAGS_model), options);
  if (!model.ok()) {
    std::cerr << model.status() << "\n";
    return 1;
  }
  return absl::GetFlag(FLAGS_score) ? Score(**model, *ids) : Generate(**model, *ids);
}

}  // namespace
}  // namespace adaptd::engine

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("adaptd-generate --model DIR --ids 1,2,3 [--max_new_tokens N] [--score]");
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_model).empty()) {
    std::cerr << "--model is required\n";
    return 2;
  }
  return adaptd::engine::Main();
}
