// Batch-1 products streaming distinct weights, against the read bandwidth measured in the same
// run (not a test): LibTorch's weight-only kernels beside this project's (engine/src/cpu_gemv.h),
// the ceiling of a quantized decode step on this CPU.
//
//   build/bin/adaptd-bench-kernels [--threads 2] [--n 11264] [--k 2048] [--rows 1]
//
// Each kernel multiplies `rows` rows of x by 24 distinct [n, k] weights in turn (by default
// TinyLlama's fused gate/up: 24 x 14-46 MB, far more than the caches, so every product streams
// its weight from memory, as a decode step does), three passes, bytes of codes and scales over
// the time; beside the best of three reads of a 1 GiB f32 tensor (at::sum) taken right before.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "cpu_gemv.h"
#include "quant.h"

ABSL_FLAG(int, threads, 2, "intra-op threads");
ABSL_FLAG(int64_t, n, 11264, "rows of each weight");
ABSL_FLAG(int64_t, k, 2048, "columns of each weight");
ABSL_FLAG(int64_t, rows, 1, "rows of x");

namespace {

using adaptd::engine::FrozenWeight;
using adaptd::engine::WeightFormat;
using Clock = std::chrono::steady_clock;

constexpr int kWeights = 24, kPasses = 3;

double Seconds(const std::function<void()>& f) {
  const auto t = Clock::now();
  f();
  return std::chrono::duration<double>(Clock::now() - t).count();
}

double ReadBandwidth() {
  const at::Tensor big = at::ones({int64_t{1} << 28});  // 1 GiB of f32
  double best = 1e30;
  for (int i = 0; i < 3; ++i) best = std::min(best, Seconds([&] { (void)big.sum().item<float>(); }));
  return static_cast<double>(big.nbytes()) / best;
}

struct Row {
  std::string name;
  double rate, bandwidth;
};

// Bytes of one weight over the time of one product, streaming `weights` in turn.
template <typename W>
double Stream(const std::vector<W>& weights, int64_t bytes, const std::function<void(const W&)>& product) {
  product(weights[0]);
  const double s = Seconds([&] {
    for (int p = 0; p < kPasses; ++p) {
      for (const W& w : weights) product(w);
    }
  });
  return static_cast<double>(bytes) * kPasses * static_cast<double>(weights.size()) / s;
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  at::set_num_threads(absl::GetFlag(FLAGS_threads));
  const int64_t n = absl::GetFlag(FLAGS_n), k = absl::GetFlag(FLAGS_k), m = absl::GetFlag(FLAGS_rows);
  at::manual_seed(0);
  const at::Tensor x = at::randn({m, k}), xb = x.to(at::kBFloat16);
  std::vector<Row> rows;
  auto add = [&](const std::string& name, double rate) { rows.push_back({name, rate, ReadBandwidth()}); };

  for (const int64_t group : {32, 64}) {
    const WeightFormat format{WeightFormat::Kind::kInt4, static_cast<int>(group)};
    std::vector<std::pair<at::Tensor, at::Tensor>> libtorch;  // LibTorch's packing and [K/g, N, 2]
    std::vector<FrozenWeight> ours;
    for (int i = 0; i < kWeights; ++i) {
      const adaptd::engine::QuantCodes c{at::randint(0, 16, {n, k}, at::kByte), at::rand({n, k / group}) * 0.01,
                                         at::rand({n, k / group}) * 0.01};
      libtorch.emplace_back(at::_convert_weight_to_int4pack_for_cpu(c.q.to(at::kInt), 2),
                            at::stack({c.scale.t(), c.zero.t()}, 2).to(at::kBFloat16).contiguous());
      if (adaptd::engine::CpuGemvInt4Available()) ours.push_back(*adaptd::engine::PackWeight(c, format, at::kCPU));
    }
    const int64_t bytes = libtorch[0].first.nbytes() + libtorch[0].second.nbytes();
    add("int4-g" + std::to_string(group) + " LibTorch _weight_int4pack_mm_for_cpu, bf16 x",
        Stream<std::pair<at::Tensor, at::Tensor>>(libtorch, bytes, [&](const auto& w) {
          (void)at::_weight_int4pack_mm_for_cpu(xb, w.first, group, w.second);
        }));
    libtorch.clear();
    if (!ours.empty()) {
      add("int4-g" + std::to_string(group) + " adaptd CpuGemvInt4, x as int8 digits",
          Stream<FrozenWeight>(ours, ours[0].nbytes(), [&](const FrozenWeight& w) {
            (void)adaptd::engine::CpuGemvInt4(x, w.w, w.scales, group);
          }));
    }
  }
  {
    std::vector<std::pair<at::Tensor, at::Tensor>> ws;
    for (int i = 0; i < kWeights / 2; ++i) {
      ws.emplace_back(at::randint(-127, 127, {n, k}, at::kChar), at::rand({n}).to(at::kBFloat16));
    }
    const int64_t bytes = ws[0].first.nbytes() + ws[0].second.nbytes();
    add("int8 LibTorch _weight_int8pack_mm, bf16 x", Stream<std::pair<at::Tensor, at::Tensor>>(ws, bytes, [&](const auto& w) {
          (void)at::_weight_int8pack_mm(xb, w.first, w.second);
        }));
    if (adaptd::engine::CpuGemvAvailable()) {
      add("int8 adaptd CpuGemv, f32 x, rows apart", Stream<std::pair<at::Tensor, at::Tensor>>(ws, bytes, [&](const auto& w) {
            (void)adaptd::engine::CpuGemv(x, w.first, w.second);
          }));
      for (auto& w : ws) w.first = adaptd::engine::TileRows(w.first);
      add("int8 adaptd CpuGemv, f32 x, tiles of 4 rows (served)",
          Stream<std::pair<at::Tensor, at::Tensor>>(ws, bytes, [&](const auto& w) {
            (void)adaptd::engine::CpuGemv(x, w.first, w.second, {}, true);
          }));
    }
  }
  {
    std::vector<at::Tensor> ws;
    for (int i = 0; i < kWeights / 4; ++i) ws.push_back(at::randn({n / 2, k}));
    const int64_t bytes = ws[0].nbytes();
    add("f32 LibTorch mm (W X^T)", Stream<at::Tensor>(ws, bytes, [&](const at::Tensor& w) { (void)at::mm(w, x.t()); }));
    if (adaptd::engine::CpuGemvAvailable()) {
      add("f32 adaptd CpuGemv", Stream<at::Tensor>(ws, bytes, [&](const at::Tensor& w) {
            (void)adaptd::engine::CpuGemv(x, w, {});
          }));
    }
  }
  std::printf("%lld-row products streaming distinct [%lld, %lld] weights, %d threads\n", static_cast<long long>(m),
              static_cast<long long>(n), static_cast<long long>(k), absl::GetFlag(FLAGS_threads));
  std::printf("| kernel | GB/s | read bandwidth GB/s (just after) | share |\n|---|---|---|---|\n");
  for (const Row& r : rows) {
    std::printf("| %s | %.1f | %.1f | %.0f%% |\n", r.name.c_str(), r.rate / 1e9, r.bandwidth / 1e9, 100 * r.rate / r.bandwidth);
  }
  return 0;
}
