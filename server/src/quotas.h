// Per-tenant quotas and the server's bounds on work in flight: a request rate (token bucket),
// sessions and stored bytes per tenant, and turns in the engine (server-wide and per tenant).
// Past a bound a call is RESOURCE_EXHAUSTED at once, naming the limit: queues never grow.
//
// Threading: all methods are thread-safe.
#ifndef ADAPTD_SERVER_QUOTAS_H_
#define ADAPTD_SERVER_QUOTAS_H_

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "adaptd/session_store/store.h"

namespace adaptd::server {

struct QuotaOptions {
  double requests_per_second = 0;          // per tenant; 0: unlimited
  double burst = 0;                         // bucket size; 0: max(1, 2 x rate)
  int64_t max_sessions_per_tenant = 0;      // 0: unlimited
  int64_t max_stored_bytes_per_tenant = 0;  // 0: unlimited (approximate: RocksDB's estimate)
  int max_active_turns = 256;               // Chat, Generate, Ingest in the engine at once
  int max_active_turns_per_tenant = 64;
};

class Quotas {
 public:
  // Counts each tenant's sessions once (from the store) so creates are checked without a scan.
  Quotas(QuotaOptions options, session_store::SessionStore& store, const std::vector<std::string>& tenants);

  // One request of `tenant` (every call): the rate limit.
  absl::Status Admit(const std::string& tenant);
  // Before a call adds a session (create, fork, import): the session and byte quotas. Reserves
  // the session: a call that then fails gives it back with SessionAdded(tenant, -1).
  absl::Status ReserveSession(const std::string& tenant);
  // Before a call grows the tenant's stored bytes (turns).
  absl::Status CheckStorage(const std::string& tenant);
  void SessionAdded(const std::string& tenant, int64_t n = 1);
  // Counts the known tenants' sessions again (after the store expired some).
  void Recount();
  // For the metrics: sessions of every tenant, and turns in flight.
  int64_t StoredSessions();
  int ActiveTurns();
  // A slot for a turn (or a score) in flight, returned when the last copy of it is destroyed.
  using TurnSlot = std::shared_ptr<void>;
  absl::StatusOr<TurnSlot> BeginTurn(const std::string& tenant);

  const QuotaOptions& options() const { return options_; }

 private:
  struct Tenant {
    double tokens = 0;  // the bucket
    std::chrono::steady_clock::time_point refilled{};
    int64_t sessions = 0;
    int active_turns = 0;
    uint64_t stored_bytes = 0;  // cached for a second: the estimate is not free
    std::chrono::steady_clock::time_point measured{};
  };
  Tenant& Get(const std::string& tenant);  // mu_ held
  absl::Status CheckStorageLocked(const std::string& tenant, Tenant& t);

  const QuotaOptions options_;
  session_store::SessionStore& store_;
  const std::vector<std::string> known_tenants_;
  std::mutex mu_;
  std::map<std::string, Tenant> tenants_;  // guarded by mu_
  int active_turns_ = 0;                   // guarded by mu_
};

}  // namespace adaptd::server

#endif  // ADAPTD_SERVER_QUOTAS_H_
