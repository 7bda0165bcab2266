#!/usr/bin/env python3
"""Switchyard against Hugging Face transformers, logits in fp32 on 4 sequences (issue 21):

  1. for Mixtral, Qwen3-MoE and OLMoE, a tiny model built by transformers (random weights, norms
     included, saved with save_pretrained) imported into Switchyard gives the same logits;
  2. a model trained by `switchyard train` and exported loads in transformers with no missing or
     unexpected tensor and gives the same logits;
  3. a dense Llama and a dense Qwen3 upcycled by `switchyard import --upcycle` give the dense
     model's logits at step 0, and the upcycled model trains.

Exit 0 when every check holds, 1 otherwise, 77 (skip) without torch or transformers.
Usage: hf_parity.py <switchyard binary> [--work DIR] [--tol 1e-4] [--cuda]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

try:
    import torch
    import transformers
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
except ImportError as e:  # the CPU machine: no PyTorch in Python
    print(f"skip: {e}")
    sys.exit(77)

COMMON = dict(vocab_size=256, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=32, rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False)
SEQ = 32


def hf_configs():
    c = transformers
    return {
        "mixtral": c.MixtralConfig(**COMMON, intermediate_size=48, num_local_experts=4, num_experts_per_tok=2),
        "qwen3_moe": c.Qwen3MoeConfig(**COMMON, head_dim=24, intermediate_size=80, moe_intermediate_size=32, num_experts=8,
                                      num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=2, mlp_only_layers=[]),
        "olmoe": c.OlmoeConfig(**COMMON, intermediate_size=48, num_experts=8, num_experts_per_tok=2, norm_topk_prob=False),
    }


def dense_configs():
    c = transformers
    return {
        "llama": c.LlamaConfig(**COMMON, intermediate_size=48),
        "qwen3": c.Qwen3Config(**COMMON, head_dim=24, intermediate_size=48),
    }


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


class Parity:
    def __init__(self, binary, work, tol, cuda):
        self.bin, self.work, self.tol, self.cuda = binary, work, tol, cuda
        self.failures = 0
        torch.manual_seed(20261206)
        self.tokens = torch.randint(0, COMMON["vocab_size"], (4, SEQ))
        self.token_file = os.path.join(work, "tokens.safetensors")
        save_file({"tokens": self.tokens}, self.token_file)

    def sy(self, *args):
        r = subprocess.run([self.bin, *args], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"switchyard {' '.join(args)}: exit {r.returncode}: {r.stderr.strip()[-800:]}")
        return r.stdout

    def sy_logits(self, checkpoint, name, device="cpu"):
        out = os.path.join(self.work, f"{name}.{device}.logits.safetensors")
        self.sy("logits", "--checkpoint", checkpoint, "--tokens", self.token_file, "--out", out, "--device", device)
        return load_file(out)["logits"]

    def hf_logits(self, model):
        model.eval()
        with torch.no_grad():
            return model(self.tokens).logits.float()

    def check(self, what, error):
        ok = error < self.tol
        self.failures += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {what}: relative L2 {error:.2e} (bound {self.tol:g})", flush=True)

    def fail(self, what, why):
        self.failures += 1
        print(f"FAIL {what}: {why}", flush=True)


def randomize(model):
    """Every weight random, norms around 1 (so a norm applied to the wrong tensor shows)."""
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() == 1:
                p.normal_(1.0, 0.2)
            else:
                p.normal_(0.0, 0.08)


def build(config):
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config).to(torch.float32)
    randomize(model)
    return model


def saved_keys(directory):
    keys = []
    for f in sorted(os.listdir(directory)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(directory, f), "pt") as s:
                keys += list(s.keys())
    return sorted(keys)


def from_hf(p, family, config):
    what = f"{family}: transformers -> switchyard import"
    try:
        model = build(config)
        reference = p.hf_logits(model)
        d = os.path.join(p.work, "hf_" + family)
        model.save_pretrained(d, safe_serialization=True)
        print(f"     {family} save_pretrained keys (layer 0): "
              + ", ".join(k for k in saved_keys(d) if ".layers.0." in k), flush=True)
        ckpt = os.path.join(p.work, "imported_" + family)
        p.sy("import", "--hf", d, "--config", ckpt + ".yaml", "--out", ckpt)
        p.check(what, rel(p.sy_logits(ckpt, "imported_" + family), reference))
        if p.cuda:
            p.check(what + " (switchyard on CUDA)", rel(p.sy_logits(ckpt, "imported_" + family, "cuda"), reference))
    except Exception as e:  # one family's failure does not hide the others'
        p.fail(what, e)


def train_yaml(family, run_dir):
    model = {"family": family, "vocab_size": 256, "d_model": 64, "n_layers": 3, "n_heads": 4, "n_kv_heads": 2,
             "seq_len": SEQ, "tie_embeddings": False, "init_std": 0.08, "dense_ffn_hidden": 80,
             "moe": {"num_experts": 8, "top_k": 2, "ffn_hidden": 32, "router": {"kind": "topk"}}}
    if family == "qwen3_moe":
        model.update(qk_norm="head", head_dim=24)
        model["moe"]["every"] = 2
    if family == "olmoe":
        model["qk_norm"] = "full"
        model["moe"]["router"]["normalize_topk"] = False
    return json.dumps({"model": model, "data": {"source": "synthetic"},  # JSON is YAML
                       "train": {"steps": 20, "global_batch": 8, "micro_batch": 4, "lr": 0.01, "warmup_steps": 2,
                                 "eval_every": 0, "checkpoint_every": 20, "log_every": 10, "run_dir": run_dir}})


def to_hf(p, family):
    what = f"{family}: switchyard train -> export -> transformers"
    try:
        run = os.path.join(p.work, "run_" + family)
        cfg = run + ".yaml"
        with open(cfg, "w") as f:
            f.write(train_yaml(family, run))
        p.sy("train", "--config", cfg)
        ckpt = os.path.join(run, "checkpoints", "step_00000020")
        d = os.path.join(p.work, "exported_" + family)
        p.sy("export", "--checkpoint", ckpt, "--out", d)
        model, info = transformers.AutoModelForCausalLM.from_pretrained(d, output_loading_info=True,
                                                                        attn_implementation="eager")
        model = model.to(torch.float32)
        leftovers = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if leftovers:
            p.fail(what, f"transformers loading info {leftovers}")
            return
        p.check(what, rel(p.hf_logits(model), p.sy_logits(ckpt, "trained_" + family)))
    except Exception as e:
        p.fail(what, e)


def upcycle(p, name, config):
    what = f"{name}: dense -> switchyard import --upcycle (step 0)"
    try:
        model = build(config)
        reference = p.hf_logits(model)
        d = os.path.join(p.work, "dense_" + name)
        model.save_pretrained(d, safe_serialization=True)
        ckpt = os.path.join(p.work, "upcycled_" + name)
        p.sy("import", "--hf", d, "--config", ckpt + ".yaml", "--out", ckpt, "--upcycle", "--experts", "8", "--top-k", "2")
        p.check(what, rel(p.sy_logits(ckpt, "upcycled_" + name), reference))
        run = ckpt + "_run"
        out = p.sy("train", "--config", ckpt + ".yaml", "--resume", ckpt, "--run-dir", run, "--set", "train.steps=10",
                   "--set", "train.log_every=1", "--set", "train.global_batch=8", "--set", "train.micro_batch=4",
                   "--set", "train.eval_every=0", "--set", "train.checkpoint_every=0", "--set", "train.lr=0.003",
                   "--set", "train.warmup_steps=1", "--set", "model.seq_len=32")
        with open(os.path.join(run, "metrics.jsonl")) as f:
            losses = [json.loads(line)["loss"] for line in f if '"loss"' in line]
        trains = len(losses) == 10 and losses[-1] < losses[0]
        p.failures += not trains
        print(f"{'ok  ' if trains else 'FAIL'} {name}: the upcycled model trains: loss {losses[0]:.4f} -> {losses[-1]:.4f} "
              f"over {len(losses)} steps", flush=True)
    except Exception as e:
        p.fail(what, e)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("switchyard")
    ap.add_argument("--work", default="")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--cuda", action="store_true", help="also run Switchyard's forward on CUDA (fp32)")
    args = ap.parse_args()
    work = args.work or tempfile.mkdtemp(prefix="sy_hf_parity_")
    os.makedirs(work, exist_ok=True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, work {work}", flush=True)
    p = Parity(os.path.abspath(args.switchyard), work, args.tol, args.cuda)
    for family, config in hf_configs().items():
        from_hf(p, family, config)
        to_hf(p, family)
    for name, config in dense_configs().items():
        upcycle(p, name, config)
    print(f"{p.failures} failure(s)")
    sys.exit(1 if p.failures else 0)


if __name__ == "__main__":
    main()
