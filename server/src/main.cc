// adaptd: the server. Loads the model, opens the session store, serves the Adaptd API with
// grpc.health.v1 and reflection, and shuts down gracefully on SIGTERM / SIGINT.
//
//   adaptd --model models/adaptd-tiny-ttt --store runs/store --api_keys keys.txt
//          [--listen 127.0.0.1:50051] [--replica_id r0] [--shutdown_grace_seconds 10]
#include <csignal>
#include <filesystem>
#include <iostream>
#include <thread>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "adaptd/engine/chat.h"
#include "adaptd/engine/executor.h"
#include "adaptd/engine/tokenizer.h"
#include "service.h"

ABSL_FLAG(std::string, model, "models/adaptd-tiny-ttt", "checkpoint directory (config.json, safetensors, tokenizer.json)");
ABSL_FLAG(std::string, store, "runs/store", "session store directory (RocksDB)");
ABSL_FLAG(std::string, api_keys, "", "file of \"tenant sha256-hex-of-key\" lines (required)");
ABSL_FLAG(std::string, listen, "127.0.0.1:50051", "address:port of the API");
ABSL_FLAG(std::string, replica_id, "r0", "this replica's id (reported by GetServerInfo)");
ABSL_FLAG(int, shutdown_grace_seconds, 10, "on SIGTERM: time for calls in flight to finish");
ABSL_FLAG(int64_t, max_context_tokens, 1024, "default KV window of a session, in tokens");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464", "address:port of /metrics (Prometheus); empty: off");
ABSL_FLAG(int64_t, memory_budget_bytes, int64_t{2} << 30,
          "sessions in memory past this are evicted (least recently used, once snapshotted)");

namespace {

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }

int Fail(const absl::Status& s) {
  std::cerr << "adaptd: " << s << "\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("adaptd --model DIR --store DIR --api_keys FILE [--listen HOST:PORT]");
  absl::ParseCommandLine(argc, argv);
  using namespace adaptd;
  if (absl::GetFlag(FLAGS_api_keys).empty()) return Fail(absl::InvalidArgumentError("--api_keys is required"));
  auto keys = server::ApiKeys::Load(absl::GetFlag(FLAGS_api_keys));
  if (!keys.ok()) return Fail(keys.status());
  const std::string model_dir = absl::GetFlag(FLAGS_model);
  auto model = engine::Model::Load(model_dir);
  if (!model.ok()) return Fail(model.status());
  auto tokenizer = engine::Tokenizer::Load(model_dir + "/tokenizer.json");
  if (!tokenizer.ok()) return Fail(tokenizer.status());
  session_store::StoreOptions store_options;
  store_options.path = absl::GetFlag(FLAGS_store);
  std::filesystem::create_directories(store_options.path);
  auto store = session_store::SessionStore::Open(store_options);
  if (!store.ok()) return Fail(store.status());

  server::ServiceOptions options;
  options.model_name = std::filesystem::path(model_dir).filename().string();
  options.replica_id = absl::GetFlag(FLAGS_replica_id);
  options.chat_format = std::string(engine::ChatFormatName(engine::DetectChatFormat(**tokenizer)));
  if (absl::GetFlag(FLAGS_memory_budget_bytes) < 0) return Fail(absl::InvalidArgumentError("--memory_budget_bytes < 0"));
  options.memory_budget_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_memory_budget_bytes));
  options.max_context_tokens = absl::GetFlag(FLAGS_max_context_tokens);
  if (options.max_context_tokens < 16) return Fail(absl::InvalidArgumentError("--max_context_tokens < 16"));
  auto executor = engine::Executor::Create(**model, {});
  if (!executor.ok()) return Fail(executor.status());
  server::AdaptdService* service_ptr = nullptr;  // the metrics read session counts from it
  server::Metrics metrics([&service_ptr] { return service_ptr ? service_ptr->SessionCounts() : server::Metrics::SessionCounts{}; });
  server::AdaptdService service(**model, **tokenizer, **executor, **store, metrics, *std::move(keys), options);
  service_ptr = &service;
  if (!absl::GetFlag(FLAGS_metrics_listen).empty()) {
    auto metrics_port = metrics.Serve(absl::GetFlag(FLAGS_metrics_listen));
    if (!metrics_port.ok()) return Fail(metrics_port.status());
    std::cerr << "adaptd: metrics on port " << *metrics_port << std::endl;
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(absl::GetFlag(FLAGS_listen), grpc::InsecureServerCredentials(), &port);
  builder.RegisterService(&service);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<server::MetricsInterceptorFactory>(metrics));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return Fail(absl::UnavailableError("cannot listen on " + absl::GetFlag(FLAGS_listen)));
  }
  server->GetHealthCheckService()->SetServingStatus(true);
  std::signal(SIGPIPE, SIG_IGN);  // a closed log pipe or socket is an error to handle, not a death
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  std::cerr << "adaptd: serving " << options.model_name << " on port " << port << std::endl;
  while (!g_stop) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  server->GetHealthCheckService()->SetServingStatus(false);
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(absl::GetFlag(FLAGS_shutdown_grace_seconds)));
  std::cerr << "adaptd: stopped" << std::endl;
  return 0;
}
