// The file system wrapper behind FaultInjection (fault_injection.h). Private to session_store/.
#ifndef ADAPTD_SESSION_STORE_SRC_FAULT_FS_H_
#define ADAPTD_SESSION_STORE_SRC_FAULT_FS_H_

#include <memory>

#include "adaptd/session_store/fault_injection.h"
#include "rocksdb/file_system.h"

namespace adaptd::session_store {

// `base` with the faults of `faults` applied to every file written through it.
std::shared_ptr<rocksdb::FileSystem> NewFaultFileSystem(std::shared_ptr<rocksdb::FileSystem> base,
                                                        std::shared_ptr<FaultInjection::State> faults);

}  // namespace adaptd::session_store

#endif  // ADAPTD_SESSION_STORE_SRC_FAULT_FS_H_
