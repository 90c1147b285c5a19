// Faults under a SessionStore, for tests and drills: the store's files go through a file system
// wrapper that can refuse writes as if the disk were full or failing, and can forget every
// byte not yet synced, as a power loss does.
//
// Threading: the setters may be called while the store runs.
#ifndef ADAPTD_SESSION_STORE_FAULT_INJECTION_H_
#define ADAPTD_SESSION_STORE_FAULT_INJECTION_H_

#include <memory>

#include "absl/status/statusor.h"

namespace adaptd::session_store {

class FaultInjection {
 public:
  FaultInjection();
  ~FaultInjection();

  // Writes and syncs fail with "no space" / an I/O error until cleared.
  void SetNoSpace(bool on);
  void SetIoError(bool on);

  // Power loss: cuts every file written through the wrapper back to its last synced length
  // (unsynced new files become empty) and returns the bytes dropped. Call with the store
  // closed (as after a crash).
  absl::StatusOr<uint64_t> DropUnsyncedData();

  struct State;
  std::shared_ptr<State> state() const { return state_; }

 private:
  std::shared_ptr<State> state_;
};

}  // namespace adaptd::session_store

#endif  // ADAPTD_SESSION_STORE_FAULT_INJECTION_H_
