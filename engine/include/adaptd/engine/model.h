// A loaded checkpoint and the per-session state it runs: forward passes with In-Place TTT.
//
// This header is free of LibTorch types (the wheel's include tree carries protobuf headers that
// would shadow Debian's in server/ files), so the tensors live behind Impl pointers.
// Threading: a Model is immutable after Load and may be shared; a SessionState is used by one
// thread at a time (the engine thread). No exception leaves these functions.
#ifndef ADAPTD_ENGINE_MODEL_H_
#define ADAPTD_ENGINE_MODEL_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "adaptd/engine/model_config.h"

namespace adaptd::engine {

// How a session holds its fast weights (architecture.md "numeric modes").
enum class NumericMode {
  kSplit,   // W0 in the model dtype + dW in fp32, output Z W0^T + Z dW^T (default)
  kParity,  // W whole in the model dtype, updated in place (the official code)
};

// How the frozen base's projections are stored (engine/README.md, "The frozen base
// quantized"): in the compute dtype, or weight-only quantized while activations, fast weights
// and updates stay in floating point. Products with int8 or int4 weights take bf16
// activations (LibTorch's kernels).
struct WeightFormat {
  enum class Kind {
    kDense,  // the compute dtype (the default)
    kInt8,   // int8 per output channel (one scale per row)
    kInt4,   // int4 in groups of `group` along a row, each with a scale and a zero
  };
  Kind kind = Kind::kDense;
  int group = 0;  // kInt4: 32 or 64
  // "dense", "int8", "int4-g32", "int4-g64": the name ParseWeightFormat reads.
  std::string Name() const;
  bool quantized() const { return kind != Kind::kDense; }
};

// "dense" (or ""), "int8", "int4" (groups of 32), "int4-g32" or "int4-g64"; INVALID_ARGUMENT
// otherwise.
absl::StatusOr<WeightFormat> ParseWeightFormat(const std::string& name);

struct LoadOptions {
  std::string device = "cpu";     // "cpu", "cuda" or "cuda:<i>"
  std::optional<DType> dtype;     // compute dtype; default: the checkpoint's config dtype
  // Applied to the config after the weights are loaded and checked against the file's own
  // config, before anything is derived from it (the tests' negative controls).
  std::function<void(ModelConfig&)> edit_config;
  // How the CPU multiplies a few rows by a weight: as W X^T (true) or x W^T (false); default:
  // W X^T once the weights outgrow the cache, where it is faster (the tests check both forms).
  std::optional<bool> few_rows_as_gemm;
  // A GGUF model's In-Place TTT settings (a JSON file of ttt_* fields); default: ttt.json beside
  // the GGUF file, else none (no TTT layers: ntp_gradient sessions are refused).
  std::string ttt_config;
  // How the frozen projections (q/k/v/o, gate/up, down, lm_head) are stored. Under int8 and
  // int4 the TTT layers' W0 is quantized too (split sessions keep dW in fp32 beside it), unless
  // dense_ttt_down; parity sessions need that (they update W whole in the compute dtype).
  // lm_head and the embedding are int8 under both quantized formats.
  WeightFormat weights;
  bool dense_ttt_down = false;
  // The oracle of a quantized base: every weight quantized as `weights` says, then stored back
  // dense in the compute dtype (fingerprint marked "-dequantized"). Tests and benchmarks only.
  bool dequantize_weights = false;
};

// A compute dtype as the command lines name it: "f32", "bf16" or "f16"; "" is none (the
// checkpoint's). INVALID_ARGUMENT otherwise.
absl::StatusOr<std::optional<DType>> ParseComputeDType(const std::string& name);

// How completed chunks change a session's fast weights (architecture.md "In-Place TTT").
enum class UpdateRule {
  kInplace,      // W += eta (UP)^T Z per chunk (the checkpoint's trained TTT modules)
  kOff,          // W stays W0; N still counts learned tokens
  kNtpGradient,  // one next-token-loss gradient step per chunk (dynamic evaluation; split mode)
};

struct SessionOptions {
  NumericMode numeric = NumericMode::kSplit;
  UpdateRule rule = UpdateRule::kInplace;
  std::optional<double> clip_tau;        // Frobenius bound of each chunk's eta*(UP)^T Z, > 0
  double decay = 0.0;                    // dW <- (1 - decay) dW before each update, in [0, 1]
  std::optional<double> max_delta_norm;  // an update that would push ||dW||_F past this is refused
  double lr_scale = 1.0;                 // multiplies the checkpoint's TTT learning rate, > 0
};

// INVALID_ARGUMENT naming the field for out-of-range options (kNtpGradient needs kSplit).
absl::Status ValidateSessionOptions(const SessionOptions& options);

// How EncodeSession stores split-mode dW (everything else is always stored exactly).
enum class StateEncoding {
  kExact,     // every tensor in its own dtype (dW fp32; tails, KV, parity W in the model dtype)
  kInt8Rows,  // dW as int8 per row plus an fp32 scale per row (~4x smaller); marked lossy
};

struct EncodeOptions {
  StateEncoding encoding = StateEncoding::kExact;
  bool include_kv = false;  // without it the decoded session has an empty window (P = 0)
};

class SessionState;

// Threads LibTorch uses for intra-op parallelism on the CPU (process-wide).
void SetComputeThreads(int threads);

// Whether this LibTorch can run on `device` ("cpu", "cuda", "cuda:<i>") on this machine.
bool DeviceAvailable(const std::string& device);

class Model {
 public:
  // Loads an HF checkpoint (<dir>/config.json and model.safetensors or the sharded index) or a
  // GGUF file (`dir` names it, or a directory holding one; types F32, F16, BF16, Q4_0, Q4_1,
  // Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K, dequantized into the compute dtype). Errors name the
  // field or tensor: NOT_FOUND (missing file or tensor), INVALID_ARGUMENT (misshaped or
  // unexpected tensor, bad config), DATA_LOSS (corrupt file), UNIMPLEMENTED (unsupported
  // feature).
  static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& dir, const LoadOptions& options = {});
  ~Model();

  const ModelConfig& config() const;
  // Stable across loads and machines: a hash of the config and every tensor's name and bytes,
  // then the weight format unless dense ("<hash>-int4-g32"): what sessions and snapshots bind to.
  const std::string& fingerprint() const;
  // The hash alone, the same under every weight format: what adapters bind to.
  const std::string& base_fingerprint() const;
  const WeightFormat& weight_format() const;
  // Bytes of frozen weights a decode step reads (every projection and lm_head, not the
  // embedding); the tied embedding counts once, as lm_head.
  int64_t weight_bytes() const;
  // The memory one ntp_gradient update takes beside its session when `context_tokens` of window
  // precede its chunk of ttt.chunk ids: a bound from the shapes (engine/README.md "The backward's
  // memory"), linear in the window. The server refuses windows whose update is over its budget.
  int64_t NtpUpdateBytes(int64_t context_tokens) const;

  // A session at N = P = 0 with dW = 0. Errors as ValidateSessionOptions.
  absl::StatusOr<std::unique_ptr<SessionState>> NewSession(const SessionOptions& options = {}) const;

  // An independent deep copy of `session` (fast state, KV window, counters).
  // RESOURCE_EXHAUSTED when memory runs out; FAILED_PRECONDITION for a poisoned session.
  absl::StatusOr<std::unique_ptr<SessionState>> Clone(const SessionState& session) const;

  // Feeds `ids` to `session` (continuing its KV window and fast state) and returns their logits,
  // [ids.size(), vocab] row-major fp32. learn=false: the tokens see the current fast weights but
  // N, the tail and W stay. INVALID_ARGUMENT for an id outside the vocabulary or an empty input.
  absl::StatusOr<std::vector<float>> Forward(SessionState& session, absl::Span<const int32_t> ids,
                                             bool learn = true) const;

  // Forgets the KV window from `position` on (fast weights, N and the tail stay): the next token
  // fed goes to `position`. An Ingest that leaves no KV behind. INVALID_ARGUMENT outside [0, P].
  absl::Status RewindWindow(SessionState& session, int64_t position) const;

  // A copy of `session` (fast state and counters) whose window is `kept`, re-read without
  // learning from position 0. With `tail`, kept are the last kept.size() tokens of its window (a
  // window that dropped its oldest tokens): an open ntp_gradient chunk whose ids are among them
  // keeps the rows before it as its context, and a `kept` longer than the window is
  // INVALID_ARGUMENT. Without, kept is another window (a context switched to): an open chunk
  // keeps no rows, as after RewindWindow.
  absl::StatusOr<std::unique_ptr<SessionState>> RereadWindow(const SessionState& session,
                                                             absl::Span<const int32_t> kept, bool tail = true) const;

  // INVALID_ARGUMENT for an empty input or an id outside the vocabulary.
  absl::Status ValidateIds(absl::Span<const int32_t> ids) const;

  // The session as self-describing, checksummed bytes (format: engine/src/session_codec.cc),
  // bound to this model's fingerprint. kExact round-trips bit-exactly.
  absl::StatusOr<std::string> EncodeSession(const SessionState& session, const EncodeOptions& options = {}) const;
  // DATA_LOSS for corrupt, truncated or ill-fitting bytes; FAILED_PRECONDITION for another
  // model's state or a newer format version.
  absl::StatusOr<std::unique_ptr<SessionState>> DecodeSession(std::string_view bytes) const;

  // One batched pass over several sessions (architecture.md "Batching across sessions"): the
  // ids of each input continue its session as Forward does. Sessions must be distinct. Returns
  // per input its logits fp32: all rows [m, V] with all_logits, else the last token's [V].
  // INVALID_ARGUMENT (nothing changed) for bad ids, an empty input or a repeated session;
  // INTERNAL if the device fails mid-pass: every session of the batch is then poisoned (its
  // state may be partly updated) and refused with FAILED_PRECONDITION from then on.
  struct BatchInput {
    SessionState* session;
    absl::Span<const int32_t> ids;
    bool learn = true;
  };
  absl::StatusOr<std::vector<std::vector<float>>> ForwardBatch(absl::Span<const BatchInput> inputs,
                                                               bool all_logits = false) const;

  // ||dW||_F of each layer the session learns in, ascending: config().ttt.layers, or
  // ttt.fast_layers for ntp_gradient (0 before any update).
  absl::StatusOr<std::vector<double>> DeltaNorms(const SessionState& session) const;

  // The effective fast weight W0 + dW of TTT layer `layer` as fp32 [d, f] row-major.
  absl::StatusOr<std::vector<float>> FastWeight(const SessionState& session, int layer) const;

  struct Impl;

 private:
  explicit Model(std::unique_ptr<Impl> impl);
  static absl::StatusOr<std::unique_ptr<Model>> LoadImpl(const std::string& dir, const LoadOptions& options);
  std::unique_ptr<Impl> impl_;
};

class SessionState {
 public:
  ~SessionState();
  int64_t n_learned() const;  // N: learned tokens (drives chunk phase)
  int64_t position() const;   // P: next position in the KV window
  int64_t updates_applied() const;   // per TTT layer and completed chunk
  int64_t updates_rejected() const;  // refused by the safety checks (state kept)
  double update_seconds() const;     // wall time in chunk updates since the state was made (not stored)

  struct Impl;
  explicit SessionState(std::unique_ptr<Impl> impl);
  Impl& impl() { return *impl_; }
  const Impl& impl() const { return *impl_; }

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace adaptd::engine

#endif  // ADAPTD_ENGINE_MODEL_H_
