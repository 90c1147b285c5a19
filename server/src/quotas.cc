#include "quotas.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace adaptd::server {

Quotas::Quotas(QuotaOptions options, session_store::SessionStore& store, const std::vector<std::string>& tenants)
    : options_(options), store_(store), known_tenants_(tenants) {
  Recount();
}

void Quotas::Recount() {
  for (const std::string& tenant : known_tenants_) {
    int64_t n = 0;
    std::string token;
    do {
      auto page = store_.List(tenant, 1000, token);
      if (!page.ok()) break;  // counted as far as readable; creates still check the store
      n += static_cast<int64_t>(page->sessions.size());
      token = page->next_page_token;
    } while (!token.empty());
    std::lock_guard<std::mutex> lock(mu_);
    Get(tenant).sessions = n;
  }
}

Quotas::Tenant& Quotas::Get(const std::string& tenant) {
  auto [it, added] = tenants_.try_emplace(tenant);
  if (added) {
    it->second.tokens = options_.burst > 0 ? options_.burst : std::max(1.0, 2 * options_.requests_per_second);
    it->second.refilled = std::chrono::steady_clock::now();
  }
  return it->second;
}

absl::Status Quotas::Admit(const std::string& tenant) {
  if (options_.requests_per_second <= 0) return absl::OkStatus();
  std::lock_guard<std::mutex> lock(mu_);
  Tenant& t = Get(tenant);
  const auto now = std::chrono::steady_clock::now();
  const double size = options_.burst > 0 ? options_.burst : std::max(1.0, 2 * options_.requests_per_second);
  t.tokens = std::min(size, t.tokens + std::chrono::duration<double>(now - t.refilled).count() * options_.requests_per_second);
  t.refilled = now;
  if (t.tokens < 1) {
    return absl::ResourceExhaustedError(
        absl::StrCat("tenant ", tenant, " is over its rate limit of ", options_.requests_per_second, " requests/s"));
  }
  t.tokens -= 1;
  return absl::OkStatus();
}

absl::Status Quotas::CheckStorageLocked(const std::string& tenant, Tenant& t) {
  if (options_.max_stored_bytes_per_tenant <= 0) return absl::OkStatus();
  const auto now = std::chrono::steady_clock::now();
  if (now - t.measured > std::chrono::seconds(1)) {
    auto bytes = store_.ApproximateBytes(tenant);
    if (!bytes.ok()) return bytes.status();
    t.stored_bytes = *bytes;
    t.measured = now;
  }
  if (t.stored_bytes >= static_cast<uint64_t>(options_.max_stored_bytes_per_tenant)) {
    return absl::ResourceExhaustedError(absl::StrCat("tenant ", tenant, " stores ", t.stored_bytes,
                                                     " bytes, at its quota of ", options_.max_stored_bytes_per_tenant,
                                                     ": delete sessions first"));
  }
  return absl::OkStatus();
}

absl::Status Quotas::CheckStorage(const std::string& tenant) {
  std::lock_guard<std::mutex> lock(mu_);
  return CheckStorageLocked(tenant, Get(tenant));
}

absl::Status Quotas::ReserveSession(const std::string& tenant) {
  std::lock_guard<std::mutex> lock(mu_);
  Tenant& t = Get(tenant);
  if (options_.max_sessions_per_tenant > 0 && t.sessions >= options_.max_sessions_per_tenant) {
    return absl::ResourceExhaustedError(absl::StrCat("tenant ", tenant, " has ", t.sessions,
                                                     " sessions, its quota: delete sessions first"));
  }
  if (auto s = CheckStorageLocked(tenant, t); !s.ok()) return s;
  ++t.sessions;
  return absl::OkStatus();
}

void Quotas::SessionAdded(const std::string& tenant, int64_t n) {
  std::lock_guard<std::mutex> lock(mu_);
  Tenant& t = Get(tenant);
  t.sessions = std::max<int64_t>(0, t.sessions + n);
}

int64_t Quotas::StoredSessions() {
  std::lock_guard<std::mutex> lock(mu_);
  int64_t n = 0;
  for (const auto& [name, t] : tenants_) n += t.sessions;
  return n;
}

int Quotas::ActiveTurns() {
  std::lock_guard<std::mutex> lock(mu_);
  return active_turns_;
}

absl::StatusOr<Quotas::TurnSlot> Quotas::BeginTurn(const std::string& tenant) {
  std::lock_guard<std::mutex> lock(mu_);
  Tenant& t = Get(tenant);
  if (active_turns_ >= options_.max_active_turns) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the server runs ", active_turns_, " turns, its limit: retry with backoff"));
  }
  if (t.active_turns >= options_.max_active_turns_per_tenant) {
    return absl::ResourceExhaustedError(
        absl::StrCat("tenant ", tenant, " runs ", t.active_turns, " turns at once, its limit: retry with backoff"));
  }
  ++active_turns_;
  ++t.active_turns;
  return TurnSlot(nullptr, [this, tenant](void*) {
    std::lock_guard<std::mutex> lock(mu_);
    --active_turns_;
    --Get(tenant).active_turns;
  });
}

}  // namespace adaptd::server
