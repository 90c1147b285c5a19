// The OpenAI-compatible HTTP door: Chat Completions, Responses, Conversations and Models over
// HTTP/1.1 (cpp-httplib), translated into calls of the Adaptd gRPC service through the server's
// in-process channel, so that authentication, quotas, validation, call logs, idempotency and
// cancellation are the service's own (http_door.cc maps the routes; openai_json.cc the bodies).
//
// Threading: cpp-httplib serves each connection on a thread of its pool; a stream holds its
// thread until it ends. Every method of HttpDoor is called from the owning (main) thread.
#ifndef ADAPTD_SERVER_HTTP_DOOR_H_
#define ADAPTD_SERVER_HTTP_DOOR_H_

#include <memory>
#include <string>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "metrics.h"

namespace httplib {
class Server;
}

namespace adaptd::server {

struct HttpDoorOptions {
  std::string listen;  // host:port (port 0 picks one)
  // PEM files: TLS as the gRPC port has it (all empty: plaintext; with a client CA: mTLS).
  std::string tls_cert, tls_key, tls_client_ca;
  size_t max_body_bytes = 8 << 20;  // larger bodies get 413
  int threads = 64;                 // connections served at once (each stream holds one)
};

class HttpDoor {
 public:
  // Listens on options.listen and serves until Stop. UNAVAILABLE if it cannot bind;
  // INVALID_ARGUMENT for an unusable TLS setup.
  static absl::StatusOr<std::unique_ptr<HttpDoor>> Start(std::shared_ptr<grpc::Channel> channel, Metrics& metrics,
                                                         const HttpDoorOptions& options);
  ~HttpDoor();  // Stop, then waits for the requests in flight
  int port() const { return port_; }
  // Stops accepting connections (requests in flight go on: their gRPC calls drain with the
  // server's).
  void Stop();

 private:
  HttpDoor() = default;
  std::unique_ptr<httplib::Server> http_;
  std::shared_ptr<void> api_;  // the routes' state (http_door.cc)
  std::thread thread_;
  int port_ = 0;
};

}  // namespace adaptd::server

#endif  // ADAPTD_SERVER_HTTP_DOOR_H_
