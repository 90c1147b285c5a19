// The real adaptd binary on 127.0.0.1 for the integration tests: a Server process on free ports
// and a fixture with two tenants (acme: key-acme, globex: key-globex) and call helpers.
#ifndef ADAPTD_TESTS_SERVER_HARNESS_H_
#define ADAPTD_TESTS_SERVER_HARNESS_H_

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <grpcpp/grpcpp.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "adaptd/v1/adaptd.grpc.pb.h"
#include "auth.h"
#include "client.h"

namespace adaptd::server {

using grpc::StatusCode;

class Server {
 public:
  explicit Server(const std::string& dir) : dir_(dir) {}
  ~Server() { Kill(SIGKILL); }

  // Starts adaptd on free ports and waits until it answers. Its stderr (JSON lines) goes to
  // log_path(); the ports come from its "serving", "metrics" and "health" lines. `creds` and
  // `authority` (the TLS name to expect) are for a server started with TLS.
  void Start(std::vector<std::string> extra_args = {"--replica_id=r0"},
             std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials(),
             const std::string& authority = "") {
    port_ = metrics_port_ = health_port_ = 0;
    const std::string log = log_path();
    const auto log_start = std::filesystem::exists(log) ? std::filesystem::file_size(log) : 0;
    pid_ = ::fork();
    if (pid_ == 0) {
      const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      ::dup2(fd, STDERR_FILENO);
      // Sessions render chats as raw text, as scripts/run.sh sets for the default model: it is a
      // document model, which in ChatML ends its turn at once (and empty replies test nothing).
      std::vector<std::string> args = {"adaptd", "--model=" + std::string(ADAPTD_MODEL), "--store=" + dir_ + "/store",
                                       "--api_keys=" + dir_ + "/keys.txt", "--listen=127.0.0.1:0",
                                       "--metrics_listen=127.0.0.1:0", "--session_defaults=chat_format: \"raw\""};
      // The quant label's second run of the store tests serves a quantized base (ADAPTD_TEST_WEIGHTS).
      if (const char* w = std::getenv("ADAPTD_TEST_WEIGHTS")) args.push_back(std::string("--weights=") + w);
      args.insert(args.end(), extra_args.begin(), extra_args.end());  // later flags win
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      ::execv(ADAPTD_BINARY, argv.data());
      _exit(127);
    }
    for (int i = 0; i < 12000 && port_ <= 0; ++i) {  // up to 2 minutes
      std::ifstream in(log);
      in.seekg(static_cast<std::streamoff>(log_start));
      for (std::string line; std::getline(in, line);) {
        const size_t at = line.find("\"port\":");
        if (at == std::string::npos) continue;
        const int port = std::stoi(line.substr(at + 7));
        if (line.find("\"msg\":\"serving\"") != std::string::npos) port_ = port;
        if (line.find("\"msg\":\"metrics\"") != std::string::npos) metrics_port_ = port;
        if (line.find("\"msg\":\"health\"") != std::string::npos) health_port_ = port;
      }
      int status = 0;
      if (port_ <= 0 && ::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        FAIL() << "adaptd exited: " << ReadLog();
      }
      if (port_ <= 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_GT(port_, 0) << "adaptd did not start: " << ReadLog();
    grpc::ChannelArguments channel_args;
    if (!authority.empty()) channel_args.SetSslTargetNameOverride(authority);
    channel_ = grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port_), creds, channel_args);
    ASSERT_TRUE(channel_->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(30)));
    stub_ = v1::Adaptd::NewStub(channel_);
  }
  std::string log_path() const { return dir_ + "/adaptd.log"; }
  std::string ReadLog() const {
    std::ifstream in(log_path());
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  // Sends `sig` and returns the exit status.
  int Kill(int sig) {
    if (pid_ <= 0) return -1;
    ::kill(pid_, sig);
    int status = 0;
    ::waitpid(pid_, &status, 0);
    pid_ = -1;
    return status;
  }
  v1::Adaptd::Stub& stub() { return *stub_; }
  int port() const { return port_; }
  int metrics_port() const { return metrics_port_; }
  int health_port() const { return health_port_; }

 private:
  std::string dir_;
  int port_ = 0, metrics_port_ = 0, health_port_ = 0;
  pid_t pid_ = -1;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Adaptd::Stub> stub_;
};

inline std::string HttpGet(int port, const std::string& path);

class ServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/adaptd_server_" + std::to_string(std::random_device{}());
    std::filesystem::create_directories(dir_);
    std::ofstream(dir_ + "/keys.txt") << "# tenant sha256(key)\nacme " << ApiKeys::Sha256Hex("key-acme")
                                       << "\nglobex " << ApiKeys::Sha256Hex("key-globex") << "\n";
    server_ = std::make_unique<Server>(dir_);
    server_->Start();
  }
  void TearDown() override {
    server_.reset();
    std::filesystem::remove_all(dir_);
  }
  std::unique_ptr<grpc::ClientContext> As(const std::string& key) {
    auto ctx = std::make_unique<grpc::ClientContext>();
    if (!key.empty()) ctx->AddMetadata("authorization", "Bearer " + key);
    ctx->set_deadline(std::chrono::system_clock::now() + rpc_deadline_);
    return ctx;
  }
  std::chrono::seconds rpc_deadline_{10};  // per call
  grpc::Status Create(const std::string& key, const std::string& id, v1::Session* out = nullptr,
                      const std::string& rule = "", int max_context_tokens = 0, const std::string& chat_format = "") {
    v1::CreateSessionRequest req;
    req.set_session_id(id);
    req.mutable_options()->set_update_rule(rule);
    req.mutable_options()->set_max_context_tokens(max_context_tokens);
    req.mutable_options()->set_chat_format(chat_format);
    v1::Session resp;
    auto s = server_->stub().CreateSession(As(key).get(), req, &resp);
    if (out != nullptr) *out = resp;
    return s;
  }
  grpc::Status Get(const std::string& key, const std::string& id, v1::Session* out = nullptr) {
    v1::GetSessionRequest req;
    req.set_session_id(id);
    v1::Session resp;
    auto s = server_->stub().GetSession(As(key).get(), req, &resp);
    if (out != nullptr) *out = resp;
    return s;
  }

  // An unlabelled metric's value from /metrics (-1 when absent).
  double Metric(const std::string& name) {
    const std::string body = HttpGet(server_->metrics_port(), "/metrics");
    const size_t at = body.find("\n" + name + " ");
    return at == std::string::npos ? -1 : std::strtod(body.c_str() + at + name.size() + 2, nullptr);
  }

  struct Turn {
    grpc::Status status;
    std::string text;
    std::vector<int32_t> ids;
    v1::Usage usage;
    std::string finish_reason;
    int messages = 0;
  };
  static v1::ChatRequest Request(const std::string& session, const std::string& content, int max_new = 12,
                                 const std::string& role = "user") {
    v1::ChatRequest req;
    req.set_session_id(session);
    auto* m = req.add_messages();
    m->set_role(role);
    m->set_content(content);
    req.set_max_new_tokens(max_new);
    return req;
  }
  Turn Chat(const std::string& key, const std::string& session, const std::string& content, int max_new = 12,
            std::vector<std::string> stops = {}, const std::string& role = "user") {
    v1::ChatRequest req = Request(session, content, max_new, role);
    for (const auto& s : stops) req.add_stop(s);
    return Chat(key, req);
  }
  Turn Chat(const std::string& key, const v1::ChatRequest& req) {
    auto ctx = As(key);
    auto reader = server_->stub().Chat(ctx.get(), req);
    Turn t;
    v1::ChatResponse r;
    while (reader->Read(&r)) {
      ++t.messages;
      t.text += r.text();
      t.ids.insert(t.ids.end(), r.token_ids().begin(), r.token_ids().end());
      if (r.has_usage()) {
        t.usage = r.usage();
        t.finish_reason = r.finish_reason();
      }
    }
    t.status = reader->Finish();
    return t;
  }

  std::string dir_;
  std::unique_ptr<Server> server_;
};


// The body of GET http://127.0.0.1:port/path.
inline std::string HttpGet(int port, const std::string& path) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string out;
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
    const std::string req = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (::write(fd, req.data(), req.size()) == static_cast<ssize_t>(req.size())) {
      char buf[4096];
      for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) out.append(buf, n);
    }
  }
  ::close(fd);
  return out;
}

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline std::string Shell(const std::string& command) {
  std::string out;
  FILE* p = ::popen(command.c_str(), "r");
  char buf[256];
  while (size_t n = std::fread(buf, 1, sizeof buf, p)) out.append(buf, n);
  ::pclose(p);
  return out;
}

// grpc.health.v1 Check on 127.0.0.1:port, over plaintext: 1 SERVING, 2 NOT_SERVING, or minus
// the call's status code. Hand-encoded (HealthCheckRequest{} is empty; the response is field 1,
// a varint), so the tests need no health stubs.
inline int HealthStatus(int port) {  // 1 SERVING, 2 NOT_SERVING; -code when the call fails
  adaptd::client::Options o;
  o.target = "127.0.0.1:" + std::to_string(port);
  adaptd::client::Client c(o);
  int serving = 0;
  const grpc::Status status = c.Health(&serving);
  return status.ok() ? serving : -static_cast<int>(status.error_code());
}

}  // namespace adaptd::server

#endif  // ADAPTD_TESTS_SERVER_HARNESS_H_
