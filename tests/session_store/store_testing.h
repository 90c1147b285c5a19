// Helpers of the session store tests: fresh directories, and finding and damaging bytes in the
// database's files (to test detection of corruption and physical deletion).
#ifndef ADAPTD_TESTS_SESSION_STORE_STORE_TESTING_H_
#define ADAPTD_TESTS_SESSION_STORE_STORE_TESTING_H_

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

namespace adaptd::session_store {

// An empty directory under the test's temp dir.
inline std::string FreshDir(const std::string& name) {
  const std::string dir = ::testing::TempDir() + "/adaptd_store_" + name + "_" + std::to_string(std::random_device()());
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

inline std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The files under `dir` whose bytes contain `needle`.
inline std::vector<std::string> FilesContaining(const std::string& dir, const std::string& needle) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (e.is_regular_file() && ReadAll(e.path()).find(needle) != std::string::npos) out.push_back(e.path());
  }
  return out;
}

// Flips one byte in the middle of every occurrence of `needle` in the files under `dir`;
// returns how many it changed.
inline int Corrupt(const std::string& dir, const std::string& needle) {
  int changed = 0;
  for (const auto& path : FilesContaining(dir, needle)) {
    std::string bytes = ReadAll(path);
    for (size_t at = bytes.find(needle); at != std::string::npos; at = bytes.find(needle, at + 1)) {
      bytes[at + needle.size() / 2] ^= 0x5A;
      ++changed;
    }
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  }
  return changed;
}

}  // namespace adaptd::session_store

#endif  // ADAPTD_TESTS_SESSION_STORE_STORE_TESTING_H_
