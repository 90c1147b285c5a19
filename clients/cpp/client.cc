#include "client.h"

#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <vector>

#include <grpcpp/generic/generic_stub.h>

#include "absl/status/status.h"

namespace adaptd::client {

Client::Client(Options options) : options_(std::move(options)) {
  if (options_.api_key.empty() && std::getenv("ADAPTD_API_KEY") != nullptr) options_.api_key = std::getenv("ADAPTD_API_KEY");
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
  if (!options_.root_certs_pem.empty()) {
    grpc::SslCredentialsOptions tls;
    tls.pem_root_certs = options_.root_certs_pem;
    tls.pem_private_key = options_.private_key_pem;
    tls.pem_cert_chain = options_.cert_chain_pem;
    creds = grpc::SslCredentials(tls);
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  channel_ = grpc::CreateCustomChannel(options_.target, creds, args);
  stub_ = v1::Adaptd::NewStub(channel_);
}

std::unique_ptr<grpc::ClientContext> Client::Context(const std::string& session) const {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->AddMetadata("authorization", "Bearer " + options_.api_key);
  if (!session.empty()) ctx->AddMetadata("x-adaptd-session", session);
  ctx->set_deadline(std::chrono::system_clock::now() + options_.timeout);
  return ctx;
}

grpc::Status Client::Export(const std::string& session, std::string* blob) {
  v1::ExportSessionRequest req;
  req.set_session_id(session);
  auto ctx = Context(session);
  auto reader = stub_->ExportSession(ctx.get(), req);
  blob->clear();
  v1::ExportSessionResponse r;
  while (reader->Read(&r)) *blob += r.chunk();
  return reader->Finish();
}

grpc::Status Client::Import(const std::string& blob, const std::string& session, v1::Session* out) {
  auto ctx = Context(session);
  auto writer = stub_->ImportSession(ctx.get(), out);
  v1::ImportSessionRequest msg;
  msg.set_session_id(session);
  constexpr size_t kChunk = 1 << 20;
  for (size_t at = 0; at == 0 || at < blob.size(); at += kChunk) {
    msg.set_chunk(blob.substr(at, kChunk));
    if (!writer->Write(msg)) break;  // the server ended the call: Finish says why
    msg.clear_session_id();
  }
  writer->WritesDone();
  return writer->Finish();
}

std::string CodeName(grpc::StatusCode code) {
  return absl::StatusCodeToString(static_cast<absl::StatusCode>(code));  // the same numbering
}

grpc::Status Client::Health(int* serving) {
  // The health service's messages by hand (no generated code for them here): the request is
  // empty (all services); the response is field 1, a varint status.
  grpc::GenericStub generic(channel_);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::Slice empty("");
  grpc::ByteBuffer request(&empty, 1), response;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status status;
  generic.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", {}, &request, &response, [&](grpc::Status s) {
    std::lock_guard<std::mutex> lock(mu);
    status = std::move(s);
    done = true;
    cv.notify_one();
  });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
  if (!status.ok()) return status;
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return grpc::Status(grpc::StatusCode::INTERNAL, "unreadable health response");
  std::string bytes;
  for (const auto& sl : slices) bytes.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
  *serving = bytes.size() == 2 && bytes[0] == 0x08 ? bytes[1] : 0;
  return grpc::Status::OK;
}

}  // namespace adaptd::client
