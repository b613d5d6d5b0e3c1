#!/usr/bin/env bash
# Every GPU check of the project in one go, for a short GPU lease (about 6-10 minutes on an H200):
#
#   1. the machine: GPU, driver, torch, triton, nvcc;
#   2. the CUDA extension (csrc/): built just in time by dicache.build, timed;
#   3. the tests compiled for the GPU: tests/test_cuda_kernels.py and tests/test_triton_kernels.py with
#      TRITON_INTERPRET=0, and the end-to-end pipelines on CUDA tensors (tests/test_backends_e2e.py -k cuda);
#   4. benchmarks/bench_triton.py: the fused ops (Triton, CUDA, eager and compiled reference, copy) at the
#      Flux, Wan 1.3B and Wan 14B sizes, fp32 and bf16, each backend checked against the reference first;
#      then the same at two small shapes, where launch latency dominates;
#   5. benchmarks/skip_cost.py on the GPU at Flux.1 size (width 3072, 19 + 38 blocks, 4096 image + 512
#      text tokens, bf16, random weights): a skipped call against a full call, DiCache on the torch,
#      triton and cuda backends and every peer; and DiCache's computed call that ends a run of skips, with
#      and without hindsight (its rebuild and lerp), against the uncached call.
#
# Usage, from the repository root:  OUT=dir benchmarks/run_gpu.sh   (default OUT: bench_out/gpu_<UTC time>)
#                                   STEPS="build skip_cost" benchmarks/run_gpu.sh   (only those steps)
#                                   BENCH_OPS_ARGS="--ops reconstruct3" SKIP_COST_ARGS="--methods dicache fbc" ...
#                                   (extra arguments for bench_triton.py / skip_cost.py, to fit a shorter lease)
# Where diffusers (or cache-dit) is missing, wheels in .whl/ are installed into /tmp/site first (the GPU
# machine of this project has torch and triton but no diffusers and no network).
# Each step has its own time limit; a step that fails is reported and the next one runs. What comes back
# is 8 files: machine.txt and one log per step (each ends with the step's markdown table), plus the JSON rows.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench_out/gpu_$(date -u +%Y%m%d_%H%M%S)}"
mkdir -p "$OUT"
PY="${PY:-python3}"
export PYTHONUNBUFFERED=1 TRITON_INTERPRET=0 MAX_JOBS="${MAX_JOBS:-$(nproc)}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export DICACHE_BUILD_DIR="${DICACHE_BUILD_DIR:-/tmp/dicache_build}"

if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# A checkout without an install: dicache.kernels is kernels/ (pyproject's package-dir does this in an install).
[ -e dicache/kernels ] || ln -s ../kernels dicache/kernels
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# In this order: correctness first, so that a lease that runs out still brings it back.
STEPS="${STEPS:-build tests bench_ops bench_ops_small skip_cost}"  # a subset reruns only those
step() {  # step NAME SECONDS CMD...: run with a limit, log to $OUT/NAME.log, report the wall time
  local name="$1" limit="$2"; shift 2
  [[ " $STEPS " == *" $name "* ]] || return 0
  local t0=$SECONDS
  echo "== $name: $*"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - t0)) s"
  tail -n 4 "$OUT/$name.log"
}

{
  date -u '+%Y-%m-%d %H:%M UTC'
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv
  "$PY" -c 'import sys, torch, triton; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)'
  "$PY" -c 'import diffusers; print("diffusers", diffusers.__version__)' 2>&1 | tail -1
  "$PY" -c 'import cache_dit; print("cache-dit", cache_dit.__version__)' 2>&1 | tail -1
  nvcc --version | tail -2
  nproc
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

step build 240 "$PY" -c '
import json, time
t = time.time()
import dicache
info = dicache.build_info()
print(json.dumps(info, indent=1, default=str))
print(f"build_info in {time.time() - t:.1f} s")'
step tests 240 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda_kernels.py tests/test_triton_kernels.py \
  tests/test_backends_e2e.py -k "cuda or not e2e"
# shellcheck disable=SC2086  # the extra arguments are meant to split
step bench_ops 240 "$PY" benchmarks/bench_triton.py --json "$OUT/bench_ops.json" ${BENCH_OPS_ARGS:-}
step bench_ops_small 60 "$PY" benchmarks/bench_triton.py --shapes 1x256x3072 1x1000x1536
step skip_cost 300 "$PY" benchmarks/skip_cost.py --device cuda --dtype bfloat16 --width 3072 --heads 24 --layers 19 \
  --single-layers 38 --tokens 4096 --text-tokens 512 --repeats 3 --calls 8 --warmup 3 --backend torch triton cuda \
  --json "$OUT/skip_cost.json" ${SKIP_COST_ARGS:-}
echo "done in $SECONDS s"
