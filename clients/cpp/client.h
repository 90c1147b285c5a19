// The C++ client library of the Adaptd API: a channel (plaintext or TLS/mTLS) and contexts that
// carry the API key and the session routing header, plus the calls that need more than a stub
// call (streamed export and import). adaptctl and adaptd-loadgen are built on it.
//
//   adaptd::client::Client c({.target = "127.0.0.1:50051", .api_key = key});
//   v1::Session s;
//   grpc::Status st = c.stub().CreateSession(c.Context("alice").get(), request, &s);
//
// Threading: a Client may be shared by threads (gRPC stubs are thread-safe).
#ifndef ADAPTD_CLIENTS_CPP_CLIENT_H_
#define ADAPTD_CLIENTS_CPP_CLIENT_H_

#include <chrono>
#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "adaptd/v1/adaptd.grpc.pb.h"

namespace adaptd::client {

struct Options {
  std::string target = "127.0.0.1:50051";
  std::string api_key;            // empty: $ADAPTD_API_KEY
  std::string root_certs_pem;     // set: TLS, trusting these roots
  std::string private_key_pem;    // with cert_chain_pem: a client certificate (mTLS)
  std::string cert_chain_pem;
  std::chrono::seconds timeout{600};  // each call's deadline
};

class Client {
 public:
  explicit Client(Options options);

  // A context for one call: the key, `session` in x-adaptd-session (if any), the deadline.
  std::unique_ptr<grpc::ClientContext> Context(const std::string& session = "") const;
  v1::Adaptd::Stub& stub() { return *stub_; }

  // The session's portable blob (ExportSession's chunks joined).
  grpc::Status Export(const std::string& session, std::string* blob);
  // Imports `blob` as `session` (empty: the server picks an id), sent in 1 MiB chunks.
  grpc::Status Import(const std::string& blob, const std::string& session, v1::Session* out);
  // grpc.health.v1 Check of the whole server: *serving is 1 (SERVING), 2 (NOT_SERVING) or 0.
  // Works on the API port and on a plaintext health port (a client made for it).
  grpc::Status Health(int* serving);

 private:
  Options options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Adaptd::Stub> stub_;
};

// "NOT_FOUND" and so on.
std::string CodeName(grpc::StatusCode code);

}  // namespace adaptd::client

#endif  // ADAPTD_CLIENTS_CPP_CLIENT_H_
