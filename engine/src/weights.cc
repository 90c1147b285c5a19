// Checkpoint loading: every expected tensor present with its shape, nothing unexpected, then
// copied to the device in the compute dtype; and the model fingerprint.
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <tuple>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "adaptd/engine/gguf.h"
#include "adaptd/engine/safetensors.h"
#include "gguf_model.h"
#include "model_impl.h"
#include "nlohmann/json.hpp"
#include "quant.h"
#include "status_macros.h"

namespace adaptd::engine {
namespace {

at::ScalarType ToScalarType(DType d) {
  switch (d) {
    case DType::kF32: return at::kFloat;
    case DType::kBF16: return at::kBFloat16;
    case DType::kF16: return at::kHalf;
    case DType::kF64: return at::kDouble;
    case DType::kI64: return at::kLong;
    case DType::kI32: return at::kInt;
    case DType::kI16: return at::kShort;
    case DType::kI8: return at::kChar;
    case DType::kU8: return at::kByte;
    case DType::kBool: return at::kBool;
  }
  return at::kFloat;
}

// 64-bit FNV-1a over bytes: stable across machines and runs (absl::Hash is not).
struct Fnv64 {
  uint64_t h = 1469598103934665603ull;
  void Add(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  }
  void Add(const std::string& s) { Add(s.data(), s.size() + 1); }
};

// The tensor files of a checkpoint: model.safetensors or the shards of its index.
absl::StatusOr<std::vector<std::unique_ptr<SafetensorsFile>>> OpenFiles(const std::string& dir) {
  std::vector<std::string> names;
  std::ifstream index(dir + "/model.safetensors.index.json");
  if (index) {
    auto j = nlohmann::json::parse(index, nullptr, false);
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
      return absl::DataLossError(absl::StrCat(dir, "/model.safetensors.index.json: no weight_map object"));
    }
    std::set<std::string> shards;
    for (const auto& [tensor, file] : j["weight_map"].items()) {
      if (!file.is_string() || file.get<std::string>().find('/') != std::string::npos) {
        return absl::DataLossError(absl::StrCat("index: bad shard name for ", tensor));
      }
      shards.insert(file.get<std::string>());
    }
    names.assign(shards.begin(), shards.end());
  } else {
    names = {"model.safetensors"};
  }
  std::vector<std::unique_ptr<SafetensorsFile>> files;
  for (const auto& n : names) {
    ASSIGN_OR_RETURN(auto f, SafetensorsFile::Open(dir + "/" + n));
    files.push_back(std::move(f));
  }
  return files;
}

// One tensor of a checkpoint file under its HF name: what identifies it (for the fingerprint),
// its HF shape, whether it holds floating-point weights, and how to read it as a CPU tensor in
// that shape.
struct SourceTensor {
  std::string file_name;     // as the file names it
  std::string type;          // "F32", "BF16", "Q4_1", ...
  std::vector<int64_t> file_shape;
  std::vector<int64_t> shape;  // HF layout
  const std::byte* data;
  size_t nbytes;
  bool weights;  // F32, BF16, F16 or a quantized float type: loadable
  std::function<absl::StatusOr<at::Tensor>()> read;
  // Q4_0 and Q4_1 (GGUF): the file's own 4-bit codes in the HF layout (groups of 32), else unset.
  std::function<absl::StatusOr<QuantCodes>()> read_q4;
};

std::map<std::string, SourceTensor> SafetensorsSources(const std::vector<std::unique_ptr<SafetensorsFile>>& files) {
  std::map<std::string, SourceTensor> out;
  for (const auto& f : files) {
    for (const auto& [name, view] : f->tensors()) {
      const TensorView* v = &view;
      const bool weights = v->dtype == DType::kF32 || v->dtype == DType::kBF16 || v->dtype == DType::kF16;
      out[name] = SourceTensor{name, DTypeName(v->dtype), v->shape, v->shape, v->data, v->nbytes, weights,
                               [v]() -> absl::StatusOr<at::Tensor> {
                                 return at::from_blob(const_cast<std::byte*>(v->data), v->shape,
                                                      at::TensorOptions().dtype(ToScalarType(v->dtype)));
                               },
                               {}};
    }
  }
  return out;
}

// Rows [h, 2, hd/2] per head of x [rows, ...], as llama.cpp's converter stores Q and K
// (`heads` > 0), back in HF order [h, hd/2, 2]; x itself for heads 0.
absl::StatusOr<at::Tensor> UnpermuteHeads(const GgufTensor& t, at::Tensor x, int64_t heads) {
  if (heads == 0) return x;
  if (x.dim() != 2 || x.size(0) % (2 * heads) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("tensor ", t.name, ": rows do not split into ", heads, " heads"));
  }
  const int64_t rows = x.size(0), cols = x.size(1);
  return x.view({heads, rows / heads / 2, 2, cols}).transpose(1, 2).reshape({rows, cols});
}

// Dequantized to f32 at load, or for Q4_0/Q4_1 also as codes; Q and K of `llama` files get
// their HF row order back.
absl::StatusOr<std::map<std::string, SourceTensor>> GgufSources(const GgufFile& file, const ModelConfig& c) {
  ASSIGN_OR_RETURN(auto by_name, GgufTensorsByHfName(file, c));
  std::map<std::string, SourceTensor> out;
  for (const auto& [name, src] : by_name) {
    const GgufTensor* t = src.tensor;
    const int64_t heads = src.permuted_heads;
    SourceTensor s{t->name, GgmlTypeName(t->type), t->dims, t->Shape(), t->data, t->nbytes, true,
                   [t, heads]() -> absl::StatusOr<at::Tensor> {
                     at::Tensor x = at::empty(t->Shape(), at::kFloat);
                     RETURN_IF_ERROR(Dequantize(*t, x.data_ptr<float>()));
                     return UnpermuteHeads(*t, x, heads);
                   },
                   {}};
    const bool q4 = t->type == static_cast<uint32_t>(GgmlType::kQ4_0) || t->type == static_cast<uint32_t>(GgmlType::kQ4_1);
    if (q4 && t->dims.size() == 2) {
      s.read_q4 = [t, heads]() -> absl::StatusOr<QuantCodes> {
        const std::vector<int64_t> shape = t->Shape();  // [N, K]
        at::Tensor q = at::empty(shape, at::kByte);
        at::Tensor scale = at::empty({shape[0], shape[1] / 32}, at::kFloat), min = at::empty_like(scale);
        RETURN_IF_ERROR(UnpackQ4(*t, q.data_ptr<uint8_t>(), scale.data_ptr<float>(), min.data_ptr<float>()));
        // d q + m = (q - 8) d + (m + 8 d): the zero of the int4 layout (rounded to bf16 when packed).
        ASSIGN_OR_RETURN(q, UnpermuteHeads(*t, q, heads));
        ASSIGN_OR_RETURN(at::Tensor d, UnpermuteHeads(*t, scale, heads));
        ASSIGN_OR_RETURN(at::Tensor m, UnpermuteHeads(*t, min, heads));
        return QuantCodes{q, d, m + 8 * d};
      };
    }
    out[name] = std::move(s);
  }
  return out;
}

class TensorLoader {
 public:
  TensorLoader(std::map<std::string, SourceTensor> sources, at::ScalarType dtype, at::Device device)
      : sources_(std::move(sources)), dtype_(dtype), device_(device) {}

  // The tensor `name` with `shape`, on the device in the compute dtype.
  absl::StatusOr<at::Tensor> Get(const std::string& name, std::vector<int64_t> shape) {
    ASSIGN_OR_RETURN(const SourceTensor* s, Find(name, shape));
    ASSIGN_OR_RETURN(at::Tensor x, s->read());
    return x.to(device_, dtype_, /*non_blocking=*/false, /*copy=*/true);
  }

  // The projection of the tensors `parts` (name, shape) stacked along their rows, in `format`:
  // Q4_0/Q4_1 codes as the file holds them when the format is int4 in groups of 32, else
  // quantized from their f32 values. The oracle (dequantize_) stores it back dense.
  absl::StatusOr<FrozenWeight> GetWeight(const std::vector<std::pair<std::string, std::vector<int64_t>>>& parts,
                                         const WeightFormat& format) {
    if (!format.quantized()) {
      std::vector<at::Tensor> dense;
      for (const auto& [name, shape] : parts) {
        ASSIGN_OR_RETURN(at::Tensor x, Get(name, shape));
        dense.push_back(x);
      }
      return DenseWeight(dense.size() == 1 ? dense[0] : at::cat(dense));
    }
    std::vector<QuantCodes> codes;
    for (const auto& [name, shape] : parts) {
      ASSIGN_OR_RETURN(const SourceTensor* s, Find(name, shape));
      if (format.kind == WeightFormat::Kind::kInt4 && format.group == 32 && s->read_q4) {
        ASSIGN_OR_RETURN(QuantCodes c, s->read_q4());
        codes.push_back(c);
        continue;
      }
      if (format.kind == WeightFormat::Kind::kInt4 && shape[1] % format.group != 0) {
        return absl::InvalidArgumentError(absl::StrCat("weights ", format.Name(), ": ", name, " has ", shape[1],
                                                       " columns, not a multiple of the group"));
      }
      ASSIGN_OR_RETURN(at::Tensor x, s->read());
      codes.push_back(format.kind == WeightFormat::Kind::kInt8 ? QuantizeInt8(x) : QuantizeInt4(x, format.group));
    }
    ASSIGN_OR_RETURN(FrozenWeight w, PackWeight(CatCodes(codes), format, device_));
    if (dequantize_) return DenseWeight(DequantizeWeight(w, dtype_));
    return w;
  }

  void set_dequantize(bool on) { dequantize_ = on; }

  bool Has(const std::string& name) const { return sources_.count(name) > 0; }

  // The source of `name`, checked to have `shape` and to hold weights; marks it used.
  absl::StatusOr<const SourceTensor*> Find(const std::string& name, const std::vector<int64_t>& shape) {
    auto it = sources_.find(name);
    if (it == sources_.end()) return absl::NotFoundError(absl::StrCat("checkpoint lacks tensor ", name));
    used_.insert(name);
    const SourceTensor& s = it->second;
    if (s.shape != shape) {
      return absl::InvalidArgumentError(absl::StrFormat("tensor %s has shape [%s], expected [%s]", Describe(name, s),
                                                        Join(s.shape), Join(shape)));
    }
    if (!s.weights) {
      return absl::InvalidArgumentError(absl::StrCat("tensor ", Describe(name, s), " has dtype ", s.type,
                                                     "; F32, BF16, F16 or a GGUF weight type expected"));
    }
    return &s;
  }

  // Names present in the files but never asked for (rotary caches are tolerated).
  std::vector<std::string> Unused() const {
    std::vector<std::string> out;
    for (const auto& [name, s] : sources_) {
      if (!used_.count(name) && name.find("rotary_emb.inv_freq") == std::string::npos) out.push_back(Describe(name, s));
    }
    return out;
  }

  // Order-independent content hash of every tensor (name, type, shape, bytes as stored).
  void Hash(Fnv64& fnv) const {
    for (const auto& [name, s] : sources_) {
      fnv.Add(s.file_name);
      fnv.Add(s.type);
      fnv.Add(s.file_shape.data(), s.file_shape.size() * sizeof(int64_t));
      fnv.Add(s.data, s.nbytes);
    }
  }

 private:
  static std::string Join(const std::vector<int64_t>& s) {
    std::string out;
    for (size_t i = 0; i < s.size(); ++i) absl::StrAppend(&out, i ? ", " : "", s[i]);
    return out;
  }
  // The HF name, and the file's own name where it differs (GGUF).
  static std::string Describe(const std::string& name, const SourceTensor& s) {
    return name == s.file_name ? name : absl::StrCat(name, " (", s.file_name, " in the GGUF file)");
  }

  std::map<std::string, SourceTensor> sources_;
  std::set<std::string> used_;
  at::ScalarType dtype_;
  at::Device device_;
  bool dequantize_ = false;
};

absl::Status LoadLayer(TensorLoader& t, const Model::Impl& m, int i, LayerWeights& L) {
  const ModelConfig& c = m.config;
  const int64_t d = c.hidden_size, f = c.intermediate_size, hd = c.head_dim;
  const std::string p = absl::StrCat("model.layers.", i, ".");
  const WeightFormat& format = m.format;
  ASSIGN_OR_RETURN(L.input_norm, t.Get(p + "input_layernorm.weight", {d}));
  ASSIGN_OR_RETURN(L.post_norm, t.Get(p + "post_attention_layernorm.weight", {d}));
  // q, k, v as one product per layer instead of three; gate and up likewise.
  ASSIGN_OR_RETURN(L.qkv, t.GetWeight({{p + "self_attn.q_proj.weight", {c.num_heads * hd, d}},
                                       {p + "self_attn.k_proj.weight", {c.num_kv_heads * hd, d}},
                                       {p + "self_attn.v_proj.weight", {c.num_kv_heads * hd, d}}},
                                      format));
  ASSIGN_OR_RETURN(L.o, t.GetWeight({{p + "self_attn.o_proj.weight", {d, c.num_heads * hd}}}, format));
  if (c.qk_norm) {
    ASSIGN_OR_RETURN(L.q_norm, t.Get(p + "self_attn.q_norm.weight", {hd}));
    ASSIGN_OR_RETURN(L.k_norm, t.Get(p + "self_attn.k_norm.weight", {hd}));
  }
  ASSIGN_OR_RETURN(L.gate_up, t.GetWeight({{p + "mlp.gate_proj.weight", {f, d}}, {p + "mlp.up_proj.weight", {f, d}}}, format));
  // W0 of a TTT layer stays dense when parity sessions must be able to update it whole.
  const bool dense_down = m.is_ttt[i] && m.dense_ttt_down;
  ASSIGN_OR_RETURN(L.down, t.GetWeight({{p + "mlp.down_proj.weight", {d, f}}}, dense_down ? WeightFormat{} : format));
  if (m.is_ttt[i]) {
    const std::string conv = p + "mlp.ttt_conv.weight";
    if (!t.Has(conv)) {
      return absl::InvalidArgumentError(absl::StrCat("the ttt_* settings (config.json, or an adapter's) make layer ", i,
                                                     " a TTT layer, but the checkpoint lacks ", conv));
    }
    ASSIGN_OR_RETURN(L.ttt_conv, t.Get(conv, {d, 1, 5}));
    if (c.ttt.proj) {
      ASSIGN_OR_RETURN(L.ttt_proj, t.Get(p + "mlp.ttt_proj.weight", {d, d}));
    }
  }
  return absl::OkStatus();
}

// ttt_ntp_step rms: the training-data gradient statistics (tools/train/ntp_stats.py) of every
// fast layer, f32 in (0, 1e30]; a hostile or mismatched file is refused, not used.
absl::Status LoadNtpStats(const ModelFiles& files, Model::Impl& m, Fnv64& fnv) {
  const ModelConfig& c = m.config;
  m.ntp_rms_rows.assign(c.num_layers, at::Tensor());
  m.ntp_rms_cols.assign(c.num_layers, at::Tensor());
  if (c.ttt.ntp_step != TttConfig::NtpStep::kRms) return absl::OkStatus();
  const std::string path = files.dir + "/ntp_stats.safetensors";
  auto opened = SafetensorsFile::Open(path);
  if (!opened.ok()) {
    if (!absl::IsNotFound(opened.status())) return opened.status();
    return absl::NotFoundError(absl::StrCat("ttt_ntp_step rms needs ", path,
                                            " (gradient statistics: python -m tools.train.ntp_stats)"));
  }
  const SafetensorsFile& f = **opened;
  double gbar = 0;
  for (int l : c.ttt.fast_layers) {
    at::Tensor rows, cols;  // f64 mean squares
    for (auto [suffix, size, out] : {std::tuple{".rows", c.hidden_size, &rows},
                                     std::tuple{".cols", c.intermediate_size, &cols}}) {
      const std::string name = absl::StrCat("layers.", l, suffix);
      const TensorView* v = f.Find(name);
      if (v == nullptr) return absl::NotFoundError(absl::StrCat(path, " lacks ", name));
      if (v->dtype != DType::kF32 || v->shape != std::vector<int64_t>{size}) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": ", name, " must be F32 [", size, "]"));
      }
      at::Tensor t = at::empty({size}, at::kFloat);
      std::memcpy(t.data_ptr(), v->data, v->nbytes);
      if (!at::isfinite(t).all().item<bool>() || !(t > 0).all().item<bool>() || !(t <= 1e30).all().item<bool>()) {
        return absl::InvalidArgumentError(absl::StrCat(path, ": ", name, " must be finite, positive and at most 1e30"));
      }
      fnv.Add(v->data, v->nbytes);  // the statistics shape every update: part of the identity
      *out = t.to(at::kDouble);
    }
    at::Tensor r = (rows / rows.mean()).sqrt_(), col = cols.sqrt();
    gbar += (r.mean() * col.mean()).item<double>();
    m.ntp_rms_rows[l] = r.to(at::kFloat).to(m.device);
    m.ntp_rms_cols[l] = col.to(at::kFloat).to(m.device);
  }
  m.ntp_gbar = gbar / std::max<size_t>(c.ttt.fast_layers.size(), 1);
  return absl::OkStatus();
}

}  // namespace

absl::Status LoadWeights(const ModelFiles& files, const std::string& config_json, Model::Impl& m) {
  const ModelConfig& c = m.config;
  std::vector<std::unique_ptr<SafetensorsFile>> safetensors;
  std::map<std::string, SourceTensor> sources;
  if (m.gguf != nullptr) {
    ASSIGN_OR_RETURN(sources, GgufSources(*m.gguf, c));
    if (m.adapter != nullptr) {  // its ttt_* tensors beside the base's (checked by ApplyAdapter)
      safetensors.push_back(std::move(m.adapter));
      sources.merge(SafetensorsSources(safetensors));
    }
  } else {
    ASSIGN_OR_RETURN(safetensors, OpenFiles(files.dir));
    sources = SafetensorsSources(safetensors);
  }
  TensorLoader t(std::move(sources), m.dtype, m.device);
  m.is_ttt.assign(c.num_layers, false);
  for (int l : c.ttt.layers) m.is_ttt[l] = true;
  t.set_dequantize(m.dequantize_weights);
  // lm_head and the embedding in int8 under both quantized formats (engine/README.md).
  const WeightFormat head_format = m.format.quantized() ? WeightFormat{WeightFormat::Kind::kInt8, 0} : WeightFormat{};
  ASSIGN_OR_RETURN(m.embed, t.GetWeight({{"model.embed_tokens.weight", {c.vocab_size, c.hidden_size}}}, head_format));
  ASSIGN_OR_RETURN(m.final_norm, t.Get("model.norm.weight", {c.hidden_size}));
  if (c.tie_word_embeddings && !t.Has("lm_head.weight")) {
    m.lm_head = m.embed;
  } else {
    ASSIGN_OR_RETURN(m.lm_head, t.GetWeight({{"lm_head.weight", {c.vocab_size, c.hidden_size}}}, head_format));
  }
  m.layers.resize(c.num_layers);
  for (int i = 0; i < c.num_layers; ++i) RETURN_IF_ERROR(LoadLayer(t, m, i, m.layers[i]));
  auto unused = t.Unused();
  if (!unused.empty()) {
    const bool ttt_tensor = unused[0].find(".ttt_") != std::string::npos;
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint has unexpected tensor ", unused[0], " (", unused.size(), " in all)",
        ttt_tensor ? ": TTT tensors, but config.json does not make this layer a TTT layer (ttt_mode/ttt_layers)" : ""));
  }
  m.weight_bytes = m.lm_head.nbytes();
  for (const LayerWeights& L : m.layers) {
    m.weight_bytes += L.qkv.nbytes() + L.o.nbytes() + L.gate_up.nbytes() + L.down.nbytes();
  }
  m.few_rows_as_gemm = m.device.is_cpu() && m.weight_bytes > kCacheBytes;
  Fnv64 fnv;
  fnv.Add(nlohmann::json::parse(config_json, nullptr, false).dump());  // canonical: sorted keys
  t.Hash(fnv);
  RETURN_IF_ERROR(LoadNtpStats(files, m, fnv));
  m.base_fingerprint = absl::StrFormat("%016x", fnv.h);
  // Sessions bind to the weights they were computed with: the format (and the oracle's
  // dequantized copy of it) is part of the served identity; dense keeps the bare hash.
  m.fingerprint = m.base_fingerprint;
  if (m.format.quantized()) {
    absl::StrAppend(&m.fingerprint, "-", m.format.Name(), m.dense_ttt_down ? "-dense-ttt" : "",
                    m.dequantize_weights ? "-dequantized" : "");
  }
  return absl::OkStatus();
}

}  // namespace adaptd::engine
