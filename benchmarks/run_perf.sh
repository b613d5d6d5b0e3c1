#!/usr/bin/env bash
# Regenerates every CPU performance number of the issue in one go, into one markdown file:
#
#   1. benchmarks/bench_cpu.py  — the fused ops (eager reference, torch.compile'd reference, torch and
#      C++ cpu backends, copy bandwidth) at 1x256x3072, 1x1000x1536, Flux 1x4096x3072, Wan 1.3B
#      1x32760x1536 and Wan 14B 2x75600x5120, fp32 and bf16; variants that do not fit in memory are
#      rows with the estimate instead of a crash;
#   2. benchmarks/skip_cost.py  — the cost of a skipped call against a full call on a Flux-class model
#      (width 1024, 8 blocks, 1024 image tokens, random weights) for DiCache and the peers that run on
#      the same bare transformer (FirstBlockCache, MagCache, TaylorSeer-Lite and attention mode,
#      cache-dit DBCache F1B0, SeaCache), split into blocks that run / cache work / arithmetic.
#
# Usage (from anywhere; run it in a quiet window: nothing else on the CPUs, ~23 GB of memory free):
#
#   benchmarks/run_perf.sh                      # writes bench_out/perf_<UTC time>/perf.md (+ JSON, logs)
#   benchmarks/run_perf.sh OUT_DIR
#   SMOKE=1 benchmarks/run_perf.sh /tmp/perf    # small sizes only, ~1.5 min: checks that everything runs
#
# Environment: PY (python, default .venv/bin/python), THREADS (torch threads; default: torch's choice,
# i.e. all cores), MEM_MARGIN_GB (GiB kept free when bench_cpu decides what fits; default 2),
# OPS_ARGS / SKIP_ARGS (extra arguments for bench_cpu.py / skip_cost.py), PYTEST_BENCH=1 (also run the
# pytest-benchmark suite benchmarks/test_bench_ops.py at the small, Flux and Wan sizes, ~4-6 min more;
# with DICACHE_BENCH_BIG=1 it adds 2x75600x5120).
#
# Expected run time on the 2-core KVM Xeon (L3 300 MiB, 23 GiB) with 2 threads and an idle machine,
# extrapolated from smoke runs (small sizes, one big-shape bf16 op, skip_cost at width 1024 with fewer
# blocks and tokens) and the earlier full-size rows in RESULTS.md: bench_cpu ~10-14 min (small shapes
# and Flux ~1 min, Wan ~1.5 min, 2x75600x5120 ~6-8 min, of which ~1.5 min filling the tensors and most
# of the rest the eager reference at ~5-15 s per call), plus ~2-3 min of torch.compile when inductor's
# cache (/tmp/torchinductor_$USER) is cold; skip_cost ~4 min. About 15-20 minutes in all.
# Peak memory ~22 GB: bench_cpu at 2x75600x5120 fp32 holds four (six for refresh) 3.1 GB tensors, and
# the eager reference adds up to three 3.1 GB fp32 temporaries (reconstruct: 21.7 GB in all); a variant
# runs only if its estimate fits in the memory available at that moment less MEM_MARGIN_GB, else its
# row says what it would need. On a 23 GiB machine the bf16 eager reference at that shape (~25 GB for
# probe_decide/reconstruct: six fp32 temporaries) and the fp32 eager refresh (24.8 GB) never fit.
# Use MEM_MARGIN_GB=4 if anything else may allocate memory during the run. skip_cost peaks at ~2 GB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
OUT="${1:-bench_out/perf_$(date -u +%Y%m%d_%H%M%S)}"
mkdir -p "$OUT"
MD="$OUT/perf.md"
THREAD_ARGS=()
[ -n "${THREADS:-}" ] && THREAD_ARGS=(--threads "$THREADS")
MARGIN="${MEM_MARGIN_GB:-2}"

if [ -n "${SMOKE:-}" ]; then
  OPS_SIZE=(--shapes 1x256x3072 1x1000x1536 --repeat 5)
  SKIP_SIZE=(--width 256 --heads 4 --tokens 256 --repeats 1)
else
  OPS_SIZE=()
  SKIP_SIZE=(--width 1024 --heads 8 --layers 2 --single-layers 6 --tokens 1024 --repeats 3)
fi
# shellcheck disable=SC2206
OPS_CMD=("$PY" benchmarks/bench_cpu.py "${OPS_SIZE[@]}" "${THREAD_ARGS[@]}" --mem-margin-gb "$MARGIN"
         --json "$OUT/ops.json" --md "$OUT/ops.md" ${OPS_ARGS:-})
# shellcheck disable=SC2206
SKIP_CMD=("$PY" benchmarks/skip_cost.py "${SKIP_SIZE[@]}" "${THREAD_ARGS[@]}"
          --json "$OUT/skip_cost.json" --md "$OUT/skip_cost.md" ${SKIP_ARGS:-})

{
  echo "# CPU performance run"
  echo
  echo "* **Date:** $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "* **Command:** \`benchmarks/run_perf.sh $*\`${SMOKE:+ (SMOKE=1: small sizes only)}"
  echo "* **Commit:** $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "* **Load average at the start:** $(cut -d' ' -f1-3 /proc/loadavg) (should be ~0: nothing else running)"
  echo "* **Software:** $("$PY" -c 'import sys, torch, diffusers
try:
    import cache_dit; cd = cache_dit.__version__
except Exception as e:
    cd = f"not importable ({type(e).__name__})"
print(f"Python {sys.version.split()[0]}, torch {torch.__version__} ({torch.get_num_threads()} threads by default), diffusers {diffusers.__version__}, cache-dit {cd}")')"
  echo "* **Machine:** $(free -g | awk '/^Mem:/ {print $2 " GiB total, " $7 " GiB available at the start"}')"
  echo
  echo '```'
  lscpu | grep -E '^(Architecture|CPU\(s\)|Model name|Thread\(s\) per core|Core\(s\) per socket|Socket\(s\)|L1d cache|L2 cache|L3 cache|NUMA node\(s\)|Hypervisor vendor|Flags)' \
    | sed -E 's/^(Flags:[[:space:]]+).*/\1(AVX-512: '"$(grep -qw avx512f /proc/cpuinfo && echo yes || echo no)"', AMX: '"$(grep -qw amx_tile /proc/cpuinfo && echo yes || echo no)"')/'
  echo '```'
  echo
} > "$MD"

run() {  # run LABEL LOG CMD...: time it, keep its stderr in LOG, stop on failure
  local label="$1" log="$2"; shift 2
  echo "== $label: $*" >&2
  local t0=$SECONDS
  if ! "$@" > "$log.out" 2> "$log"; then
    echo "$label failed; see $log" >&2
    tail -20 "$log" >&2
    return 1
  fi
  echo $((SECONDS - t0))
}

T_OPS=$(run "fused ops" "$OUT/ops.log" "${OPS_CMD[@]}")
{
  echo "## Fused ops on CPU"
  echo
  echo "* **Command:** \`${OPS_CMD[*]}\` (${T_OPS} s)"
  echo "* Median of interleaved rounds; **GB/s** = the fewest bytes the op must move / time; **of copy** = that over"
  echo "  \`dst.copy_(src)\` measured in the same rounds. At 1x4096x3072 four fp32 tensors (200 MB) fit this VM's"
  echo "  300 MiB L3, so that shape measures cache more than DRAM; 1x32760x1536 and 2x75600x5120 do not."
  echo
  cat "$OUT/ops.md"
  echo
} >> "$MD"

T_SKIP=$(run "skip cost" "$OUT/skip_cost.log" "${SKIP_CMD[@]}")
{
  echo "## What a skipped call costs"
  echo
  echo "* **Command:** \`${SKIP_CMD[*]}\` (${T_SKIP} s)"
  echo
  cat "$OUT/skip_cost.md"
  echo
} >> "$MD"
TOTAL=$((T_OPS + T_SKIP))

if [ -n "${PYTEST_BENCH:-}" ]; then
  PB_K=()
  [ -n "${SMOKE:-}" ] && PB_K=(-k "1x256x3072 or 1x1000x1536")
  PB_CMD=("$PY" -m pytest benchmarks/test_bench_ops.py -q -p no:cacheprovider "${PB_K[@]}"
          --benchmark-json "$OUT/pytest_bench.json")
  # torch takes its thread count from OMP_NUM_THREADS (pytest has no --threads)
  T_PB=$(OMP_NUM_THREADS="${THREADS:-${OMP_NUM_THREADS:-$(nproc)}}" DICACHE_BENCH_MD="$OUT/pytest_bench.md" run "pytest-benchmark" "$OUT/pytest_bench.log" "${PB_CMD[@]}")
  {
    echo
    echo "## Fused ops under pytest-benchmark"
    echo
    echo "* **Command:** \`${PB_CMD[*]}\` (${T_PB} s; each variant timed on its own with pytest-benchmark's"
    echo "  calibration, after a check against the reference)"
    echo
    cat "$OUT/pytest_bench.md"
  } >> "$MD"
  TOTAL=$((TOTAL + T_PB))
fi

echo "" >> "$MD"
echo "Total: ${TOTAL} s." >> "$MD"
echo "wrote $MD (${TOTAL} s)" >&2
