"""Smoke tests of the performance benchmarks (benchmarks/bench_cpu.py, benchmarks/skip_cost.py) at tiny
sizes: they run, every variant / peer gets a row, the memory guard turns what does not fit into rows
with the reason, and the correctness check catches a wrong kernel. ~15 s on 2 cores.
"""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


def _load(name):
    if BENCH not in sys.path:
        sys.path.insert(0, BENCH)
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCH, f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def bc():
    return _load("bench_cpu")


def test_bench_cpu_rows(bc, tmp_path):
    out = tmp_path / "ops.json"
    assert bc.main(["--shapes", "1x33x65", "--dtypes", "float32", "bfloat16", "--repeat", "3", "--no-compile",
                    "--json", str(out), "--md", str(tmp_path / "ops.md")]) == 0
    rows = json.loads(out.read_text())["rows"]
    for op in bc.OPS:
        for dt in ("fp32", "bf16"):
            mine = {r["variant"]: r for r in rows if r["op"] == op and r["dtype"] == dt}
            assert {"copy", "eager", "torch", "triton", "cuda"} <= set(mine), (op, dt, set(mine))
            assert mine["copy"]["ms"] > 0 and mine["eager"]["ms"] > 0 and mine["eager"]["vs_eager"] == 1.0
            assert mine["torch"]["ms"] == mine["eager"]["ms"]  # the same functions, not timed twice
            assert mine["triton"]["ms"] is None and mine["triton"]["note"].startswith("unavailable")
            if "cpu" in mine and mine["cpu"]["ms"] is not None:
                r = mine["cpu"]
                assert r["GBps"] > 0 and r["of_copy"] > 0 and r["vs_eager"] > 0
    assert "| probe_decide | 1x33x65 | fp32 | cpu |" in (tmp_path / "ops.md").read_text() or "cpu" not in {
        r["variant"] for r in rows if r["ms"] is not None}


def test_bench_cpu_memory_guard(bc, tmp_path):
    """With (pretend) no memory left, every variant is a row saying what it would need, nothing crashes."""
    out = tmp_path / "ops.json"
    assert bc.main(["--shapes", "1x16x32", "--dtypes", "float32", "--repeat", "3", "--no-compile",
                    "--ops", "reconstruct", "--estimate-above", "0", "--mem-margin-gb", "1e6", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    timed = [r for r in rows if r["variant"] in ("copy", "eager", "cpu") and not r["note"].startswith("unavailable")]
    assert timed and all(r["ms"] is None and r["note"].startswith("not run: needs ~") for r in timed), timed


def test_bench_cpu_estimates_and_check(bc):
    """The per-element temporaries the memory guard scales: the eager reference's fp32 temporaries, none for
    the C++ kernels; and the pre-timing check catches a kernel that writes nothing."""
    from dicache.ops import BackendUnavailableError, load_backend, reference

    impls = {"eager": reference}
    assert bc.extra_bytes_per_element("eager", "probe_decide", torch.float32, impls) == pytest.approx(8, abs=1)
    assert bc.extra_bytes_per_element("eager", "probe_decide", torch.bfloat16, impls) == pytest.approx(24, abs=1)
    assert bc.check_against_reference(reference, "refresh", (2, 7, 13), torch.bfloat16) == []
    assert bc.check_against_reference(lambda *a: None, "reconstruct", (1, 7, 13), torch.float32)
    try:
        cpu = load_backend("cpu")
    except BackendUnavailableError:
        return
    impls["cpu"] = cpu
    assert bc.extra_bytes_per_element("cpu", "refresh", torch.bfloat16, impls) < 0.1
    for op in bc.OPS:
        assert bc.check_against_reference(cpu, op, (1, 999, 130), torch.bfloat16) == [], op


def test_skip_cost_all_peers_tiny(tmp_path):
    out = tmp_path / "skip.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "skip_cost.py"), "--width", "64", "--heads", "2", "--tokens", "64",
         "--layers", "1", "--single-layers", "2", "--calls", "6", "--warmup", "3", "--repeats", "1",
         "--threads", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    rows = {r["method"]: r for r in data["rows"]}
    assert len(rows) == 7, list(rows)
    by_key = dict(zip(("dicache", "fbc", "magcache", "ts_lite", "ts_attn", "dbcache", "seacache"), data["rows"]))
    for key, r in by_key.items():
        if key == "dbcache" and r["status"] in ("unsupported", "error"):  # an optional peer may be missing
            assert r["reason"]
            continue
        assert r["status"] == "ok", r
        assert r["skipped_calls"] >= 1, r
        # finite timings only: what a skip costs is the benchmark's answer, not a timed assertion (on a
        # width-64 model with one repeat the ratio is noise); the block counts below say what was skipped
        assert math.isfinite(r["skipped_over_full"]) and math.isfinite(r["overhead_of_block"]), r
        assert not [w for w in r["warnings"] if "fail-open" in w], r
    for key in ("dicache", "fbc", "dbcache"):
        if by_key[key]["status"] == "ok":
            assert by_key[key]["blocks_run"] == 1 and by_key[key]["m"] == 1
    for key in ("magcache", "seacache", "ts_lite"):
        assert by_key[key]["blocks_run"] == 0 and by_key[key]["m"] == 0
    assert by_key["ts_attn"]["blocks_run"] == 3 and by_key["ts_attn"]["m_over_M"] is None
    assert by_key["dicache"]["arith_ms"] > 0  # the spy on the engine's after_probe saw the skipped calls
    assert "overhead / one block" in proc.stdout
    # the computed call that ends a run: without hindsight and at the Flux preset's share, each timed against the
    # uncached calls run right before it; hindsight corrected every run it ended, and only with a share
    from dicache.config import preset

    computed = data["computed_rows"]
    assert [(r["backend"], r["hindsight"]) for r in computed] == [("auto", 0.0), ("auto", preset("flux").hindsight)]
    for r in computed:
        assert r["pattern"] == "FFF.F." and r["calls"] == 1, r  # 6 calls, warm-up 3, one skip between computed
        assert r["computed_ms"] > 0 and r["full_ms"] > 0 and math.isfinite(r["work_of_block"]), r
        assert r["arith_ms"] > 0, r  # the spies on the engine saw the computed call's own work
    assert computed[0]["hindsight_runs"] == 0 and computed[1]["hindsight_runs"] == 1
    assert "The computed call that ends a run" in proc.stdout
