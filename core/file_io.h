// Files that must never be left half-written: atomic, durable replacement with every step checked.
#pragma once

#include <string>

namespace switchyard::core {

/// Replaces `path` with `bytes` atomically and durably: a temporary file beside it, every write,
/// flush, fsync and close checked, then a rename over `path` and an fsync of the directory. On any
/// failure the old file stays as it was, the temporary file is removed, and IoError names the path
/// and the reason. (Test hook: SWITCHYARD_FAULT_INJECT=write_fail:<file name> fails the write of
/// that file name as a full disk would.)
void write_file_atomically(const std::string& path, const std::string& bytes);

/// Publishes a file written elsewhere (a stream too large to hold in memory): fsync of `tmp`, rename
/// over `path`, fsync of the directory. IoError naming `path` on failure (`tmp` removed).
void publish_file(const std::string& tmp, const std::string& path);

/// Appends `text` to `path` (created if absent) and flushes it; throws IoError naming the path on
/// failure. For append-only logs whose earlier lines must survive.
void append_to_file(const std::string& path, const std::string& text);

/// fsync of a directory, so a rename or a new entry in it survives a crash (errors ignored: some
/// filesystems refuse to sync directories).
void sync_directory(const std::string& dir) noexcept;

/// Removes a directory tree or a file (nothing when absent); throws IoError naming the path. POSIX
/// nftw rather than std::filesystem::remove_all, which jumps to address 0 on non-empty directories in
/// the GPU machine's build: the pip LibTorch's libtorch.so exports its own std::filesystem, which
/// the dynamic linker binds our calls to (seen in a run resumed after a kill, a run started over its
/// old results, and tests cleaning their folders).
void remove_tree(const std::string& path);

/// The whole content of `path`; throws `DataError` naming it when it cannot be read.
std::string read_file(const std::string& path);

}  // namespace switchyard::core
