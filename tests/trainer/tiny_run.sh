# Shared by the CLI training tests (sourced): arguments, a scratch directory, pass/fail counting, and
# the small model every run of them trains (2 layers, d 32, 4 experts top-2, 8 steps, a checkpoint
# every 4).
set -u
bin=$1; mpiexec=$2; shift 2; flags=("$@")
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
failures=0; passed=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
ok() { echo "ok   $*"; passed=$((passed + 1)); }

common=(--set model.d_model=32 --set model.n_layers=2 --set model.n_heads=2 --set model.seq_len=32
        --set model.dense_ffn_hidden=64 --set model.moe.num_experts=4 --set model.moe.top_k=2
        --set model.moe.ffn_hidden=32 --set data.synthetic_tokens=65536 --set train.steps=8
        --set train.global_batch=8 --set train.micro_batch=2 --set train.warmup_steps=2
        --set train.log_every=1 --set train.eval_every=0 --set train.checkpoint_every=4
        --set train.keep_checkpoints=3 --set parallel.timeout_s=60)
cfg=$work/empty.yaml; : >"$cfg"
