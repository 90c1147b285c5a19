// The OpenAI API's JSON (openai_json.h).
#include "openai_json.h"

#include <algorithm>
#include <random>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace adaptd::server::openai {
namespace {

constexpr size_t kMaxMessages = 64;

const char* TypeName(const Json& v) {
  if (v.is_string()) return "a string";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number()) return "a number";
  if (v.is_array()) return "an array";
  if (v.is_object()) return "an object";
  return "null";
}

ApiError WrongType(const std::string& field, const char* expected, const Json& got) {
  return BadRequest(absl::StrCat("Invalid type for '", field, "': expected ", expected, ", but got ", TypeName(got),
                                 " instead."),
                    field, "invalid_type");
}

// A message's text: a string, or parts of `part_types` concatenated.
std::string Content(const Json& content, const std::string& field, std::initializer_list<const char*> part_types) {
  if (content.is_string()) return content.get<std::string>();
  if (!content.is_array()) throw WrongType(field, "a string or an array of content parts", content);
  std::string text;
  for (size_t i = 0; i < content.size(); ++i) {
    const Json& part = content[i];
    const std::string at = absl::StrCat(field, "[", i, "]");
    if (!part.is_object() || !part.contains("type") || !part["type"].is_string()) {
      throw BadRequest(absl::StrCat("Invalid content part at '", at, "': an object with a 'type' is expected."), at);
    }
    const std::string type = part["type"].get<std::string>();
    if (std::none_of(part_types.begin(), part_types.end(), [&](const char* t) { return type == t; })) {
      throw BadRequest(absl::StrCat("Content parts of type '", type, "' are not supported: only text."), at + ".type");
    }
    if (!part.contains("text") || !part["text"].is_string()) throw WrongType(at + ".text", "a string", part.value("text", Json()));
    text += part["text"].get<std::string>();
  }
  return text;
}

std::string Role(const Json& m, const std::string& field) {
  if (!m.contains("role") || !m["role"].is_string()) throw WrongType(field + ".role", "a string", m.value("role", Json()));
  std::string role = m["role"].get<std::string>();
  if (role == "developer") role = "system";
  if (role == "tool" || role == "function") {
    throw BadRequest(absl::StrCat("Messages of role '", role, "' are not supported: this server has no tools."),
                     field + ".role");
  }
  if (role != "system" && role != "user" && role != "assistant") {
    throw BadRequest(absl::StrCat("Invalid value for '", field, ".role': '", role,
                                  "'. Supported values are: 'system', 'developer', 'user' and 'assistant'."),
                     field + ".role", "invalid_value");
  }
  return role;
}

}  // namespace

ApiError BadRequest(std::string message, std::string param, std::string code) {
  return {400, std::move(message), std::move(param), std::move(code), "", false};
}

ApiError FromGrpc(const grpc::Status& status) {
  static const std::pair<grpc::StatusCode, int> kStatus[] = {
      {grpc::INVALID_ARGUMENT, 400},  {grpc::OUT_OF_RANGE, 400},       {grpc::FAILED_PRECONDITION, 400},
      {grpc::UNAUTHENTICATED, 401},   {grpc::PERMISSION_DENIED, 403},  {grpc::NOT_FOUND, 404},
      {grpc::ALREADY_EXISTS, 409},    {grpc::ABORTED, 409},            {grpc::RESOURCE_EXHAUSTED, 429},
      {grpc::CANCELLED, 499},         {grpc::UNIMPLEMENTED, 501},      {grpc::UNAVAILABLE, 503},
      {grpc::DEADLINE_EXCEEDED, 504},
  };
  ApiError e;
  e.status = 500;
  for (const auto& [code, http] : kStatus) {
    if (status.error_code() == code) e.status = http;
  }
  e.message = status.error_message();
  e.grpc_code = absl::StatusCodeToString(static_cast<absl::StatusCode>(status.error_code()));
  e.code = absl::AsciiStrToLower(e.grpc_code);
  // A retry cannot help a request the server refused as it is (the SDK retries 409s and 5xx).
  e.no_retry = status.error_code() == grpc::ALREADY_EXISTS || status.error_code() == grpc::DATA_LOSS;
  return e;
}

Json ErrorBody(const ApiError& e) {
  const char* type = e.status == 401   ? "authentication_error"
                     : e.status == 403 ? "permission_error"
                     : e.status == 404 ? "not_found_error"
                     : e.status == 409 ? "conflict_error"
                     : e.status == 429 ? "rate_limit_error"
                     : e.status >= 500 ? "server_error"
                                       : "invalid_request_error";
  Json err = {{"message", e.message}, {"type", type}, {"param", e.param.empty() ? Json() : Json(e.param)},
              {"code", e.code.empty() ? Json() : Json(e.code)}};
  if (!e.grpc_code.empty()) err["adaptd_grpc_code"] = e.grpc_code;
  return {{"error", err}};
}

Json ParseObject(const std::string& body) {
  Json j = Json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    throw BadRequest(
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP "
        "library correctly. The OpenAI API expects a JSON payload.)",
        "", "invalid_json");
  }
  if (!j.is_object()) throw BadRequest("The request body must be a JSON object.", "", "invalid_json");
  return j;
}

void CheckKnown(const Json& body, std::initializer_list<const char*> known) {
  for (const auto& [key, value] : body.items()) {
    if (std::none_of(known.begin(), known.end(), [&](const char* k) { return key == k; })) {
      throw BadRequest(absl::StrCat("Unrecognized request argument supplied: ", key), key, "unknown_parameter");
    }
  }
}

std::optional<double> Number(const Json& body, const char* field, double lo, double hi) {
  if (!body.contains(field) || body[field].is_null()) return std::nullopt;
  const Json& v = body[field];
  if (!v.is_number()) throw WrongType(field, "a decimal", v);
  const double d = v.get<double>();
  if (!(d >= lo && d <= hi)) {
    throw BadRequest(absl::StrCat("Invalid '", field, "': ", d, " is outside [", lo, ", ", hi, "]."), field,
                     "invalid_value");
  }
  return d;
}

std::optional<int64_t> Integer(const Json& body, const char* field, int64_t lo, int64_t hi) {
  if (!body.contains(field) || body[field].is_null()) return std::nullopt;
  const Json& v = body[field];
  if (!v.is_number_integer()) throw WrongType(field, "an integer", v);
  // Integers past int64 arrive as unsigned: out of range either way.
  if (v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(hi)) {
    throw BadRequest(absl::StrCat("Invalid '", field, "': at most ", hi, "."), field, "invalid_value");
  }
  const int64_t n = v.get<int64_t>();
  if (n < lo || n > hi) {
    throw BadRequest(absl::StrCat("Invalid '", field, "': ", n, " is outside [", lo, ", ", hi, "]."), field,
                     "invalid_value");
  }
  return n;
}

std::optional<bool> Bool(const Json& body, const char* field) {
  if (!body.contains(field) || body[field].is_null()) return std::nullopt;
  if (!body[field].is_boolean()) throw WrongType(field, "a boolean", body[field]);
  return body[field].get<bool>();
}

std::optional<std::string> String(const Json& body, const char* field) {
  if (!body.contains(field) || body[field].is_null()) return std::nullopt;
  if (!body[field].is_string()) throw WrongType(field, "a string", body[field]);
  return body[field].get<std::string>();
}

std::vector<std::string> Stops(const Json& body, const char* field) {
  if (!body.contains(field) || body[field].is_null()) return {};
  const Json& v = body[field];
  if (v.is_string()) return {v.get<std::string>()};
  if (!v.is_array()) throw WrongType(field, "a string or an array of strings", v);
  if (v.size() > 4) throw BadRequest(absl::StrCat("Invalid '", field, "': at most 4 sequences."), field, "invalid_value");
  std::vector<std::string> stops;
  for (const auto& s : v) {
    if (!s.is_string()) throw WrongType(field, "an array of strings", v);
    stops.push_back(s.get<std::string>());
  }
  return stops;
}

void RequireNeutral(const Json& body, const char* field) {
  if (!body.contains(field)) return;
  const Json& v = body[field];
  const std::string f = field;
  const bool neutral = v.is_null() || (v.is_array() && v.empty()) || (v.is_object() && v.empty()) ||
                       (v.is_boolean() && !v.get<bool>()) || (v.is_number() && f != "n" && v.get<double>() == 0) ||
                       (f == "n" && v.is_number_integer() && v.get<int64_t>() == 1) ||
                       (f == "tool_choice" && v == "none") || (f == "truncation" && v == "disabled") ||
                       ((f == "response_format") && v.is_object() && v.value("type", "") == "text") ||
                       (f == "text" && v.is_object() && v.size() == 1 && v.contains("format") &&
                        v["format"].is_object() && v["format"].value("type", "") == "text");
  if (!neutral) {
    throw BadRequest(absl::StrCat("'", field, "' is not supported by this server", f == "n" ? " (only n = 1)" : "", "."),
                     field, "unsupported_parameter");
  }
}

std::vector<Message> ChatMessages(const Json& body) {
  if (!body.contains("messages")) throw BadRequest("Missing required parameter: 'messages'.", "messages", "missing_required_parameter");
  const Json& ms = body["messages"];
  if (!ms.is_array()) throw WrongType("messages", "an array", ms);
  if (ms.empty()) throw BadRequest("Invalid 'messages': empty array. Expected an array with minimum length 1.", "messages");
  if (ms.size() > 4 * kMaxMessages) throw BadRequest("Invalid 'messages': at most 256 messages.", "messages");
  std::vector<Message> out;
  for (size_t i = 0; i < ms.size(); ++i) {
    const std::string at = absl::StrCat("messages[", i, "]");
    if (!ms[i].is_object()) throw WrongType(at, "an object", ms[i]);
    for (const char* f : {"tool_calls", "function_call", "audio"}) {
      if (ms[i].contains(f) && !ms[i][f].is_null()) throw BadRequest(absl::StrCat("'", f, "' is not supported."), at + "." + f);
    }
    const std::string role = Role(ms[i], at);
    if (!ms[i].contains("content")) throw BadRequest(absl::StrCat("Missing required parameter: '", at, ".content'."), at + ".content");
    out.push_back({role, Content(ms[i]["content"], at + ".content", {"text"})});
  }
  return out;
}

std::vector<Message> ResponseInput(const Json& body) {
  if (!body.contains("input") || body["input"].is_null()) throw BadRequest("Missing required parameter: 'input'.", "input", "missing_required_parameter");
  const Json& in = body["input"];
  if (in.is_string()) return {{"user", in.get<std::string>()}};
  if (!in.is_array()) throw WrongType("input", "a string or an array of input items", in);
  if (in.empty()) throw BadRequest("Invalid 'input': empty array.", "input");
  if (in.size() > kMaxMessages) throw BadRequest("Invalid 'input': at most 64 items.", "input");
  std::vector<Message> out;
  for (size_t i = 0; i < in.size(); ++i) {
    const std::string at = absl::StrCat("input[", i, "]");
    if (!in[i].is_object()) throw WrongType(at, "an object", in[i]);
    if (in[i].contains("type") && in[i]["type"] != "message") {
      throw BadRequest(absl::StrCat("Input items of type ", in[i]["type"].dump(), " are not supported: only messages."), at + ".type");
    }
    const std::string role = Role(in[i], at);
    if (!in[i].contains("content")) throw BadRequest(absl::StrCat("Missing required parameter: '", at, ".content'."), at + ".content");
    out.push_back({role, Content(in[i]["content"], at + ".content", {"input_text", "output_text", "text"})});
  }
  return out;
}

std::string ResponseId(const std::string& session, const std::string& request_id) {
  return absl::StrCat("resp_", absl::WebSafeBase64Escape(session), ".", request_id);
}
std::string ConversationId(const std::string& session, uint32_t context) {
  return absl::StrCat("conv_", absl::WebSafeBase64Escape(session), ".", context);
}
std::string MessageId(const std::string& session, uint64_t version, int index) {
  return absl::StrCat("msg_", absl::WebSafeBase64Escape(session), ".", version, ".", index);
}

namespace {
// "<prefix><base64 session>.<rest>" (URL-safe base64 has no '.').
bool SplitId(const std::string& id, const char* prefix, std::string* session, std::string* rest) {
  const std::string p = prefix;
  if (id.rfind(p, 0) != 0) return false;
  const size_t dot = id.find('.', p.size());
  if (dot == std::string::npos) return false;
  if (!absl::WebSafeBase64Unescape(id.substr(p.size(), dot - p.size()), session) || session->empty()) return false;
  *rest = id.substr(dot + 1);
  return true;
}
}  // namespace

bool ParseResponseId(const std::string& id, std::string* session, std::string* request_id) {
  return SplitId(id, "resp_", session, request_id) && ValidRequestId(*request_id);
}

bool ParseConversationId(const std::string& id, std::string* session, uint32_t* context) {
  std::string rest;
  return SplitId(id, "conv_", session, &rest) && absl::SimpleAtoi(rest, context);
}

bool ValidRequestId(const std::string& id) {
  return !id.empty() && id.size() <= 128 && std::all_of(id.begin(), id.end(), [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '~' || c == '-';
  });
}

std::string NewRequestId() {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  return absl::StrCat(absl::Hex(rng(), absl::kZeroPad16), absl::Hex(rng(), absl::kZeroPad16));
}

Json VendorUsage(const v1::Usage& u, const std::string& session, uint32_t context) {
  return {{"session", session},           {"context", context},
          {"version", u.version()},       {"updates_applied", u.updates_applied()},
          {"updates_rejected", u.updates_rejected()}, {"update_seconds", u.update_seconds()}};
}

Json MessageItem(const std::string& id, const Message& m) {
  const bool out = m.role == "assistant";
  Json part = {{"type", out ? "output_text" : "input_text"}, {"text", m.text}};
  if (out) part["annotations"] = Json::array();
  return {{"type", "message"}, {"id", id},           {"status", "completed"},
          {"role", m.role},    {"content", {part}}};
}

}  // namespace adaptd::server::openai
