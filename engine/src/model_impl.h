// Private to engine/: the tensors behind Model and SessionState (LibTorch types live here).
#ifndef ADAPTD_ENGINE_SRC_MODEL_IMPL_H_
#define ADAPTD_ENGINE_SRC_MODEL_IMPL_H_

#include <ATen/ATen.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "adaptd/engine/gguf.h"
#include "adaptd/engine/model.h"
#include "adaptd/engine/safetensors.h"
#include "model_files.h"
#include "quant.h"

namespace adaptd::engine {

struct LayerWeights {
  at::Tensor input_norm, post_norm;           // [d]
  FrozenWeight qkv, o;                        // [(H + 2 KV) hd, d] (q, k, v stacked), [d, H hd]
  at::Tensor q_norm, k_norm;                  // [hd] (Qwen3) or undefined
  FrozenWeight gate_up, down;                 // [2f, d] (gate, up stacked), [d, f] = W0
  at::Tensor ttt_conv, ttt_proj;              // [d, 1, 5], [d, d] (undefined if absent)
};

struct Model::Impl {
  ModelConfig config;
  std::string fingerprint, base_fingerprint;  // Model::fingerprint(), base_fingerprint()
  at::ScalarType dtype;
  at::Device device{at::kCPU};
  WeightFormat format;                        // of the frozen projections (LoadOptions::weights)
  bool dense_ttt_down = false;                // the TTT layers' W0 dense under a quantized format
  bool dequantize_weights = false;            // the oracle of a quantized format
  int64_t weight_bytes = 0;                   // Model::weight_bytes()
  FrozenWeight embed, lm_head;                // [V, d] each (one weight when tied)
  at::Tensor final_norm;                      // [d]
  std::vector<LayerWeights> layers;
  std::vector<bool> is_ttt;                   // per layer
  at::Tensor inv_freq;                        // [hd/2] fp32
  at::Tensor rope_cos, rope_sin;              // [rows, hd] in the model dtype for positions < rows
  bool few_rows_as_gemm = false;              // CPU weights past the cache: see Linear in forward.cc
  // ttt_ntp_step rms (ntp_stats.safetensors): per fast layer the factored RMS gradient of the
  // down-projection, RMS_ij = rows_i cols_j with rows = sqrt(row MS / mean row MS) [d] and
  // cols = sqrt(column MS) [f] (f32 on the device; undefined elsewhere), and gbar, the mean RMS
  // over every fast layer's weights (computed in f64 at load).
  std::vector<at::Tensor> ntp_rms_rows, ntp_rms_cols;
  double ntp_gbar = 0;
  // A GGUF checkpoint's file (the mapping holds no resident pages once the weights are loaded).
  std::shared_ptr<const GgufFile> gguf;
  // Its In-Place adapter while loading (LoadWeights reads its tensors, then drops it).
  std::unique_ptr<SafetensorsFile> adapter;
};

// Weights past this size stream from memory on every decode step rather than stay in the cache
// (a server CPU's last-level cache, per socket or core complex).
inline constexpr int64_t kCacheBytes = int64_t{32} << 20;

// Fast state of one TTT layer (architecture.md "Session state").
struct TttLayerState {
  at::Tensor delta;   // split: dW fp32 [d, f]; undefined while no chunk has completed
  at::Tensor whole;   // parity: W in the model dtype; undefined until the first update
  at::Tensor tail_x;  // [<= C, d] MLP inputs of the open chunk (grown on demand, then reused)
  at::Tensor tail_t;  // [<= C, d] target states (input_embed mode only)
};

struct KvCache {
  at::Tensor k, v;  // [KV, capacity, hd]; rows [0, length) are valid
};

struct SessionState::Impl {
  SessionOptions options;
  int64_t n_learned = 0;  // N
  int64_t position = 0;   // P
  int64_t updates_applied = 0;  // per layer and chunk
  int64_t updates_rejected = 0;
  double update_seconds = 0;  // wall time in UpdateW (its norm check syncs a device)
  bool poisoned = false;  // a forward failed mid-pass: the state is inconsistent, refuse it
  std::vector<KvCache> kv;                           // per layer
  std::vector<std::optional<TttLayerState>> ttt;     // per layer; set for TTT layers
  std::vector<int32_t> ntp_ids;  // ntp_gradient: the open chunk's learned ids (N mod C of them)
  int64_t ntp_start = -1;        // the window position of its first id while they are consecutive rows, else -1
};

// FAILED_PRECONDITION for a session whose last forward failed mid-pass.
absl::Status Poisoned();

// Loads and checks every tensor of the checkpoint (weights.cc): from model.gguf when set, else
// from the safetensors files of files.dir. `config_json` is the config the fingerprint covers.
absl::Status LoadWeights(const ModelFiles& files, const std::string& config_json, Model::Impl& model);

// One session's part of a batched forward: its new token ids [m] and whether they are learned.
struct BatchItem {
  SessionState::Impl* session;
  at::Tensor ids;  // [m] long, on the model's device
  bool learn = true;
  int64_t row = 0;  // first row of this item in the batch (set by ForwardBatch)
};

// The forward pass of every item in one batch (forward.cc); sessions must be distinct. Returns
// per item its logits fp32: [m, V] with all_logits, else [1, V] of its last token.
std::vector<at::Tensor> ForwardBatch(const Model::Impl& model, std::vector<BatchItem>& items, bool all_logits);

// ntp_gradient at a completed chunk (session.ntp_ids holds its C ids): one gradient step of the
// chunk's next-token loss on every fast layer's dW under an explicit grad scope; then the ids
// are cleared. The chunk is read in its context, the window before it as served (no gradient
// through it), when its ids are the window's last C rows (ntp_start); otherwise (a chunk fed
// around unlearned tokens, a window restored without its rows) on its own at positions 0..C-1.
// Counted as updates applied or rejected per layer, timed in update_seconds.
void NtpUpdate(const Model::Impl& model, SessionState::Impl& session);

// Fills model.rope_cos/sin for positions < min(max_position_embeddings, kRopeTableRows).
inline constexpr int64_t kRopeTableRows = 8192;
void BuildRopeTable(Model::Impl& model);

// The rotary inverse frequencies [hd/2] (fp32) for the config's rope settings.
at::Tensor RopeInvFreq(const ModelConfig& config);

}  // namespace adaptd::engine

#endif  // ADAPTD_ENGINE_SRC_MODEL_IMPL_H_
