// SessionStore: the contracts of store.h, one behaviour per test, on a real RocksDB in a temp
// directory; corruption by flipping bytes in its files; faults through FaultInjection.
#include "adaptd/session_store/store.h"

#include <gtest/gtest.h>

#include <thread>

#include "adaptd/session_store/fault_injection.h"
#include "records.h"
#include "session_store/store_testing.h"

namespace adaptd::session_store {
namespace {

using absl::StatusCode;

const SessionKey kA{"acme", "s1"};

std::unique_ptr<SessionStore> OpenStore(const std::string& path, StoreOptions o = {}) {
  o.path = path;
  auto s = SessionStore::Open(o);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *std::move(s) : nullptr;
}

// Appends events "e<n>" until the session is at `version`.
void AppendUpTo(SessionStore& store, const SessionKey& key, uint64_t version, const std::string& tag = "e") {
  auto info = store.Get(key);
  ASSERT_TRUE(info.ok()) << info.status();
  for (uint64_t v = info->version; v < version; ++v) {
    auto r = store.Append(key, v, tag + std::to_string(v + 1));
    ASSERT_TRUE(r.ok()) << r.status();
    ASSERT_EQ(r->version, v + 1);
  }
}

std::string Payload(uint64_t version, size_t bytes) {
  std::string p = "STATE-v" + std::to_string(version) + "-";
  while (p.size() < bytes) p += static_cast<char>('a' + (p.size() * 7 + version) % 26);
  return p.substr(0, bytes);
}

TEST(StoreTest, CreateGetAndIdRules) {
  auto store = OpenStore(FreshDir("create"));
  ASSERT_TRUE(store->Create(kA, "opts").ok());
  EXPECT_EQ(store->Create(kA, "opts").code(), StatusCode::kAlreadyExists);
  auto info = store->Get(kA);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->metadata, "opts");
  EXPECT_EQ(info->version, 0u);
  EXPECT_EQ(store->Get({"acme", "nope"}).status().code(), StatusCode::kNotFound);
  for (const SessionKey& bad : {SessionKey{"", "s"}, SessionKey{"t", ""}, SessionKey{"t/x", "s"},
                                SessionKey{"t", "s\n"}, SessionKey{"t", std::string(129, 'a')}}) {
    EXPECT_EQ(store->Create(bad, "").code(), StatusCode::kInvalidArgument) << bad.tenant << "|" << bad.session;
  }
}

TEST(StoreTest, TenantsAreIsolated) {
  auto store = OpenStore(FreshDir("tenants"));
  ASSERT_TRUE(store->Create({"a", "same"}, "of a").ok());
  ASSERT_TRUE(store->Create({"b", "same"}, "of b").ok());
  AppendUpTo(*store, {"a", "same"}, 3);
  AppendUpTo(*store, {"b", "same"}, 2, "b");
  ASSERT_TRUE(store->WriteSnapshot({"b", "same"}, {1, "fp", "f32"}, "b's state").ok());
  EXPECT_EQ(store->Get({"b", "same"})->version, 2u);
  EXPECT_EQ(store->Get({"b", "same"})->metadata, "of b");
  EXPECT_EQ(store->Fork({"a", "same"}, {"b", "stolen"}, 3).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(store->Delete({"a", "same"}).ok());
  ASSERT_TRUE(store->CompactAll().ok());
  auto b = store->Load({"b", "same"});
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(b->snapshot_payload, "b's state");
  ASSERT_EQ(b->events.size(), 1u);
  EXPECT_EQ(b->events[0].payload, "b2");
  // A tenant whose id extends another's reaches nothing of it.
  ASSERT_TRUE(store->Create({"ab", "x"}, "").ok());
  EXPECT_EQ(store->List("a", 10, "")->sessions.size(), 0u);
  EXPECT_EQ(store->List("b", 10, "")->sessions.size(), 1u);
}

TEST(StoreTest, ListPagesWithTokensThatRejectTampering) {
  auto store = OpenStore(FreshDir("list"));
  for (int i = 0; i < 25; ++i) ASSERT_TRUE(store->Create({"t", "s" + std::to_string(100 + i)}, "").ok());
  ASSERT_TRUE(store->Create({"other", "s999"}, "").ok());
  std::vector<std::string> seen;
  std::string token, first_token;
  do {
    auto page = store->List("t", 10, token);
    ASSERT_TRUE(page.ok()) << page.status();
    for (const auto& s : page->sessions) seen.push_back(s.key.session);
    token = page->next_page_token;
    if (first_token.empty()) first_token = token;
  } while (!token.empty());
  ASSERT_EQ(seen.size(), 25u);
  EXPECT_TRUE(std::is_sorted(seen.begin(), seen.end()));
  EXPECT_EQ(store->List("other", 10, first_token).status().code(), StatusCode::kInvalidArgument);
  std::string tampered = first_token;
  tampered[1] = tampered[1] == '0' ? '1' : '0';
  EXPECT_EQ(store->List("t", 10, tampered).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(store->List("t", 10, "garbage").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(store->List("t", 0, "").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(store->List("t", 1001, "").status().code(), StatusCode::kInvalidArgument);
}

TEST(StoreTest, AppendChecksVersionAndDeduplicatesRequestIds) {
  auto store = OpenStore(FreshDir("append"));
  ASSERT_TRUE(store->Create(kA, "").ok());
  EXPECT_EQ(store->Append(kA, 1, "x").status().code(), StatusCode::kFailedPrecondition);
  auto first = store->Append(kA, 0, "turn 1", "req-1", "answer 1");
  ASSERT_TRUE(first.ok());
  EXPECT_FALSE(first->duplicate);
  auto again = store->Append(kA, 0, "turn 1", "req-1", "other");
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->duplicate);
  EXPECT_EQ(again->version, 1u);
  EXPECT_EQ(again->result, "answer 1");
  EXPECT_EQ(store->Get(kA)->version, 1u);
  auto seen = store->LookupRequest(kA, "req-1");
  ASSERT_TRUE(seen.ok() && seen->has_value());
  EXPECT_EQ((*seen)->result, "answer 1");
  EXPECT_EQ((*seen)->version, 1u);
  EXPECT_FALSE(store->LookupRequest(kA, "req-2")->has_value());
  EXPECT_EQ(store->Append(kA, 1, "x", "bad id!").status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(store->Append({"acme", "ghost"}, 0, "x").status().code(), StatusCode::kNotFound);
}

TEST(StoreTest, ConcurrentAppendsToOneSessionNeverShareAVersion) {
  auto store = OpenStore(FreshDir("concurrent"));
  ASSERT_TRUE(store->Create(kA, "").ok());
  std::atomic<int> ok{0}, conflicts{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 25; ++i) {
        const uint64_t v = store->Get(kA)->version;
        auto r = store->Append(kA, v, "t" + std::to_string(t));
        if (r.ok()) ++ok;
        if (r.status().code() == StatusCode::kFailedPrecondition) ++conflicts;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(ok + conflicts, 100);
  auto load = store->Load(kA);
  ASSERT_TRUE(load.ok());
  EXPECT_EQ(load->events.size(), static_cast<size_t>(ok.load()));
}

TEST(StoreTest, SnapshotsPublishLoadAndRetain) {
  StoreOptions o;
  o.max_piece_bytes = 4096;
  o.keep_last_snapshots = 2;
  o.keep_every_nth_snapshot = 3;
  auto store = OpenStore(FreshDir("snapshots"), o);
  ASSERT_TRUE(store->Create(kA, "").ok());
  AppendUpTo(*store, kA, 2);
  EXPECT_EQ(store->WriteSnapshot(kA, {3, "fp", "f32"}, "x").code(), StatusCode::kInvalidArgument);
  for (uint64_t v = 2; v <= 8; ++v) {
    AppendUpTo(*store, kA, v);
    ASSERT_TRUE(store->WriteSnapshot(kA, {v, "fp", "f32"}, Payload(v, 10000)).ok());
  }
  AppendUpTo(*store, kA, 10);
  auto load = store->Load(kA);
  ASSERT_TRUE(load.ok()) << load.status();
  ASSERT_TRUE(load->snapshot.has_value());
  EXPECT_EQ(load->snapshot->version, 8u);
  EXPECT_EQ(load->snapshot_payload, Payload(8, 10000));  // three pieces of 4096
  ASSERT_EQ(load->events.size(), 2u);
  EXPECT_EQ(load->events[0].seq, 9u);
  EXPECT_EQ(load->events[1].payload, "e10");
  // Seven snapshots (ordinals 1..7 at versions 2..8): the last two and every third remain.
  ASSERT_TRUE(store->WriteSnapshot(kA, {8, "fp", "f32"}, Payload(8, 9000) + "again").ok());  // replaces v8
  EXPECT_EQ(store->Load(kA)->snapshot_payload, Payload(8, 9000) + "again");
  std::vector<uint64_t> kept;
  auto snapshots = store->ListSnapshots(kA);
  ASSERT_TRUE(snapshots.ok());
  for (const auto& s : *snapshots) kept.push_back(s.version);
  EXPECT_EQ(kept, (std::vector<uint64_t>{4, 7, 8}));
}

TEST(StoreTest, LossySnapshotsAreNoReplayBaseUnlessAsked) {
  auto store = OpenStore(FreshDir("lossy"));
  ASSERT_TRUE(store->Create(kA, "").ok());
  AppendUpTo(*store, kA, 4);
  ASSERT_TRUE(store->WriteSnapshot(kA, {2, "fp", "f32"}, "exact").ok());
  ASSERT_TRUE(store->WriteSnapshot(kA, {4, "fp", "int8_rows", true}, "lossy").ok());
  auto exact = store->Load(kA);
  EXPECT_EQ(exact->snapshot->version, 2u);
  EXPECT_EQ(exact->events.size(), 2u);
  auto lossy = store->Load(kA, /*allow_lossy_base=*/true);
  EXPECT_EQ(lossy->snapshot->version, 4u);
  EXPECT_TRUE(lossy->snapshot->lossy);
  EXPECT_EQ(lossy->snapshot->encoding, "int8_rows");
  EXPECT_TRUE(lossy->events.empty());
}

TEST(StoreTest, LoadForAModelSkipsOtherModelsSnapshots) {
  auto store = OpenStore(FreshDir("fingerprint"));
  ASSERT_TRUE(store->Create(kA, "old").ok());
  AppendUpTo(*store, kA, 3);
  ASSERT_TRUE(store->WriteSnapshot(kA, {3, "model-a", "f32"}, "a-state").ok());
  EXPECT_EQ(store->Load(kA, false, "model-a")->snapshot->version, 3u);
  auto b = store->Load(kA, false, "model-b");  // nothing of model b: the whole log
  ASSERT_TRUE(b.ok());
  EXPECT_FALSE(b->snapshot.has_value());
  EXPECT_EQ(b->events.size(), 3u);
  ASSERT_TRUE(store->SetMetadata(kA, "new").ok());
  auto info = store->Get(kA);
  EXPECT_EQ(info->metadata, "new");
  EXPECT_EQ(info->version, 3u);  // the history stays
  EXPECT_EQ(store->SetMetadata({"acme", "nope"}, "x").code(), StatusCode::kNotFound);
  EXPECT_EQ(store->SetMetadata(kA, std::string(kMaxMetadataBytes + 1, 'm')).code(), StatusCode::kInvalidArgument);
}

TEST(StoreTest, ApproximateBytesGrowPerTenant) {
  auto store = OpenStore(FreshDir("bytes"));
  ASSERT_TRUE(store->Create(kA, "").ok());
  const uint64_t empty = store->ApproximateBytes("acme").value();
  AppendUpTo(*store, kA, 2);
  ASSERT_TRUE(store->WriteSnapshot(kA, {2, "fp", "f32"}, Payload(2, 6 << 20)).ok());  // a bulk one
  const uint64_t full = store->ApproximateBytes("acme").value();
  EXPECT_GE(full, empty + (5u << 20));
  ASSERT_TRUE(store->WriteSnapshot(kA, {1, "fp", "f32"}, Payload(1, 1 << 20)).ok());  // inline: in a memtable
  EXPECT_GE(store->ApproximateBytes("acme").value(), full + (1u << 19));
  EXPECT_LT(store->ApproximateBytes("globex").value(), 1u << 20);
  EXPECT_EQ(store->ApproximateBytes("bad/tenant").status().code(), StatusCode::kInvalidArgument);
}

TEST(StoreTest, CorruptSnapshotIsQuarantinedAndAnOlderOneUsed) {
  const std::string dir = FreshDir("corrupt_snapshot");
  StoreOptions o;
  o.inline_snapshot_bytes = 1024;  // the pieces bypass the WAL into blob files
  {
    auto store = OpenStore(dir, o);
    ASSERT_TRUE(store->Create(kA, "").ok());
    AppendUpTo(*store, kA, 6);
    ASSERT_TRUE(store->WriteSnapshot(kA, {3, "fp", "f32"}, Payload(3, 5000)).ok());
    ASSERT_TRUE(store->WriteSnapshot(kA, {5, "fp", "f32"}, Payload(5, 5000)).ok());
  }
  ASSERT_GT(Corrupt(dir, "STATE-v5-"), 0);
  auto store = OpenStore(dir, o);
  auto load = store->Load(kA);
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_EQ(load->quarantined, std::vector<uint64_t>{5});
  ASSERT_TRUE(load->snapshot.has_value());
  EXPECT_EQ(load->snapshot->version, 3u);
  EXPECT_EQ(load->snapshot_payload, Payload(3, 5000));
  EXPECT_EQ(load->events.size(), 3u);  // 4, 5, 6
  auto again = store->Load(kA);
  EXPECT_TRUE(again->quarantined.empty());  // reported once, set aside
  EXPECT_EQ(again->snapshot->version, 3u);
}

TEST(StoreTest, CorruptEventIsDataLossNamingSessionAndSequence) {
  const std::string dir = FreshDir("corrupt_event");
  {
    auto store = OpenStore(dir);
    ASSERT_TRUE(store->Create(kA, "").ok());
    AppendUpTo(*store, kA, 3);
    ASSERT_TRUE(store->Append(kA, 3, "UNIQUE-EVENT-PAYLOAD-4").ok());
    AppendUpTo(*store, kA, 6);
    ASSERT_TRUE(store->CompactAll().ok());
  }
  ASSERT_GT(Corrupt(dir, "UNIQUE-EVENT-PAYLOAD-4"), 0);
  auto store = OpenStore(dir);
  auto load = store->Load(kA);
  ASSERT_EQ(load.status().code(), StatusCode::kDataLoss) << load.status();
  EXPECT_NE(load.status().message().find("acme/s1"), std::string::npos) << load.status();
  EXPECT_NE(load.status().message().find("event "), std::string::npos) << load.status();
}

TEST(StoreTest, ForkOwnsItsRecords) {
  auto store = OpenStore(FreshDir("fork"));
  ASSERT_TRUE(store->Create(kA, "meta").ok());
  AppendUpTo(*store, kA, 4);
  ASSERT_TRUE(store->WriteSnapshot(kA, {3, "fp", "f32"}, Payload(3, 9000)).ok());
  AppendUpTo(*store, kA, 6);
  const SessionKey fork{"acme", "fork"};
  EXPECT_EQ(store->Fork(kA, fork, 7).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(store->Fork(kA, fork, 5).ok());
  EXPECT_EQ(store->Fork(kA, fork, 5).code(), StatusCode::kAlreadyExists);
  AppendUpTo(*store, fork, 7, "f");
  ASSERT_TRUE(store->Delete(kA).ok());
  ASSERT_TRUE(store->CompactAll().ok());
  auto load = store->Load(fork);
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_EQ(load->info.metadata, "meta");
  ASSERT_TRUE(load->snapshot.has_value());
  EXPECT_TRUE(load->quarantined.empty());
  EXPECT_EQ(load->snapshot->version, 3u);
  EXPECT_EQ(load->snapshot_payload, Payload(3, 9000));
  ASSERT_EQ(load->events.size(), 4u);
  EXPECT_EQ(load->events[1].payload, "e5");
  EXPECT_EQ(load->events[2].payload, "f6");
}

TEST(StoreTest, RollbackDropsLaterEventsSnapshotsAndRequestIds) {
  auto store = OpenStore(FreshDir("rollback"));
  ASSERT_TRUE(store->Create(kA, "").ok());
  AppendUpTo(*store, kA, 3);
  ASSERT_TRUE(store->WriteSnapshot(kA, {2, "fp", "f32"}, "two").ok());
  ASSERT_TRUE(store->Append(kA, 3, "e4", "req-4").ok());
  ASSERT_TRUE(store->WriteSnapshot(kA, {4, "fp", "f32"}, "four").ok());
  EXPECT_EQ(store->Rollback(kA, 9).code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(store->Rollback(kA, 2).ok());
  auto load = store->Load(kA);
  EXPECT_EQ(load->info.version, 2u);
  EXPECT_EQ(load->snapshot_payload, "two");
  EXPECT_TRUE(load->events.empty());
  AppendUpTo(*store, kA, 3);
  auto again = store->Append(kA, 3, "new e4", "req-4");  // the id was rolled back with its event
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->duplicate);
  EXPECT_EQ(store->Load(kA)->events.back().payload, "new e4");
}

TEST(StoreTest, DeleteLeavesNoTraceAfterCompaction) {
  const std::string dir = FreshDir("delete");
  StoreOptions o;
  o.inline_snapshot_bytes = 1024;  // the snapshot is an ingested file of 5 pieces
  o.max_piece_bytes = 4096;
  auto store = OpenStore(dir, o);
  const SessionKey key{"acme", "secret-session"};
  ASSERT_TRUE(store->Create(key, "MARKER-QX7-metadata").ok());
  ASSERT_TRUE(store->Append(key, 0, "MARKER-QX7-event", "MARKER-QX7-req").ok());
  ASSERT_TRUE(store->WriteSnapshot(key, {1, "fp", "f32"}, "MARKER-QX7-" + Payload(1, 20000)).ok());
  ASSERT_TRUE(store->CompactAll().ok());
  ASSERT_FALSE(FilesContaining(dir, "MARKER-QX7").empty());  // the probe finds live data
  ASSERT_TRUE(store->Delete(key).ok());
  EXPECT_EQ(store->Get(key).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(store->Load(key).status().code(), StatusCode::kNotFound);
  ASSERT_TRUE(store->CompactAll().ok());
  store.reset();
  store = OpenStore(dir, o);  // reopening rolls the MANIFEST over (it held old files' key ranges)
  store.reset();
  EXPECT_EQ(FilesContaining(dir, "MARKER-QX7"), std::vector<std::string>{});
}

TEST(StoreTest, IdleSessionsExpire) {
  StoreOptions o;
  o.idle_ttl_seconds = 1;
  auto store = OpenStore(FreshDir("expiry"), o);
  ASSERT_TRUE(store->Create(kA, "").ok());
  ASSERT_TRUE(store->Create({"acme", "busy"}, "").ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  ASSERT_TRUE(store->Append({"acme", "busy"}, 0, "x").ok());  // use keeps it alive
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_EQ(store->Get(kA).status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(store->Get({"acme", "busy"}).ok());
  auto expired = store->ExpireIdle();
  ASSERT_TRUE(expired.ok());
  ASSERT_EQ(expired->size(), 1u);
  ASSERT_TRUE(store->Create(kA, "fresh").ok());
  EXPECT_EQ(store->Get(kA)->version, 0u);
}

TEST(StoreTest, ExportImportMovesASession) {
  StoreOptions o;
  o.inline_snapshot_bytes = 4096;  // the import writes its snapshot through blob files
  auto store = OpenStore(FreshDir("export"));
  auto other = OpenStore(FreshDir("import"), o);
  ASSERT_TRUE(store->Create(kA, "meta").ok());
  AppendUpTo(*store, kA, 5);
  ASSERT_TRUE(store->WriteSnapshot(kA, {4, "fp", "bf16"}, Payload(4, 30000)).ok());
  auto blob = store->Export(kA);
  ASSERT_TRUE(blob.ok()) << blob.status();
  const SessionKey moved{"acme2", "s1"};
  ASSERT_TRUE(other->Import(moved, *blob).ok());
  EXPECT_EQ(other->Import(moved, *blob).code(), StatusCode::kAlreadyExists);
  auto load = other->Load(moved);
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_EQ(load->info.version, 5u);
  EXPECT_EQ(load->info.metadata, "meta");
  EXPECT_EQ(load->snapshot->encoding, "bf16");
  EXPECT_EQ(load->snapshot_payload, Payload(4, 30000));
  EXPECT_EQ(load->events.size(), 1u);
  std::string flipped = *blob;
  flipped[flipped.size() / 2] ^= 1;
  EXPECT_EQ(other->Import({"acme2", "s2"}, flipped).code(), StatusCode::kDataLoss);
  EXPECT_EQ(other->Import({"acme2", "s3"}, "not a blob").code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(other->Import({"acme2", "s4"}, blob->substr(0, blob->size() / 2)).code(), StatusCode::kDataLoss);
  // A forged blob (valid checksum) claiming 2^40 events is refused, not allocated.
  std::string forged = blob->substr(0, blob->size() - 4);
  const size_t at = 8 + 4 + 4 + 4;  // magic, format, metadata length, "meta"
  for (size_t k : {at, at + 8}) {
    for (int i = 0; i < 8; ++i) forged[k + i] = static_cast<char>(i == 2 ? 1 : 0);  // 2^40
  }
  PutU32(&forged, Crc32c(forged));
  EXPECT_EQ(other->Import({"acme2", "s5"}, forged).code(), StatusCode::kDataLoss);
}

TEST(StoreTest, BackupAndRestore) {
  const std::string dir = FreshDir("backup_db"), backups = FreshDir("backups"), restored = FreshDir("restored");
  {
    auto store = OpenStore(dir);
    ASSERT_TRUE(store->Create(kA, "").ok());
    AppendUpTo(*store, kA, 3);
    ASSERT_TRUE(store->WriteSnapshot(kA, {3, "fp", "f32"}, Payload(3, 10000)).ok());
    ASSERT_TRUE(store->Backup(backups).ok());
    AppendUpTo(*store, kA, 5);  // after the backup
  }
  ASSERT_TRUE(SessionStore::RestoreLatestBackup(backups, restored).ok());
  auto store = OpenStore(restored);
  auto load = store->Load(kA);
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_EQ(load->info.version, 3u);
  EXPECT_EQ(load->snapshot_payload, Payload(3, 10000));
}

// Appends until it works (the store recovers on the first write after a fault clears).
absl::Status AppendWhenRecovered(SessionStore& store, const SessionKey& key, uint64_t expected) {
  absl::Status s;
  for (int i = 0; i < 50; ++i) {
    s = store.Append(key, expected, "e" + std::to_string(expected + 1)).status();
    if (s.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return s;
}

TEST(StoreTest, DiskFullAndIoErrorsFailCleanlyAndRecover) {
  StoreOptions o;
  o.faults = std::make_shared<FaultInjection>();
  auto store = OpenStore(FreshDir("faults"), o);
  ASSERT_TRUE(store->Create(kA, "").ok());
  AppendUpTo(*store, kA, 2);
  o.faults->SetNoSpace(true);
  EXPECT_EQ(store->Append(kA, 2, "e3").status().code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(store->WriteSnapshot(kA, {2, "fp", "f32"}, "x").code(), StatusCode::kResourceExhausted);
  EXPECT_EQ(store->Get(kA)->version, 2u);  // reads go on
  o.faults->SetNoSpace(false);
  ASSERT_TRUE(AppendWhenRecovered(*store, kA, 2).ok());
  o.faults->SetIoError(true);
  EXPECT_EQ(store->Append(kA, 3, "e4").status().code(), StatusCode::kUnavailable);
  o.faults->SetIoError(false);
  ASSERT_TRUE(AppendWhenRecovered(*store, kA, 3).ok());
  AppendUpTo(*store, kA, 6);
  ASSERT_TRUE(store->WriteSnapshot(kA, {6, "fp", "f32"}, "six").ok());
  auto load = store->Load(kA);
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_EQ(load->info.version, 6u);
  EXPECT_EQ(load->snapshot_payload, "six");
  EXPECT_TRUE(load->events.empty());
  ASSERT_TRUE(store->Rollback(kA, 5).ok());  // the log is whole: replay from event 1 works
  auto replay = store->Load(kA);
  ASSERT_TRUE(replay.ok()) << replay.status();
  EXPECT_FALSE(replay->snapshot.has_value());
  ASSERT_EQ(replay->events.size(), 5u);
  for (uint64_t i = 0; i < 5; ++i) EXPECT_EQ(replay->events[i].payload, "e" + std::to_string(i + 1));
}

// Power loss: whatever was not synced is gone, and every acknowledged append survives.
TEST(StoreTest, AcknowledgedAppendsSurvivePowerLoss) {
  const std::string dir = FreshDir("power");
  auto faults = std::make_shared<FaultInjection>();
  StoreOptions o;
  o.faults = faults;
  int64_t touched_before;
  {
    auto store = OpenStore(dir, o);
    ASSERT_TRUE(store->Create(kA, "").ok());
    AppendUpTo(*store, kA, 20);
    ASSERT_TRUE(store->WriteSnapshot(kA, {10, "fp", "f32"}, Payload(10, 20000)).ok());
    touched_before = store->Get(kA)->last_used_unix_ms;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    ASSERT_TRUE(store->Load(kA).ok());  // its last-used touch is written without a sync
    ASSERT_GT(store->Get(kA)->last_used_unix_ms, touched_before);
  }
  auto dropped = faults->DropUnsyncedData();
  ASSERT_TRUE(dropped.ok());
  EXPECT_GT(*dropped, 0u);
  auto store = OpenStore(dir, o);
  EXPECT_EQ(store->Get(kA)->last_used_unix_ms, touched_before);  // the unsynced touch was lost
  auto load = store->Load(kA);
  ASSERT_TRUE(load.ok()) << load.status();
  EXPECT_EQ(load->info.version, 20u);
  EXPECT_EQ(load->snapshot_payload, Payload(10, 20000));
  ASSERT_EQ(load->events.size(), 10u);
}

}  // namespace
}  // namespace adaptd::session_store
