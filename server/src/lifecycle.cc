// The session lifecycle methods beyond create/get/list/delete: fork, reset, rollback, export,
// import and migrate. Each: authenticate, validate, then the session manager (which holds the
// session against turns while its records change) or the store.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "logging.h"
#include "service.h"

namespace adaptd::server {
namespace {

constexpr size_t kExportChunkBytes = 1 << 20;

// Streams a blob in chunks, then finishes.
class ExportReactor : public grpc::ServerWriteReactor<v1::ExportSessionResponse> {
 public:
  explicit ExportReactor(absl::StatusOr<std::string> blob) {
    if (!blob.ok()) {
      Finish(ToGrpc(blob.status()));
      return;
    }
    blob_ = *std::move(blob);
    Next();
  }
  void OnWriteDone(bool ok) override {
    if (!ok) return Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client left"));
    Next();
  }
  void OnDone() override { delete this; }

 private:
  void Next() {
    if (at_ >= blob_.size()) return Finish(grpc::Status::OK);
    const size_t n = std::min(kExportChunkBytes, blob_.size() - at_);
    chunk_.set_chunk(blob_.substr(at_, n));
    at_ += n;
    StartWrite(&chunk_);
  }
  std::string blob_;
  size_t at_ = 0;
  v1::ExportSessionResponse chunk_;
};

// Gathers the chunks (bounded), then imports the blob.
class ImportReactor : public grpc::ServerReadReactor<v1::ImportSessionRequest> {
 public:
  using Import = std::function<absl::Status(const std::string& id, const std::string& blob)>;
  ImportReactor(absl::Status auth, size_t max_bytes, Import import)
      : max_bytes_(max_bytes), import_(std::move(import)) {
    if (!auth.ok()) {
      Finish(ToGrpc(auth));
      return;
    }
    StartRead(&msg_);
  }
  void OnReadDone(bool ok) override {
    if (!ok) {  // the client has sent everything
      Finish(ToGrpc(blob_.empty() ? absl::InvalidArgumentError("no blob was sent") : import_(id_, blob_)));
      return;
    }
    if (first_) id_ = msg_.session_id();
    if (!first_ && !msg_.session_id().empty()) {
      return Finish(ToGrpc(absl::InvalidArgumentError("session_id belongs in the first message only")));
    }
    first_ = false;
    if (msg_.chunk().size() > max_bytes_ - blob_.size()) {
      return Finish(ToGrpc(absl::InvalidArgumentError(absl::StrCat("the blob is over ", max_bytes_, " bytes"))));
    }
    blob_ += msg_.chunk();
    StartRead(&msg_);
  }
  void OnDone() override { delete this; }

 private:
  const size_t max_bytes_;
  Import import_;
  v1::ImportSessionRequest msg_;
  std::string id_, blob_;
  bool first_ = true;
};

}  // namespace

grpc::ServerUnaryReactor* AdaptdService::ForkSession(grpc::CallbackServerContext* ctx,
                                                     const v1::ForkSessionRequest* req, v1::Session* resp) {
  auto tenant = Tenant(ctx, &req->session_id());
  if (!tenant.ok()) return Done(ctx, tenant.status());
  const session_store::SessionKey from{*tenant, req->session_id()};
  auto to_id = NewSessionId(req->new_session_id());  // a fork stays on this replica
  if (!to_id.ok()) return Done(ctx, to_id.status());
  const session_store::SessionKey to{*tenant, *to_id};
  uint64_t version = req->version();
  if (version == 0) {
    auto info = store_.Get(from);
    if (!info.ok()) return Done(ctx, info.status());
    version = info->version;
  }
  if (auto s = quotas_.ReserveSession(*tenant); !s.ok()) return Done(ctx, s);
  const absl::Status forked = store_.Fork(from, to, version);
  Audit("fork", from.tenant, from.session, forked, absl::StrCat("to ", to.session, " at version ", version));
  if (!forked.ok()) {
    quotas_.SessionAdded(*tenant, -1);
    return Done(ctx, forked);
  }
  return Done(ctx, Describe(to, resp));
}

grpc::ServerUnaryReactor* AdaptdService::ResetSession(grpc::CallbackServerContext* ctx,
                                                      const v1::ResetSessionRequest* req, v1::Session* resp) {
  auto tenant = Tenant(ctx, &req->session_id());
  if (!tenant.ok()) return Done(ctx, tenant.status());
  const session_store::SessionKey key{*tenant, req->session_id()};
  auto live = sessions_.Acquire(key);  // ABORTED while a turn runs
  if (!live.ok()) return Done(ctx, live.status());
  LogEvent reset;
  reset.kind = LogEvent::Kind::kReset;
  auto committed = sessions_.Commit(**live, reset);
  Audit("reset", key.tenant, key.session, committed.status());
  if (!committed.ok()) return Done(ctx, committed.status());
  WriteSnapshot(sessions_, metrics_, *committed);
  return Done(ctx, Describe(key, resp));
}

grpc::ServerUnaryReactor* AdaptdService::RollbackSession(grpc::CallbackServerContext* ctx,
                                                         const v1::RollbackSessionRequest* req, v1::Session* resp) {
  auto tenant = Tenant(ctx, &req->session_id());
  if (!tenant.ok()) return Done(ctx, tenant.status());
  const session_store::SessionKey key{*tenant, req->session_id()};
  if (auto s = sessions_.Hold(key); !s.ok()) return Done(ctx, s);
  const absl::Status rolled = store_.Rollback(key, req->version());
  Audit("rollback", key.tenant, key.session, rolled, absl::StrCat("to version ", req->version()));
  if (!rolled.ok()) {
    sessions_.Unhold(key);
    return Done(ctx, rolled);
  }
  sessions_.ReleaseAndDrop(key);  // the next call loads the rolled-back history
  return Done(ctx, Describe(key, resp));
}

grpc::ServerWriteReactor<v1::ExportSessionResponse>* AdaptdService::ExportSession(
    grpc::CallbackServerContext* ctx, const v1::ExportSessionRequest* req) {
  auto tenant = Tenant(ctx, &req->session_id());
  if (!tenant.ok()) return new ExportReactor(tenant.status());
  auto blob = store_.Export({*tenant, req->session_id()});
  Audit("export", *tenant, req->session_id(), blob.status(), blob.ok() ? absl::StrCat(blob->size(), " bytes") : "");
  return new ExportReactor(std::move(blob));
}

grpc::ServerReadReactor<v1::ImportSessionRequest>* AdaptdService::ImportSession(grpc::CallbackServerContext* ctx,
                                                                                v1::Session* resp) {
  auto tenant = Tenant(ctx);
  return new ImportReactor(tenant.status(), options_.max_import_bytes,
                           [this, resp, tenant = tenant.value_or("")](const std::string& id, const std::string& blob) {
                             auto new_id = NewSessionId(id);
                             if (!new_id.ok()) return new_id.status();
                             const session_store::SessionKey key{tenant, *new_id};
                             if (auto s = quotas_.ReserveSession(tenant); !s.ok()) return s;
                             const absl::Status imported = store_.Import(key, blob);
                             Audit("import", key.tenant, key.session, imported, absl::StrCat(blob.size(), " bytes"));
                             if (!imported.ok()) {
                               quotas_.SessionAdded(tenant, -1);
                               return imported;
                             }
                             return Describe(key, resp);
                           });
}

grpc::ServerUnaryReactor* AdaptdService::MigrateSession(grpc::CallbackServerContext* ctx,
                                                        const v1::MigrateSessionRequest* req, v1::Session* resp) {
  auto tenant = Tenant(ctx, &req->session_id());
  if (!tenant.ok()) return Done(ctx, tenant.status());
  const session_store::SessionKey key{*tenant, req->session_id()};
  const absl::Status migrated = sessions_.Migrate(key);
  Audit("migrate", key.tenant, key.session, migrated, absl::StrCat("to model ", model_.fingerprint()));
  if (!migrated.ok()) return Done(ctx, migrated);
  return Done(ctx, Describe(key, resp));
}

}  // namespace adaptd::server
