// The real adaptd binary on 127.0.0.1 (ctest label `integration`): Ingest, adapting Score, and
// the session lifecycle beyond create/delete (fork, reset, rollback, export/import, migrate), each checked
// against a twin session that took the plain path.
#include <atomic>
#include <fstream>
#include <functional>
#include <thread>

#include "server/harness.h"

namespace adaptd::server {
namespace {

using grpc::StatusCode;

constexpr char kDoc[] =
    "The buddy allocator splits memory into blocks whose sizes are powers of two. When a block is "
    "freed, the allocator checks whether its buddy is free too and merges the pair into a larger "
    "block, so fragmentation stays low while allocation and freeing stay fast.";
constexpr char kNote[] = "Pages are four kilobytes. Huge pages are two megabytes.";

class LifecycleTest : public ServerTest {
 protected:
  grpc::Status Ingest(const std::string& id, const std::string& text, bool keep, v1::IngestResponse* out = nullptr,
                      const std::string& request_id = "") {
    v1::IngestRequest req;
    req.set_session_id(id);
    req.set_text(text);
    req.set_keep_in_context(keep);
    req.set_request_id(request_id);
    v1::IngestResponse resp;
    auto s = server_->stub().Ingest(As("key-acme").get(), req, &resp);
    if (out != nullptr) *out = resp;
    return s;
  }
  std::vector<float> Score(const std::string& id, const std::string& text = "How are huge pages freed?") {
    v1::ScoreRequest req;
    req.set_session_id(id);
    req.set_text(text);
    v1::ScoreResponse resp;
    auto s = server_->stub().Score(As("key-acme").get(), req, &resp);
    EXPECT_TRUE(s.ok()) << s.error_message();
    return {resp.logprobs().begin(), resp.logprobs().end()};
  }
  // Waits until the session's newest snapshot is at `version` (written after the acknowledgement).
  void AwaitSnapshot(const std::string& key, const std::string& id, uint64_t version) {
    v1::Session s;
    for (int i = 0; i < 200 && Get(key, id, &s).ok() && s.snapshot_version() < version; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ASSERT_EQ(s.snapshot_version(), version);
  }
  std::vector<int32_t> Ids(const std::string& id, const std::string& text, const std::string& key = "key-acme") {
    auto t = Chat(key, id, text, 16);
    EXPECT_TRUE(t.status.ok()) << t.status.error_message();
    return t.ids;
  }
  grpc::Status Fork(const std::string& from, const std::string& to, uint64_t version, v1::Session* out = nullptr) {
    v1::ForkSessionRequest req;
    req.set_session_id(from);
    req.set_new_session_id(to);
    req.set_version(version);
    v1::Session resp;
    auto s = server_->stub().ForkSession(As("key-acme").get(), req, &resp);
    if (out != nullptr) *out = resp;
    return s;
  }
  grpc::Status Rollback(const std::string& id, uint64_t version) {
    v1::RollbackSessionRequest req;
    req.set_session_id(id);
    req.set_version(version);
    v1::Session resp;
    return server_->stub().RollbackSession(As("key-acme").get(), req, &resp);
  }
  grpc::Status Reset(const std::string& id, v1::Session* out = nullptr) {
    v1::ResetSessionRequest req;
    req.set_session_id(id);
    v1::Session resp;
    auto s = server_->stub().ResetSession(As("key-acme").get(), req, &resp);
    if (out != nullptr) *out = resp;
    return s;
  }
  grpc::Status Export(const std::string& key, const std::string& id, std::string* blob, int* chunks = nullptr) {
    v1::ExportSessionRequest req;
    req.set_session_id(id);
    auto ctx = As(key);
    auto reader = server_->stub().ExportSession(ctx.get(), req);
    v1::ExportSessionResponse r;
    blob->clear();
    int n = 0;
    while (reader->Read(&r)) {
      *blob += r.chunk();
      ++n;
    }
    if (chunks != nullptr) *chunks = n;
    return reader->Finish();
  }
  grpc::Status Import(const std::string& key, const std::string& id, const std::string& blob, v1::Session* out = nullptr) {
    auto ctx = As(key);
    v1::Session resp;
    auto writer = server_->stub().ImportSession(ctx.get(), &resp);
    v1::ImportSessionRequest first;
    first.set_session_id(id);
    writer->Write(first);
    for (size_t at = 0; at < blob.size(); at += 300000) {  // chunks of any size
      v1::ImportSessionRequest chunk;
      chunk.set_chunk(blob.substr(at, 300000));
      if (!writer->Write(chunk)) break;
    }
    writer->WritesDone();
    auto s = writer->Finish();
    if (out != nullptr) *out = resp;
    return s;
  }
  grpc::Status Migrate(const std::string& id, v1::Session* out = nullptr) {
    v1::MigrateSessionRequest req;
    req.set_session_id(id);
    v1::Session resp;
    auto s = server_->stub().MigrateSession(As("key-acme").get(), req, &resp);
    if (out != nullptr) *out = resp;
    return s;
  }
};

// Ingest learns (the scores move), is durable and versioned, and keeps context only when asked:
// with update rule off nothing is learned, so an ingest without context leaves the session
// exactly as it was, and one with context changes what follows.
TEST_F(LifecycleTest, IngestLearnsAndKeepsContextOnlyWhenAsked) {
  ASSERT_TRUE(Create("key-acme", "learn").ok());
  const auto before = Score("learn");
  v1::IngestResponse r;
  ASSERT_TRUE(Ingest("learn", kDoc, /*keep=*/false, &r).ok());
  EXPECT_GT(r.usage().prompt_tokens(), 32);
  EXPECT_GT(r.usage().updates_applied(), 0);  // at least one chunk of 32 completed
  EXPECT_EQ(r.usage().version(), 1u);
  EXPECT_NE(Score("learn"), before);

  for (const char* id : {"off-plain", "off-nokeep", "off-keep"}) ASSERT_TRUE(Create("key-acme", id, nullptr, "off").ok());
  ASSERT_TRUE(Ingest("off-nokeep", kDoc, false, &r).ok());
  EXPECT_EQ(r.usage().updates_applied(), 0);
  ASSERT_TRUE(Ingest("off-keep", kDoc, true).ok());
  const auto plain = Score("off-plain");
  EXPECT_EQ(Score("off-nokeep"), plain);  // bit-exact: no KV left behind
  EXPECT_NE(Score("off-keep"), plain);

  // A retry with the same request id gets the committed ingest, not a second one.
  v1::IngestResponse first, again;
  ASSERT_TRUE(Ingest("learn", kNote, true, &first, "ingest-7").ok());
  ASSERT_TRUE(Ingest("learn", kNote, true, &again, "ingest-7").ok());
  EXPECT_EQ(again.usage().version(), first.usage().version());
  v1::Session s;
  ASSERT_TRUE(Get("key-acme", "learn", &s).ok());
  EXPECT_EQ(s.version(), 2u);

  v1::IngestRequest both;
  both.set_session_id("learn");
  both.set_text("x");
  both.add_token_ids(5);
  v1::IngestResponse unused;
  EXPECT_EQ(server_->stub().Ingest(As("key-acme").get(), both, &unused).error_code(), StatusCode::INVALID_ARGUMENT);
  both.clear_text();
  both.set_token_ids(0, 1 << 30);
  EXPECT_EQ(server_->stub().Ingest(As("key-acme").get(), both, &unused).error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Ingest("learn", "", false).error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Ingest("learn", std::string(20000, 'q'), false).error_code(), StatusCode::INVALID_ARGUMENT);  // > window
  EXPECT_EQ(Ingest("nope", kDoc, false).error_code(), StatusCode::NOT_FOUND);
}

// An adapting Score returns what a dry run would (the dry run learns within the text too), and
// leaves the session as an Ingest without context of the same text does; a retry with its
// request id gets the recorded scores.
TEST_F(LifecycleTest, AdaptingScoreLearnsWhatItScores) {
  for (const char* id : {"dry", "adapt", "ingested"}) ASSERT_TRUE(Create("key-acme", id).ok());
  const auto dry = Score("dry", kDoc);
  v1::ScoreRequest req;
  req.set_session_id("adapt");
  req.set_text(kDoc);
  req.set_adapt(true);
  req.set_request_id("score-1");
  v1::ScoreResponse adapt, again;
  ASSERT_TRUE(server_->stub().Score(As("key-acme").get(), req, &adapt).ok());
  EXPECT_EQ(std::vector<float>(adapt.logprobs().begin(), adapt.logprobs().end()), dry);
  EXPECT_GT(adapt.updates_applied(), 0);
  EXPECT_EQ(adapt.version(), 1u);
  ASSERT_TRUE(server_->stub().Score(As("key-acme").get(), req, &again).ok());
  EXPECT_EQ(again.version(), 1u);
  EXPECT_EQ(again.nll(), adapt.nll());
  v1::Session s;
  ASSERT_TRUE(Get("key-acme", "adapt", &s).ok());
  EXPECT_EQ(s.version(), 1u);
  ASSERT_TRUE(Get("key-acme", "dry", &s).ok());
  EXPECT_EQ(s.version(), 0u);
  ASSERT_TRUE(Ingest("ingested", kDoc, /*keep=*/false).ok());
  EXPECT_EQ(Score("adapt"), Score("ingested"));
  EXPECT_NE(Score("adapt"), Score("dry"));
}

// A reset starts the session afresh (it then answers as a new session does), and replaying a
// log of ingests, turns and a reset (no snapshot left at or before the rollback point) repeats
// what serving did.
TEST_F(LifecycleTest, ResetAndReplayRepeatServing) {
  ASSERT_TRUE(Create("key-acme", "fresh").ok());
  ASSERT_TRUE(Create("key-acme", "a").ok());
  ASSERT_TRUE(Ingest("fresh", kDoc, false).ok());
  const auto t1 = Ids("fresh", "What does the buddy allocator do?");
  ASSERT_TRUE(Ingest("fresh", kNote, true).ok());
  const auto t2 = Ids("fresh", "How big is a page?");

  Ids("a", "Tell me about slabs.");
  v1::Session after_reset;
  ASSERT_TRUE(Reset("a", &after_reset).ok());
  EXPECT_EQ(after_reset.version(), 2u);
  ASSERT_TRUE(Ingest("a", kDoc, false).ok());
  EXPECT_EQ(Ids("a", "What does the buddy allocator do?"), t1);
  ASSERT_TRUE(Ingest("a", kNote, true).ok());
  EXPECT_EQ(Ids("a", "How big is a page?"), t2);  // version 6

  Ids("a", "And huge pages?");
  Ids("a", "Thanks.");
  AwaitSnapshot("key-acme", "a", 8);  // retention keeps the last two: 7 and 8
  ASSERT_TRUE(Rollback("a", 5).ok());
  v1::Session s;
  ASSERT_TRUE(Get("key-acme", "a", &s).ok());
  EXPECT_EQ(s.version(), 5u);
  EXPECT_EQ(s.snapshot_version(), 0u);  // the next call replays the whole log
  EXPECT_EQ(Ids("a", "How big is a page?"), t2);
  EXPECT_EQ(Reset("nope").error_code(), StatusCode::NOT_FOUND);
}

TEST_F(LifecycleTest, ForkAndRollbackBranchHistory) {
  ASSERT_TRUE(Create("key-acme", "a").ok());
  Ids("a", "What does the page allocator do?");
  const auto second = Ids("a", "And the slab allocator?");
  AwaitSnapshot("key-acme", "a", 2);
  v1::Session fork;
  ASSERT_TRUE(Fork("a", "b", 1, &fork).ok());
  EXPECT_EQ(fork.version(), 1u);
  EXPECT_EQ(Ids("b", "And the slab allocator?"), second);  // the branch repeats the original
  Ids("b", "Something else entirely.");
  ASSERT_TRUE(Fork("a", "", 0, &fork).ok());  // all of it, a server-chosen id
  EXPECT_EQ(fork.version(), 2u);
  EXPECT_FALSE(fork.session_id().empty());
  EXPECT_EQ(Fork("a", "b", 1).error_code(), StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(Fork("a", "c", 9).error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Fork("a", "bad/id", 1).error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Fork("nope", "c", 0).error_code(), StatusCode::NOT_FOUND);

  ASSERT_TRUE(Rollback("a", 1).ok());
  v1::Session s;
  ASSERT_TRUE(Get("key-acme", "a", &s).ok());
  EXPECT_EQ(s.version(), 1u);
  EXPECT_EQ(Ids("a", "And the slab allocator?"), second);
  EXPECT_EQ(Rollback("a", 7).error_code(), StatusCode::INVALID_ARGUMENT);
  ASSERT_TRUE(Get("key-acme", "b", &s).ok());
  EXPECT_EQ(s.version(), 3u);  // the fork kept its own history
}

// Export then import (into another tenant) carries the session whole: the copy continues as the
// original does. Corrupt, empty and duplicate imports fail cleanly.
TEST_F(LifecycleTest, ExportImportCarriesASession) {
  ASSERT_TRUE(Create("key-acme", "a").ok());
  Ids("a", "What does the page allocator do?");
  std::string long_doc;
  for (int i = 0; i < 6; ++i) long_doc += kDoc;
  ASSERT_TRUE(Ingest("a", long_doc, /*keep=*/true).ok());  // KV rows: the blob passes 1 MiB
  AwaitSnapshot("key-acme", "a", 2);
  std::string blob;
  int chunks = 0;
  ASSERT_TRUE(Export("key-acme", "a", &blob, &chunks).ok());
  EXPECT_GT(blob.size(), 1u << 20);  // the fast weights and KV: more than one chunk
  EXPECT_GE(chunks, 2);
  EXPECT_EQ(Export("key-globex", "a", &blob).error_code(), StatusCode::NOT_FOUND);
  ASSERT_TRUE(Export("key-acme", "a", &blob).ok());
  v1::Session copy;
  ASSERT_TRUE(Import("key-globex", "copy", blob, &copy).ok());
  EXPECT_EQ(copy.version(), 2u);
  EXPECT_EQ(Ids("copy", "And the slab allocator?", "key-globex"), Ids("a", "And the slab allocator?"));
  EXPECT_EQ(Import("key-globex", "copy", blob).error_code(), StatusCode::ALREADY_EXISTS);
  std::string corrupt = blob;
  corrupt[corrupt.size() / 2] ^= 0x20;
  EXPECT_EQ(Import("key-globex", "corrupt", corrupt).error_code(), StatusCode::DATA_LOSS);
  EXPECT_EQ(Get("key-globex", "corrupt").error_code(), StatusCode::NOT_FOUND);  // nothing half-imported
  EXPECT_EQ(Import("key-globex", "empty", "").error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Import("key-globex", "junk", "not a blob").error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Import("", "x", blob).error_code(), StatusCode::UNAUTHENTICATED);
}

// After a model change a session is refused until migrated; migration replays its log on the
// new model (here the same weights under another config, so the continuation must match a twin
// that never moved), survives a kill -9, and is a no-op for a bound session.
TEST_F(LifecycleTest, MigrateRebindsASessionToTheServedModel) {
  ASSERT_TRUE(Create("key-acme", "moved").ok());
  ASSERT_TRUE(Create("key-acme", "twin").ok());
  for (const char* id : {"moved", "twin"}) {
    Ids(id, "What does the page allocator do?");
    ASSERT_TRUE(Ingest(id, kNote, false).ok());
  }
  const auto expected = Ids("twin", "And the slab allocator?");
  AwaitSnapshot("key-acme", "moved", 2);
  v1::Session before;
  ASSERT_TRUE(Get("key-acme", "moved", &before).ok());
  server_->Kill(SIGTERM);

  const std::string model2 = dir_ + "/model2";
  std::filesystem::create_directories(model2);
  for (const char* f : {"model.safetensors", "tokenizer.json", "tokenizer_config.json"}) {
    std::filesystem::create_symlink(std::string(ADAPTD_MODEL) + "/" + f, model2 + "/" + f);
  }
  std::string config = ReadFile(std::string(ADAPTD_MODEL) + "/config.json");
  const size_t at = config.find("\"initializer_range\": 0.02");
  ASSERT_NE(at, std::string::npos);
  config.replace(at, 25, "\"initializer_range\": 0.03");  // unused by inference: same outputs
  std::ofstream(model2 + "/config.json") << config;
  server_->Start({"--model=" + model2});

  EXPECT_EQ(Chat("key-acme", "moved", "And the slab allocator?").status.error_code(), StatusCode::FAILED_PRECONDITION);
  v1::Session migrated;
  ASSERT_TRUE(Migrate("moved", &migrated).ok());
  EXPECT_NE(migrated.model_fingerprint(), before.model_fingerprint());
  EXPECT_EQ(migrated.version(), 2u);
  server_->Kill(SIGKILL);
  server_->Start({"--model=" + model2});
  EXPECT_EQ(Ids("moved", "And the slab allocator?"), expected);
  ASSERT_TRUE(Migrate("moved").ok());  // bound already
  EXPECT_EQ(Migrate("nope").error_code(), StatusCode::NOT_FOUND);
}

// A session belongs to the weights it was computed with: served under another format (here
// int8, or dense when the quant run serves int4) it is refused until migrated, which replays it.
TEST_F(LifecycleTest, AnotherWeightFormatIsRefusedUntilMigrated) {
  ASSERT_TRUE(Create("key-acme", "held").ok());
  Ids("held", "What does the page allocator do?");
  AwaitSnapshot("key-acme", "held", 1);
  v1::Session before;
  ASSERT_TRUE(Get("key-acme", "held", &before).ok());
  server_->Kill(SIGTERM);
  const bool quantized = std::getenv("ADAPTD_TEST_WEIGHTS") != nullptr;
  const std::string other = quantized ? "dense" : "int8";
  server_->Start({"--weights=" + other});
  v1::ServerInfo info;
  ASSERT_TRUE(server_->stub().GetServerInfo(As("key-acme").get(), {}, &info).ok());
  EXPECT_EQ(info.weight_format(), other);
  EXPECT_EQ(Chat("key-acme", "held", "And the slab allocator?").status.error_code(), StatusCode::FAILED_PRECONDITION);
  v1::Session migrated;
  ASSERT_TRUE(Migrate("held", &migrated).ok());
  EXPECT_EQ(migrated.model_fingerprint(), info.model_fingerprint());
  EXPECT_EQ(migrated.version(), before.version());
  EXPECT_TRUE(Chat("key-acme", "held", "And the slab allocator?").status.ok());
}

// Many sessions at once, each with its own turns, ingests and scores: all succeed, every
// session ends at its own version, and the engine batched them.
TEST_F(LifecycleTest, ManySessionsConcurrently) {
  constexpr int kSessions = 12;
  for (int i = 0; i < kSessions; ++i) ASSERT_TRUE(Create("key-acme", "c" + std::to_string(i)).ok());
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int i = 0; i < kSessions; ++i) {
    threads.emplace_back([&, i] {
      const std::string id = "c" + std::to_string(i);
      for (int k = 0; k < 3; ++k) {
        if (!Chat("key-acme", id, "Question " + std::to_string(k) + " about pages?", 12).status.ok()) ++failures;
      }
      if (!Ingest(id, kNote, i % 2 == 0).ok()) ++failures;
      Score(id);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  for (int i = 0; i < kSessions; ++i) {
    v1::Session s;
    ASSERT_TRUE(Get("key-acme", "c" + std::to_string(i), &s).ok());
    EXPECT_EQ(s.version(), 4u);
  }
  const std::string metrics = HttpGet(server_->metrics_port(), "/metrics");
  EXPECT_NE(metrics.find("adaptd_engine_steps_total"), std::string::npos);
}

// Calls that rewrite a session wait for none: while a turn runs they are ABORTED.
TEST_F(LifecycleTest, RewritesOfABusySessionAreAborted) {
  ASSERT_TRUE(Create("key-acme", "busy").ok());
  auto ctx = As("key-acme");
  auto reader = server_->stub().Chat(ctx.get(), Request("busy", "Tell me about pages.", 400));
  v1::ChatResponse msg;
  ASSERT_TRUE(reader->Read(&msg));  // the turn is running
  EXPECT_EQ(Reset("busy").error_code(), StatusCode::ABORTED);
  EXPECT_EQ(Rollback("busy", 0).error_code(), StatusCode::ABORTED);
  EXPECT_EQ(Ingest("busy", kNote, false).error_code(), StatusCode::ABORTED);
  while (reader->Read(&msg)) {
  }
  EXPECT_TRUE(reader->Finish().ok());
  ASSERT_TRUE(Rollback("busy", 0).ok());
  v1::Session s;
  ASSERT_TRUE(Get("key-acme", "busy", &s).ok());
  EXPECT_EQ(s.version(), 0u);
}

grpc::Status CreateWith(v1::Adaptd::Stub& stub, grpc::ClientContext* ctx, const std::string& id,
                        const std::function<void(v1::SessionOptions&)>& edit) {
  v1::CreateSessionRequest req;
  req.set_session_id(id);
  edit(*req.mutable_options());
  v1::Session s;
  return stub.CreateSession(ctx, req, &s);
}

// The learning options: prompts only (the replies stay out of the fast weights, on replay too),
// the norm ceiling refusing updates, and validation naming the field. In f32: a replay matches
// the turns it replays within the engine's batching tolerance, far below the greedy margins then.
TEST_F(LifecycleTest, SessionOptionsShapeLearning) {
  server_->Kill(SIGTERM);
  server_->Start({"--dtype=f32"});
  auto& stub = server_->stub();
  ASSERT_TRUE(CreateWith(stub, As("key-acme").get(), "prompts", [](auto& o) { o.set_learn_prompt_only(true); }).ok());
  ASSERT_TRUE(Create("key-acme", "all").ok());
  const std::string prompt = std::string(310, 'x') + " pages";
  for (const char* id : {"prompts", "all"}) {
    auto t = Chat("key-acme", id, prompt, 40);
    ASSERT_TRUE(t.status.ok()) << t.status.error_message();
    const int64_t learned = std::string(id) == "prompts" ? t.usage.prompt_tokens()
                                                         : t.usage.prompt_tokens() + t.usage.completion_tokens();
    EXPECT_EQ(t.usage.updates_applied(), 3 * (learned / 32)) << id;  // 3 TTT layers, C = 32
  }
  const auto second = Ids("prompts", "And the slab allocator?");
  Ids("prompts", "Thanks.");
  AwaitSnapshot("key-acme", "prompts", 3);  // retention keeps 2 and 3: version 1 replays
  ASSERT_TRUE(Rollback("prompts", 1).ok());
  EXPECT_EQ(Ids("prompts", "And the slab allocator?"), second);

  ASSERT_TRUE(CreateWith(stub, As("key-acme").get(), "tight", [](auto& o) { o.set_max_delta_norm(1e-6); }).ok());
  auto t = Chat("key-acme", "tight", prompt, 8);
  ASSERT_TRUE(t.status.ok());
  EXPECT_EQ(t.usage.updates_applied(), 0);
  EXPECT_GT(t.usage.updates_rejected(), 0);
  for (auto edit : std::vector<std::function<void(v1::SessionOptions&)>>{
           [](auto& o) { o.set_decay(1.5); }, [](auto& o) { o.set_clip_tau(-1); },
           [](auto& o) { o.set_max_delta_norm(-2); }}) {
    const grpc::Status s = CreateWith(stub, As("key-acme").get(), "bad", edit);
    EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("options"), std::string::npos) << s.error_message();
  }
}

TEST_F(LifecycleTest, AdaptctlDrivesTheLifecycle) {
  const std::string base = std::string(ADAPTCTL_BINARY) + " --target=127.0.0.1:" + std::to_string(server_->port()) + " ";
  ::setenv("ADAPTD_API_KEY", "key-acme", 1);
  std::string book;
  for (int i = 0; i < 20; ++i) book += kDoc + std::string(" ") + kNote + "\n";
  std::ofstream(dir_ + "/book.txt") << book;
  ASSERT_NE(Shell(base + "sessions create cli").find("cli\tversion 0"), std::string::npos);
  const std::string ingest = Shell(base + "ingest cli " + dir_ + "/book.txt --piece_bytes=1500 2>&1");
  EXPECT_NE(ingest.find("] 5/5 pieces"), std::string::npos) << ingest;
  v1::Session s;
  ASSERT_TRUE(Get("key-acme", "cli", &s).ok());
  EXPECT_EQ(s.version(), 5u);
  Shell(base + "ingest cli " + dir_ + "/book.txt --piece_bytes=1500 2>&1");  // the same run again: nothing new
  ASSERT_TRUE(Get("key-acme", "cli", &s).ok());
  EXPECT_EQ(s.version(), 5u);
  std::ofstream(dir_ + "/probe.txt") << kNote;
  EXPECT_NE(Shell(base + "score cli " + dir_ + "/probe.txt").find("perplexity"), std::string::npos);
  EXPECT_NE(Shell(base + "sessions fork cli cli-2 --version=2").find("cli-2\tversion 2"), std::string::npos);
  EXPECT_NE(Shell(base + "sessions export cli " + dir_ + "/cli.blob 2>&1").find("exported cli"), std::string::npos);
  EXPECT_NE(Shell(base + "sessions import " + dir_ + "/cli.blob cli-3").find("cli-3\tversion 5"), std::string::npos);
  EXPECT_NE(Shell(base + "sessions reset cli").find("cli\tversion 6"), std::string::npos);
  EXPECT_NE(Shell(base + "sessions rollback cli 3").find("cli\tversion 3"), std::string::npos);
  EXPECT_NE(Shell(base + "sessions migrate cli").find("cli\tversion 3"), std::string::npos);
  EXPECT_NE(Shell(base + "sessions rollback cli 9 2>&1").find("INVALID_ARGUMENT"), std::string::npos);
}

}  // namespace
}  // namespace adaptd::server
