// adaptd: the server. Loads the model, opens the session store, serves the Adaptd API with
// grpc.health.v1 and reflection, and shuts down gracefully on SIGTERM / SIGINT.
//
//   adaptd --model models/adaptd-tiny-ttt --store runs/store --api_keys keys.txt
//          [--listen 127.0.0.1:50051] [--flagfile adaptd.conf] ...   (adaptd --help lists all)
//
// A config file is absl's --flagfile: one --flag=value per line.
#include <malloc.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <google/protobuf/text_format.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "adaptd/engine/chat.h"
#include "adaptd/engine/executor.h"
#include "adaptd/engine/tokenizer.h"
#include "http_door.h"
#include "logging.h"
#include "service.h"

ABSL_FLAG(std::string, model, "models/smollm2-135m-instruct",
          "checkpoint: an HF directory (config.json, safetensors, tokenizer.json), a .gguf file, or a directory "
          "holding one (and its ttt.json)");
ABSL_FLAG(std::string, ttt_config, "",
          "a GGUF model's In-Place TTT settings (JSON of ttt_layers, ttt_chunk, ttt_lr, ...); default: ttt.json "
          "beside the GGUF file, else none (ntp_gradient sessions are then refused)");
ABSL_FLAG(std::string, device, "cpu", "where the model runs: cpu, cuda or cuda:<index> (a CUDA-enabled LibTorch)");
ABSL_FLAG(std::string, dtype, "",
          "compute dtype: f32, bf16 or f16 (default: the checkpoint's); keep it fixed for a store");
ABSL_FLAG(std::string, weights, "dense",
          "how the frozen base is stored: dense (the compute dtype), int8 (per output channel) or int4 (int4-g32, "
          "int4-g64: groups with a scale and a zero); fast weights stay fp32. Part of the served fingerprint: "
          "sessions of another format are refused until migrated");
ABSL_FLAG(std::string, store, "runs/store", "session store directory (RocksDB)");
ABSL_FLAG(std::string, api_keys, "", "file of \"tenant sha256-hex-of-key\" lines (required)");
ABSL_FLAG(std::string, listen, "127.0.0.1:50051", "address:port of the API");
ABSL_FLAG(std::string, replica_id, "r0", "this replica's id (reported by GetServerInfo; named in --ownership_map)");
ABSL_FLAG(std::string, backup_dir, "",
          "where BackupStore writes (RocksDB BackupEngine: incremental, verified); put it on another volume");
ABSL_FLAG(std::vector<std::string>, admin_tenants, {}, "tenants (of --api_keys) that may call BackupStore");
ABSL_FLAG(std::string, restore_from, "",
          "a --backup_dir to restore the latest backup from into --store, which must not exist yet; then serve");
ABSL_FLAG(std::string, ownership_map, "",
          "with several replicas: the file of \"bucket replica\" lines (tools/routing.py map) that HAProxy routes "
          "by; this replica serves only its sessions (FAILED_PRECONDITION for others). Empty: it owns every session");
ABSL_FLAG(int, shutdown_grace_seconds, 10, "on SIGTERM: time for calls in flight to finish");
ABSL_FLAG(int64_t, max_context_tokens, 1024, "default KV window of a session, in tokens");
ABSL_FLAG(int64_t, ntp_update_mib, 1024,
          "memory one ntp_gradient update may take (its backward over the window): larger windows are refused");
ABSL_FLAG(std::string, session_defaults, "",
          "SessionOptions (text format, e.g. 'decay: 0.1') for the fields a new session's options leave unset");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9464", "address:port of /metrics (Prometheus); empty: off");
ABSL_FLAG(int64_t, memory_budget_bytes, int64_t{2} << 30,
          "sessions in memory past this are evicted (least recently used, once snapshotted)");
ABSL_FLAG(int64_t, session_idle_ttl_seconds, 0, "sessions unused this long are deleted; 0: kept forever");
ABSL_FLAG(int64_t, store_memtable_bytes, int64_t{64} << 20, "the session store's memtables, all together");
ABSL_FLAG(int, max_new_tokens, 4096, "the most tokens one reply may ask for");
ABSL_FLAG(std::string, system_prompt, "@model",
          "the system prompt a chat context opens with when its first turn has none: @model is the one the "
          "model's chat template inserts (SmolLM2's), empty is none");
ABSL_FLAG(int, max_message_bytes, 4 << 20, "the largest request message accepted");
ABSL_FLAG(int64_t, max_import_bytes, int64_t{256} << 20, "the largest session blob ImportSession accepts");
ABSL_FLAG(double, tenant_requests_per_second, 0, "per-tenant request rate (token bucket); 0: unlimited");
ABSL_FLAG(double, tenant_burst, 0, "per-tenant burst of requests; 0: twice the rate");
ABSL_FLAG(int64_t, tenant_max_sessions, 0, "sessions per tenant; 0: unlimited");
ABSL_FLAG(int64_t, tenant_max_stored_bytes, 0, "stored bytes per tenant (RocksDB's estimate); 0: unlimited");
ABSL_FLAG(int, max_active_turns, 256, "turns (Chat, Generate, Ingest) in the engine at once; more: RESOURCE_EXHAUSTED");
ABSL_FLAG(int, max_active_turns_per_tenant, 64, "turns of one tenant in the engine at once");
ABSL_FLAG(std::string, tls_cert, "", "PEM certificate chain: serve the API over TLS (with --tls_key)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "", "PEM CA bundle: require client certificates it signed (mTLS)");
ABSL_FLAG(std::string, http_listen, "",
          "address:port of the OpenAI-compatible HTTP API (Chat Completions, Responses, Conversations, Models), "
          "served through the same service as gRPC, with its TLS flags; empty: off");
ABSL_FLAG(int64_t, http_max_body_bytes, 8 << 20, "the largest HTTP request body accepted (larger: 413)");
ABSL_FLAG(int, http_threads, 64, "HTTP connections served at once (each stream holds one)");
ABSL_FLAG(std::string, health_listen, "", "address:port of a plaintext port serving only grpc.health.v1 (probes)");

namespace {

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop = true; }

int Fail(const absl::Status& s) {
  adaptd::server::LogLine("error").Str("error", s.ToString()).Write();
  return 1;
}

absl::StatusOr<std::string> ReadPem(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  if (!in || ss.str().empty()) return absl::NotFoundError("cannot read " + path);
  return ss.str();
}

// Insecure, TLS, or mTLS, from the flags.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> Credentials() {
  const std::string cert = absl::GetFlag(FLAGS_tls_cert), key = absl::GetFlag(FLAGS_tls_key);
  const std::string ca = absl::GetFlag(FLAGS_tls_client_ca);
  if (cert.empty() != key.empty()) return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
  if (cert.empty()) {
    if (!ca.empty()) return absl::InvalidArgumentError("--tls_client_ca needs --tls_cert and --tls_key");
    return grpc::InsecureServerCredentials();
  }
  grpc::SslServerCredentialsOptions o(ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                                 : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  auto cert_pem = ReadPem(cert), key_pem = ReadPem(key);
  if (!cert_pem.ok()) return cert_pem.status();
  if (!key_pem.ok()) return key_pem.status();
  o.pem_key_cert_pairs.push_back({*key_pem, *cert_pem});
  if (!ca.empty()) {
    auto ca_pem = ReadPem(ca);
    if (!ca_pem.ok()) return ca_pem.status();
    o.pem_root_certs = *ca_pem;
  }
  return grpc::SslServerCredentials(o);
}

// Memory that stays bounded under churn (bench/server_bench.py measured RSS growing without
// end otherwise): oneDNN caches a kernel per matmul shape, and batches make a new shape almost
// every step, so its cache is kept small; glibc's dynamic mmap threshold and per-thread arenas
// turn the ~1 MB snapshot buffers of many threads into fragments, so the threshold is fixed and
// the arenas few. Settings already in the environment win.
void BoundMemory() {
  setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16", /*overwrite=*/0);
  if (std::getenv("MALLOC_MMAP_THRESHOLD_") == nullptr) mallopt(M_MMAP_THRESHOLD, 128 << 10);
  if (std::getenv("MALLOC_ARENA_MAX") == nullptr) mallopt(M_ARENA_MAX, 2);
}

}  // namespace

int main(int argc, char** argv) {
  BoundMemory();
  absl::SetProgramUsageMessage("adaptd --model DIR --store DIR --api_keys FILE [--listen HOST:PORT]");
  absl::ParseCommandLine(argc, argv);
  using namespace adaptd;
  if (absl::GetFlag(FLAGS_api_keys).empty()) return Fail(absl::InvalidArgumentError("--api_keys is required"));
  v1::SessionOptions session_defaults;
  if (!google::protobuf::TextFormat::ParseFromString(absl::GetFlag(FLAGS_session_defaults), &session_defaults)) {
    return Fail(absl::InvalidArgumentError("--session_defaults is not SessionOptions in text format"));
  }
  if (auto s = server::ValidateOptions(session_defaults); !s.ok()) {
    return Fail(absl::InvalidArgumentError(absl::StrCat("--session_defaults: ", s.message())));
  }
  auto keys = server::ApiKeys::Load(absl::GetFlag(FLAGS_api_keys));
  if (!keys.ok()) return Fail(keys.status());
  auto credentials = Credentials();
  if (!credentials.ok()) return Fail(credentials.status());
  grpc::EnableDefaultHealthCheckService(true);
  // The probes' port, first: plaintext, grpc.health.v1 only (reflection is switched on later, for
  // the API's server), NOT_SERVING while the model loads and while draining.
  std::unique_ptr<grpc::Server> health;
  if (!absl::GetFlag(FLAGS_health_listen).empty()) {
    grpc::ServerBuilder b;
    int health_port = 0;
    b.AddListeningPort(absl::GetFlag(FLAGS_health_listen), grpc::InsecureServerCredentials(), &health_port);
    health = b.BuildAndStart();
    if (health == nullptr || health_port == 0) {
      return Fail(absl::UnavailableError("cannot listen on " + absl::GetFlag(FLAGS_health_listen)));
    }
    health->GetHealthCheckService()->SetServingStatus(false);  // until the model is loaded
    server::LogLine("health").Num("port", health_port).Write();
  }
  const std::string model_dir = absl::GetFlag(FLAGS_model);
  engine::LoadOptions load_options;
  load_options.device = absl::GetFlag(FLAGS_device);
  auto dtype = engine::ParseComputeDType(absl::GetFlag(FLAGS_dtype));
  if (!dtype.ok()) return Fail(absl::InvalidArgumentError(absl::StrCat("--dtype: ", dtype.status().message())));
  load_options.dtype = *dtype;
  load_options.ttt_config = absl::GetFlag(FLAGS_ttt_config);
  auto weights = engine::ParseWeightFormat(absl::GetFlag(FLAGS_weights));
  if (!weights.ok()) return Fail(absl::InvalidArgumentError(absl::StrCat("--weights: ", weights.status().message())));
  load_options.weights = *weights;
  auto model = engine::Model::Load(model_dir, load_options);
  if (!model.ok()) return Fail(model.status());
  auto tokenizer = engine::Tokenizer::LoadForModel(model_dir);
  if (!tokenizer.ok()) return Fail(tokenizer.status());
  session_store::StoreOptions store_options;
  store_options.path = absl::GetFlag(FLAGS_store);
  store_options.idle_ttl_seconds = absl::GetFlag(FLAGS_session_idle_ttl_seconds);
  if (store_options.idle_ttl_seconds < 0) return Fail(absl::InvalidArgumentError("--session_idle_ttl_seconds < 0"));
  if (absl::GetFlag(FLAGS_store_memtable_bytes) < (1 << 20)) return Fail(absl::InvalidArgumentError("--store_memtable_bytes < 1 MiB"));
  store_options.memtable_bytes = static_cast<uint64_t>(absl::GetFlag(FLAGS_store_memtable_bytes));
  if (const std::string from = absl::GetFlag(FLAGS_restore_from); !from.empty()) {
    if (std::filesystem::exists(store_options.path)) {
      return Fail(absl::FailedPreconditionError(absl::StrCat("--restore_from: --store ", store_options.path,
                                                             " exists; restore only into a new path")));
    }
    if (auto s = session_store::SessionStore::RestoreLatestBackup(from, store_options.path); !s.ok()) return Fail(s);
    server::LogLine("restored").Str("from", from).Str("store", store_options.path).Write();
  }
  std::filesystem::create_directories(store_options.path);
  auto store = session_store::SessionStore::Open(store_options);
  if (!store.ok()) return Fail(store.status());

  server::ServiceOptions options;
  options.model_name = std::filesystem::path(model_dir).filename().string();
  options.replica_id = absl::GetFlag(FLAGS_replica_id);
  options.store_path = store_options.path;
  options.backup_dir = absl::GetFlag(FLAGS_backup_dir);
  options.admin_tenants = absl::GetFlag(FLAGS_admin_tenants);
  if (!absl::GetFlag(FLAGS_ownership_map).empty()) {
    auto ownership = server::Ownership::Load(absl::GetFlag(FLAGS_ownership_map), options.replica_id);
    if (!ownership.ok()) return Fail(ownership.status());
    options.ownership = *std::move(ownership);
  }
  options.chat_format = std::string(engine::ChatFormatName(engine::DetectChatFormat(**tokenizer)));
  if (absl::GetFlag(FLAGS_memory_budget_bytes) < 0) return Fail(absl::InvalidArgumentError("--memory_budget_bytes < 0"));
  options.memory_budget_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_memory_budget_bytes));
  options.max_context_tokens = absl::GetFlag(FLAGS_max_context_tokens);
  options.session_defaults = session_defaults;
  if (options.max_context_tokens < 16) return Fail(absl::InvalidArgumentError("--max_context_tokens < 16"));
  const int64_t ntp_mib = absl::GetFlag(FLAGS_ntp_update_mib);
  if (ntp_mib < 1 || ntp_mib > (int64_t{1} << 20)) return Fail(absl::InvalidArgumentError("--ntp_update_mib in [1, 2^20]"));
  options.ntp_update_budget_bytes = ntp_mib << 20;
  if (auto s = server::CheckNtpUpdateMemory(**model, session_defaults, options.max_context_tokens,
                                            options.ntp_update_budget_bytes);
      !s.ok()) {
    return Fail(absl::InvalidArgumentError(absl::StrCat("--session_defaults with --max_context_tokens: ", s.message())));
  }
  options.max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  options.system_prompt = absl::GetFlag(FLAGS_system_prompt) == "@model"
                              ? engine::DefaultSystemPrompt((*tokenizer)->chat_template())
                              : absl::GetFlag(FLAGS_system_prompt);
  if (options.max_new_tokens < 1) return Fail(absl::InvalidArgumentError("--max_new_tokens < 1"));
  if (absl::GetFlag(FLAGS_max_import_bytes) < 1) return Fail(absl::InvalidArgumentError("--max_import_bytes < 1"));
  options.max_import_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_max_import_bytes));
  options.quotas.requests_per_second = absl::GetFlag(FLAGS_tenant_requests_per_second);
  options.quotas.burst = absl::GetFlag(FLAGS_tenant_burst);
  options.quotas.max_sessions_per_tenant = absl::GetFlag(FLAGS_tenant_max_sessions);
  options.quotas.max_stored_bytes_per_tenant = absl::GetFlag(FLAGS_tenant_max_stored_bytes);
  options.quotas.max_active_turns = absl::GetFlag(FLAGS_max_active_turns);
  options.quotas.max_active_turns_per_tenant = absl::GetFlag(FLAGS_max_active_turns_per_tenant);
  if (options.quotas.max_active_turns < 1 || options.quotas.max_active_turns_per_tenant < 1) {
    return Fail(absl::InvalidArgumentError("--max_active_turns and --max_active_turns_per_tenant must be >= 1"));
  }
  engine::Executor::Options engine_options;
  engine_options.max_new_tokens = std::max(engine_options.max_new_tokens, options.max_new_tokens);
  auto executor = engine::Executor::Create(**model, engine_options);
  if (!executor.ok()) return Fail(executor.status());
  // The metrics read session and engine counts from the service (on their HTTP thread).
  std::mutex service_mu;
  server::AdaptdService* service_ptr = nullptr;  // guarded by service_mu
  server::Metrics metrics([&] {
    std::lock_guard<std::mutex> lock(service_mu);
    return service_ptr ? service_ptr->Gauges() : server::Metrics::Gauges{};
  });
  auto service = std::make_unique<server::AdaptdService>(**model, **tokenizer, **executor, **store, metrics,
                                                         *std::move(keys), options);
  {
    std::lock_guard<std::mutex> lock(service_mu);
    service_ptr = service.get();
  }
  if (!absl::GetFlag(FLAGS_metrics_listen).empty()) {
    auto metrics_port = metrics.Serve(absl::GetFlag(FLAGS_metrics_listen));
    if (!metrics_port.ok()) return Fail(metrics_port.status());
    server::LogLine("metrics").Num("port", *metrics_port).Write();
  }

  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(absl::GetFlag(FLAGS_listen), *credentials, &port);
  builder.SetMaxReceiveMessageSize(absl::GetFlag(FLAGS_max_message_bytes));
  builder.RegisterService(service.get());
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  auto calls = std::make_unique<server::CallInterceptorFactory>(metrics, service->keys());
  const server::CallInterceptorFactory& calls_view = *calls;  // the builder takes ownership
  interceptors.push_back(std::move(calls));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return Fail(absl::UnavailableError("cannot listen on " + absl::GetFlag(FLAGS_listen)));
  }
  // The HTTP door calls the service as a client would, through the in-process channel.
  std::unique_ptr<server::HttpDoor> http;
  if (!absl::GetFlag(FLAGS_http_listen).empty()) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    server::HttpDoorOptions http_options;
    http_options.listen = absl::GetFlag(FLAGS_http_listen);
    http_options.tls_cert = absl::GetFlag(FLAGS_tls_cert);
    http_options.tls_key = absl::GetFlag(FLAGS_tls_key);
    http_options.tls_client_ca = absl::GetFlag(FLAGS_tls_client_ca);
    if (absl::GetFlag(FLAGS_http_max_body_bytes) < 1024 || absl::GetFlag(FLAGS_http_threads) < 1) {
      return Fail(absl::InvalidArgumentError("--http_max_body_bytes >= 1024 and --http_threads >= 1"));
    }
    http_options.max_body_bytes = static_cast<size_t>(absl::GetFlag(FLAGS_http_max_body_bytes));
    http_options.threads = absl::GetFlag(FLAGS_http_threads);
    auto door = server::HttpDoor::Start(server->InProcessChannel(args), metrics, http_options);
    if (!door.ok()) return Fail(door.status());
    http = *std::move(door);
    server::LogLine("http").Num("port", http->port()).Write();
  }
  server->GetHealthCheckService()->SetServingStatus(true);
  if (health != nullptr) health->GetHealthCheckService()->SetServingStatus(true);
  metrics.SetReady(true);
  std::signal(SIGPIPE, SIG_IGN);  // a closed log pipe or socket is an error to handle, not a death
  std::signal(SIGTERM, OnSignal);
  std::signal(SIGINT, OnSignal);
  server::LogLine("serving")
      .Str("model", options.model_name)
      .Str("fingerprint", (*model)->fingerprint())
      .Str("weights", (*model)->weight_format().Name())
      .Num("port", port)
      .Write();
  // Idle sessions expire: checked every TTL / 2 (at most every minute).
  const int64_t ttl = store_options.idle_ttl_seconds;
  const auto expire_every = std::chrono::seconds(std::clamp<int64_t>(ttl / 2, 1, 60));
  auto next_expiry = std::chrono::steady_clock::now() + expire_every;
  while (!g_stop) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (ttl > 0 && std::chrono::steady_clock::now() >= next_expiry) {
      auto expired = service->ExpireIdle();
      if (!expired.ok()) server::LogLine("error").Str("error", expired.status().ToString()).Write();
      if (expired.ok() && *expired > 0) server::LogLine("expired").Num("sessions", *expired).Write();
      next_expiry = std::chrono::steady_clock::now() + expire_every;
    }
  }
  server->GetHealthCheckService()->SetServingStatus(false);
  if (health != nullptr) health->GetHealthCheckService()->SetServingStatus(false);
  metrics.SetReady(false);
  if (http != nullptr) http->Stop();  // no new HTTP requests; those in flight drain as gRPC calls
  // Drain: calls in flight get the grace period to finish (an idle server stops at once: gRPC's
  // Shutdown alone would wait out the deadline while any client keeps a connection open); what
  // is left then is cancelled.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(absl::GetFlag(FLAGS_shutdown_grace_seconds));
  while (calls_view.in_flight() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  server->Shutdown(std::chrono::system_clock::now());
  http.reset();  // its requests have their answers (or their cancellation) now
  if (health != nullptr) health->Shutdown(std::chrono::system_clock::now());  // its checks are instant
  // In order: the calls are done; the engine stops; the service's workers finish what they hold
  // (commits, snapshots) and the snapshots the sessions' policies deferred are written; the
  // store closes (flushed).
  server.reset();
  (*executor)->Shutdown();
  {
    std::lock_guard<std::mutex> lock(service_mu);
    service_ptr = nullptr;
  }
  if (auto flushed = service->Shutdown(); flushed.ok()) {
    server::LogLine("flushed").Num("snapshots", *flushed).Write();
  } else {  // not lost: the logs replay them
    server::LogLine("error").Str("error", "final snapshots: " + flushed.status().ToString()).Write();
  }
  service.reset();
  store->reset();
  server::LogLine("stopped").Write();
  // Nothing is left to save. The metrics' HTTP server would take up to 2 s more to notice its
  // stop (civetweb polls), so the process ends here.
  std::_Exit(0);
}
