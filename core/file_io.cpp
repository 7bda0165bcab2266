// Atomic, durable file replacement and checked appends.
#include "core/file_io.h"

#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/fault_injection.h"

namespace switchyard::core {
namespace fs = std::filesystem;
namespace {

/// write(2) until every byte is out; false with errno set on failure.
bool write_all(int fd, const char* data, size_t size) {
  while (size > 0) {
    const ssize_t n = ::write(fd, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    data += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

[[noreturn]] void fail(const std::string& path, const std::string& what, int err) {
  throw IoError(path + ": " + what + " failed (" + std::strerror(err) + ")");
}

}  // namespace

namespace {
int remove_entry(const char* path, const struct stat*, int, struct FTW*) { return ::remove(path); }
}  // namespace

void remove_tree(const std::string& path) {
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(path, ec))) return;
  if (::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0) {
    throw IoError(path + ": cannot remove (" + std::strerror(errno) + ")");
  }
}

void sync_directory(const std::string& dir) noexcept {
  const int fd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;
  (void)::fsync(fd);
  ::close(fd);
}

void write_file_atomically(const std::string& path, const std::string& bytes) {
  const fs::path target(path);
  const std::string tmp = (target.parent_path() / ("." + target.filename().string() + ".tmp." +
                                                    std::to_string(::getpid()))).string();
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail(path, "creating " + tmp, errno);
  int err = 0;
  std::string step = "write";
  if (fault_named("write_fail", target.filename().string())) {
    err = ENOSPC;
  } else if (!write_all(fd, bytes.data(), bytes.size())) {
    err = errno;
  }
  if (::close(fd) != 0 && err == 0) {
    err = errno;
    step = "close";
  }
  if (err != 0) {
    ::unlink(tmp.c_str());
    fail(path, step, err);
  }
  publish_file(tmp, path);
}

void publish_file(const std::string& tmp, const std::string& path) {
  const int fd = ::open(tmp.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path, "opening " + tmp, errno);
  int err = 0;
  std::string step;
  if (::fsync(fd) != 0) {
    err = errno;
    step = "fsync";
  }
  ::close(fd);
  if (err == 0 && ::rename(tmp.c_str(), path.c_str()) != 0) {
    err = errno;
    step = "rename";
  }
  if (err != 0) {
    ::unlink(tmp.c_str());
    fail(path, step, err);
  }
  sync_directory(fs::path(path).parent_path().string());
}

void append_to_file(const std::string& path, const std::string& text) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) fail(path, "opening for append", errno);
  int err = 0;
  if (fault_named("write_fail", fs::path(path).filename().string())) err = ENOSPC;
  else if (!write_all(fd, text.data(), text.size())) err = errno;
  if (::close(fd) != 0 && err == 0) err = errno;
  if (err != 0) fail(path, "append", err);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  SY_CHECK_AS(DataError, in.good(), path, ": cannot open");
  std::ostringstream out;
  out << in.rdbuf();
  SY_CHECK_AS(DataError, !in.bad(), path, ": read failed");
  return out.str();
}

}  // namespace switchyard::core
