// adaptctl: the Adaptd API from the command line.
//
//   export ADAPTD_API_KEY=...            (or --key)
//   adaptctl [--target 127.0.0.1:50051] sessions create [ID] | get ID | list | delete ID
//   adaptctl chat ID                     interactive: one line per user turn, replies streamed
//                                        (a new ID starts a session)
//   adaptctl chat ID --message "text"    one turn
//   adaptctl info
#include <cstdlib>
#include <iostream>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "adaptd/v1/adaptd.grpc.pb.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "adaptd address");
ABSL_FLAG(std::string, key, "", "API key (default: $ADAPTD_API_KEY)");
ABSL_FLAG(std::string, message, "", "chat: send this one message instead of reading stdin");
ABSL_FLAG(int, max_new_tokens, 128, "chat: reply length limit");
ABSL_FLAG(double, temperature, 0.0, "chat: sampling temperature (0: greedy)");
ABSL_FLAG(std::string, system, "", "chat: a system message for the first turn");

namespace {

using adaptd::v1::Adaptd;

class Client {
 public:
  Client() {
    key_ = absl::GetFlag(FLAGS_key);
    if (key_.empty() && std::getenv("ADAPTD_API_KEY") != nullptr) key_ = std::getenv("ADAPTD_API_KEY");
    stub_ = Adaptd::NewStub(grpc::CreateChannel(absl::GetFlag(FLAGS_target), grpc::InsecureChannelCredentials()));
  }
  std::unique_ptr<grpc::ClientContext> Context(const std::string& session = "") const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->AddMetadata("authorization", "Bearer " + key_);
    if (!session.empty()) ctx->AddMetadata("x-adaptd-session", session);
    return ctx;
  }
  Adaptd::Stub& stub() { return *stub_; }

 private:
  std::string key_;
  std::unique_ptr<Adaptd::Stub> stub_;
};

const char* CodeName(grpc::StatusCode code) {
  static const char* kNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                                 "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
                                 "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
                                 "UNAUTHENTICATED"};
  const int i = static_cast<int>(code);
  return i >= 0 && i <= 16 ? kNames[i] : "UNKNOWN";
}

int Check(const grpc::Status& s) {
  if (s.ok()) return 0;
  std::cerr << "adaptctl: " << CodeName(s.error_code()) << ": " << s.error_message() << "\n";
  return 1;
}

void PrintSession(const adaptd::v1::Session& s) {
  std::cout << s.session_id() << "\tversion " << s.version() << "\tmodel " << s.model_fingerprint().substr(0, 12)
            << "\n";
}

int Sessions(Client& c, const std::vector<char*>& args) {
  const std::string verb = args.size() > 2 ? args[2] : "";
  const std::string id = args.size() > 3 ? args[3] : "";
  adaptd::v1::Session s;
  if (verb == "create") {
    adaptd::v1::CreateSessionRequest req;
    req.set_session_id(id);
    if (int rc = Check(c.stub().CreateSession(c.Context(id).get(), req, &s))) return rc;
    PrintSession(s);
    return 0;
  }
  if (verb == "get" && !id.empty()) {
    adaptd::v1::GetSessionRequest req;
    req.set_session_id(id);
    if (int rc = Check(c.stub().GetSession(c.Context(id).get(), req, &s))) return rc;
    PrintSession(s);
    return 0;
  }
  if (verb == "delete" && !id.empty()) {
    adaptd::v1::DeleteSessionRequest req;
    req.set_session_id(id);
    adaptd::v1::DeleteSessionResponse resp;
    return Check(c.stub().DeleteSession(c.Context(id).get(), req, &resp));
  }
  if (verb == "list") {
    std::string token;
    do {
      adaptd::v1::ListSessionsRequest req;
      req.set_page_token(token);
      adaptd::v1::ListSessionsResponse resp;
      if (int rc = Check(c.stub().ListSessions(c.Context().get(), req, &resp))) return rc;
      for (const auto& x : resp.sessions()) PrintSession(x);
      token = resp.next_page_token();
    } while (!token.empty());
    return 0;
  }
  std::cerr << "usage: adaptctl sessions create [ID] | get ID | list | delete ID\n";
  return 2;
}

// One turn: streams the reply to stdout; usage to stderr.
int Turn(Client& c, const std::string& id, const std::string& text, bool first) {
  adaptd::v1::ChatRequest req;
  req.set_session_id(id);
  if (first && !absl::GetFlag(FLAGS_system).empty()) {
    auto* sys = req.add_messages();
    sys->set_role("system");
    sys->set_content(absl::GetFlag(FLAGS_system));
  }
  auto* m = req.add_messages();
  m->set_role("user");
  m->set_content(text);
  req.set_max_new_tokens(absl::GetFlag(FLAGS_max_new_tokens));
  req.mutable_sampling()->set_temperature(absl::GetFlag(FLAGS_temperature));
  if (first) {  // a new id starts a session
    adaptd::v1::GetSessionRequest get;
    get.set_session_id(id);
    adaptd::v1::Session s;
    auto status = c.stub().GetSession(c.Context(id).get(), get, &s);
    if (status.error_code() == grpc::StatusCode::NOT_FOUND) {
      adaptd::v1::CreateSessionRequest create;
      create.set_session_id(id);
      status = c.stub().CreateSession(c.Context(id).get(), create, &s);
    }
    if (int rc = Check(status)) return rc;
  }
  auto ctx = c.Context(id);
  auto reader = c.stub().Chat(ctx.get(), req);
  adaptd::v1::ChatResponse r;
  while (reader->Read(&r)) {
    std::cout << r.text() << std::flush;
    if (r.has_usage()) {
      std::cerr << "\n[" << r.usage().prompt_tokens() << " prompt + " << r.usage().completion_tokens()
                << " reply tokens, " << r.usage().updates_applied() << " TTT updates, version " << r.usage().version()
                << ", " << r.finish_reason() << "]\n";
    }
  }
  std::cout << "\n";
  return Check(reader->Finish());
}

int Chat(Client& c, const std::vector<char*>& args) {
  if (args.size() < 3) {
    std::cerr << "usage: adaptctl chat ID [--message TEXT]\n";
    return 2;
  }
  const std::string id = args[2];
  if (!absl::GetFlag(FLAGS_message).empty()) return Turn(c, id, absl::GetFlag(FLAGS_message), true);
  std::string line;
  bool first = true;
  std::cerr << "session " << id << ": one line per turn, end with Ctrl-D\n> " << std::flush;
  while (std::getline(std::cin, line)) {
    if (!line.empty()) {
      if (int rc = Turn(c, id, line, first)) return rc;
      first = false;
    }
    std::cerr << "> " << std::flush;
  }
  return 0;
}

int Info(Client& c) {
  adaptd::v1::ServerInfo info;
  if (int rc = Check(c.stub().GetServerInfo(c.Context().get(), {}, &info))) return rc;
  std::cout << info.DebugString();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("adaptctl [--target HOST:PORT] (sessions create|get|list|delete | chat ID | info)");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  Client client;
  const std::string cmd = args.size() > 1 ? args[1] : "";
  if (cmd == "sessions") return Sessions(client, args);
  if (cmd == "chat") return Chat(client, args);
  if (cmd == "info") return Info(client);
  std::cerr << "usage: adaptctl [--target HOST:PORT] (sessions create|get|list|delete | chat ID | info)\n";
  return 2;
}
