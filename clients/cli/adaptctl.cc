// adaptctl: the Adaptd API from the command line.
//
//   export ADAPTD_API_KEY=...            (or --key)
//   adaptctl [--target 127.0.0.1:50051] sessions create [ID] [--options TEXT] | get ID | list | delete ID
//   adaptctl sessions fork ID NEW_ID [--version V] | reset ID | rollback ID VERSION | migrate ID
//   adaptctl sessions export ID FILE | import FILE [ID]
//   adaptctl contexts ID [new | N]       a session's conversations: list them, start one, continue N
//   adaptctl chat ID                     interactive: one line per user turn, replies streamed
//                                        (a new ID starts a session)
//   adaptctl chat ID --message "text"    one turn
//   adaptctl ingest ID FILE [--keep_in_context]   learn a file, in pieces, with a progress bar
//   adaptctl score ID FILE [--adapt]     log-likelihood of FILE as the session's continuation
//   adaptctl info
//   adaptctl backup                      operators: back up this replica's store (its --backup_dir)
//   adaptctl health                      grpc.health.v1: exit 0 while SERVING (probes, Docker)
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "google/protobuf/text_format.h"
#include "adaptd/v1/adaptd.grpc.pb.h"
#include "client.h"

ABSL_FLAG(std::string, target, "127.0.0.1:50051", "adaptd address");
ABSL_FLAG(std::string, key, "", "API key (default: $ADAPTD_API_KEY)");
ABSL_FLAG(std::string, tls_ca, "", "PEM roots: talk TLS to the server, trusting these");
ABSL_FLAG(std::string, message, "", "chat: send this one message instead of reading stdin");
ABSL_FLAG(int, max_new_tokens, 128, "chat: reply length limit");
ABSL_FLAG(double, temperature, 0.0, "chat: sampling temperature (0: greedy)");
ABSL_FLAG(std::string, system, "", "chat: a system message for the first turn");
ABSL_FLAG(uint64_t, version, 0, "sessions fork: the version to fork at (0: the latest)");
ABSL_FLAG(bool, keep_in_context, false, "ingest: keep the text in the session's context too");
ABSL_FLAG(bool, adapt, false, "score: also learn the text (an event), as an Ingest without context");
ABSL_FLAG(int, piece_bytes, 2000, "ingest: bytes per Ingest call (each must fit the session's context)");
ABSL_FLAG(std::string, options, "",
          "sessions create, chat (a new session): SessionOptions in protobuf text format, e.g. "
          "'roles_not_learned: \"system\" snapshot_policy: SNAPSHOT_ON_EVICTION'");

namespace {

using adaptd::client::Client;

// The client of the flags.
adaptd::client::Options ClientOptions() {
  adaptd::client::Options o;
  o.target = absl::GetFlag(FLAGS_target);
  o.api_key = absl::GetFlag(FLAGS_key);
  const std::string ca = absl::GetFlag(FLAGS_tls_ca);
  if (!ca.empty()) {
    std::ifstream in(ca);
    std::stringstream ss;
    ss << in.rdbuf();
    o.root_certs_pem = ss.str();
  }
  return o;
}

int Check(const grpc::Status& s) {
  if (s.ok()) return 0;
  std::cerr << "adaptctl: " << adaptd::client::CodeName(s.error_code()) << ": " << s.error_message() << "\n";
  return 1;
}

void PrintSession(const adaptd::v1::Session& s) {
  std::cout << s.session_id() << "\tversion " << s.version() << "\tmodel " << s.model_fingerprint().substr(0, 12)
            << "\n";
}

// One session in full: the list line, then its options, tier and learning state where set.
void DescribeSession(const adaptd::v1::Session& s) {
  PrintSession(s);
  if (s.has_options()) std::cout << "  options: " << s.options().ShortDebugString() << "\n";
  if (!s.tier().empty()) std::cout << "  tier: " << s.tier() << "\n";
  if (s.has_state()) std::cout << "  state: " << s.state().ShortDebugString() << "\n";
}

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  *out = ss.str();
  if (!in) std::cerr << "adaptctl: cannot read " << path << "\n";
  return static_cast<bool>(in);
}

// A CreateSession request with the --options flag's SessionOptions; false (and a message) if
// they do not parse.
bool NewSessionRequest(const std::string& id, adaptd::v1::CreateSessionRequest* req) {
  req->set_session_id(id);
  const std::string text = absl::GetFlag(FLAGS_options);
  if (google::protobuf::TextFormat::ParseFromString(text, req->mutable_options())) return true;
  std::cerr << "adaptctl: --options is not SessionOptions in text format: " << text << "\n";
  return false;
}

// The verbs that answer with the Session (-1: not one of them).
int SessionVerb(Client& c, const std::string& verb, const std::vector<char*>& args) {
  const std::string id = args.size() > 3 ? args[3] : "";
  const std::string arg = args.size() > 4 ? args[4] : "";
  adaptd::v1::Session s;
  grpc::Status status;
  if (verb == "create") {
    adaptd::v1::CreateSessionRequest req;
    if (!NewSessionRequest(id, &req)) return 2;
    status = c.stub().CreateSession(c.Context(id).get(), req, &s);
  } else if (verb == "get" && !id.empty()) {
    adaptd::v1::GetSessionRequest req;
    req.set_session_id(id);
    status = c.stub().GetSession(c.Context(id).get(), req, &s);
  } else if (verb == "fork" && !id.empty() && !arg.empty()) {
    adaptd::v1::ForkSessionRequest req;
    req.set_session_id(id);
    req.set_new_session_id(arg);
    req.set_version(absl::GetFlag(FLAGS_version));
    status = c.stub().ForkSession(c.Context(id).get(), req, &s);
  } else if (verb == "reset" && !id.empty()) {
    adaptd::v1::ResetSessionRequest req;
    req.set_session_id(id);
    status = c.stub().ResetSession(c.Context(id).get(), req, &s);
  } else if (verb == "rollback" && !id.empty() && !arg.empty()) {
    adaptd::v1::RollbackSessionRequest req;
    req.set_session_id(id);
    req.set_version(std::strtoull(arg.c_str(), nullptr, 10));
    status = c.stub().RollbackSession(c.Context(id).get(), req, &s);
  } else if (verb == "migrate" && !id.empty()) {
    adaptd::v1::MigrateSessionRequest req;
    req.set_session_id(id);
    status = c.stub().MigrateSession(c.Context(id).get(), req, &s);
  } else if (verb == "import" && !id.empty()) {  // import FILE [ID]
    std::string blob;
    if (!ReadFile(id, &blob)) return 1;
    status = c.Import(blob, arg, &s);
  } else {
    return -1;
  }
  if (int rc = Check(status)) return rc;
  DescribeSession(s);
  return 0;
}

int Export(Client& c, const std::string& id, const std::string& path) {
  std::string blob;
  if (int rc = Check(c.Export(id, &blob))) return rc;
  std::ofstream out(path, std::ios::binary);
  out << blob;
  if (!out.flush()) {
    std::cerr << "adaptctl: cannot write " << path << "\n";
    return 1;
  }
  std::cerr << "exported " << id << ": " << blob.size() << " bytes\n";
  return 0;
}

int Sessions(Client& c, const std::vector<char*>& args) {
  const std::string verb = args.size() > 2 ? args[2] : "";
  const std::string id = args.size() > 3 ? args[3] : "";
  if (int rc = SessionVerb(c, verb, args); rc >= 0) return rc;
  if (verb == "export" && !id.empty() && args.size() > 4) return Export(c, id, args[4]);
  if (verb == "delete" && !id.empty()) {
    adaptd::v1::DeleteSessionRequest req;
    req.set_session_id(id);
    adaptd::v1::DeleteSessionResponse resp;
    return Check(c.stub().DeleteSession(c.Context(id).get(), req, &resp));
  }
  if (verb == "list") {
    std::string token;
    do {
      adaptd::v1::ListSessionsRequest req;
      req.set_page_token(token);
      adaptd::v1::ListSessionsResponse resp;
      if (int rc = Check(c.stub().ListSessions(c.Context().get(), req, &resp))) return rc;
      for (const auto& x : resp.sessions()) PrintSession(x);
      token = resp.next_page_token();
    } while (!token.empty());
    return 0;
  }
  std::cerr << "usage: adaptctl sessions create [ID] [--options TEXT] | get ID | list | delete ID | fork ID NEW_ID |\n"
               "                         reset ID |"
               "                         rollback ID VERSION | migrate ID | export ID FILE | import FILE [ID]\n";
  return 2;
}

void PrintContext(const adaptd::v1::Context& x) {
  std::cout << x.context_id() << (x.current() ? "\tcurrent" : "\t") << "\t" << x.window_turns() << " turns, "
            << x.window_tokens() << " tokens in its window\n";
}

// contexts ID: the list; contexts ID new: a new one; contexts ID N: continue context N.
int Contexts(Client& c, const std::vector<char*>& args) {
  const std::string id = args.size() > 2 ? args[2] : "";
  const std::string what = args.size() > 3 ? args[3] : "";
  char* end = nullptr;
  const unsigned long n = what.empty() ? 0 : std::strtoul(what.c_str(), &end, 10);
  if (id.empty() || (!what.empty() && what != "new" && (*end != '\0' || n > UINT32_MAX))) {
    std::cerr << "usage: adaptctl contexts ID [new | N]\n";
    return 2;
  }
  adaptd::v1::Context x;
  if (what == "new") {
    adaptd::v1::CreateContextRequest req;
    req.set_session_id(id);
    if (int rc = Check(c.stub().CreateContext(c.Context(id).get(), req, &x))) return rc;
  } else if (!what.empty()) {
    adaptd::v1::SwitchContextRequest req;
    req.set_session_id(id);
    req.set_context_id(static_cast<uint32_t>(n));
    if (int rc = Check(c.stub().SwitchContext(c.Context(id).get(), req, &x))) return rc;
  } else {
    adaptd::v1::ListContextsRequest req;
    req.set_session_id(id);
    adaptd::v1::ListContextsResponse resp;
    if (int rc = Check(c.stub().ListContexts(c.Context(id).get(), req, &resp))) return rc;
    for (const auto& each : resp.contexts()) PrintContext(each);
    return 0;
  }
  PrintContext(x);
  return 0;
}

// One turn: streams the reply to stdout; usage to stderr.
int Turn(Client& c, const std::string& id, const std::string& text, bool first) {
  adaptd::v1::ChatRequest req;
  req.set_session_id(id);
  if (first && !absl::GetFlag(FLAGS_system).empty()) {
    auto* sys = req.add_messages();
    sys->set_role("system");
    sys->set_content(absl::GetFlag(FLAGS_system));
  }
  auto* m = req.add_messages();
  m->set_role("user");
  m->set_content(text);
  req.set_max_new_tokens(absl::GetFlag(FLAGS_max_new_tokens));
  req.mutable_sampling()->set_temperature(absl::GetFlag(FLAGS_temperature));
  if (first) {  // a new id starts a session
    adaptd::v1::GetSessionRequest get;
    get.set_session_id(id);
    adaptd::v1::Session s;
    auto status = c.stub().GetSession(c.Context(id).get(), get, &s);
    if (status.error_code() == grpc::StatusCode::NOT_FOUND) {
      adaptd::v1::CreateSessionRequest create;
      if (!NewSessionRequest(id, &create)) return 2;
      status = c.stub().CreateSession(c.Context(id).get(), create, &s);
    }
    if (int rc = Check(status)) return rc;
  }
  auto ctx = c.Context(id);
  auto reader = c.stub().Chat(ctx.get(), req);
  adaptd::v1::ChatResponse r;
  while (reader->Read(&r)) {
    std::cout << r.text() << std::flush;
    if (r.has_usage()) {
      std::cerr << "\n[" << r.usage().prompt_tokens() << " prompt + " << r.usage().completion_tokens()
                << " reply tokens, " << r.usage().updates_applied() << " TTT updates, version " << r.usage().version()
                << ", " << r.finish_reason() << "]\n";
    }
  }
  std::cout << "\n";
  return Check(reader->Finish());
}

int Chat(Client& c, const std::vector<char*>& args) {
  if (args.size() < 3) {
    std::cerr << "usage: adaptctl chat ID [--message TEXT]\n";
    return 2;
  }
  const std::string id = args[2];
  if (!absl::GetFlag(FLAGS_message).empty()) return Turn(c, id, absl::GetFlag(FLAGS_message), true);
  std::string line;
  bool first = true;
  std::cerr << "session " << id << ": one line per turn, end with Ctrl-D\n> " << std::flush;
  while (std::getline(std::cin, line)) {
    if (!line.empty()) {
      if (int rc = Turn(c, id, line, first)) return rc;
      first = false;
    }
    std::cerr << "> " << std::flush;
  }
  return 0;
}

int Info(Client& c) {
  adaptd::v1::ServerInfo info;
  if (int rc = Check(c.stub().GetServerInfo(c.Context().get(), {}, &info))) return rc;
  std::cout << info.DebugString();
  return 0;
}

// Pieces of about `bytes` bytes, cut after whitespace where there is some, never inside a
// UTF-8 character.
std::vector<std::string> Pieces(const std::string& text, size_t bytes) {
  std::vector<std::string> out;
  size_t at = 0;
  while (at < text.size()) {
    size_t end = std::min(text.size(), at + bytes);
    if (end < text.size()) {
      const size_t space = text.find_last_of(" \n\t", end - 1);
      if (space != std::string::npos && space > at + bytes / 2) end = space + 1;
      while (end > at + 1 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
    }
    out.push_back(text.substr(at, end - at));
    at = end;
  }
  return out;
}

// Ingests FILE in pieces. Each piece's request id is derived from the file and its place, so
// running the command again after a failure skips the pieces already learned.
int Ingest(Client& c, const std::vector<char*>& args) {
  if (args.size() < 4) {
    std::cerr << "usage: adaptctl ingest ID FILE [--keep_in_context] [--piece_bytes N]\n";
    return 2;
  }
  const std::string id = args[2];
  std::string text;
  if (!ReadFile(args[3], &text)) return 1;
  const auto pieces = Pieces(text, static_cast<size_t>(std::max(64, absl::GetFlag(FLAGS_piece_bytes))));
  const std::string run = "ingest-" + std::to_string(std::hash<std::string>{}(text) % 1000000007);
  int64_t tokens = 0, updates = 0;
  for (size_t i = 0; i < pieces.size(); ++i) {
    adaptd::v1::IngestRequest req;
    req.set_session_id(id);
    req.set_text(pieces[i]);
    req.set_keep_in_context(absl::GetFlag(FLAGS_keep_in_context));
    req.set_request_id(run + "-" + std::to_string(i));
    adaptd::v1::IngestResponse resp;
    if (int rc = Check(c.stub().Ingest(c.Context(id).get(), req, &resp))) return rc;
    tokens += resp.usage().prompt_tokens();
    updates += resp.usage().updates_applied();
    const int filled = static_cast<int>(30 * (i + 1) / pieces.size());
    std::cerr << "\r[" << std::string(filled, '#') << std::string(30 - filled, ' ') << "] " << (i + 1) << "/"
              << pieces.size() << " pieces, " << tokens << " tokens, " << updates << " TTT updates" << std::flush;
  }
  std::cerr << "\n";
  return 0;
}

int Score(Client& c, const std::vector<char*>& args) {
  if (args.size() < 4) {
    std::cerr << "usage: adaptctl score ID FILE\n";
    return 2;
  }
  adaptd::v1::ScoreRequest req;
  req.set_session_id(args[2]);
  req.set_adapt(absl::GetFlag(FLAGS_adapt));
  if (!ReadFile(args[3], req.mutable_text())) return 1;
  adaptd::v1::ScoreResponse resp;
  if (int rc = Check(c.stub().Score(c.Context(args[2]).get(), req, &resp))) return rc;
  std::cout << "tokens " << resp.token_ids_size() << "\tnll " << resp.nll() << "\tperplexity " << std::exp(resp.nll())
            << "\tupdates " << resp.updates_applied() << "\n";
  return 0;
}

int Health(Client& c) {
  int serving = 0;
  if (int rc = Check(c.Health(&serving))) return rc;
  std::cout << (serving == 1 ? "SERVING" : "NOT_SERVING") << "\n";
  return serving == 1 ? 0 : 1;
}

int Backup(Client& c) {
  adaptd::v1::BackupStoreResponse resp;
  if (int rc = Check(c.stub().BackupStore(c.Context().get(), {}, &resp))) return rc;
  std::cout << "backed up in " << resp.seconds() << " s; backup directory " << resp.backup_dir_bytes() << " bytes\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "adaptctl [--target HOST:PORT] (sessions ... | contexts ID [new | N] | chat ID | ingest ID FILE | score ID FILE | info | backup | health)");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  Client client(ClientOptions());
  const std::string cmd = args.size() > 1 ? args[1] : "";
  if (cmd == "sessions") return Sessions(client, args);
  if (cmd == "chat") return Chat(client, args);
  if (cmd == "contexts") return Contexts(client, args);
  if (cmd == "info") return Info(client);
  if (cmd == "ingest") return Ingest(client, args);
  if (cmd == "score") return Score(client, args);
  if (cmd == "backup") return Backup(client);
  if (cmd == "health") return Health(client);
  std::cerr << "usage: adaptctl [--target HOST:PORT] (sessions ... | contexts ID [new | N] | chat ID | ingest ID FILE | score ID FILE | info | backup |"
               " health)\n";
  return 2;
}
