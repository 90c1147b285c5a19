// Structured logs: one JSON object per line on stderr, for every call (method, code, latency,
// tenant, session, request id) and an audit line for each change to a session's existence,
// history or model (create, delete, fork, reset, rollback, export, import, migrate), plus the
// server's own events (serving, stopped, errors).
//
// Threading: every function may be called from any thread; lines never interleave.
#ifndef ADAPTD_SERVER_LOGGING_H_
#define ADAPTD_SERVER_LOGGING_H_

#include <atomic>
#include <string>
#include <string_view>

#include <grpcpp/support/server_interceptor.h>

#include "auth.h"
#include "metrics.h"

namespace adaptd::server {

// One log line under construction: {"ts": ..., "msg": msg, fields...}.
class LogLine {
 public:
  explicit LogLine(std::string_view msg);
  LogLine& Str(std::string_view key, std::string_view value);
  LogLine& Num(std::string_view key, double value);
  // Writes the line to stderr (at once, whole).
  void Write();

 private:
  std::string text_;
};

// The audit line of a session change; `code` is the call's result ("OK" or the error's code).
void Audit(std::string_view action, std::string_view tenant, std::string_view session, const absl::Status& result,
           std::string_view detail = "");

// Counts, times and logs every call: the tenant from its key, the session and request id from
// the x-adaptd-session and x-request-id headers.
class CallInterceptorFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  CallInterceptorFactory(Metrics& metrics, const ApiKeys& keys) : metrics_(metrics), keys_(keys) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override;
  // Calls started and not yet done (the drain on SIGTERM waits for these).
  int64_t in_flight() const { return in_flight_.load(); }

 private:
  Metrics& metrics_;
  const ApiKeys& keys_;
  std::atomic<int64_t> in_flight_{0};
};

}  // namespace adaptd::server

#endif  // ADAPTD_SERVER_LOGGING_H_
