// Crash tests (ctest label `crash`). kill -9: a child process appends events and writes
// snapshots in a loop, logging each acknowledged event to a side file; the parent kills it at
// random moments, reopens the store and checks that every acknowledged event is there, that the
// log is a gap-free prefix, and that every snapshot is valid or detected. Power loss: the same
// checks after FaultInjection drops every unsynced byte. ADAPTD_CRASH_KILLS (default 10) and
// ADAPTD_POWER_LOSSES (default 10) set the number of rounds; the seed is printed.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <map>
#include <random>
#include <sstream>
#include <thread>

#include "adaptd/session_store/fault_injection.h"
#include "adaptd/session_store/store.h"
#include "session_store/store_testing.h"

namespace adaptd::session_store {
namespace {

// 0, 1: events only (Load returns the whole log); 2: small snapshots (through the WAL);
// 3: large ones (above inline_snapshot_bytes: one ingested file each).
constexpr int kSessions = 4;

SessionKey Key(int i) { return {"crash", "s" + std::to_string(i)}; }
std::string EventPayload(int i, uint64_t seq) { return "s" + std::to_string(i) + "-e" + std::to_string(seq); }
std::string SnapshotPayload(int i, uint64_t version) {
  std::string p = "snap-" + std::to_string(i) + "-" + std::to_string(version) + ":";
  p.resize(i == 3 ? (5 << 20) : (64 << 10), static_cast<char>('a' + version % 26));
  return p;
}

int Rounds(const char* env, int fallback) {
  const char* v = std::getenv(env);
  return v != nullptr ? std::atoi(v) : fallback;
}

// The child: appends forever, logging "session seq" after each acknowledgement.
[[noreturn]] void RunChild(const std::string& dir, const std::string& side) {
  StoreOptions o;
  o.path = dir;
  auto store = SessionStore::Open(o);
  if (!store.ok()) _exit(3);
  const int fd = ::open(side.c_str(), O_WRONLY | O_APPEND | O_CREAT, 0644);
  for (int i = 0; i < kSessions; ++i) (void)(*store)->Create(Key(i), "");
  for (uint64_t n = 0;; ++n) {
    const int i = static_cast<int>(n % kSessions);
    auto info = (*store)->Get(Key(i));
    if (!info.ok()) _exit(4);
    const uint64_t seq = info->version + 1;
    auto r = (*store)->Append(Key(i), info->version, EventPayload(i, seq), "r" + std::to_string(seq));
    if (!r.ok()) _exit(5);
    const std::string line = std::to_string(i) + " " + std::to_string(seq) + "\n";
    if (::write(fd, line.data(), line.size()) != static_cast<ssize_t>(line.size())) _exit(6);
    if (i >= 2 && seq % 7 == 0) (void)(*store)->WriteSnapshot(Key(i), {seq, "fp", "f32"}, SnapshotPayload(i, seq));
  }
}

int large_snapshots_loaded = 0;

// Every acknowledged event is in the store, the log is whole, snapshots hold what was written.
void Verify(const std::string& dir, const std::string& side, int round) {
  std::map<int, uint64_t> acked;
  std::istringstream lines(ReadAll(side));
  int i;
  uint64_t seq;
  while (lines >> i >> seq) acked[i] = std::max(acked[i], seq);
  StoreOptions o;
  o.path = dir;
  auto store = SessionStore::Open(o);
  ASSERT_TRUE(store.ok()) << "round " << round << ": " << store.status();
  for (int s = 0; s < kSessions; ++s) {
    auto load = (*store)->Load(Key(s));
    if (acked[s] == 0 && load.status().code() == absl::StatusCode::kNotFound) continue;
    ASSERT_TRUE(load.ok()) << "round " << round << " session " << s << ": " << load.status();
    ASSERT_GE(load->info.version, acked[s]) << "round " << round << ": an acknowledged event is lost";
    uint64_t from = 1;
    if (load->snapshot) {
      ASSERT_GE(s, 2);
      ASSERT_EQ(load->snapshot_payload, SnapshotPayload(s, load->snapshot->version)) << "round " << round;
      from = load->snapshot->version + 1;
      large_snapshots_loaded += s == 3;
    }
    ASSERT_EQ(load->events.size(), load->info.version - from + 1) << "round " << round;
    for (const auto& e : load->events) {
      ASSERT_EQ(e.seq, from++) << "round " << round;
      ASSERT_EQ(e.payload, EventPayload(s, e.seq)) << "round " << round;
    }
    if (!load->quarantined.empty()) std::cerr << "round " << round << ": quarantined a snapshot (detected)\n";
  }
}

TEST(CrashTest, KillNineNeverLosesAnAcknowledgedEvent) {
  const std::string dir = FreshDir("crash_db"), side = dir + "/../" + "acked.log";
  std::remove(side.c_str());
  const int kills = Rounds("ADAPTD_CRASH_KILLS", 10);
  const unsigned seed = std::random_device()();
  std::cerr << "seed " << seed << ", " << kills << " kills\n";
  std::mt19937 rng(seed);
  uint64_t total_acked = 0;
  for (int round = 0; round < kills; ++round) {
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::setenv("ADAPTD_CRASH_CHILD", (dir + "|" + side).c_str(), 1);
      ::execl("/proc/self/exe", "store_crash_test", static_cast<char*>(nullptr));
      _exit(7);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(150 + rng() % 400));
    ::kill(pid, SIGKILL);
    int status = 0;
    ::waitpid(pid, &status, 0);
    ASSERT_TRUE(WIFSIGNALED(status)) << "the child ended by itself: exit " << WEXITSTATUS(status);
    Verify(dir, side, round);
    if (HasFatalFailure()) return;
    const std::string log = ReadAll(side);
    total_acked = std::count(log.begin(), log.end(), '\n');
  }
  std::cerr << total_acked << " acknowledged events over " << kills << " kills\n";
  EXPECT_GT(total_acked, static_cast<uint64_t>(kills));  // the children did work
  EXPECT_GT(large_snapshots_loaded, 0);                  // and large snapshots were written
}

// Power loss: rounds of appends and snapshots, then everything unsynced is dropped.
TEST(CrashTest, PowerLossKeepsEveryAcknowledgedEvent) {
  const std::string dir = FreshDir("power_db"), side = dir + "/../" + "power_acked.log";
  std::remove(side.c_str());
  auto faults = std::make_shared<FaultInjection>();
  const int rounds = Rounds("ADAPTD_POWER_LOSSES", 10);
  std::mt19937 rng{std::random_device{}()};
  std::ofstream acked(side, std::ios::app);
  uint64_t dropped = 0;
  for (int round = 0; round < rounds; ++round) {
    {
      StoreOptions o;
      o.path = dir;
      o.faults = faults;
      auto store = SessionStore::Open(o);
      ASSERT_TRUE(store.ok()) << store.status();
      for (int i = 0; i < kSessions; ++i) (void)(*store)->Create(Key(i), "");
      const int n = 5 + static_cast<int>(rng() % 40);
      for (int k = 0; k < n; ++k) {
        const int i = static_cast<int>(rng() % kSessions);
        const uint64_t v = (*store)->Get(Key(i))->version;
        ASSERT_TRUE((*store)->Append(Key(i), v, EventPayload(i, v + 1)).ok());
        acked << i << " " << v + 1 << "\n" << std::flush;
        if (i >= 2 && (v + 1) % 7 == 0) {
          ASSERT_TRUE((*store)->WriteSnapshot(Key(i), {v + 1, "fp", "f32"}, SnapshotPayload(i, v + 1)).ok());
        }
      }
      (void)(*store)->Load(Key(0));  // an unsynced touch, for the drop to discard
    }
    auto d = faults->DropUnsyncedData();
    ASSERT_TRUE(d.ok()) << d.status();
    dropped += *d;
    Verify(dir, side, round);
    if (HasFatalFailure()) return;
  }
  std::cerr << dropped << " unsynced bytes dropped over " << rounds << " power losses\n";
  EXPECT_GT(dropped, 0u);  // the simulation did lose data
}

}  // namespace
}  // namespace adaptd::session_store

int main(int argc, char** argv) {
  if (const char* child = std::getenv("ADAPTD_CRASH_CHILD")) {
    const std::string arg(child);
    const size_t bar = arg.find('|');
    adaptd::session_store::RunChild(arg.substr(0, bar), arg.substr(bar + 1));
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
