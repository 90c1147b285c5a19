#include "logging.h"

#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace adaptd::server {
namespace {

// JSON string escaping (RFC 8259): quotes, backslashes and control characters; other bytes pass
// (client text may be any UTF-8, and invalid bytes never reach a log: ids are validated first).
void AppendQuoted(std::string* out, std::string_view s) {
  out->push_back('"');
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out->push_back('\\');
      out->push_back(static_cast<char>(c));
    } else if (c < 0x20) {
      absl::StrAppendFormat(out, "\\u%04x", c);
    } else {
      out->push_back(static_cast<char>(c));
    }
  }
  out->push_back('"');
}

std::string CodeName(int code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
}

}  // namespace

LogLine::LogLine(std::string_view msg) {
  const auto now = std::chrono::system_clock::now();
  const std::time_t secs = std::chrono::system_clock::to_time_t(now);
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char ts[32];
  std::strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
  text_ = absl::StrFormat("{\"ts\":\"%s.%03dZ\",\"msg\":", ts, static_cast<int>(ms));
  AppendQuoted(&text_, msg);
}

LogLine& LogLine::Str(std::string_view key, std::string_view value) {
  text_.push_back(',');
  AppendQuoted(&text_, key);
  text_.push_back(':');
  AppendQuoted(&text_, value);
  return *this;
}

LogLine& LogLine::Num(std::string_view key, double value) {
  text_.push_back(',');
  AppendQuoted(&text_, key);
  absl::StrAppendFormat(&text_, ":%.6g", value);
  return *this;
}

void LogLine::Write() {
  static std::mutex mu;
  text_ += "}\n";
  std::lock_guard<std::mutex> lock(mu);
  std::fwrite(text_.data(), 1, text_.size(), stderr);
  std::fflush(stderr);
}

void Audit(std::string_view action, std::string_view tenant, std::string_view session, const absl::Status& result,
           std::string_view detail) {
  LogLine line("audit");
  line.Str("action", action).Str("tenant", tenant).Str("session", session);
  line.Str("code", absl::StatusCodeToString(result.code()));
  if (!detail.empty()) line.Str("detail", detail);
  line.Write();
}

namespace {

class CallInterceptor : public grpc::experimental::Interceptor {
 public:
  CallInterceptor(Metrics& metrics, const ApiKeys& keys, std::atomic<int64_t>& in_flight, const char* method)
      : metrics_(metrics), keys_(keys), in_flight_(in_flight), method_(method) {
    ++in_flight_;
    const size_t slash = method_.rfind('/');
    if (slash != std::string::npos) method_ = method_.substr(slash + 1);  // "/adaptd.v1.Adaptd/Chat" -> "Chat"
  }
  ~CallInterceptor() override { --in_flight_; }
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    using grpc::experimental::InterceptionHookPoints;
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_INITIAL_METADATA)) {
      for (const auto& [k, v] : *methods->GetRecvInitialMetadata()) {
        const std::string_view key(k.data(), k.size());
        const std::string value(v.data(), std::min<size_t>(v.size(), 256));
        if (key == "authorization") tenant_ = keys_.Authenticate(value).value_or("");
        if (key == "x-adaptd-session") session_ = value;
        if (key == "x-request-id") request_id_ = value;
      }
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      const grpc::Status status = methods->GetSendStatus();
      metrics_.Request(method_, static_cast<int>(status.error_code()), seconds);
      LogLine line("call");
      line.Str("method", method_).Str("code", CodeName(status.error_code())).Num("latency_ms", seconds * 1e3);
      line.Str("tenant", tenant_).Str("session", session_);
      if (!request_id_.empty()) line.Str("request_id", request_id_);
      if (!status.ok()) line.Str("error", status.error_message());
      line.Write();
    }
    methods->Proceed();
  }

 private:
  Metrics& metrics_;
  const ApiKeys& keys_;
  std::atomic<int64_t>& in_flight_;
  std::string method_, tenant_, session_, request_id_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

}  // namespace

grpc::experimental::Interceptor* CallInterceptorFactory::CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) {
  return new CallInterceptor(metrics_, keys_, in_flight_, info->method());
}

}  // namespace adaptd::server
