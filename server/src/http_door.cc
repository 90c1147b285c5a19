// The OpenAI-compatible HTTP door (http_door.h): each route turns its request into calls of the
// gRPC service (through the in-process channel, as the caller: the same key and session
// header), and the service's answers into the OpenAI API's objects and server-sent events.
//
// A request names its session by X-Adaptd-Session (created on first use); without it, it runs
// on a throw-away session that is deleted afterwards and learns nothing (a dry run).
#include "http_door.h"

#include <chrono>
#include <functional>
#include <map>
#include <mutex>

#include <httplib.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "adaptd/v1/adaptd.grpc.pb.h"
#include "openai_json.h"

namespace adaptd::server {
namespace {

using openai::ApiError;
using openai::BadRequest;
using openai::Json;
using openai::Message;

int64_t Now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// The request's headers as the service reads them.
struct Caller {
  std::string authorization;    // as sent ("Bearer <key>")
  std::string session;          // X-Adaptd-Session; empty: a throw-away session
  std::string idempotency_key;  // Idempotency-Key: the gRPC request_id
  bool new_context = false;     // X-Adaptd-New-Context: true (a diverging history starts a new one)
};

Caller ReadCaller(const httplib::Request& req) {
  Caller c;
  c.authorization = req.get_header_value("Authorization");
  c.session = req.get_header_value("X-Adaptd-Session");
  c.idempotency_key = req.get_header_value("Idempotency-Key");
  c.new_context = req.get_header_value("X-Adaptd-New-Context") == "true";
  if (!c.session.empty() && !openai::ValidRequestId(c.session)) {
    throw BadRequest("X-Adaptd-Session: a session id is 1-128 of [A-Za-z0-9._~-]", "X-Adaptd-Session");
  }
  if (!c.idempotency_key.empty() && !openai::ValidRequestId(c.idempotency_key)) {
    throw BadRequest("Idempotency-Key: 1-128 of [A-Za-z0-9._~-]", "Idempotency-Key");
  }
  return c;
}

void SendError(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  if (e.no_retry) res.set_header("x-should-retry", "false");
  res.set_content(openai::ErrorBody(e).dump(), "application/json");
}

// A Chat call's outcome, read to its end.
struct Reply {
  std::string text;
  v1::Usage usage;
  std::string finish_reason;
};

// A Chat call in flight, streamed: its context and reader, and the first message (read before
// the HTTP status goes out, so that a refused turn is an HTTP error).
struct ChatStream {
  std::unique_ptr<grpc::ClientContext> ctx;
  std::unique_ptr<grpc::ClientReader<v1::ChatResponse>> reader;
  std::optional<v1::ChatResponse> pending;
  Reply reply;
  std::function<void()> cleanup;  // after the call: deletes a throw-away session
  int64_t sequence = 0;           // Responses' sequence_number
  bool ended = false;

  // The next message, or nullopt at the end (the call's status then in *status).
  std::optional<v1::ChatResponse> Next(grpc::Status* status) {
    v1::ChatResponse msg;
    if (pending) {
      msg = *std::move(pending);
      pending.reset();
    } else if (!reader->Read(&msg)) {
      *status = reader->Finish();
      ended = true;
      return std::nullopt;
    }
    reply.text += msg.text();
    if (msg.has_usage()) reply.usage = msg.usage();
    if (!msg.finish_reason().empty()) reply.finish_reason = msg.finish_reason();
    return msg;
  }
  ~ChatStream() {
    if (!ended && ctx) {  // the client left: the turn is cancelled under the gRPC rule
      ctx->TryCancel();
      grpc::Status ignored;
      while (Next(&ignored)) {
      }
    }
    if (cleanup) cleanup();
  }
};

// One context's conversation as the log holds it: the messages as sent and the replies.
struct ContextLog {
  std::vector<Message> messages;
  std::vector<int> reply_of;  // per message: the index in `turns` whose reply it is, or -1
  bool opaque = false;        // holds turns without a record (Ingest, Generate, older servers)
};

class Api {
 public:
  Api(std::shared_ptr<grpc::Channel> channel, Metrics& metrics)
      : stub_(v1::Adaptd::NewStub(channel)), metrics_(metrics) {}

  void Routes(httplib::Server& http);

 private:
  using Handler = std::function<void(const httplib::Request&, httplib::Response&, const Caller&)>;
  void Route(httplib::Server& http, const char* method, const std::string& pattern, const std::string& label,
             Handler handler);

  std::unique_ptr<grpc::ClientContext> Context(const Caller& c, const std::string& session) const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    if (!c.authorization.empty()) ctx->AddMetadata("authorization", c.authorization);
    if (!session.empty()) ctx->AddMetadata("x-adaptd-session", session);
    return ctx;
  }
  // A unary call as the caller, on `session`: its status.
  template <typename Req, typename Resp>
  grpc::Status Try(grpc::Status (v1::Adaptd::Stub::*method)(grpc::ClientContext*, const Req&, Resp*), const Caller& c,
                   const std::string& session, const Req& req, Resp* resp) {
    auto ctx = Context(c, session);
    return (stub_.get()->*method)(ctx.get(), req, resp);
  }
  // The same, an error thrown as the API's.
  template <typename Req, typename Resp>
  Resp Call(grpc::Status (v1::Adaptd::Stub::*method)(grpc::ClientContext*, const Req&, Resp*), const Caller& c,
            const std::string& session, const Req& req) {
    Resp resp;
    if (auto s = Try(method, c, session, req, &resp); !s.ok()) throw openai::FromGrpc(s);
    return resp;
  }

  const v1::ServerInfo& Info(const Caller& c);
  // 404 for a model this server does not serve (as the OpenAI API answers).
  void CheckModel(const Json& body, const Caller& c);
  void CreateSession(const Caller& c, const std::string& session);
  // A throw-away session for a request without X-Adaptd-Session (deleted by the cleanup).
  std::string Throwaway(const Caller& c, std::function<void()>* cleanup);
  uint32_t NewContext(const Caller& c, const std::string& session, const std::string& request_id);
  void SwitchTo(const Caller& c, const std::string& session, uint32_t context);
  // Every turn of `session` (ListTurns' pages), optionally of one context.
  std::vector<v1::Turn> Turns(const Caller& c, const std::string& session, std::optional<uint32_t> context);
  // The turn `request_id` committed (404 naming `param` if none).
  v1::Turn TurnOf(const Caller& c, const std::string& session, const std::string& request_id, const char* param);

  // Starts a Chat and reads its first message (an error before it is thrown).
  std::shared_ptr<ChatStream> StartChat(const Caller& c, const v1::ChatRequest& req);
  Reply Finish(ChatStream& stream);

  void ChatCompletions(const httplib::Request& req, httplib::Response& res, const Caller& c);
  void Responses(const httplib::Request& req, httplib::Response& res, const Caller& c);
  void GetResponse(const httplib::Request& req, httplib::Response& res, const Caller& c);
  void ResponseInputItems(const httplib::Request& req, httplib::Response& res, const Caller& c);
  void CreateConversation(const httplib::Request& req, httplib::Response& res, const Caller& c);
  void GetConversation(const httplib::Request& req, httplib::Response& res, const Caller& c);
  void ConversationItems(const httplib::Request& req, httplib::Response& res, const Caller& c);
  void Models(const httplib::Request& req, httplib::Response& res, const Caller& c);

  std::unique_ptr<v1::Adaptd::Stub> stub_;
  Metrics& metrics_;
  std::mutex mu_;
  std::optional<v1::ServerInfo> info_;  // guarded by mu_ (the served model does not change)
};

void Api::Route(httplib::Server& http, const char* method, const std::string& pattern, const std::string& label,
                Handler handler) {
  auto wrapped = [this, label, handler](const httplib::Request& req, httplib::Response& res) {
    const auto start = std::chrono::steady_clock::now();
    try {
      handler(req, res, ReadCaller(req));
    } catch (const ApiError& e) {
      SendError(res, e);
    } catch (const std::exception& e) {  // nlohmann::json's, on a body this code misread
      SendError(res, {500, absl::StrCat("internal error: ", e.what()), "", "internal", "", false});
    }
    const int status = res.status == -1 ? 200 : res.status;  // the library's default, once the route returns
    metrics_.Http(label, status, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  };
  const std::string m = method;
  if (m == "GET") http.Get(pattern, wrapped);
  if (m == "POST") http.Post(pattern, wrapped);
  if (m == "DELETE") http.Delete(pattern, wrapped);
}

void Api::Routes(httplib::Server& http) {
  using namespace std::placeholders;
  Route(http, "GET", "/v1/models", "/v1/models", std::bind(&Api::Models, this, _1, _2, _3));
  Route(http, "GET", R"(/v1/models/([^/]+))", "/v1/models/{model}", std::bind(&Api::Models, this, _1, _2, _3));
  Route(http, "POST", "/v1/chat/completions", "/v1/chat/completions",
        std::bind(&Api::ChatCompletions, this, _1, _2, _3));
  Route(http, "POST", "/v1/responses", "/v1/responses", std::bind(&Api::Responses, this, _1, _2, _3));
  Route(http, "GET", R"(/v1/responses/([^/]+))", "/v1/responses/{id}", std::bind(&Api::GetResponse, this, _1, _2, _3));
  Route(http, "GET", R"(/v1/responses/([^/]+)/input_items)", "/v1/responses/{id}/input_items",
        std::bind(&Api::ResponseInputItems, this, _1, _2, _3));
  Route(http, "POST", "/v1/conversations", "/v1/conversations", std::bind(&Api::CreateConversation, this, _1, _2, _3));
  Route(http, "GET", R"(/v1/conversations/([^/]+))", "/v1/conversations/{id}",
        std::bind(&Api::GetConversation, this, _1, _2, _3));
  Route(http, "DELETE", R"(/v1/conversations/([^/]+))", "/v1/conversations/{id}",
        [](const httplib::Request&, httplib::Response&, const Caller&) {
          throw ApiError{400,
                         "A conversation is part of its session's memory and cannot be deleted alone: what the "
                         "session learned from it stays. Roll the session back (gRPC RollbackSession) or delete the "
                         "session to forget it.",
                         "", "unsupported_operation", "", true};
        });
  Route(http, "GET", R"(/v1/conversations/([^/]+)/items)", "/v1/conversations/{id}/items",
        std::bind(&Api::ConversationItems, this, _1, _2, _3));
}

const v1::ServerInfo& Api::Info(const Caller& c) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (info_) return *info_;
  }
  auto info = Call(&v1::Adaptd::Stub::GetServerInfo, c, "", v1::GetServerInfoRequest());
  std::lock_guard<std::mutex> lock(mu_);
  if (!info_) info_ = std::move(info);
  return *info_;
}

void Api::CheckModel(const Json& body, const Caller& c) {
  if (!body.contains("model")) throw BadRequest("Missing required parameter: 'model'.", "model", "missing_required_parameter");
  auto model = openai::String(body, "model");
  const auto& info = Info(c);
  if (!model || *model != info.model_name()) {
    throw ApiError{404, absl::StrCat("The model '", model.value_or(""), "' does not exist: this server serves '",
                                     info.model_name(), "'."),
                   "model", "model_not_found", "", true};
  }
}

void Api::CreateSession(const Caller& c, const std::string& session) {
  v1::CreateSessionRequest req;
  req.set_session_id(session);
  v1::Session created;
  auto s = Try(&v1::Adaptd::Stub::CreateSession, c, session, req, &created);
  if (!s.ok() && s.error_code() != grpc::ALREADY_EXISTS) throw openai::FromGrpc(s);  // ALREADY_EXISTS: a race won
}

std::string Api::Throwaway(const Caller& c, std::function<void()>* cleanup) {
  auto created = Call(&v1::Adaptd::Stub::CreateSession, c, "", v1::CreateSessionRequest());
  const std::string id = created.session_id();
  *cleanup = [this, c, id] {
    v1::DeleteSessionRequest del;
    del.set_session_id(id);
    v1::DeleteSessionResponse ignored;
    Try(&v1::Adaptd::Stub::DeleteSession, c, id, del, &ignored);
  };
  return id;
}

uint32_t Api::NewContext(const Caller& c, const std::string& session, const std::string& request_id) {
  v1::CreateContextRequest req;
  req.set_session_id(session);
  if (!request_id.empty() && request_id.size() <= 126) req.set_request_id(request_id + ".c");
  v1::Context made;
  auto s = Try(&v1::Adaptd::Stub::CreateContext, c, session, req, &made);
  if (s.error_code() == grpc::NOT_FOUND) {  // a new session: its first context is fresh
    CreateSession(c, session);
    return 0;
  }
  if (!s.ok()) throw openai::FromGrpc(s);
  return made.context_id();
}

void Api::SwitchTo(const Caller& c, const std::string& session, uint32_t context) {
  v1::SwitchContextRequest req;
  req.set_session_id(session);
  req.set_context_id(context);
  Call(&v1::Adaptd::Stub::SwitchContext, c, session, req);
}

std::vector<v1::Turn> Api::Turns(const Caller& c, const std::string& session, std::optional<uint32_t> context) {
  std::vector<v1::Turn> turns;
  v1::ListTurnsRequest req;
  req.set_session_id(session);
  req.set_page_size(1000);
  if (context) req.set_context_id(*context);
  do {
    auto page = Call(&v1::Adaptd::Stub::ListTurns, c, session, req);
    for (auto& t : *page.mutable_turns()) turns.push_back(std::move(t));
    req.set_page_token(page.next_page_token());
  } while (!req.page_token().empty());
  return turns;
}

v1::Turn Api::TurnOf(const Caller& c, const std::string& session, const std::string& request_id, const char* param) {
  v1::ListTurnsRequest req;
  req.set_session_id(session);
  req.set_request_id(request_id);
  v1::ListTurnsResponse page;
  auto s = Try(&v1::Adaptd::Stub::ListTurns, c, session, req, &page);
  if (s.error_code() == grpc::NOT_FOUND || (s.ok() && page.turns().empty())) {
    throw ApiError{404, absl::StrCat("No response with id '", openai::ResponseId(session, request_id), "' found."),
                   param, "not_found", "NOT_FOUND", true};
  }
  if (!s.ok()) throw openai::FromGrpc(s);
  return page.turns(0);
}

std::shared_ptr<ChatStream> Api::StartChat(const Caller& c, const v1::ChatRequest& req) {
  auto stream = std::make_shared<ChatStream>();
  stream->ctx = Context(c, req.session_id());
  stream->reader = stub_->Chat(stream->ctx.get(), req);
  grpc::Status status;
  auto first = stream->Next(&status);
  if (!first) throw openai::FromGrpc(status);
  stream->reply = {};  // Next counted it; it is delivered again as pending
  stream->pending = *std::move(first);
  return stream;
}

Reply Api::Finish(ChatStream& stream) {
  grpc::Status status;
  while (stream.Next(&status)) {
  }
  if (!status.ok()) throw openai::FromGrpc(status);
  return stream.reply;
}

// ---- Chat Completions --------------------------------------------------------------------------

// The sampling and limits common to Chat Completions and Responses.
void ReadSampling(const Json& body, const char* max_field, v1::ChatRequest* chat) {
  auto* s = chat->mutable_sampling();
  s->set_temperature(openai::Number(body, "temperature", 0, 2).value_or(1.0));  // the API's default: 1
  s->set_top_p(openai::Number(body, "top_p", 0, 1).value_or(1.0));
  if (s->top_p() == 0) throw BadRequest("Invalid 'top_p': must be greater than 0.", "top_p", "invalid_value");
  if (auto seed = openai::Integer(body, "seed", INT64_MIN, INT64_MAX)) {
    s->set_seed(static_cast<uint64_t>(*seed));
  } else {
    s->set_seed(std::stoull(openai::NewRequestId().substr(0, 15), nullptr, 16));  // unseeded: a fresh draw
  }
  if (auto max = openai::Integer(body, max_field, 1, INT32_MAX)) chat->set_max_new_tokens(static_cast<int32_t>(*max));
}

void AddMessages(const std::vector<Message>& messages, size_t from, v1::ChatRequest* chat) {
  for (size_t i = from; i < messages.size(); ++i) {
    auto* m = chat->add_messages();
    m->set_role(messages[i].role);
    m->set_content(messages[i].text);
  }
}

Json ChatUsage(const v1::Usage& u, const std::string& session, uint32_t context) {
  return {{"prompt_tokens", u.prompt_tokens()},
          {"completion_tokens", u.completion_tokens()},
          {"total_tokens", u.prompt_tokens() + u.completion_tokens()},
          {"adaptd", openai::VendorUsage(u, session, context)}};
}

Json Completion(const std::string& id, const std::string& model, const std::string& fingerprint, const Reply& r,
                const std::string& session, uint32_t context) {
  return {{"id", id},
          {"object", "chat.completion"},
          {"created", Now()},
          {"model", model},
          {"system_fingerprint", fingerprint},
          {"choices",
           {{{"index", 0},
             {"message", {{"role", "assistant"}, {"content", r.text}, {"refusal", nullptr}}},
             {"logprobs", nullptr},
             {"finish_reason", r.finish_reason.empty() ? "stop" : r.finish_reason}}}},
          {"usage", ChatUsage(r.usage, session, context)}};
}

// Where a Chat Completions history goes: the context it continues (with the messages from
// `from` new), or a reply already committed.
struct Placement {
  std::optional<uint32_t> context;  // none: a new context
  size_t from = 0;
  std::optional<v1::Turn> committed;
};

Placement Place(const std::vector<Message>& history, const std::vector<ContextLog>& logs,
                const std::vector<v1::Turn>& turns, uint32_t current, bool new_context) {
  Placement best;
  size_t best_len = 0;
  bool extends = false, empty_current = false;
  size_t diverge = 0;  // the longest common prefix of a context the history leaves part-way
  for (uint32_t id = 0; id < logs.size(); ++id) {
    const ContextLog& log = logs[id];
    if (log.opaque) continue;
    const auto& f = log.messages;
    size_t i = 0;
    while (i < f.size() && i < history.size() && f[i] == history[i]) ++i;
    if (f.empty()) {
      empty_current |= id == current;
      continue;
    }
    if (i == f.size() && history.size() > f.size()) {  // continues it
      if (!extends || f.size() > best_len || (f.size() == best_len && id == current)) {
        best = {id, f.size(), std::nullopt};
        best_len = f.size();
        extends = true;
      }
    } else if (i == history.size() && i < f.size() && log.reply_of[i] >= 0 && history.back().role != "assistant") {
      if (!extends) best = {id, 0, turns[log.reply_of[i]]};  // its reply is committed already
    } else if (i == history.size() && i == f.size()) {
      throw BadRequest("messages: the whole history, its last reply included, is committed already: add a message",
                       "messages");
    } else if (i > 0) {
      diverge = std::max(diverge, i);
    }
  }
  if (extends || best.committed) return best;
  if (diverge > 0 && !new_context) {
    throw ApiError{409,
                   absl::StrCat("messages[", diverge,
                                "] differs from the conversation this history continues: a session's conversations "
                                "are append-only. Send X-Adaptd-New-Context: true to start a new one."),
                   absl::StrCat("messages[", diverge, "]"), "history_diverged", "", true};
  }
  if (empty_current) return {current, 0, std::nullopt};
  return {};
}

void Api::ChatCompletions(const httplib::Request& http_req, httplib::Response& res, const Caller& c) {
  const Json body = openai::ParseObject(http_req.body);
  openai::CheckKnown(body, {"model", "messages", "max_tokens", "max_completion_tokens", "stop", "seed", "temperature",
                            "top_p", "stream", "stream_options", "n", "tools", "tool_choice", "response_format",
                            "parallel_tool_calls", "functions", "function_call", "logprobs", "top_logprobs",
                            "presence_penalty", "frequency_penalty", "logit_bias", "user", "metadata", "store",
                            "service_tier", "modalities", "audio", "prediction", "reasoning_effort",
                            "web_search_options", "verbosity", "prompt_cache_key", "safety_identifier"});
  for (const char* f : {"n", "tools", "tool_choice", "response_format", "functions", "function_call", "logprobs",
                        "top_logprobs", "presence_penalty", "frequency_penalty", "logit_bias", "modalities", "audio",
                        "prediction", "web_search_options", "parallel_tool_calls"}) {
    openai::RequireNeutral(body, f);
  }
  CheckModel(body, c);
  const std::vector<Message> history = openai::ChatMessages(body);
  const bool stream = openai::Bool(body, "stream").value_or(false);
  bool include_usage = false;
  if (body.contains("stream_options") && !body["stream_options"].is_null()) {
    if (!stream) throw BadRequest("The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options");
    include_usage = openai::Bool(body["stream_options"], "include_usage").value_or(false);
  }
  v1::ChatRequest chat;
  ReadSampling(body, body.contains("max_completion_tokens") ? "max_completion_tokens" : "max_tokens", &chat);
  for (const auto& s : openai::Stops(body, "stop")) chat.add_stop(s);

  std::function<void()> cleanup;
  std::string session = c.session;
  uint32_t context = 0;
  size_t from = 0;
  std::optional<v1::Turn> committed;
  if (session.empty()) {
    session = Throwaway(c, &cleanup);
    chat.set_dry_run(true);
  } else {
    v1::ListContextsRequest lc;
    lc.set_session_id(session);
    v1::ListContextsResponse contexts;
    auto s = Try(&v1::Adaptd::Stub::ListContexts, c, session, lc, &contexts);
    if (s.error_code() == grpc::NOT_FOUND) {
      CreateSession(c, session);
    } else if (!s.ok()) {
      throw openai::FromGrpc(s);
    }
    uint32_t current = 0;
    std::vector<ContextLog> logs(std::max(contexts.contexts_size(), 1));
    for (const auto& ctx : contexts.contexts()) {
      if (ctx.current()) current = ctx.context_id();
    }
    const std::vector<v1::Turn> turns = s.ok() ? Turns(c, session, std::nullopt) : std::vector<v1::Turn>{};
    for (size_t t = 0; t < turns.size(); ++t) {
      const v1::Turn& turn = turns[t];
      if (turn.kind() == "reset") {
        for (auto& log : logs) log = {};
        continue;
      }
      if (turn.context_id() >= logs.size()) logs.resize(turn.context_id() + 1);
      ContextLog& log = logs[turn.context_id()];
      if (turn.kind() != "chat") {
        log.opaque = true;
        continue;
      }
      for (const auto& m : turn.messages()) {
        log.messages.push_back({m.role(), m.content()});
        log.reply_of.push_back(-1);
      }
      log.messages.push_back({"assistant", turn.reply()});
      log.reply_of.push_back(static_cast<int>(t));
    }
    Placement place = Place(history, logs, turns, current, c.new_context);
    committed = place.committed;
    from = place.from;
    if (place.context) {
      context = *place.context;
      if (!committed && context != current) SwitchTo(c, session, context);
    } else {
      context = NewContext(c, session, c.idempotency_key);
    }
  }
  const auto& info = Info(c);
  const std::string id = absl::StrCat("chatcmpl-", c.idempotency_key.empty() ? openai::NewRequestId() : c.idempotency_key);
  std::shared_ptr<ChatStream> call;
  Reply reply;
  if (committed) {  // a history already answered: its reply, as logged
    reply.text = committed->reply();
    reply.finish_reason = committed->finish_reason();
    reply.usage.set_prompt_tokens(committed->prompt_tokens());
    reply.usage.set_completion_tokens(committed->completion_tokens());
    reply.usage.set_version(committed->version());
    context = committed->context_id();
  } else {
    chat.set_session_id(session);
    chat.set_request_id(c.idempotency_key);
    AddMessages(history, from, &chat);
    if (chat.messages_size() == 0 || chat.messages(chat.messages_size() - 1).role() == "assistant") {
      throw BadRequest("messages: the last message must not be the assistant's", "messages");
    }
    call = StartChat(c, chat);
    call->cleanup = std::move(cleanup);
    cleanup = nullptr;
    if (!stream) reply = Finish(*call);
  }
  if (cleanup) cleanup();
  if (!stream) {
    res.set_content(Completion(id, info.model_name(), info.model_fingerprint(), reply, session, context).dump(),
                    "application/json");
    return;
  }
  // Streamed: chunks of the text as it comes, the finish reason, then (if asked) the usage.
  const Json head = {{"id", id}, {"object", "chat.completion.chunk"}, {"created", Now()}, {"model", info.model_name()},
                     {"system_fingerprint", info.model_fingerprint()}};
  auto chunk = [head](Json delta, Json finish) {
    Json j = head;
    j["choices"] = {{{"index", 0}, {"delta", std::move(delta)}, {"logprobs", nullptr}, {"finish_reason", finish}}};
    return "data: " + j.dump() + "\n\n";
  };
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream",
      [call, reply, chunk, head, include_usage, session, context, started = false](size_t,
                                                                                   httplib::DataSink& sink) mutable {
        std::string out;
        if (!started) {
          out = chunk({{"role", "assistant"}, {"content", ""}}, nullptr);
          started = true;
        }
        grpc::Status status;
        std::optional<v1::ChatResponse> msg;
        if (call != nullptr && (msg = call->Next(&status))) {
          if (!msg->text().empty()) out += chunk({{"content", msg->text()}}, nullptr);
          return out.empty() || sink.write(out.data(), out.size());
        }
        if (call != nullptr) reply = call->reply;
        if (call == nullptr && !reply.text.empty()) out += chunk({{"content", reply.text}}, nullptr);
        if (!status.ok()) {
          out += "data: " + openai::ErrorBody(openai::FromGrpc(status)).dump() + "\n\n";
        } else {
          out += chunk(Json::object(), reply.finish_reason.empty() ? "stop" : reply.finish_reason);
          if (include_usage) {
            Json j = head;
            j["choices"] = Json::array();
            j["usage"] = ChatUsage(reply.usage, session, context);
            out += "data: " + j.dump() + "\n\n";
          }
        }
        out += "data: [DONE]\n\n";
        if (!sink.write(out.data(), out.size())) return false;
        sink.done();
        return true;
      });
}


// ---- Responses ---------------------------------------------------------------------------------

// What a response object shows.
struct ResponseView {
  std::string id, item_id, model;
  int64_t created = 0;
  Reply reply;
  std::string session;
  uint32_t context = 0;
  Json conversation = nullptr, previous = nullptr, instructions = nullptr, metadata = Json::object();
  Json temperature = nullptr, top_p = nullptr, max_output_tokens = nullptr;
  bool store = true;
};

Json OutputItem(const ResponseView& v, bool done) {
  Json content = Json::array();
  if (done) content.push_back({{"type", "output_text"}, {"text", v.reply.text}, {"annotations", Json::array()}, {"logprobs", Json::array()}});
  return {{"type", "message"}, {"id", v.item_id}, {"status", done ? "completed" : "in_progress"},
          {"role", "assistant"}, {"content", content}};
}

// The response object; `done`: with its output and usage (else in progress, as streams open).
Json ResponseJson(const ResponseView& v, bool done) {
  const bool cut = done && v.reply.finish_reason == "length";
  Json r = {{"id", v.id},
            {"object", "response"},
            {"created_at", v.created},
            {"status", !done ? "in_progress" : cut ? "incomplete" : "completed"},
            {"error", nullptr},
            {"incomplete_details", cut ? Json{{"reason", "max_output_tokens"}} : Json()},
            {"model", v.model},
            {"output", done ? Json::array({OutputItem(v, true)}) : Json::array()},
            {"instructions", v.instructions},
            {"previous_response_id", v.previous},
            {"conversation", v.conversation},
            {"metadata", v.metadata},
            {"temperature", v.temperature},
            {"top_p", v.top_p},
            {"max_output_tokens", v.max_output_tokens},
            {"parallel_tool_calls", false},
            {"tool_choice", "none"},
            {"tools", Json::array()},
            {"text", {{"format", {{"type", "text"}}}}},
            {"truncation", "disabled"},
            {"store", v.store},
            {"usage", nullptr}};
  if (done) {
    const auto& u = v.reply.usage;
    r["usage"] = {{"input_tokens", u.prompt_tokens()},
                  {"input_tokens_details", {{"cached_tokens", 0}}},
                  {"output_tokens", u.completion_tokens()},
                  {"output_tokens_details", {{"reasoning_tokens", 0}}},
                  {"total_tokens", u.prompt_tokens() + u.completion_tokens()},
                  {"adaptd", openai::VendorUsage(u, v.session, v.context)}};
  }
  return r;
}

ResponseView FromTurn(const v1::Turn& t, const std::string& session, const std::string& request_id,
                      const std::string& model) {
  ResponseView v;
  v.id = openai::ResponseId(session, request_id);
  v.item_id = "msg_" + request_id;
  v.model = model;
  v.created = t.create_time_unix_ms() / 1000;
  v.reply.text = t.reply();
  v.reply.finish_reason = t.finish_reason();
  v.reply.usage.set_prompt_tokens(t.prompt_tokens());
  v.reply.usage.set_completion_tokens(t.completion_tokens());
  v.reply.usage.set_version(t.version());
  v.session = session;
  v.context = t.context_id();
  v.conversation = {{"id", openai::ConversationId(session, t.context_id())}};
  return v;
}

// One server-sent event of a Responses stream (its type and sequence number added).
std::string Event(const char* type, Json data, int64_t* sequence) {
  data["type"] = type;
  data["sequence_number"] = (*sequence)++;
  return absl::StrCat("event: ", type, "\ndata: ", data.dump(), "\n\n");
}

void StreamResponse(httplib::Response& res, std::shared_ptr<ChatStream> call, ResponseView view) {
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider(
      "text/event-stream", [call, view, started = false](size_t, httplib::DataSink& sink) mutable {
        int64_t* seq = &call->sequence;
        const Json at = {{"item_id", view.item_id}, {"output_index", 0}, {"content_index", 0}};
        std::string out;
        if (!started) {
          started = true;
          out += Event("response.created", {{"response", ResponseJson(view, false)}}, seq);
          out += Event("response.in_progress", {{"response", ResponseJson(view, false)}}, seq);
          out += Event("response.output_item.added", {{"output_index", 0}, {"item", OutputItem(view, false)}}, seq);
          Json part = at;
          part["part"] = {{"type", "output_text"}, {"text", ""}, {"annotations", Json::array()}};
          out += Event("response.content_part.added", part, seq);
        }
        grpc::Status status;
        if (auto msg = call->Next(&status)) {
          if (!msg->text().empty()) {
            Json delta = at;
            delta["delta"] = msg->text();
            delta["logprobs"] = Json::array();
            out += Event("response.output_text.delta", delta, seq);
          }
          return out.empty() || sink.write(out.data(), out.size());
        }
        if (!status.ok()) {
          const ApiError e = openai::FromGrpc(status);
          out += Event("error", {{"code", e.code}, {"message", e.message}, {"param", nullptr}}, seq);
        } else {
          view.reply = call->reply;
          view.context = view.context;
          Json text = at;
          text["text"] = view.reply.text;
          text["logprobs"] = Json::array();
          out += Event("response.output_text.done", text, seq);
          Json part = at;
          part["part"] = OutputItem(view, true)["content"][0];
          out += Event("response.content_part.done", part, seq);
          out += Event("response.output_item.done", {{"output_index", 0}, {"item", OutputItem(view, true)}}, seq);
          const bool cut = view.reply.finish_reason == "length";
          out += Event(cut ? "response.incomplete" : "response.completed", {{"response", ResponseJson(view, true)}}, seq);
        }
        if (!sink.write(out.data(), out.size())) return false;
        sink.done();
        return true;
      });
}

void Api::Responses(const httplib::Request& http_req, httplib::Response& res, const Caller& c) {
  const Json body = openai::ParseObject(http_req.body);
  openai::CheckKnown(body, {"model", "input", "instructions", "previous_response_id", "conversation", "store",
                            "stream", "stream_options", "max_output_tokens", "temperature", "top_p", "seed",
                            "metadata", "user", "tools", "tool_choice", "text", "truncation", "parallel_tool_calls",
                            "include", "background", "reasoning", "top_logprobs", "max_tool_calls", "prompt",
                            "service_tier", "prompt_cache_key", "safety_identifier"});
  for (const char* f : {"tools", "tool_choice", "text", "truncation", "include", "background", "reasoning",
                        "top_logprobs", "max_tool_calls", "prompt"}) {
    openai::RequireNeutral(body, f);
  }
  CheckModel(body, c);
  const std::vector<Message> input = openai::ResponseInput(body);
  ResponseView view;
  view.model = Info(c).model_name();
  view.created = Now();
  view.instructions = body.value("instructions", Json());
  const auto instructions = openai::String(body, "instructions");
  const auto previous = openai::String(body, "previous_response_id");
  std::optional<std::string> conversation;
  if (body.contains("conversation") && body["conversation"].is_object()) {
    conversation = openai::String(body["conversation"], "id");
  } else {
    conversation = openai::String(body, "conversation");
  }
  if (previous && conversation) {
    throw BadRequest("Mutually exclusive parameters: Ensure you are only providing one of: 'previous_response_id' or "
                     "'conversation'.",
                     "conversation", "mutually_exclusive_parameters");
  }
  if (body.contains("metadata") && !body["metadata"].is_null()) {
    if (!body["metadata"].is_object() || body["metadata"].size() > 16) {
      throw BadRequest("Invalid 'metadata': an object of at most 16 pairs.", "metadata");
    }
    view.metadata = body["metadata"];
  }
  view.store = openai::Bool(body, "store").value_or(true);
  const bool stream = openai::Bool(body, "stream").value_or(false);
  v1::ChatRequest chat;
  ReadSampling(body, "max_output_tokens", &chat);
  view.temperature = chat.sampling().temperature();
  view.top_p = chat.sampling().top_p();
  if (chat.max_new_tokens() > 0) view.max_output_tokens = chat.max_new_tokens();
  const std::string rid = c.idempotency_key.empty() ? openai::NewRequestId() : c.idempotency_key;

  // The session and context the response continues.
  std::string session = c.session;
  uint32_t context = 0;
  std::optional<uint64_t> at_version;  // continue from this version: a fork unless it is its context's latest
  if (previous) {
    std::string prid;
    if (!openai::ParseResponseId(*previous, &session, &prid)) {
      throw ApiError{404, absl::StrCat("Previous response with id '", *previous, "' not found."),
                     "previous_response_id", "previous_response_not_found", "", true};
    }
    const v1::Turn turn = TurnOf(c, session, prid, "previous_response_id");
    context = turn.context_id();
    v1::ListTurnsRequest later;
    later.set_session_id(session);
    later.set_context_id(context);
    later.set_page_token(absl::StrCat(turn.version()));
    later.set_page_size(1);
    if (Call(&v1::Adaptd::Stub::ListTurns, c, session, later).turns_size() > 0) at_version = turn.version();
    view.previous = *previous;
  } else if (conversation) {
    if (!openai::ParseConversationId(*conversation, &session, &context)) {
      throw ApiError{404, absl::StrCat("Conversation with id '", *conversation, "' not found."), "conversation",
                     "not_found", "", true};
    }
  }
  // A retry of a response already committed gets it as it was.
  if (!c.idempotency_key.empty() && view.store && !session.empty()) {
    v1::ListTurnsRequest seen;
    seen.set_session_id(session);
    seen.set_request_id(rid);
    v1::ListTurnsResponse page;
    if (Try(&v1::Adaptd::Stub::ListTurns, c, session, seen, &page).ok() && page.turns_size() > 0) {
      ResponseView done = FromTurn(page.turns(0), session, rid, view.model);
      done.previous = view.previous;
      done.instructions = view.instructions;
      done.metadata = view.metadata;
      res.set_content(ResponseJson(done, true).dump(), "application/json");
      return;
    }
  }
  std::function<void()> cleanup;
  const bool throwaway = session.empty();
  bool fresh = !previous && !conversation;
  if (throwaway) {
    session = Throwaway(c, &cleanup);
    chat.set_dry_run(true);
  } else if (at_version || !view.store) {
    // An older response continues in a fork of the session at its version; store: false runs
    // on a temporary fork (deleted afterwards), so the session itself is left as it was.
    v1::ForkSessionRequest fork;
    fork.set_session_id(session);
    fork.set_version(at_version.value_or(0));
    v1::Session forked;
    auto s = Try(&v1::Adaptd::Stub::ForkSession, c, session, fork, &forked);
    if (s.error_code() == grpc::NOT_FOUND && fresh) {  // nothing to fork yet: a throw-away will do
      session = Throwaway(c, &cleanup);
    } else if (!s.ok()) {
      throw openai::FromGrpc(s);
    } else {
      session = forked.session_id();
      if (!view.store) {
        cleanup = [this, c, session] {
          v1::DeleteSessionRequest del;
          del.set_session_id(session);
          v1::DeleteSessionResponse ignored;
          Try(&v1::Adaptd::Stub::DeleteSession, c, session, del, &ignored);
        };
      }
    }
  }
  if (fresh && !throwaway) {
    context = NewContext(c, session, view.store ? rid : "");
  } else if (!fresh && !at_version) {
    SwitchTo(c, session, context);  // a fork at the version has that context current already
  }
  // `instructions` are this response's system message. A new context's first turn pins its
  // first system message as the context's system prompt, so the server's default comes first
  // there and the instructions stay this turn's.
  std::vector<Message> messages;
  if (instructions) {
    if (fresh && !Info(c).system_prompt().empty()) messages.push_back({"system", Info(c).system_prompt()});
    messages.push_back({"system", *instructions});
  }
  messages.insert(messages.end(), input.begin(), input.end());
  chat.set_session_id(session);
  if (view.store && !throwaway) chat.set_request_id(rid);
  AddMessages(messages, 0, &chat);
  view.session = session;
  view.context = context;
  const bool kept = view.store && !throwaway && !cleanup;
  view.id = kept ? openai::ResponseId(session, rid) : "resp_" + rid;  // only kept ones can be read back
  view.item_id = "msg_" + rid;
  if (kept) view.conversation = {{"id", openai::ConversationId(session, context)}};
  auto call = StartChat(c, chat);
  call->cleanup = std::move(cleanup);
  if (stream) return StreamResponse(res, std::move(call), std::move(view));
  view.reply = Finish(*call);
  res.set_content(ResponseJson(view, true).dump(), "application/json");
}

void Api::GetResponse(const httplib::Request& req, httplib::Response& res, const Caller& c) {
  std::string session, rid;
  const std::string id = req.matches[1];
  if (!openai::ParseResponseId(id, &session, &rid)) {
    throw ApiError{404, absl::StrCat("Response with id '", id, "' not found."), "", "not_found", "", true};
  }
  const v1::Turn turn = TurnOf(c, session, rid, "response_id");
  res.set_content(ResponseJson(FromTurn(turn, session, rid, Info(c).model_name()), true).dump(), "application/json");
}

// A list page of items as the OpenAI API pages them: `limit` (1-100, default 20), `order`
// (asc or desc, default desc) and `after` (an item id).
Json ItemPage(std::vector<Json> items, const httplib::Request& req) {
  int64_t limit = 20;
  if (req.has_param("limit") && (!absl::SimpleAtoi(req.get_param_value("limit"), &limit) || limit < 1 || limit > 100)) {
    throw BadRequest("Invalid 'limit': an integer in [1, 100].", "limit");
  }
  const std::string order = req.has_param("order") ? req.get_param_value("order") : "desc";
  if (order != "asc" && order != "desc") throw BadRequest("Invalid 'order': asc or desc.", "order");
  if (order == "desc") std::reverse(items.begin(), items.end());
  size_t begin = 0;
  if (req.has_param("after")) {
    const std::string after = req.get_param_value("after");
    while (begin < items.size() && items[begin]["id"] != after) ++begin;
    if (begin == items.size()) throw BadRequest("Invalid 'after': not an item of this list.", "after");
    ++begin;
  }
  const size_t end = std::min(items.size(), begin + static_cast<size_t>(limit));
  Json data = Json::array();
  for (size_t i = begin; i < end; ++i) data.push_back(std::move(items[i]));
  return {{"object", "list"},
          {"data", data},
          {"first_id", data.empty() ? Json() : data.front()["id"]},
          {"last_id", data.empty() ? Json() : data.back()["id"]},
          {"has_more", end < items.size()}};
}

void Api::ResponseInputItems(const httplib::Request& req, httplib::Response& res, const Caller& c) {
  std::string session, rid;
  const std::string id = req.matches[1];
  if (!openai::ParseResponseId(id, &session, &rid)) {
    throw ApiError{404, absl::StrCat("Response with id '", id, "' not found."), "", "not_found", "", true};
  }
  const v1::Turn turn = TurnOf(c, session, rid, "response_id");
  std::vector<Json> items;
  for (int i = 0; i < turn.messages_size(); ++i) {
    items.push_back(openai::MessageItem(openai::MessageId(session, turn.version(), i),
                                        {turn.messages(i).role(), turn.messages(i).content()}));
  }
  res.set_content(ItemPage(std::move(items), req).dump(), "application/json");
}

// ---- Conversations and models --------------------------------------------------------------

void Api::CreateConversation(const httplib::Request& req, httplib::Response& res, const Caller& c) {
  const Json body = req.body.empty() ? Json::object() : openai::ParseObject(req.body);
  openai::CheckKnown(body, {"items", "metadata"});
  if (body.contains("items") && !body["items"].is_null() && !(body["items"].is_array() && body["items"].empty())) {
    throw BadRequest("'items' is not supported: send them as the first response's input.", "items",
                     "unsupported_parameter");
  }
  if (c.session.empty()) {
    throw BadRequest("A conversation lives in a session: send X-Adaptd-Session.", "X-Adaptd-Session");
  }
  const uint32_t context = NewContext(c, c.session, c.idempotency_key);
  res.set_content(Json{{"id", openai::ConversationId(c.session, context)},
                       {"object", "conversation"},
                       {"created_at", Now()},
                       {"metadata", body.value("metadata", Json::object())}}
                      .dump(),
                  "application/json");
}

void Api::GetConversation(const httplib::Request& req, httplib::Response& res, const Caller& c) {
  std::string session;
  uint32_t context = 0;
  const std::string id = req.matches[1];
  const ApiError missing{404, absl::StrCat("Conversation with id '", id, "' not found."), "", "not_found", "", true};
  if (!openai::ParseConversationId(id, &session, &context)) throw missing;
  v1::ListContextsRequest lc;
  lc.set_session_id(session);
  auto contexts = Call(&v1::Adaptd::Stub::ListContexts, c, session, lc);
  if (context >= static_cast<uint32_t>(contexts.contexts_size())) throw missing;
  v1::ListTurnsRequest first;
  first.set_session_id(session);
  first.set_context_id(context);
  first.set_page_size(1);
  auto turns = Call(&v1::Adaptd::Stub::ListTurns, c, session, first);
  res.set_content(Json{{"id", id},
                       {"object", "conversation"},
                       {"created_at", turns.turns().empty() ? Now() : turns.turns(0).create_time_unix_ms() / 1000},
                       {"metadata", Json::object()}}
                      .dump(),
                  "application/json");
}

void Api::ConversationItems(const httplib::Request& req, httplib::Response& res, const Caller& c) {
  std::string session;
  uint32_t context = 0;
  const std::string id = req.matches[1];
  if (!openai::ParseConversationId(id, &session, &context)) {
    throw ApiError{404, absl::StrCat("Conversation with id '", id, "' not found."), "", "not_found", "", true};
  }
  std::vector<Json> items;
  for (const v1::Turn& t : Turns(c, session, context)) {
    if (t.kind() != "chat") continue;
    for (int i = 0; i < t.messages_size(); ++i) {
      items.push_back(openai::MessageItem(openai::MessageId(session, t.version(), i),
                                          {t.messages(i).role(), t.messages(i).content()}));
    }
    items.push_back(openai::MessageItem(openai::MessageId(session, t.version(), t.messages_size()), {"assistant", t.reply()}));
  }
  res.set_content(ItemPage(std::move(items), req).dump(), "application/json");
}

void Api::Models(const httplib::Request& req, httplib::Response& res, const Caller& c) {
  // Asked afresh (not Info's copy): the call checks the caller's key.
  const auto info = Call(&v1::Adaptd::Stub::GetServerInfo, c, "", v1::GetServerInfoRequest());
  const Json model = {{"id", info.model_name()},
                      {"object", "model"},
                      {"created", 0},
                      {"owned_by", "adaptd"},
                      {"adaptd",
                       {{"fingerprint", info.model_fingerprint()},
                        {"base_fingerprint", info.base_fingerprint()},
                        {"weight_format", info.weight_format()},
                        {"ttt_layers", std::vector<int32_t>(info.ttt_layers().begin(), info.ttt_layers().end())},
                        {"fast_layers", std::vector<int32_t>(info.fast_layers().begin(), info.fast_layers().end())},
                        {"ttt_chunk", info.ttt_chunk()},
                        {"chat_format", info.chat_format()},
                        {"max_new_tokens", info.max_new_tokens()}}}};
  if (req.matches.size() > 1) {
    if (req.matches[1] != info.model_name()) {
      throw ApiError{404, absl::StrCat("The model '", std::string(req.matches[1]), "' does not exist."), "model",
                     "model_not_found", "", true};
    }
    res.set_content(model.dump(), "application/json");
    return;
  }
  res.set_content(Json{{"object", "list"}, {"data", {model}}}.dump(), "application/json");
}

}  // namespace

absl::StatusOr<std::unique_ptr<HttpDoor>> HttpDoor::Start(std::shared_ptr<grpc::Channel> channel, Metrics& metrics,
                                                          const HttpDoorOptions& options) {
  std::unique_ptr<HttpDoor> door(new HttpDoor());
  if (options.tls_cert.empty() != options.tls_key.empty()) {
    return absl::InvalidArgumentError("--tls_cert and --tls_key go together");
  }
  if (options.tls_cert.empty()) {
    door->http_ = std::make_unique<httplib::Server>();
  } else {
    auto tls = std::make_unique<httplib::SSLServer>(
        options.tls_cert.c_str(), options.tls_key.c_str(),
        options.tls_client_ca.empty() ? nullptr : options.tls_client_ca.c_str());
    if (!tls->is_valid()) return absl::InvalidArgumentError("the HTTP door cannot use --tls_cert / --tls_key");
    door->http_ = std::move(tls);
  }
  httplib::Server& http = *door->http_;
  auto api = std::make_shared<Api>(std::move(channel), metrics);
  api->Routes(http);
  door->api_ = api;
  http.set_payload_max_length(options.max_body_bytes);
  const int threads = options.threads;
  http.new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<size_t>(threads)); };
  // Errors the library answers itself (no route, a body over the limit) in the OpenAI shape.
  http.set_error_handler(httplib::Server::HandlerWithResponse([&metrics](const httplib::Request& req,
                                                                         httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;  // a route's own error
    const std::string message = res.status == 404   ? absl::StrCat("Unknown request URL: ", req.method, " ", req.path)
                                : res.status == 413 ? "The request body is too large."
                                                    : absl::StrCat("HTTP ", res.status);
    SendError(res, {res.status, message, "", res.status == 404 ? "unknown_url" : "", "", true});
    metrics.Http("other", res.status, 0);
    return httplib::Server::HandlerResponse::Handled;
  }));
  const size_t colon = options.listen.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(options.listen.substr(colon + 1), &port)) {
    return absl::InvalidArgumentError(absl::StrCat("--http_listen: not host:port: ", options.listen));
  }
  const std::string host = options.listen.substr(0, colon);
  if (port == 0) {
    port = http.bind_to_any_port(host);
    if (port <= 0) return absl::UnavailableError("cannot listen on " + options.listen);
  } else if (!http.bind_to_port(host, port)) {
    return absl::UnavailableError("cannot listen on " + options.listen);
  }
  door->port_ = port;
  door->thread_ = std::thread([&http] { http.listen_after_bind(); });
  return door;
}

void HttpDoor::Stop() {
  if (http_) http_->stop();
}

HttpDoor::~HttpDoor() {
  Stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace adaptd::server
