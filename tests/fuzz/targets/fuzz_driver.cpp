// A fuzz driver for builds without libFuzzer (any compiler; CTest): runs every file of the corpus
// directories, then random mutations of them (bit flips, interesting bytes, inserted, deleted and
// repeated ranges, truncation, splices of two inputs) until --seconds or --runs is reached. Not
// coverage-guided (libFuzzer is: SWITCHYARD_LIBFUZZER=ON with clang), but it checks the same contract
// on every build. An input that escapes the contract is written to crash-<target>-<n> and fails the run;
// a crash by signal writes the input first.
//
//   fuzz_X [--seconds S] [--runs N] [--seed N] [--max-len N] CORPUS_DIR...
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "tests/fuzz/targets/fuzz_target.h"

namespace {

using Bytes = std::vector<uint8_t>;

// The input being run, for the signal handler (written with write(2) only).
const Bytes* g_current = nullptr;
std::string g_crash_path;

extern "C" void on_crash(int sig) {
  if (g_current) {
    const int fd = ::open(g_crash_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      if (::write(fd, g_current->data(), g_current->size()) < 0) {}
      ::close(fd);
    }
    const char msg[] = "fuzz: crashed by a signal; the input is in the crash file named at start\n";
    if (::write(2, msg, sizeof(msg) - 1) < 0) {}
  }
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

Bytes mutate(const Bytes& a, const Bytes& b, std::mt19937_64& rng, size_t max_len) {
  Bytes out = a;
  const int rounds = 1 + static_cast<int>(rng() % 4);
  for (int r = 0; r < rounds; ++r) {
    const auto pick = [&](size_t n) { return n == 0 ? size_t{0} : static_cast<size_t>(rng() % n); };
    switch (rng() % 8) {
      case 0:  // flip a bit
        if (!out.empty()) out[pick(out.size())] ^= static_cast<uint8_t>(1u << (rng() % 8));
        break;
      case 1: {  // an interesting byte or 8-byte value
        static const uint8_t bytes[] = {0, 1, 0x7f, 0x80, 0xff, '\n', ':', '-', '[', '{', '&', '*', '"'};
        if (out.empty()) break;
        const size_t at = pick(out.size());
        if (rng() % 2) {
          out[at] = bytes[rng() % sizeof(bytes)];
        } else {
          static const uint64_t words[] = {0, ~0ull, 1ull << 62, 1ull << 31, 0x7fffffffffffffffull, 0x80000000ull};
          const uint64_t w = words[rng() % (sizeof(words) / sizeof(words[0]))];
          for (size_t i = 0; i < 8 && at + i < out.size(); ++i) out[at + i] = static_cast<uint8_t>(w >> (8 * i));
        }
        break;
      }
      case 2: {  // insert random bytes
        const size_t at = pick(out.size() + 1), n = 1 + pick(16);
        Bytes ins(n);
        for (auto& c : ins) c = static_cast<uint8_t>(rng());
        out.insert(out.begin() + static_cast<std::ptrdiff_t>(at), ins.begin(), ins.end());
        break;
      }
      case 3: {  // delete a range
        if (out.empty()) break;
        const size_t at = pick(out.size()), n = 1 + pick(std::min<size_t>(64, out.size() - at));
        out.erase(out.begin() + static_cast<std::ptrdiff_t>(at), out.begin() + static_cast<std::ptrdiff_t>(std::min(out.size(), at + n)));
        break;
      }
      case 4: {  // repeat a range
        if (out.empty()) break;
        const size_t at = pick(out.size()), n = 1 + pick(std::min<size_t>(256, out.size() - at));
        const Bytes chunk(out.begin() + static_cast<std::ptrdiff_t>(at), out.begin() + static_cast<std::ptrdiff_t>(at + n));
        const size_t times = 1 + pick(8);
        for (size_t t = 0; t < times; ++t) out.insert(out.begin() + static_cast<std::ptrdiff_t>(at), chunk.begin(), chunk.end());
        break;
      }
      case 5:  // truncate
        out.resize(pick(out.size() + 1));
        break;
      case 6: {  // splice: a prefix of this, a suffix of the other
        const size_t cut_a = pick(out.size() + 1), cut_b = pick(b.size() + 1);
        out.resize(cut_a);
        out.insert(out.end(), b.begin() + static_cast<std::ptrdiff_t>(cut_b), b.end());
        break;
      }
      default:  // overwrite a byte with a random one
        if (!out.empty()) out[pick(out.size())] = static_cast<uint8_t>(rng());
    }
  }
  if (out.size() > max_len) out.resize(max_len);
  return out;
}

int run(int argc, char** argv) {
  double seconds = 5;
  long long runs = -1, seed = 1;
  size_t max_len = 1 << 16;
  std::vector<std::string> dirs;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::runtime_error(a + ": needs a value");
      return argv[++i];
    };
    if (a == "--seconds") seconds = std::stod(next());
    else if (a == "--runs") runs = std::stoll(next());
    else if (a == "--seed") seed = std::stoll(next());
    else if (a == "--max-len") max_len = std::stoul(next());
    else dirs.push_back(a);
  }
  const std::string target = std::filesystem::path(argv[0]).filename().string();
  g_crash_path = "crash-" + target + "-" + std::to_string(::getpid());
  for (int sig : {SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL}) std::signal(sig, on_crash);
  std::vector<Bytes> corpus;
  for (const auto& d : dirs) {
    for (const auto& entry : std::filesystem::directory_iterator(d)) {
      if (!entry.is_regular_file()) continue;
      std::ifstream in(entry.path(), std::ios::binary);
      corpus.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
  }
  if (corpus.empty()) corpus.emplace_back();
  long long count = 0;
  const auto run_one = [&](const Bytes& input) {
    g_current = &input;
    try {
      LLVMFuzzerTestOneInput(input.data(), input.size());
    } catch (const std::exception& e) {
      std::ofstream(g_crash_path, std::ios::binary).write(reinterpret_cast<const char*>(input.data()), static_cast<std::streamsize>(input.size()));
      std::fprintf(stderr, "%s: input %lld escaped the contract: %s: %s (input in %s)\n", target.c_str(), count,
                   typeid(e).name(), e.what(), g_crash_path.c_str());
      return false;
    }
    ++count;
    return true;
  };
  for (const auto& input : corpus)
    if (!run_one(input)) return 1;
  std::mt19937_64 rng(static_cast<uint64_t>(seed));
  const auto start = std::chrono::steady_clock::now();
  const auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
  while ((runs < 0 || count < runs) && elapsed() < seconds) {
    const Bytes input = mutate(corpus[rng() % corpus.size()], corpus[rng() % corpus.size()], rng, max_len);
    if (!run_one(input)) return 1;
  }
  std::printf("%s: %lld inputs (%zu from the corpus) in %.1f s, seed %lld: none escaped the contract\n", target.c_str(),
              count, corpus.size(), elapsed(), seed);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
}
