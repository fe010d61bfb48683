#!/usr/bin/env bash
# GPU check: the CUDA tests, then `msclr bench step` with the paper's model
# (experiments/ntu60/xsub_joint.yaml) at fp32/bf16 x batch 128/1024, the fused query views
# against today's step in the same run (quickstart model: exact, fused by default on a GPU;
# paper model: opt-in, its dropout makes fusion inexact), torch.compile (default mode, and
# reduce-overhead = CUDA graphs), a GPU linear-eval bench and a profile of the bf16 step;
# prints a table.
#
# Needs only python3 with torch + numpy + pyyaml (+ pytest for the tests): no network, no ray,
# no mlflow, no install (the repo is put on PYTHONPATH). Estimated 10-12 minutes on an H100/H200
# with both compile runs (not yet run on a GPU); GPU_CHECK_COMPILE=0 GPU_CHECK_CUDAGRAPHS=0
# brings it to about 5.
#
#   bash benchmarks/gpu_check.sh            # results in $OUT if set, else benchmarks/out/
#   SECONDS_PER_BENCH=20 GPU_CHECK_COMPILE=0 GPU_CHECK_CUDAGRAPHS=0 GPU_CHECK_PROFILE=0 bash benchmarks/gpu_check.sh
set -uo pipefail

cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${OUT:-benchmarks/out}
SECS=${SECONDS_PER_BENCH:-15}
mkdir -p "$RESULTS"
export PYTHONPATH="$PWD:$PWD/platform${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0

echo "== machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "(no nvidia-smi)"
$PY -c 'import torch; assert torch.cuda.is_available(), "CUDA not available"; print("torch", torch.__version__, torch.cuda.get_device_name())' || exit 1
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

echo "== CUDA tests (tests/test_bench.py tests/test_linear_heads.py tests/test_fused_step.py -k cuda)"
if $PY -c 'import pytest' 2>/dev/null; then
    timeout 240 $PY -m pytest tests/test_bench.py tests/test_linear_heads.py tests/test_fused_step.py -k cuda -q \
        -p no:cacheprovider -rs 2>&1 | tee "$RESULTS/pytest.log" || status=1
else
    echo "pytest is not installed: CUDA tests skipped" | tee "$RESULTS/pytest.log"; status=1
fi

bench() {  # bench NAME LIMIT_S ARGS...: one bench, its JSON to $RESULTS/NAME.json
    local name=$1 limit=$2; shift 2
    echo "== $name: msclr bench $*"
    timeout "$limit" $PY -m msclr_platform.cli bench "$@" --out "$RESULTS/$name.json" || { echo "FAILED: $name"; status=1; }
}

PAPER=experiments/ntu60/xsub_joint.yaml  # 1/4 width, 10 blocks, dropout 0.5, queue 32768
for dtype in fp32 bf16; do
    for batch in 128 1024; do
        bench "step_${dtype}_b${batch}" 120 step --config $PAPER --device cuda --dtype "$dtype" --batch-size "$batch" \
            --seconds "$SECS" --no-reference
    done
done
# The fused query views against today's step (separate view passes), alternating rounds in one run.
bench step_fused_quickstart_fp32_b1024 120 step --device cuda --batch-size 1024 --seconds "$SECS"
bench step_fused_paper_fp32_b128 120 step --config $PAPER --device cuda --batch-size 128 --fused-views on --seconds "$SECS"
bench step_fused_paper_bf16_b1024 120 step --config $PAPER --device cuda --dtype bf16 --batch-size 1024 --fused-views on \
    --seconds "$SECS"
if [ "${GPU_CHECK_COMPILE:-1}" = 1 ]; then  # compile time (a minute or two) is in the warm-up, not the timing
    bench step_bf16_b1024_compile 240 step --config $PAPER --device cuda --dtype bf16 --batch-size 1024 \
        --seconds "$SECS" --compile --fused-views on
fi
if [ "${GPU_CHECK_CUDAGRAPHS:-1}" = 1 ]; then  # inductor + CUDA graphs: one graph per (query, key) convention pair
    bench step_bf16_b1024_cudagraphs 300 step --config $PAPER --device cuda --dtype bf16 --batch-size 1024 \
        --seconds "$SECS" --compile-mode reduce-overhead --fused-views on
fi
bench linear_eval 120 linear-eval --device cuda --clips 2000 --epochs 100
if [ "${GPU_CHECK_PROFILE:-1}" = 1 ]; then  # where the bf16 step spends GPU time: what to optimise next
    echo "== profile: bf16, batch 1024, 5 steps (benchmarks/profile_step.py)"
    timeout 180 $PY benchmarks/profile_step.py --config $PAPER --device cuda --dtype bf16 --batch-size 1024 --steps 5 --rows 30 \
        > "$RESULTS/profile_bf16_b1024.txt" 2>&1 || { echo "FAILED: profile"; status=1; }
    tail -n 36 "$RESULTS/profile_bf16_b1024.txt"
fi

echo "== results"
$PY - "$RESULTS" <<'EOF' | tee "$RESULTS/summary.md"
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
rows = ["| bench | model | dtype | batch | fused views | compile | samples/s | x official 1,137 | reference samples/s "
        "(same run) | speedup vs reference | steps | peak GPU GB | device |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
for f in sorted(out.glob("step_*.json")):
    r = json.loads(f.read_text())
    ref = r.get("reference_samples_per_s")
    rows.append(f"| {f.stem} | {r['hidden_channels']}/{r['hidden_dim']}/{r['num_blocks']} | {r['dtype']} | "
                f"{r['batch_size']} | {r['fused_views']} | {r['compile_mode'] if r['compile'] else 'no'} | "
                f"{r['samples_per_s']:,.0f} | {r['ratio']:.2f} | {'' if ref is None else f'{ref:,.0f}'} | "
                f"{r.get('speedup_vs_reference') or ''} | {r['steps']} | {r.get('peak_gpu_memory_gb', '')} | "
                f"{r['device_name']} |")
print("\n".join(rows))
le = out / "linear_eval.json"
if le.exists():
    r = json.loads(le.read_text())
    print(f"\nlinear-eval ({r['train_clips']} train clips, {r['epochs']} epochs, {r['device_name']}): cached "
          f"{r['cached_s']} s, re-encoding {r['recompute_s']} s, speedup {r['speedup']}x; top-1 "
          f"{r['top1_cached']:.4f} vs {r['top1_recompute']:.4f}")
EOF
echo "results in $RESULTS (exit status $status)"
exit $status
