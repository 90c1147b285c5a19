// Session state to bytes and back (snapshots, export, migration between replicas).
//
// Format version 2 (a state of the ntp_gradient rule; others are still written as version 1),
// little-endian:
//   "ADAPTDSS"  u32 format version  u32 header length  header JSON  tensor bytes  u64 checksum
// The header holds the model fingerprint and compute dtype, encoding and lossy flag, the counters (N, P, updates),
// the session options, and per tensor {name, dtype, shape, offset, nbytes} into the tensor bytes.
// The checksum is FNV-1a 64 over everything before it. Tensors: layers.<l>.delta (split dW,
// fp32 or int8 with layers.<l>.delta.scale per row), layers.<l>.whole (parity W),
// layers.<l>.tail_x / tail_t (the r = N mod C open-chunk rows), kv.<l>.k / kv.<l>.v ([KV, P, hd]),
// ntp_ids (ntp_gradient: the open chunk's r token ids, int32; version 2; the header's
// ntp_start is their first window position, -1 when they are not consecutive rows of it or
// the state is written without the window).
// Readers accept every version up to theirs; golden files of each version stay in the tests.
#include <cstring>
#include <map>

#include "absl/strings/str_cat.h"
#include "adaptd/engine/model.h"
#include "model_impl.h"
#include "nlohmann/json.hpp"
#include "status_macros.h"

namespace adaptd::engine {
namespace {

constexpr char kMagic[8] = {'A', 'D', 'A', 'P', 'T', 'D', 'S', 'S'};
constexpr uint32_t kFormatVersion = 2;

uint64_t Fnv64(std::string_view bytes) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ull;
  return h;
}

const char* DTypeTag(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return "F32";
    case at::kBFloat16: return "BF16";
    case at::kHalf: return "F16";
    case at::kChar: return "I8";
    case at::kInt: return "I32";
    default: return "";
  }
}

std::optional<at::ScalarType> FromTag(const std::string& tag) {
  for (at::ScalarType t : {at::kFloat, at::kBFloat16, at::kHalf, at::kChar, at::kInt}) {
    if (tag == DTypeTag(t)) return t;
  }
  return std::nullopt;
}

class Writer {
 public:
  void Add(const std::string& name, const at::Tensor& t) {
    at::Tensor c = t.contiguous().cpu();
    const size_t n = c.numel() * c.element_size();
    tensors_.push_back({{"name", name}, {"dtype", DTypeTag(c.scalar_type())}, {"shape", c.sizes().vec()},
                        {"offset", data_.size()}, {"nbytes", n}});
    data_.append(static_cast<const char*>(c.data_ptr()), n);
  }
  const nlohmann::json& tensors() const { return tensors_; }
  const std::string& data() const { return data_; }

 private:
  nlohmann::json tensors_ = nlohmann::json::array();
  std::string data_;
};

// Per-row symmetric int8: q = round(x / s), s = max|row| / 127.
void AddInt8Rows(Writer& w, const std::string& name, const at::Tensor& x) {
  at::Tensor scale = x.abs().amax(1, /*keepdim=*/true).clamp_min(1e-30) / 127.0;  // [d, 1]
  w.Add(name, (x / scale).round().clamp(-127, 127).to(at::kChar));
  w.Add(name + ".scale", scale.squeeze(1));
}

absl::Status Corrupt(const std::string& why) { return absl::DataLossError("session state: " + why); }

}  // namespace

absl::StatusOr<std::string> Model::EncodeSession(const SessionState& session, const EncodeOptions& options) const {
  const SessionState::Impl& s = session.impl();
  if (s.poisoned) return Poisoned();
  // Only the in-place rule keeps open-chunk rows (off updates nothing; ntp_gradient keeps ids).
  const bool ntp = s.options.rule == UpdateRule::kNtpGradient;
  const int64_t C = impl_->config.ttt.chunk, r = s.options.rule == UpdateRule::kInplace ? s.n_learned % C : 0;
  Writer w;
  bool lossy = false;
  try {
    for (size_t l = 0; l < s.ttt.size(); ++l) {
      if (!s.ttt[l]) continue;
      const TttLayerState& st = *s.ttt[l];
      const std::string p = absl::StrCat("layers.", l, ".");
      if (st.delta.defined() && options.encoding == StateEncoding::kInt8Rows) {
        AddInt8Rows(w, p + "delta", st.delta);
        lossy = true;
      } else if (st.delta.defined()) {
        w.Add(p + "delta", st.delta);
      }
      if (st.whole.defined()) w.Add(p + "whole", st.whole);
      if (r > 0) w.Add(p + "tail_x", st.tail_x.narrow(0, 0, r));
      if (r > 0 && st.tail_t.defined()) w.Add(p + "tail_t", st.tail_t.narrow(0, 0, r));
    }
    if (ntp && !s.ntp_ids.empty()) {
      w.Add("ntp_ids", at::tensor(s.ntp_ids, at::TensorOptions().dtype(at::kInt)));
    }
    for (size_t l = 0; options.include_kv && l < s.kv.size() && s.position > 0; ++l) {
      w.Add(absl::StrCat("kv.", l, ".k"), s.kv[l].k.narrow(1, 0, s.position));
      w.Add(absl::StrCat("kv.", l, ".v"), s.kv[l].v.narrow(1, 0, s.position));
    }
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("encoding session state: ", e.what()));
  }
  const SessionOptions& o = s.options;
  nlohmann::json header = {
      {"fingerprint", impl_->fingerprint},
      {"dtype", DTypeTag(impl_->dtype)},
      {"encoding", options.encoding == StateEncoding::kInt8Rows ? "int8_rows" : "exact"},
      {"lossy", lossy},
      {"n_learned", s.n_learned},
      {"position", options.include_kv ? s.position : 0},
      {"updates_applied", s.updates_applied},
      {"updates_rejected", s.updates_rejected},
      {"options",
       {{"numeric", o.numeric == NumericMode::kParity ? "parity" : "split"},
        {"rule", o.rule == UpdateRule::kOff ? "off" : ntp ? "ntp_gradient" : "inplace"},
        {"clip_tau", o.clip_tau ? nlohmann::json(*o.clip_tau) : nlohmann::json()},
        {"decay", o.decay},
        {"max_delta_norm", o.max_delta_norm ? nlohmann::json(*o.max_delta_norm) : nlohmann::json()},
        {"lr_scale", o.lr_scale}}},
      {"tensors", w.tensors()}};
  if (ntp) header["ntp_start"] = options.include_kv && !s.ntp_ids.empty() ? s.ntp_start : -1;
  const std::string h = header.dump();
  std::string out(kMagic, sizeof(kMagic));
  const uint32_t version = ntp ? 2 : 1, hlen = static_cast<uint32_t>(h.size());
  out.append(reinterpret_cast<const char*>(&version), 4);
  out.append(reinterpret_cast<const char*>(&hlen), 4);
  out += h;
  out += w.data();
  const uint64_t sum = Fnv64(out);
  out.append(reinterpret_cast<const char*>(&sum), 8);
  return out;
}

namespace {

// The header and tensors of an encoded state, checked against the bytes (not yet the model).
struct Parsed {
  nlohmann::json header;
  std::map<std::string, at::Tensor> tensors;  // CPU copies
};

absl::StatusOr<Parsed> Parse(std::string_view b) {
  if (b.size() < 24 || std::memcmp(b.data(), kMagic, 8) != 0) return Corrupt("not an Adaptd session state");
  uint64_t sum;
  std::memcpy(&sum, b.data() + b.size() - 8, 8);
  if (Fnv64(b.substr(0, b.size() - 8)) != sum) return Corrupt("checksum mismatch (truncated or corrupted)");
  uint32_t version, hlen;
  std::memcpy(&version, b.data() + 8, 4);
  std::memcpy(&hlen, b.data() + 12, 4);
  if (version == 0 || version > kFormatVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("session state format ", version, " is newer than this engine's (", kFormatVersion, ")"));
  }
  if (hlen > b.size() - 24) return Corrupt("header length past the end");
  Parsed p;
  p.header = nlohmann::json::parse(b.substr(16, hlen), nullptr, /*allow_exceptions=*/false);
  if (!p.header.is_object() || !p.header.contains("tensors")) return Corrupt("bad header JSON");
  const std::string_view data = b.substr(16 + hlen, b.size() - 24 - hlen);
  try {
    for (const auto& t : p.header["tensors"]) {
      auto dtype = FromTag(t.at("dtype").get<std::string>());
      const auto shape = t.at("shape").get<std::vector<int64_t>>();
      const size_t off = t.at("offset").get<size_t>(), n = t.at("nbytes").get<size_t>();
      int64_t numel = 1;  // -1 once negative or past 2^40 elements
      for (int64_t d : shape) {
        numel = numel < 0 || d < 0 || (d > 0 && numel > (int64_t{1} << 40) / d) ? -1 : numel * d;
      }
      if (!dtype || numel < 0 || off > data.size() || n > data.size() - off ||
          static_cast<size_t>(numel) * at::elementSize(*dtype) != n) {
        return Corrupt(absl::StrCat("tensor ", t.at("name").get<std::string>(), " is malformed"));
      }
      at::Tensor x = at::empty(shape, at::TensorOptions().dtype(*dtype));
      std::memcpy(x.data_ptr(), data.data() + off, n);
      p.tensors[t.at("name").get<std::string>()] = x;
    }
  } catch (const std::exception& e) {
    return Corrupt(absl::StrCat("bad tensor entry: ", e.what()));
  }
  return p;
}

// The session options and counters of a parsed header; DATA_LOSS for anything malformed.
absl::Status ReadHeader(const nlohmann::json& h, SessionOptions& o, SessionState::Impl& counters) {
  try {
    const auto& jo = h.at("options");
    const std::string numeric = jo.at("numeric"), rule = jo.at("rule");
    if ((numeric != "split" && numeric != "parity") || (rule != "inplace" && rule != "off" && rule != "ntp_gradient")) {
      return Corrupt("unknown numeric mode or update rule");
    }
    o.numeric = numeric == "parity" ? NumericMode::kParity : NumericMode::kSplit;
    o.rule = rule == "off" ? UpdateRule::kOff : rule == "ntp_gradient" ? UpdateRule::kNtpGradient : UpdateRule::kInplace;
    if (!jo.at("clip_tau").is_null()) o.clip_tau = jo.at("clip_tau").get<double>();
    o.decay = jo.at("decay").get<double>();
    if (!jo.at("max_delta_norm").is_null()) o.max_delta_norm = jo.at("max_delta_norm").get<double>();
    o.lr_scale = jo.value("lr_scale", 1.0);  // states written before it had none
    counters.n_learned = h.at("n_learned").get<int64_t>();
    counters.position = h.at("position").get<int64_t>();
    counters.ntp_start = h.value("ntp_start", int64_t{-1});  // states written before it read chunks alone
    counters.updates_applied = h.at("updates_applied").get<int64_t>();
    counters.updates_rejected = h.at("updates_rejected").get<int64_t>();
  } catch (const std::exception& e) {
    return Corrupt(absl::StrCat("bad header: ", e.what()));
  }
  if (counters.n_learned < 0 || counters.position < 0) return Corrupt("negative counters");
  if (!ValidateSessionOptions(o).ok()) return Corrupt("options out of range");
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<SessionState>> Model::DecodeSession(std::string_view bytes) const {
  ASSIGN_OR_RETURN(Parsed p, Parse(bytes));
  const nlohmann::json& h = p.header;
  const auto* fp = h.contains("fingerprint") && h["fingerprint"].is_string() ? h["fingerprint"].get_ptr<const std::string*>() : nullptr;
  if (fp == nullptr || *fp != impl_->fingerprint) {
    return absl::FailedPreconditionError(absl::StrCat("session state belongs to model ", fp ? *fp : "?",
                                                      ", this model is ", impl_->fingerprint));
  }
  // Format 1 files written before the field existed carry no dtype.
  if (h.contains("dtype") && h["dtype"] != DTypeTag(impl_->dtype)) {
    return absl::FailedPreconditionError(absl::StrCat("session state was computed in ", h["dtype"].dump(),
                                                      ", this model computes in ", DTypeTag(impl_->dtype)));
  }
  SessionOptions o;
  SessionState::Impl counters;
  RETURN_IF_ERROR(ReadHeader(h, o, counters));
  ASSIGN_OR_RETURN(auto session, NewSession(o));
  SessionState::Impl& s = session->impl();
  s.n_learned = counters.n_learned;
  s.position = counters.position;
  s.updates_applied = counters.updates_applied;
  s.updates_rejected = counters.updates_rejected;
  const ModelConfig& c = impl_->config;
  const bool ntp = s.options.rule == UpdateRule::kNtpGradient;
  const int64_t r = s.options.rule == UpdateRule::kInplace ? s.n_learned % c.ttt.chunk : 0;
  const int64_t d = c.hidden_size, f = c.intermediate_size;
  const bool parity = o.numeric == NumericMode::kParity;
  auto take = [&](const std::string& name, std::vector<int64_t> shape, at::ScalarType dtype) -> absl::StatusOr<at::Tensor> {
    auto it = p.tensors.find(name);
    if (it == p.tensors.end()) return Corrupt("missing tensor " + name);
    if (it->second.sizes().vec() != shape || it->second.scalar_type() != dtype) {
      return Corrupt("tensor " + name + " does not fit this model");
    }
    at::Tensor t = it->second.to(impl_->device);
    p.tensors.erase(it);
    return t;
  };
  try {
    for (int l : ntp ? c.ttt.fast_layers : c.ttt.layers) {
      TttLayerState& st = *s.ttt[l];
      const std::string pre = absl::StrCat("layers.", l, ".");
      if (!parity && p.tensors.count(pre + "delta.scale")) {
        ASSIGN_OR_RETURN(at::Tensor q, take(pre + "delta", {d, f}, at::kChar));
        ASSIGN_OR_RETURN(at::Tensor scale, take(pre + "delta.scale", {d}, at::kFloat));
        st.delta = q.to(at::kFloat) * scale.unsqueeze(1);
      } else if (!parity && p.tensors.count(pre + "delta")) {
        ASSIGN_OR_RETURN(st.delta, take(pre + "delta", {d, f}, at::kFloat));
      }
      if (parity && p.tensors.count(pre + "whole")) {
        ASSIGN_OR_RETURN(st.whole, take(pre + "whole", {d, f}, impl_->dtype));
      }
      if (r > 0) {
        ASSIGN_OR_RETURN(st.tail_x, take(pre + "tail_x", {r, d}, impl_->dtype));
        if (c.ttt.target == TttConfig::Target::kInputEmbed) {
          ASSIGN_OR_RETURN(st.tail_t, take(pre + "tail_t", {r, d}, impl_->dtype));
        }
      }
    }
    if (const int64_t open = s.n_learned % c.ttt.chunk; ntp && open > 0) {
      ASSIGN_OR_RETURN(at::Tensor ids, take("ntp_ids", {open}, at::kInt));
      at::Tensor cpu = ids.cpu();
      for (int64_t i = 0; i < open; ++i) {
        const int32_t id = cpu.data_ptr<int32_t>()[i];
        if (id < 0 || id >= c.vocab_size) return Corrupt("ntp_ids outside the vocabulary");
        s.ntp_ids.push_back(id);
      }
      if (counters.ntp_start < -1 || (counters.ntp_start >= 0 && counters.ntp_start + open > s.position)) {
        return Corrupt("ntp_start outside the window");
      }
      s.ntp_start = counters.ntp_start;
    }
    for (int64_t l = 0; l < c.num_layers && s.position > 0; ++l) {
      const std::vector<int64_t> shape{c.num_kv_heads, s.position, c.head_dim};
      ASSIGN_OR_RETURN(s.kv[l].k, take(absl::StrCat("kv.", l, ".k"), shape, impl_->dtype));
      ASSIGN_OR_RETURN(s.kv[l].v, take(absl::StrCat("kv.", l, ".v"), shape, impl_->dtype));
    }
  } catch (const std::exception& e) {
    return absl::ResourceExhaustedError(absl::StrCat("decoding session state: ", e.what()));
  }
  // Leftovers include tensors of the other numeric mode: a state that does not fit its options.
  if (!p.tensors.empty()) return Corrupt("unexpected tensor " + p.tensors.begin()->first);
  return session;
}

}  // namespace adaptd::engine
