// The OpenAI API's JSON as the HTTP door reads and writes it (nlohmann::json): request fields
// checked as the OpenAI API checks them (a 400 naming the parameter), the ids the door issues,
// and the objects it returns (chat.completion, response, conversation items, errors).
//
// The checks throw ApiError, caught by the door's route wrapper (http_door.cc): exceptions stay
// inside this pair of files.
#ifndef ADAPTD_SERVER_OPENAI_JSON_H_
#define ADAPTD_SERVER_OPENAI_JSON_H_

#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <nlohmann/json.hpp>

#include "adaptd/v1/adaptd.pb.h"

namespace adaptd::server::openai {

using Json = nlohmann::json;

// An error in the OpenAI shape: {"error": {"message", "type", "param", "code"}}, with the
// gRPC code it came from (if any) under "adaptd_grpc_code". `no_retry` adds
// `x-should-retry: false` (the SDK retries 409s otherwise).
struct ApiError {
  int status = 400;
  std::string message;
  std::string param;
  std::string code;
  std::string grpc_code;
  bool no_retry = false;
};
ApiError BadRequest(std::string message, std::string param = "", std::string code = "");
// The HTTP status and error of a failed gRPC call (INVALID_ARGUMENT 400, UNAUTHENTICATED 401,
// PERMISSION_DENIED 403, NOT_FOUND 404, ALREADY_EXISTS and ABORTED 409, RESOURCE_EXHAUSTED
// 429, CANCELLED 499, UNAVAILABLE 503, DEADLINE_EXCEEDED 504, UNIMPLEMENTED 501, others 500).
ApiError FromGrpc(const grpc::Status& status);
Json ErrorBody(const ApiError& error);

// The body as a JSON object (400 for anything else, as the OpenAI API answers).
Json ParseObject(const std::string& body);
// 400 "Unrecognized request argument supplied: X" for a field outside `known`.
void CheckKnown(const Json& body, std::initializer_list<const char*> known);
// Optional fields: absent or null give nullopt; a wrong type or a value out of range is a 400.
std::optional<double> Number(const Json& body, const char* field, double lo, double hi);
std::optional<int64_t> Integer(const Json& body, const char* field, int64_t lo, int64_t hi);
std::optional<bool> Bool(const Json& body, const char* field);
std::optional<std::string> String(const Json& body, const char* field);
// `stop`: a string or up to 4 strings.
std::vector<std::string> Stops(const Json& body, const char* field);
// Fields the door accepts only at their neutral value (e.g. n = 1, empty tools): a 400 naming
// the field otherwise.
void RequireNeutral(const Json& body, const char* field);

struct Message {
  std::string role;  // system, user or assistant ("developer" reads as system)
  std::string text;
  bool operator==(const Message& o) const { return role == o.role && text == o.text; }
};
// Chat Completions' `messages`: roles system/developer/user/assistant, content a string or
// text parts.
std::vector<Message> ChatMessages(const Json& body);
// Responses' `input`: a string (one user message) or message items with text content.
std::vector<Message> ResponseInput(const Json& body);

// Ids the door issues. They carry the session (URL-safe base64) so that a later request finds
// it: "resp_<session>.<request id>", "conv_<session>.<context>", "msg_<session>.<version>.<i>".
std::string ResponseId(const std::string& session, const std::string& request_id);
std::string ConversationId(const std::string& session, uint32_t context);
std::string MessageId(const std::string& session, uint64_t version, int index);
// false for an id the door did not issue.
bool ParseResponseId(const std::string& id, std::string* session, std::string* request_id);
bool ParseConversationId(const std::string& id, std::string* session, uint32_t* context);
// 1-128 of [A-Za-z0-9._~-] (the gRPC request_id's alphabet).
bool ValidRequestId(const std::string& id);
std::string NewRequestId();  // 32 random hex digits

// Adaptd's own usage fields, under the vendor key "adaptd" of `usage` (clients ignore it).
Json VendorUsage(const v1::Usage& usage, const std::string& session, uint32_t context);
// A message item of Responses and Conversations (input_text for the user's and system's
// messages, output_text for the assistant's).
Json MessageItem(const std::string& id, const Message& m);

}  // namespace adaptd::server::openai

#endif  // ADAPTD_SERVER_OPENAI_JSON_H_
