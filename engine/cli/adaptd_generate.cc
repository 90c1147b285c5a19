// adaptd-generate: the engine from the command line. Generation through the Executor from a
// text prompt, a conversation or token ids, streamed as text (or ids); or scoring: the NLL of
// each chunk of a text file or of ids with TTT on and off, and the updates applied.
//
//   adaptd-generate --model DIR --prompt "Once upon" [--max_new_tokens 32] [--temperature 0.7]
//   adaptd-generate --model DIR --chat conversation.json [--chat_format qwen3] [--stop "\n\n"]
//   adaptd-generate --model DIR --ids 1,2,3 [--text]
//   adaptd-generate --model DIR --score notes.txt
//   adaptd-generate --model DIR --ids_file ids.txt --score_ids
#include <algorithm>
#include <condition_variable>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <iostream>
#include <sstream>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "adaptd/engine/chat.h"
#include "adaptd/engine/executor.h"
#include "adaptd/engine/model.h"
#include "adaptd/engine/tokenizer.h"
#include "nlohmann/json.hpp"
#include "status_macros.h"  // engine/src: the module's own tool

ABSL_FLAG(std::string, model, "", "checkpoint: an HF directory, a .gguf file or a directory holding one");
ABSL_FLAG(std::string, ttt_config, "", "a GGUF model's TTT settings (default: ttt.json beside it)");
ABSL_FLAG(std::string, prompt, "", "text prompt (encoded as plain text: no special tokens)");
ABSL_FLAG(std::string, chat, "", "JSON file of a conversation: [{\"role\": ..., \"content\": ...}, ...]");
ABSL_FLAG(std::string, chat_format, "", "raw, qwen3 or llama3 (default: from the tokenizer)");
ABSL_FLAG(bool, enable_thinking, true, "qwen3: false closes an empty <think> block in the generation prompt");
ABSL_FLAG(std::string, ids, "", "comma-separated input token ids");
ABSL_FLAG(std::string, ids_file, "", "file of whitespace- or comma-separated token ids");
ABSL_FLAG(int, max_new_tokens, 32, "tokens to generate");
ABSL_FLAG(std::vector<std::string>, stop, {}, "stop strings (comma-separated); not printed");
ABSL_FLAG(double, temperature, 0.0, "sampling temperature (0: greedy)");
ABSL_FLAG(int, top_k, 0, "top-k (0: off)");
ABSL_FLAG(double, top_p, 1.0, "top-p in (0, 1]");
ABSL_FLAG(double, min_p, 0.0, "min-p in [0, 1]");
ABSL_FLAG(uint64_t, seed, 0, "sampling seed");
ABSL_FLAG(std::string, score, "", "text file: print the NLL of each chunk with TTT on and off instead of generating");
ABSL_FLAG(bool, score_ids, false, "score the --ids / --ids_file input instead of generating");
ABSL_FLAG(std::string, device, "cpu", "cpu, cuda or cuda:<i>");
ABSL_FLAG(std::string, dtype, "", "compute dtype f32|bf16|f16 (default: the checkpoint's)");
ABSL_FLAG(std::string, weights, "dense", "the frozen base's format: dense, int8, int4-g32 or int4-g64");
ABSL_FLAG(bool, dequantize_weights, false, "the oracle of --weights: its quantized values stored dense (benchmarks)");
ABSL_FLAG(int, threads, 0, "CPU threads for the engine (0: LibTorch's default)");
ABSL_FLAG(bool, text, false, "with --ids: print generated tokens as text (text inputs always do)");

namespace adaptd::engine {
namespace {

std::string ReadFile(const std::string& path, absl::Status* status) {
  std::ifstream in(path, std::ios::binary);
  if (!in) *status = absl::NotFoundError("cannot read " + path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::StatusOr<std::vector<int32_t>> ParseIds(const std::string& text) {
  std::vector<int32_t> ids;
  for (absl::string_view piece : absl::StrSplit(text, absl::ByAnyChar(", \n\t"), absl::SkipEmpty())) {
    int32_t id;
    if (!absl::SimpleAtoi(piece, &id)) return absl::InvalidArgumentError(absl::StrCat("not a token id: '", piece, "'"));
    ids.push_back(id);
  }
  if (ids.empty()) return absl::InvalidArgumentError("no input ids");
  return ids;
}

absl::StatusOr<std::vector<ChatMessage>> ParseChat(const std::string& text) {
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_object() && j.contains("messages")) j = j["messages"];
  if (!j.is_array()) return absl::InvalidArgumentError("--chat: expected a JSON array of messages");
  std::vector<ChatMessage> messages;
  for (const auto& m : j) {
    if (!m.is_object() || !m.contains("role") || !m["role"].is_string() || !m.contains("content") ||
        !m["content"].is_string()) {
      return absl::InvalidArgumentError("--chat: each message needs string \"role\" and \"content\"");
    }
    messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
  }
  return messages;
}

// What to feed: ids from exactly one of --prompt, --chat, --ids/--ids_file, --score; text
// inputs need the tokenizer (and print text), a conversation also stops at its end-of-turn.
struct Input {
  std::vector<int32_t> ids;
  std::vector<int32_t> stop_ids;
  std::unique_ptr<Tokenizer> tokenizer;
};

absl::StatusOr<Input> ReadInput() {
  const int given = !absl::GetFlag(FLAGS_prompt).empty() + !absl::GetFlag(FLAGS_chat).empty() +
                    !(absl::GetFlag(FLAGS_ids).empty() && absl::GetFlag(FLAGS_ids_file).empty()) +
                    !absl::GetFlag(FLAGS_score).empty();
  if (given != 1) return absl::InvalidArgumentError("give exactly one of --prompt, --chat, --ids/--ids_file, --score");
  Input in;
  absl::Status read;
  if (!absl::GetFlag(FLAGS_ids).empty() || !absl::GetFlag(FLAGS_ids_file).empty()) {
    const std::string text = absl::GetFlag(FLAGS_ids_file).empty() ? absl::GetFlag(FLAGS_ids)
                                                                     : ReadFile(absl::GetFlag(FLAGS_ids_file), &read);
    if (!read.ok()) return read;
    ASSIGN_OR_RETURN(in.ids, ParseIds(text));
    if (!absl::GetFlag(FLAGS_text)) return in;
  }
  ASSIGN_OR_RETURN(in.tokenizer, Tokenizer::LoadForModel(absl::GetFlag(FLAGS_model)));
  if (!absl::GetFlag(FLAGS_prompt).empty()) {
    ASSIGN_OR_RETURN(in.ids, in.tokenizer->Encode(absl::GetFlag(FLAGS_prompt)));
  } else if (!absl::GetFlag(FLAGS_score).empty()) {
    const std::string text = ReadFile(absl::GetFlag(FLAGS_score), &read);
    if (!read.ok()) return read;
    ASSIGN_OR_RETURN(in.ids, in.tokenizer->Encode(text));
  } else if (!absl::GetFlag(FLAGS_chat).empty()) {
    const std::string text = ReadFile(absl::GetFlag(FLAGS_chat), &read);
    if (!read.ok()) return read;
    ASSIGN_OR_RETURN(auto messages, ParseChat(text));
    ChatFormat format = DetectChatFormat(*in.tokenizer);
    if (!absl::GetFlag(FLAGS_chat_format).empty()) {
      ASSIGN_OR_RETURN(format, ParseChatFormat(absl::GetFlag(FLAGS_chat_format)));
    }
    ASSIGN_OR_RETURN(auto renderer, ChatRenderer::Create(*in.tokenizer, format, {absl::GetFlag(FLAGS_enable_thinking)}));
    ASSIGN_OR_RETURN(in.ids, renderer.Render(messages, /*first=*/true, /*generation_prompt=*/true));
    in.stop_ids = renderer.StopIds();
    std::fprintf(stderr, "chat format %s, prompt %zu tokens\n", std::string(ChatFormatName(format)).c_str(), in.ids.size());
  }
  if (in.ids.empty()) return absl::InvalidArgumentError("the input encodes to no tokens");
  return in;
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

// Prints the streamed tokens: text through the stream decoder and the stop strings, or ids.
// Returns true once a stop string completed.
class Printer {
 public:
  explicit Printer(const Tokenizer* tokenizer) : stops_(absl::GetFlag(FLAGS_stop)) {
    if (tokenizer != nullptr) stream_ = std::make_unique<StreamDecoder>(*tokenizer);
  }
  bool Print(int32_t token) {
    if (!stream_) {
      std::printf("%d ", token);
      return false;
    }
    auto r = stops_.Add(stream_->Add(token).value_or(""));
    std::printf("%s", r.text.c_str());
    return r.stopped;
  }
  void Finish() {
    if (!stream_) return;
    const auto last = stops_.Add(stream_->Finish());
    std::printf("%s%s", last.text.c_str(), last.stopped ? "" : stops_.Finish().c_str());
  }

 private:
  std::unique_ptr<StreamDecoder> stream_;
  StopStringMatcher stops_;
};

int Generate(const Model& model, const Input& in) {
  SamplingParams sampling;
  sampling.temperature = absl::GetFlag(FLAGS_temperature);
  sampling.top_k = absl::GetFlag(FLAGS_top_k);
  sampling.top_p = absl::GetFlag(FLAGS_top_p);
  sampling.min_p = absl::GetFlag(FLAGS_min_p);
  sampling.seed = absl::GetFlag(FLAGS_seed);
  auto executor = Executor::Create(model, {});
  auto session = model.NewSession();
  if (!executor.ok() || !session.ok()) {
    std::cerr << (executor.ok() ? session.status() : executor.status()) << "\n";
    return 1;
  }
  Printer printer(in.tokenizer.get());
  // The callback runs on the engine thread and must not call into the Executor: a completed
  // stop string is cancelled from here.
  std::mutex mu;
  std::condition_variable cv;
  bool stopped = false, final = false;
  absl::Status status;
  auto id = (*executor)->Enqueue(
      {session->get(), in.ids, true, absl::GetFlag(FLAGS_max_new_tokens), in.stop_ids, sampling},
      [&](const GenerateResult& r) {
        std::lock_guard<std::mutex> lock(mu);
        for (int32_t t : r.tokens) {
          const bool stop_id = std::find(in.stop_ids.begin(), in.stop_ids.end(), t) != in.stop_ids.end();
          if (!stopped && !stop_id) stopped = printer.Print(t);
        }
        if (r.final) {
          if (!stopped) printer.Finish();
          final = true;
          status = r.status.code() == absl::StatusCode::kCancelled && stopped ? absl::OkStatus() : r.status;
        }
        std::fflush(stdout);
        cv.notify_all();
      });
  if (!id.ok()) {
    std::cerr << id.status() << "\n";
    return 1;
  }
  bool cancel;
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return stopped || final; });
    cancel = !final;
  }
  if (cancel) (*executor)->Cancel(*id);  // outside `mu`; the tokens generated so far stay learned
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return final; });
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
  auto dtype = ParseComputeDType(absl::GetFlag(FLAGS_dtype));
  if (!dtype.ok()) {
    std::cerr << "--dtype: " << dtype.status().message() << "\n";
    return 2;
  }
  options.dtype = *dtype;
  options.ttt_config = absl::GetFlag(FLAGS_ttt_config);
  auto weights = ParseWeightFormat(absl::GetFlag(FLAGS_weights));
  if (!weights.ok()) {
    std::cerr << "--weights: " << weights.status().message() << "\n";
    return 2;
  }
  options.weights = *weights;
  options.dequantize_weights = absl::GetFlag(FLAGS_dequantize_weights);
  auto input = ReadInput();
  if (!input.ok()) {
    std::cerr << input.status() << "\n";
    return 2;
  }
  auto model = Model::Load(absl::GetFlag(FLAGS_model), options);
  if (!model.ok()) {
    std::cerr << model.status() << "\n";
    return 1;
  }
  const bool score = !absl::GetFlag(FLAGS_score).empty() || absl::GetFlag(FLAGS_score_ids);
  return score ? Score(**model, input->ids) : Generate(**model, *input);
}

}  // namespace
}  // namespace adaptd::engine

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "adaptd-generate --model DIR (--prompt TEXT | --chat FILE.json | --ids 1,2,3 | --score FILE) [flags]");
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_model).empty()) {
    std::cerr << "--model is required\n";
    return 2;
  }
  return adaptd::engine::Main();
}
