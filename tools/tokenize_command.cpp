// `switchyard tokenize`: text or JSONL files into a Megatron indexed dataset with SentencePiece.
#include <thread>

#include "core/json_line.h"
#include "data/tokenize.h"
#include "tools/command.h"

namespace switchyard::tools {

void add_tokenize_command(CLI::App& app, Commands& commands) {
  struct Options {
    data::TokenizeOptions t;
    bool quiet = false;
  };
  auto o = std::make_shared<Options>();
  o->t.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  CLI::App* cmd = app.add_subcommand("tokenize", "text / JSONL files into a Megatron .bin + .idx with a SentencePiece "
                                                 "model, an end-of-document token after each document");
  cmd->add_option("--input", o->t.inputs, "text files (a document per non-empty line) or .jsonl files (a document per line)")
      ->required()
      ->expected(1, -1);
  cmd->add_option("--tokenizer", o->t.tokenizer, "SentencePiece model (spm_train's .model)")->required();
  cmd->add_option("--out", o->t.out_prefix, "output prefix: writes PREFIX.bin and PREFIX.idx")->required();
  cmd->add_option("--threads", o->t.threads, "encoding threads (default: the cores)")->check(CLI::Range(1, 1024));
  cmd->add_option("--text-key", o->t.text_key, "JSONL: the field holding the text");
  cmd->add_option("--eod-id", o->t.eod_id, "end-of-document token (default: the model's eos)")->check(CLI::NonNegativeNumber);
  cmd->add_option("--max-document-bytes", o->t.max_document_bytes, "refuse a document longer than this")
      ->check(CLI::PositiveNumber);
  cmd->add_flag("--quiet", o->quiet, "no progress bar");
  commands.emplace_back(cmd, [o](RankStarter&) {
    o->t.progress = !o->quiet;
    const auto s = data::tokenize_files(o->t);
    core::JsonLine line;
    line.add("tokenize", o->t.out_prefix).add("documents", s.documents).add("tokens", s.tokens).add("bytes", s.bytes);
    line.add("vocab_size", s.vocab_size).add("eod_id", s.eod_id).add("seconds", s.seconds, 4);
    std::printf("%s\n", line.str().c_str());
    return 0;
  });
}

}  // namespace switchyard::tools
