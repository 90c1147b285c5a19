// The real adaptd binary on 127.0.0.1 (ctest label `integration`): authentication, the session
// resource methods with their error codes, server info, restarts (kill -9 and SIGTERM).
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>
#include <grpcpp/grpcpp.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "adaptd/v1/adaptd.grpc.pb.h"
#include "auth.h"

namespace adaptd::server {
namespace {

using grpc::StatusCode;

class Server {
 public:
  explicit Server(const std::string& dir) : dir_(dir) {}
  ~Server() { Kill(SIGKILL); }

  // Starts adaptd on a free port (it reports the port on stderr) and waits until it answers.
  void Start() {
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::dup2(fds[1], STDERR_FILENO);
      ::close(fds[0]);
      ::execl(ADAPTD_BINARY, "adaptd", ("--model=" + std::string(ADAPTD_MODEL)).c_str(),
              ("--store=" + dir_ + "/store").c_str(), ("--api_keys=" + dir_ + "/keys.txt").c_str(),
              "--listen=127.0.0.1:0", static_cast<char*>(nullptr));
      _exit(127);
    }
    ::close(fds[1]);
    std::string log;
    char c;
    while (log.find(" on port ") == std::string::npos || log.back() != '\n') {
      ASSERT_EQ(::read(fds[0], &c, 1), 1) << "adaptd exited: " << log;
      log.push_back(c);
    }
    ::close(fds[0]);
    port_ = std::stoi(log.substr(log.find(" on port ") + 9));
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(port_), grpc::InsecureChannelCredentials());
    ASSERT_TRUE(channel_->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(30)));
    stub_ = v1::Adaptd::NewStub(channel_);
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

 private:
  std::string dir_;
  int port_ = 0;
  pid_t pid_ = -1;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Adaptd::Stub> stub_;
};

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
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    return ctx;
  }
  grpc::Status Create(const std::string& key, const std::string& id, v1::Session* out = nullptr,
                      const std::string& rule = "") {
    v1::CreateSessionRequest req;
    req.set_session_id(id);
    req.mutable_options()->set_update_rule(rule);
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

  std::string dir_;
  std::unique_ptr<Server> server_;
};

TEST_F(ServerTest, AuthenticationIsRequired) {
  EXPECT_EQ(Create("", "s1").error_code(), StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(Create("wrong", "s1").error_code(), StatusCode::UNAUTHENTICATED);
  v1::ServerInfo info;
  EXPECT_EQ(server_->stub().GetServerInfo(As("").get(), {}, &info).error_code(), StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(Create("key-acme", "s1").ok());
}

TEST_F(ServerTest, SessionLifecycleAndCodes) {
  v1::Session s;
  ASSERT_TRUE(Create("key-acme", "chat-1", &s).ok());
  EXPECT_EQ(s.name(), "sessions/chat-1");
  EXPECT_EQ(s.version(), 0u);
  EXPECT_FALSE(s.model_fingerprint().empty());
  EXPECT_EQ(Create("key-acme", "chat-1").error_code(), StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(Create("key-acme", "bad/id").error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Create("key-acme", "x", nullptr, "sgd").error_code(), StatusCode::INVALID_ARGUMENT);
  v1::Session generated;
  ASSERT_TRUE(Create("key-acme", "", &generated).ok());
  EXPECT_FALSE(generated.session_id().empty());
  v1::Session got;
  ASSERT_TRUE(Get("key-acme", "chat-1", &got).ok());
  EXPECT_EQ(got.model_fingerprint(), s.model_fingerprint());
  EXPECT_EQ(Get("key-globex", "chat-1").error_code(), StatusCode::NOT_FOUND);  // another tenant's
  v1::DeleteSessionRequest del;
  del.set_session_id("chat-1");
  v1::DeleteSessionResponse unused;
  EXPECT_EQ(server_->stub().DeleteSession(As("key-globex").get(), del, &unused).error_code(), StatusCode::NOT_FOUND);
  EXPECT_TRUE(server_->stub().DeleteSession(As("key-acme").get(), del, &unused).ok());
  EXPECT_EQ(Get("key-acme", "chat-1").error_code(), StatusCode::NOT_FOUND);
}

TEST_F(ServerTest, ListPagesPerTenant) {
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(Create("key-acme", "s" + std::to_string(i)).ok());
  ASSERT_TRUE(Create("key-globex", "other").ok());
  std::vector<std::string> seen;
  std::string token;
  do {
    v1::ListSessionsRequest req;
    req.set_page_size(2);
    req.set_page_token(token);
    v1::ListSessionsResponse resp;
    ASSERT_TRUE(server_->stub().ListSessions(As("key-acme").get(), req, &resp).ok());
    for (const auto& s : resp.sessions()) seen.push_back(s.session_id());
    token = resp.next_page_token();
  } while (!token.empty());
  EXPECT_EQ(seen, (std::vector<std::string>{"s0", "s1", "s2", "s3", "s4"}));
  v1::ListSessionsRequest bad;
  bad.set_page_token("forged");
  v1::ListSessionsResponse resp;
  EXPECT_EQ(server_->stub().ListSessions(As("key-acme").get(), bad, &resp).error_code(), StatusCode::INVALID_ARGUMENT);
  bad.set_page_token("");
  bad.set_page_size(-1);
  EXPECT_EQ(server_->stub().ListSessions(As("key-acme").get(), bad, &resp).error_code(), StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServerTest, ServerInfoDescribesTheModel) {
  v1::ServerInfo info;
  ASSERT_TRUE(server_->stub().GetServerInfo(As("key-globex").get(), {}, &info).ok());
  EXPECT_EQ(info.model_name(), "adaptd-tiny-ttt");
  EXPECT_EQ(std::vector<int>(info.ttt_layers().begin(), info.ttt_layers().end()), (std::vector<int>{1, 3}));
  EXPECT_EQ(info.ttt_chunk(), 32);
  EXPECT_EQ(info.chat_format(), "qwen3");
  EXPECT_EQ(info.replica_id(), "r0");
}

TEST_F(ServerTest, SessionsSurviveKillNineAndSigtermEndsCleanly) {
  ASSERT_TRUE(Create("key-acme", "durable").ok());
  server_->Kill(SIGKILL);
  server_->Start();
  EXPECT_TRUE(Get("key-acme", "durable").ok());
  const int status = server_->Kill(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  server_->Start();
  EXPECT_TRUE(Get("key-acme", "durable").ok());
}

}  // namespace
}  // namespace adaptd::server
