// Writes go straight to the real files (the page cache keeps them across a process kill, as in
// production); the wrapper remembers, per file, how much was synced, and DropUnsyncedData cuts
// files back to that — a power loss without a VM, as RocksDB's own FaultInjectionTestFS does.
// (Directory entries are not modelled: a file created and never synced becomes empty rather
// than vanishing.)
#include "fault_fs.h"

#include <unistd.h>

#include <atomic>
#include <map>
#include <mutex>
#include <string>

#include "absl/strings/str_cat.h"

namespace adaptd::session_store {

struct FaultInjection::State {
  std::atomic<bool> no_space{false};
  std::atomic<bool> io_error{false};
  std::mutex mu;
  struct File {
    uint64_t size = 0;
    uint64_t synced = 0;
  };
  std::map<std::string, File> files;  // guarded by mu

  rocksdb::IOStatus Check() const {
    if (no_space) return rocksdb::IOStatus::NoSpace("injected: no space left on device");
    if (io_error) {  // a transient device error: retryable, as RocksDB recovers from by itself
      auto s = rocksdb::IOStatus::IOError("injected: I/O error");
      s.SetRetryable(true);
      return s;
    }
    return rocksdb::IOStatus::OK();
  }
  void Grow(const std::string& path, uint64_t end) {
    std::lock_guard<std::mutex> lock(mu);
    auto& f = files[path];
    f.size = std::max(f.size, end);
  }
  void Synced(const std::string& path) {
    std::lock_guard<std::mutex> lock(mu);
    auto& f = files[path];
    f.synced = f.size;
  }
};

FaultInjection::FaultInjection() : state_(std::make_shared<State>()) {}
FaultInjection::~FaultInjection() = default;
void FaultInjection::SetNoSpace(bool on) { state_->no_space = on; }
void FaultInjection::SetIoError(bool on) { state_->io_error = on; }

absl::StatusOr<uint64_t> FaultInjection::DropUnsyncedData() {
  std::lock_guard<std::mutex> lock(state_->mu);
  uint64_t dropped = 0;
  for (auto& [path, f] : state_->files) {
    dropped += f.size - f.synced;
    if (f.synced < f.size && ::truncate(path.c_str(), static_cast<off_t>(f.synced)) != 0 && errno != ENOENT) {
      return absl::InternalError(absl::StrCat("truncate ", path, ": errno ", errno));
    }
    f.size = f.synced;
  }
  return dropped;
}

namespace {

using State = FaultInjection::State;

class FaultWritableFile : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  FaultWritableFile(std::unique_ptr<rocksdb::FSWritableFile> file, std::string path, std::shared_ptr<State> state,
                    uint64_t size)
      : FSWritableFileOwnerWrapper(std::move(file)), path_(std::move(path)), state_(std::move(state)), size_(size) {}

  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& o, rocksdb::IODebugContext* d) override {
    if (auto s = state_->Check(); !s.ok()) return s;
    auto s = target()->Append(data, o, d);
    if (s.ok()) Grew(size_ + data.size());
    return s;
  }
  rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& o,
                           const rocksdb::DataVerificationInfo& v, rocksdb::IODebugContext* d) override {
    if (auto s = state_->Check(); !s.ok()) return s;
    auto s = target()->Append(data, o, v, d);
    if (s.ok()) Grew(size_ + data.size());
    return s;
  }
  rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset, const rocksdb::IOOptions& o,
                                     rocksdb::IODebugContext* d) override {
    if (auto s = state_->Check(); !s.ok()) return s;
    auto s = target()->PositionedAppend(data, offset, o, d);
    if (s.ok()) Grew(std::max(size_, offset + data.size()));
    return s;
  }
  rocksdb::IOStatus Flush(const rocksdb::IOOptions& o, rocksdb::IODebugContext* d) override {
    if (auto s = state_->Check(); !s.ok()) return s;
    return target()->Flush(o, d);
  }
  rocksdb::IOStatus Sync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* d) override {
    if (auto s = state_->Check(); !s.ok()) return s;
    auto s = target()->Sync(o, d);
    if (s.ok()) state_->Synced(path_);
    return s;
  }
  rocksdb::IOStatus Fsync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* d) override {
    if (auto s = state_->Check(); !s.ok()) return s;
    auto s = target()->Fsync(o, d);
    if (s.ok()) state_->Synced(path_);
    return s;
  }

 private:
  void Grew(uint64_t size) {
    size_ = size;
    state_->Grow(path_, size);
  }
  std::string path_;
  std::shared_ptr<State> state_;
  uint64_t size_;
};

class FaultFileSystem : public rocksdb::FileSystemWrapper {
 public:
  FaultFileSystem(std::shared_ptr<rocksdb::FileSystem> base, std::shared_ptr<State> state)
      : FileSystemWrapper(std::move(base)), state_(std::move(state)) {}
  const char* Name() const override { return "AdaptdFaultFileSystem"; }

  rocksdb::IOStatus NewWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSWritableFile>* r, rocksdb::IODebugContext* d) override {
    auto s = target()->NewWritableFile(f, o, r, d);
    if (!s.ok()) return s;
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      state_->files[f] = {};
    }
    *r = std::make_unique<FaultWritableFile>(std::move(*r), f, state_, 0);
    return s;
  }
  rocksdb::IOStatus ReopenWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                       std::unique_ptr<rocksdb::FSWritableFile>* r,
                                       rocksdb::IODebugContext* d) override {
    uint64_t size = 0;
    target()->GetFileSize(f, rocksdb::IOOptions(), &size, d);
    auto s = target()->ReopenWritableFile(f, o, r, d);
    if (!s.ok()) return s;
    {
      std::lock_guard<std::mutex> lock(state_->mu);
      auto& file = state_->files[f];
      file.size = size;
      file.synced = std::min(file.synced, size);
      if (file.synced == 0) file.synced = size;  // not written by us: on disk already
    }
    *r = std::make_unique<FaultWritableFile>(std::move(*r), f, state_, size);
    return s;
  }
  rocksdb::IOStatus RenameFile(const std::string& from, const std::string& to, const rocksdb::IOOptions& o,
                               rocksdb::IODebugContext* d) override {
    auto s = target()->RenameFile(from, to, o, d);
    if (s.ok()) {
      std::lock_guard<std::mutex> lock(state_->mu);
      auto it = state_->files.find(from);
      if (it != state_->files.end()) {
        state_->files[to] = it->second;
        state_->files.erase(it);
      } else {
        state_->files.erase(to);
      }
    }
    return s;
  }
  rocksdb::IOStatus DeleteFile(const std::string& f, const rocksdb::IOOptions& o, rocksdb::IODebugContext* d) override {
    auto s = target()->DeleteFile(f, o, d);
    if (s.ok()) {
      std::lock_guard<std::mutex> lock(state_->mu);
      state_->files.erase(f);
    }
    return s;
  }

 private:
  std::shared_ptr<State> state_;
};

}  // namespace

std::shared_ptr<rocksdb::FileSystem> NewFaultFileSystem(std::shared_ptr<rocksdb::FileSystem> base,
                                                        std::shared_ptr<FaultInjection::State> faults) {
  return std::make_shared<FaultFileSystem>(std::move(base), std::move(faults));
}

}  // namespace adaptd::session_store
