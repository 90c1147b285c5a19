// A session's contexts (CreateContext, ListContexts, SwitchContext): conversations within one
// memory. Creating and switching are events committed as a turn is (synced before the answer);
// the session manager applies them (SessionManager::SwitchContext).
#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "logging.h"
#include "service.h"

namespace adaptd::server {
namespace {

// Context `id` of `live` as it stands (one past its contexts: a new, empty one), described as
// current or not and at `version`.
v1::Context DescribeContext(const LiveSession& live, uint32_t id, bool current, uint64_t version) {
  const ContextWindow w = id < live.contexts.size() ? live.Context(id) : ContextWindow{};
  int64_t tokens = 0;
  for (size_t t = w.pinned ? 1 : 0; t < w.turns.size(); ++t) tokens += static_cast<int64_t>(w.turns[t].size());
  v1::Context c;
  c.set_name(absl::StrCat("sessions/", live.key.session, "/contexts/", id));
  c.set_context_id(id);
  c.set_current(current);
  c.set_window_turns(static_cast<int32_t>(w.Turns()));
  c.set_window_tokens(tokens);
  c.set_version(version);
  return c;
}

}  // namespace

absl::Status AdaptdService::ChangeContext(const session_store::SessionKey& key, std::optional<uint32_t> to,
                                          const std::string& request_id, v1::Context* resp) {
  if (auto s = quotas_.CheckStorage(key.tenant); !s.ok()) return s;
  auto live = sessions_.Acquire(key);  // ABORTED while a turn runs
  if (!live.ok()) return live.status();
  LiveSession& session = **live;
  if (!request_id.empty()) {  // a retry of a committed CreateContext gets its context
    auto seen = sessions_.LookupRequest(key, request_id);
    if (!seen.ok() || seen->has_value()) sessions_.Release(key);
    if (!seen.ok()) return seen.status();
    if (seen->has_value()) {
      return resp->ParseFromString((*seen)->result) ? absl::OkStatus()
                                                    : absl::DataLossError("recorded context is unreadable");
    }
  }
  const uint32_t target = to.value_or(static_cast<uint32_t>(session.contexts.size()));
  absl::Status refused;
  if (target > session.contexts.size() || (to && target == session.contexts.size())) {
    refused = absl::NotFoundError(absl::StrCat("session ", key.session, " has no context ", target));
  } else if (target == session.contexts.size() && target >= kMaxContexts) {
    refused = absl::ResourceExhaustedError(absl::StrCat("a session holds at most ", kMaxContexts, " contexts"));
  }
  if (!refused.ok() || target == session.context) {  // refused, or current already: no event
    if (refused.ok()) *resp = DescribeContext(session, target, true, session.version);
    sessions_.Release(key);
    return refused;
  }
  // What the switch leaves, described before the commit releases the session.
  *resp = DescribeContext(session, target, true, session.version + 1);
  LogEvent event;
  event.kind = LogEvent::Kind::kContext;
  event.context = target;
  auto committed = sessions_.Commit(session, event, request_id, resp->SerializeAsString());
  Audit(to ? "switch_context" : "create_context", key.tenant, key.session, committed.status(),
        absl::StrCat("context ", target));
  if (!committed.ok()) return committed.status();
  WriteSnapshot(sessions_, metrics_, *committed);
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* AdaptdService::CreateContext(grpc::CallbackServerContext* ctx,
                                                       const v1::CreateContextRequest* req, v1::Context* resp) {
  auto tenant = Tenant(ctx, &req->session_id());
  if (!tenant.ok()) return Done(ctx, tenant.status());
  return Done(ctx, ChangeContext({*tenant, req->session_id()}, std::nullopt, req->request_id(), resp));
}

grpc::ServerUnaryReactor* AdaptdService::SwitchContext(grpc::CallbackServerContext* ctx,
                                                       const v1::SwitchContextRequest* req, v1::Context* resp) {
  auto tenant = Tenant(ctx, &req->session_id());
  if (!tenant.ok()) return Done(ctx, tenant.status());
  return Done(ctx, ChangeContext({*tenant, req->session_id()}, req->context_id(), "", resp));
}

grpc::ServerUnaryReactor* AdaptdService::ListContexts(grpc::CallbackServerContext* ctx,
                                                      const v1::ListContextsRequest* req,
                                                      v1::ListContextsResponse* resp) {
  auto tenant = Tenant(ctx, &req->session_id());
  if (!tenant.ok()) return Done(ctx, tenant.status());
  const session_store::SessionKey key{*tenant, req->session_id()};
  auto live = sessions_.Acquire(key);  // ABORTED while a turn runs
  if (!live.ok()) return Done(ctx, live.status());
  const LiveSession& session = **live;
  for (uint32_t id = 0; id < session.contexts.size(); ++id) {
    *resp->add_contexts() = DescribeContext(session, id, id == session.context, session.version);
  }
  sessions_.Release(key);
  return Done(ctx, absl::OkStatus());
}

}  // namespace adaptd::server

namespace adaptd::server {
namespace {

constexpr int kDefaultTurnsPage = 100, kMaxTurnsPage = 1000;
constexpr size_t kMaxTurnsPageBytes = 4 << 20;
constexpr uint64_t kEventsPerRead = 256;

// A logged turn as ListTurns shows it: its record (if the event has one) and its place.
absl::StatusOr<v1::Turn> DescribeTurn(const LogEvent& event, uint64_t version, uint32_t context) {
  v1::Turn turn;
  if (!event.record.empty() && !turn.ParseFromString(event.record)) {
    return absl::DataLossError(absl::StrCat("event ", version, ": its record is unreadable"));
  }
  if (event.record.empty()) {
    turn.set_prompt_tokens(event.prompt_tokens);
    turn.set_completion_tokens(static_cast<int64_t>(event.tokens.size()) - event.prompt_tokens);
    turn.set_learned(event.learned);
  }
  turn.set_version(version);
  turn.set_context_id(context);
  return turn;
}

}  // namespace

absl::Status AdaptdService::ReadTurns(const session_store::SessionKey& key, const v1::ListTurnsRequest& req,
                                      v1::ListTurnsResponse* resp) {
  const int page_size = req.page_size() == 0 ? kDefaultTurnsPage : req.page_size();
  if (page_size < 1 || page_size > kMaxTurnsPage) {
    return absl::InvalidArgumentError(absl::StrCat("page_size must be in [0, ", kMaxTurnsPage, "]"));
  }
  uint64_t after = 0;
  if (!req.page_token().empty() && !absl::SimpleAtoi(req.page_token(), &after)) {
    return absl::InvalidArgumentError("page_token: not a token ListTurns issued");
  }
  auto info = store_.Get(key);
  if (!info.ok()) return info.status();
  resp->set_version(info->version);
  uint64_t only = 0;  // with a request id: the version it committed
  if (!req.request_id().empty()) {
    auto seen = store_.LookupRequest(key, req.request_id());
    if (!seen.ok()) return seen.status();
    if (!seen->has_value()) {
      return absl::NotFoundError(absl::StrCat("session ", key.session, " has no turn of request ", req.request_id()));
    }
    only = (*seen)->version;
  }
  // One pass over the log, a batch of events at a time: the context each event went to, and
  // (with a context) only the turns since the last reset, so a reset empties the page so far.
  uint32_t context = 0;
  size_t bytes = 0;
  bool more = false;
  for (uint64_t from = 0; from < info->version && !(only && from >= only); from += kEventsPerRead) {
    auto events = store_.ReadEvents(key, from, std::min(info->version, from + kEventsPerRead));
    if (!events.ok()) return events.status();
    for (const auto& stored : *events) {
      auto event = DecodeEvent(stored.payload);
      if (!event.ok()) return absl::DataLossError(absl::StrCat("event ", stored.seq, ": ", event.status().message()));
      if (event->kind == LogEvent::Kind::kContext) {
        context = event->context;
        continue;
      }
      if (event->kind == LogEvent::Kind::kReset && req.has_context_id()) {
        resp->clear_turns();
        bytes = 0;
        more = false;
        continue;
      }
      if (stored.seq <= after || (only && stored.seq != only) || (req.has_context_id() && req.context_id() != context)) {
        continue;
      }
      if (resp->turns_size() >= page_size || bytes > kMaxTurnsPageBytes) {
        more = true;
        continue;
      }
      if (event->kind == LogEvent::Kind::kReset) {
        v1::Turn* reset = resp->add_turns();
        reset->set_kind("reset");
        reset->set_version(stored.seq);
        reset->set_context_id(context);
        continue;
      }
      auto turn = DescribeTurn(*event, stored.seq, context);
      if (!turn.ok()) return turn.status();
      bytes += turn->ByteSizeLong();
      *resp->add_turns() = *std::move(turn);
    }
  }
  if (more) resp->set_next_page_token(absl::StrCat(resp->turns(resp->turns_size() - 1).version()));
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* AdaptdService::ListTurns(grpc::CallbackServerContext* ctx, const v1::ListTurnsRequest* req,
                                                   v1::ListTurnsResponse* resp) {
  auto tenant = Tenant(ctx, &req->session_id());
  if (!tenant.ok()) return Done(ctx, tenant.status());
  return Done(ctx, ReadTurns({*tenant, req->session_id()}, *req, resp));
}

}  // namespace adaptd::server
