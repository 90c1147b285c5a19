// adaptd-bench-engine: engine throughput, measured side by side in one process (not a test).
// Prints one JSON object: prefill and decode tokens/s with TTT on and off, and decode of
// `sessions` sessions with distinct dW batched in one step vs fed one at a time.
// bench/engine_bench.py runs it next to HF transformers and prints the ratios.
//
// Every Forward returns its logits to the host, so the timings include the device's work.
//
//   adaptd-bench-engine --model DIR --prompt 512 --decode 64 --sessions 16 --threads 2
//   adaptd-bench-engine --model DIR --device cuda --dtype bf16
//   adaptd-bench-engine --model models/smollm2-135m-instruct --ttt_rule ntp_gradient --weights int4
//   adaptd-bench-engine --model models/smollm2-135m-instruct --ntp_memory 256,1024,4096
#include <malloc.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "adaptd/engine/model.h"

ABSL_FLAG(std::string, model, "", "checkpoint directory");
ABSL_FLAG(int, prompt, 512, "prompt tokens");
ABSL_FLAG(int, decode, 64, "decoded tokens per session");
ABSL_FLAG(int, sessions, 16, "sessions in the batched decode");
ABSL_FLAG(int, batch_prompt, 64, "prompt tokens of each batched session (a chunk or more: it has a dW)");
ABSL_FLAG(bool, sequential, true, "also decode the sessions one at a time (sequential_decode_tps; 0 when off)");
ABSL_FLAG(int, repeats, 3, "repeats (the median is reported)");
ABSL_FLAG(int, threads, 0, "CPU threads (0: LibTorch's default)");
ABSL_FLAG(std::string, device, "cpu", "cpu, cuda or cuda:<i>");
ABSL_FLAG(std::string, dtype, "", "compute dtype f32, bf16 or f16 (default: the checkpoint's)");
ABSL_FLAG(std::string, ttt_rule, "inplace", "the TTT-on rule: inplace (a TTT checkpoint) or ntp_gradient (a stock one)");
ABSL_FLAG(std::string, weights, "dense", "the frozen base's format: dense, int8, int4-g32 or int4-g64");
ABSL_FLAG(std::string, ttt_config, "", "a GGUF model's TTT settings (default: ttt.json beside it)");
ABSL_FLAG(std::vector<std::string>, ntp_memory, {},
          "instead: windows (tokens) at which to measure one ntp_gradient update's peak memory against "
          "Model::NtpUpdateBytes");

namespace adaptd::engine {
namespace {

using Clock = std::chrono::steady_clock;

std::vector<int32_t> Ids(int n, int seed, int64_t vocab) {
  std::vector<int32_t> ids(n);
  for (int i = 0; i < n; ++i) ids[i] = static_cast<int32_t>((seed * 7919 + i * 104729) % vocab);
  return ids;
}

double Seconds(Clock::time_point a) { return std::chrono::duration<double>(Clock::now() - a).count(); }

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void Check(const absl::Status& s) {
  if (!s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    std::exit(1);
  }
}

struct Single {
  double prefill_tps, decode_tps;
  double decode_step_tps;  // decode with the time of chunk updates taken out: the steps alone
  double update_seconds;   // all chunk updates of the session
  int64_t updates;
};

// One session: prefill the prompt, then decode token by token.
Single RunSingle(const Model& m, UpdateRule rule, const std::vector<int32_t>& prompt, int decode) {
  SessionOptions o;
  o.rule = rule;
  auto s = m.NewSession(o).value();
  auto t0 = Clock::now();
  Check(m.Forward(*s, prompt).status());
  const double prefill = Seconds(t0);
  const auto next = Ids(decode, 99, m.config().vocab_size);
  const double before = s->update_seconds();
  t0 = Clock::now();
  for (int32_t id : next) Check(m.ForwardBatch({{s.get(), absl::MakeConstSpan(&id, 1)}}).status());
  const double seconds = Seconds(t0);
  return {prompt.size() / prefill, decode / seconds, decode / (seconds - (s->update_seconds() - before)),
          s->update_seconds(), s->updates_applied()};
}

// Decode tokens/s of n sessions with distinct dW: one batched step per token vs one at a time.
std::pair<double, double> RunBatched(const Model& m, UpdateRule rule, int n, int prompt, int decode) {
  std::vector<std::unique_ptr<SessionState>> a, b;
  SessionOptions o;
  o.rule = rule;
  for (int i = 0; i < n; ++i) {
    auto s = m.NewSession(o).value();
    Check(m.Forward(*s, Ids(prompt, i, m.config().vocab_size)).status());
    b.push_back(m.Clone(*s).value());
    a.push_back(std::move(s));
  }
  const auto next = Ids(decode, 7, m.config().vocab_size);
  auto t0 = Clock::now();
  for (int32_t id : next) {
    std::vector<Model::BatchInput> batch;
    for (auto& s : a) batch.push_back({s.get(), absl::MakeConstSpan(&id, 1)});
    Check(m.ForwardBatch(batch).status());
  }
  const double batched = n * decode / Seconds(t0);
  if (!absl::GetFlag(FLAGS_sequential)) return {batched, 0};
  t0 = Clock::now();
  for (int32_t id : next) {
    for (auto& s : b) Check(m.ForwardBatch({{s.get(), absl::MakeConstSpan(&id, 1)}}).status());
  }
  return {batched, n * decode / Seconds(t0)};
}

// Linux: the process's resident and peak resident bytes (VmRSS, VmHWM).
std::pair<int64_t, int64_t> ResidentBytes() {
  std::ifstream status("/proc/self/status");
  std::string line;
  int64_t rss = 0, hwm = 0;
  while (std::getline(status, line)) {
    if (line.rfind("VmRSS:", 0) == 0) rss = std::stoll(line.substr(6)) << 10;
    if (line.rfind("VmHWM:", 0) == 0) hwm = std::stoll(line.substr(6)) << 10;
  }
  return {rss, hwm};
}

// Per window: a session reads `window` tokens unlearned, then one learned chunk (one update);
// the peak resident memory above the resident memory before the chunk (freed memory handed back
// first, the peak reset through /proc/self/clear_refs) against the engine's estimate.
void NtpMemory(const Model& m, const std::vector<std::string>& windows) {
  const int64_t C = m.config().ttt.chunk;
  std::printf("[");
  for (size_t k = 0; k < windows.size(); ++k) {
    const int window = std::stoi(windows[k]);
    SessionOptions o;
    o.rule = UpdateRule::kNtpGradient;
    auto s = m.NewSession(o).value();
    if (window > 0) Check(m.Forward(*s, Ids(window, 3, m.config().vocab_size), /*learn=*/false).status());
    malloc_trim(0);
    std::ofstream("/proc/self/clear_refs") << "5";
    const int64_t before = ResidentBytes().first;
    Check(m.Forward(*s, Ids(static_cast<int>(C), 4, m.config().vocab_size)).status());
    const int64_t peak = ResidentBytes().second;
    std::printf("%s{\"window\": %d, \"chunk\": %lld, \"updates\": %lld, \"measured_mib\": %.1f, \"estimate_mib\": %.1f}",
                k ? ", " : "", window, static_cast<long long>(C), static_cast<long long>(s->updates_applied()),
                (peak - before) / 1048576.0, m.NtpUpdateBytes(window) / 1048576.0);
  }
  std::printf("]\n");
}

// Bytes of fp32 dW a TTT-on decode step reads: one [d, f] per layer the rule learns in.
int64_t DeltaBytes(const Model& m, UpdateRule rule) {
  const ModelConfig& c = m.config();
  const size_t layers = rule == UpdateRule::kNtpGradient ? c.ttt.fast_layers.size() : c.ttt.layers.size();
  return static_cast<int64_t>(layers) * c.hidden_size * c.intermediate_size * 4;
}

int Main() {
  if (absl::GetFlag(FLAGS_threads) > 0) SetComputeThreads(absl::GetFlag(FLAGS_threads));
  LoadOptions options;
  options.device = absl::GetFlag(FLAGS_device);
  auto dtype = ParseComputeDType(absl::GetFlag(FLAGS_dtype));
  Check(dtype.status());
  options.dtype = *dtype;
  options.ttt_config = absl::GetFlag(FLAGS_ttt_config);
  auto weights = ParseWeightFormat(absl::GetFlag(FLAGS_weights));
  Check(weights.status());
  options.weights = *weights;
  const auto load_start = Clock::now();
  auto model = Model::Load(absl::GetFlag(FLAGS_model), options);
  Check(model.status());
  const double load_seconds = Seconds(load_start);
  const std::string rule_name = absl::GetFlag(FLAGS_ttt_rule);
  if (rule_name != "inplace" && rule_name != "ntp_gradient") Check(absl::InvalidArgumentError("--ttt_rule"));
  const UpdateRule rule = rule_name == "inplace" ? UpdateRule::kInplace : UpdateRule::kNtpGradient;
  const Model& m = **model;
  if (!absl::GetFlag(FLAGS_ntp_memory).empty()) {
    NtpMemory(m, absl::GetFlag(FLAGS_ntp_memory));
    return 0;
  }
  const auto prompt = Ids(absl::GetFlag(FLAGS_prompt), 1, m.config().vocab_size);
  const int decode = absl::GetFlag(FLAGS_decode);
  std::vector<double> pre_on, pre_off, dec_on, dec_off, step_on, step_off, upd, bat, seq;
  int64_t updates = 0;
  RunSingle(m, rule, prompt, 4);  // warm-up
  for (int r = 0; r < absl::GetFlag(FLAGS_repeats); ++r) {
    Single on = RunSingle(m, rule, prompt, decode);
    Single off = RunSingle(m, UpdateRule::kOff, prompt, decode);
    pre_on.push_back(on.prefill_tps), dec_on.push_back(on.decode_tps);
    pre_off.push_back(off.prefill_tps), dec_off.push_back(off.decode_tps);
    step_on.push_back(on.decode_step_tps), step_off.push_back(off.decode_step_tps);
    upd.push_back(on.update_seconds);
    updates = on.updates;
    auto [b, s] = RunBatched(m, rule, absl::GetFlag(FLAGS_sessions), absl::GetFlag(FLAGS_batch_prompt), std::max(8, decode / 4));
    bat.push_back(b), seq.push_back(s);
  }
  std::printf(
      "{\"prefill_tps_ttt_on\": %.1f, \"prefill_tps_ttt_off\": %.1f, \"decode_tps_ttt_on\": %.1f, "
      "\"decode_tps_ttt_off\": %.1f, \"updates_applied\": %lld, \"chunk\": %lld, \"batched_decode_tps\": %.1f, "
      "\"sequential_decode_tps\": %.1f, \"sessions\": %d, \"load_seconds\": %.3f, \"weight_bytes\": %lld, "
      "\"delta_bytes\": %lld, \"weights\": \"%s\", \"decode_step_tps_ttt_on\": %.1f, \"decode_step_tps_ttt_off\": %.1f, "
      "\"update_seconds_per_chunk\": %.4f}\n",
      Median(pre_on), Median(pre_off), Median(dec_on), Median(dec_off), static_cast<long long>(updates),
      static_cast<long long>(m.config().ttt.chunk), Median(bat), Median(seq), absl::GetFlag(FLAGS_sessions),
      load_seconds, static_cast<long long>(m.weight_bytes()), static_cast<long long>(DeltaBytes(m, rule)),
      m.weight_format().Name().c_str(), Median(step_on), Median(step_off),
      Median(upd) / std::max<int64_t>(1, (prompt.size() + decode) / m.config().ttt.chunk));
  return 0;
}

}  // namespace
}  // namespace adaptd::engine

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return adaptd::engine::Main();
}
