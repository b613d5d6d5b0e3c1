"""Smoke test of benchmarks/quality.py: the --quick run writes a row for every method family.

Runs on the shipped zoo models (few steps) when their weights exist, else on untrained models of the
same configuration. ~20–30 s on 2 cores.
"""

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "quality.py")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def test_quick_run_writes_every_family(tmp_path):
    import quality_methods as qm

    from dicache import zoo

    out = tmp_path / "bench"
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--out", str(out), "--quick", "--labels", "0,1", "--threads", "1", "--no-plot"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "quality.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert {r["model"] for r in rows} == set(zoo.NAMES)  # every one
    assert (out / "quality.md").is_file() and (out / "quality_details.json").is_file()
    with open(out / "quality_details.json") as f:
        details = json.load(f)

    # every family runs at some step count of the full benchmark (the γ-source families at one each)
    tabled = {f for m in qm.SETTINGS for st in qm.SETTINGS[m] for f, v in qm.SETTINGS[m][st].items() if v}
    assert tabled == set(qm.FAMILIES[1:]), set(qm.FAMILIES[1:]) - tabled
    for model in zoo.NAMES:
        mine = [r for r in rows if r["model"] == model]
        families = {r["family"] for r in mine}
        table = qm.settings_for(model, int(mine[0]["steps"]))
        want = {f for f in qm.FAMILIES if f == qm.NO_CACHE or table.get(f)}
        assert families == want, (model, want - families)

        ref = [r for r in mine if r["family"] == qm.NO_CACHE]
        assert len(ref) == 1
        assert math.isinf(float(ref[0]["psnr"])) and float(ref[0]["psnr"]) > 0
        assert float(ref[0]["savings"]) == 0.0 and float(ref[0]["block_fraction"]) == 1.0
        assert float(ref[0]["flop_fraction"]) == 1.0
        assert float(ref[0]["ssim"]) == 1.0

        for r in mine:
            assert r["status"] in ("ok", "fail-open", "unsupported", "error"), r
            # only an optional peer may fail, and on SD3 the two diffusers caches that subtract the last block's text
            # stream, which SD3's last block does not return (None)
            assert r["status"] != "error" or r["family"] == qm.DBCACHE or (
                model == "sd3_digits" and r["family"] in (qm.FBC, qm.TAYLORSEER_LITE) and "NoneType" in r["note"]), r
            if r["status"] in ("ok", "fail-open"):
                frac = float(r["flop_fraction"])
                assert 0.0 < frac <= 1.0 + 1e-12, r
                assert 0.0 < float(r["block_fraction"]) <= 1.0 + 1e-12, r
                assert abs(float(r["savings"]) - (1.0 - frac)) < 1e-9
                assert abs(float(r["fewer_flops"]) * frac - 1.0) < 1e-9
                assert float(r["wall_s"]) > 0 and float(r["speedup"]) > 0
                assert "dicache.summary disagrees" not in r["note"], r
            if r["status"] == "ok" and r["family"] != qm.NO_CACHE:
                # the mean of the samples' PSNR is at least the PSNR of their pooled error (log is concave)
                assert float(r["psnr_mean"]) >= float(r["psnr"]) - 1e-9, r

        # every cache counted the same way: uniform k=3 computes calls 0 and 3 of each 6-call branch fully
        # and the 1-block probe otherwise
        (uni,) = [r for r in mine if r["family"] == qm.UNIFORM]
        config = zoo.get_spec(model).config
        n_blocks = config["num_layers"] + config.get("num_single_layers", 0)
        assert abs(float(uni["block_fraction"]) - (2 * n_blocks + 4) / (6 * n_blocks)) < 1e-9
        # a cache that is not DiCache records what each model call ran, as the block counter saw it
        peers = [d for d in details["runs"] if d["model"] == model and d.get("status") == "ok"
                 and not d["family"].startswith(("DiCache", qm.UNIFORM, qm.NO_CACHE))]
        for d in peers:
            for run in d["runs"]:
                calls = run["pattern"]["calls"]
                assert len(calls) == run["calls"] and set(calls) <= set("F._") and calls[0] == "F", (d, calls)
        assert any(set(r["pattern"]["calls"]) > {"F"} for d in peers for r in d["runs"]), model  # some peer skipped

    # the failures peers are known for are rows with the reason, not crashes
    (ts_wan,) = [r for r in rows if r["model"] == "wan_digits" and r["family"] == qm.TAYLORSEER
                 and "default patterns" in r["setting"]]
    assert ts_wan["status"] == "unsupported" and "match no module" in ts_wan["note"]
    (sea_flux,) = [r for r in rows if r["model"] == "flux_digits" and r["family"] == qm.SEACACHE]
    assert sea_flux["status"] == "fail-open" and float(sea_flux["savings"]) == 0.0
    # HunyuanVideoPipeline passes no step_index/sigma to cache_context: SeaCache runs full there, and says so
    (sea_hy,) = [r for r in rows if r["model"] == "hunyuan_digits" and r["family"] == qm.SEACACHE]
    assert sea_hy["status"] == "fail-open" and "step_index" in sea_hy["note"]
    # SD3's transformer has no enable_cache: diffusers' caches are applied by hand there, and the rows say so
    (mag_sd3,) = [r for r in rows if r["model"] == "sd3_digits" and r["family"] == qm.MAGCACHE]
    assert mag_sd3["status"] == "ok" and qm.BY_HAND in mag_sd3["note"] and float(mag_sd3["savings"]) > 0

    # runs split over processes merge into one report with the same rows
    merged = tmp_path / "merged"
    proc = subprocess.run([sys.executable, SCRIPT, "merge", str(merged), str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(merged / "quality.csv", newline="") as f:
        again = list(csv.DictReader(f))
    assert [(r["model"], r["family"], r["setting"], r["psnr"]) for r in again] == [
        (r["model"], r["family"], r["setting"], r["psnr"]) for r in rows]
    assert "The lead at" in (merged / "quality.md").read_text()
    assert "read on the Pareto fronts" in (merged / "quality.md").read_text()
    assert "mean of the samples' PSNR" in (merged / "quality.md").read_text()
    # and one model's rows of a run of several (a run split between reports)
    only = tmp_path / "only"
    proc = subprocess.run([sys.executable, SCRIPT, "merge", str(only), str(out), "--models", "wan_digits"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(only / "quality.csv", newline="") as f:
        wan_only = list(csv.DictReader(f))
    assert [(r["family"], r["setting"], r["psnr"]) for r in wan_only] == [
        (r["family"], r["setting"], r["psnr"]) for r in rows if r["model"] == "wan_digits"]
    with open(only / "quality_details.json") as f:
        assert {d["model"] for d in json.load(f)["runs"]} == {"wan_digits"}
    with open(out / "quality_details.json") as f:
        details = json.load(f)["runs"]
    for d in details:
        for run in d.get("runs", []) if d.get("family") != qm.NO_CACHE else []:
            assert len(run["sample_psnr"]) == 2, d  # one per label of the batch
            want = next(r for r in rows if r["model"] == d["model"] and r["family"] == d["family"]
                        and r["setting"] == d["setting"])
            assert sum(run["sample_psnr"]) / 2 == pytest.approx(float(want["psnr_mean"]), abs=2e-3)
    # a run pooled with a copy of itself is the same run (its PSNR pools equal errors)
    pooled = tmp_path / "pooled"
    proc = subprocess.run([sys.executable, SCRIPT, "pool", str(pooled), str(out), str(merged)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(pooled / "quality.csv", newline="") as f:
        same = list(csv.DictReader(f))
    assert [(r["family"], r["setting"], r["status"]) for r in same] == [
        (r["family"], r["setting"], r["status"]) for r in rows]
    for a, b in zip(same, rows):
        if b["status"] == "ok" and math.isfinite(float(b["psnr"])):
            assert float(a["psnr"]) == pytest.approx(float(b["psnr"]), abs=1e-9)
            assert float(a["psnr_mean"]) == pytest.approx(float(b["psnr_mean"]), abs=1e-9)
            assert int(a["seeds"]) == 2 * int(b["seeds"])
    # and a report's own tables stand in for its csv (a run whose csv is gone), to the report's rounding
    from_md = tmp_path / "from_md"
    proc = subprocess.run([sys.executable, SCRIPT, "merge", str(from_md), str(out / "quality.md")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(from_md / "quality.csv", newline="") as f:
        md_rows = list(csv.DictReader(f))
    assert [(r["model"], r["family"], r["setting"], r["status"]) for r in md_rows] == [
        (r["model"], r["family"], r["setting"], r["status"]) for r in rows]
    for a, b in zip(md_rows, rows):
        if b["status"] == "ok":
            assert float(a["psnr"]) == pytest.approx(float(b["psnr"]), abs=0.006)
            assert float(a["psnr_mean"]) == pytest.approx(float(b["psnr_mean"]), abs=0.006)
            assert float(a["flop_fraction"]) == pytest.approx(float(b["flop_fraction"]), abs=6e-4)


def test_block_counter_names_what_each_call_ran():
    """``BlockCounter.call_pattern``: per model call, ``F`` every block ran, ``.`` some, ``_`` none; reset forgets."""
    from block_counter import BlockCounter

    class Blocks(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList(torch.nn.Sequential(torch.nn.Linear(4, 4)) for _ in range(3))

        def forward(self, x, run):
            for block in self.blocks[:run]:
                x = block(x)
            return x

    model = Blocks()
    counter = BlockCounter(model)
    x = torch.randn(2, 5, 4)
    for run in (3, 1, 0, 3, 2):
        model(x, run)
    assert counter.calls == 5 and counter.call_pattern() == "F._F."
    counter.reset()
    assert counter.call_pattern() == ""
    model(x[:1], 3)  # fewer rows: still every block of the call
    model(x, 0)
    assert counter.call_pattern() == "F_"
    counter.remove()


def test_mag_calibration_parser():
    import quality_methods as qm

    text = (
        "\n[MagCache] Calibration Complete. Copy these values to MagCacheConfig(mag_ratios=...):\n[1.0, 0.9, 1.1]\n\n"
        "\n[MagCache] Calibration Complete. Copy these values to MagCacheConfig(mag_ratios=...):\n[1.0, 1.1, 0.9]\n\n"
    )
    assert qm.parse_mag_calibration(text) == [[1.0, 0.9, 1.1], [1.0, 1.1, 0.9]]


def test_fixed_patterns_runs_the_given_pattern():
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "fixed_patterns.py")
    spec = importlib.util.spec_from_file_location("fixed_patterns", path)
    fp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fp)
    assert fp.check_pattern("F.", 5) == "F.F.F"
    for bad in ("", ".F", "FX"):
        with pytest.raises(ValueError):
            fp.check_pattern(bad, 5)
    rows = fp.run("wan_digits", 6, ["FFFFFF", "FF._FF", "FF..FF"], seeds=[0], labels=[0, 1])
    full, predicted, probed = rows
    assert full["ran"] == "FFFFFF" and full["fewer_flops"] == pytest.approx(1.0, abs=0.02)
    # the leading branch did what the pattern says: '_' without a probe, '.' with one
    assert predicted["ran"] == "FF._FF" and probed["ran"] == "FF..FF"
    assert predicted["fewer_flops"] > probed["fewer_flops"] > 1.2
    assert 10 < predicted["psnr"] < 200 and 10 < probed["psnr"] < 200
    # one PSNR per sample (seed/label); the PSNR over all samples is that of their mean squared error
    per = probed["per_sample"]
    assert list(per) == ["s0/0", "s0/1"] and len(set(per.values())) == 2
    mse = sum(10 ** (-v / 10) for v in per.values()) / len(per)
    assert probed["psnr"] == pytest.approx(-10 * math.log10(mse), abs=1e-6)
    # where runs are planned (26 steps), on a family whose default is a budget (no preset): the pattern still
    # decides alone, runs that lengthen after shortening included (no budget, reach bound or monotone runs)
    pat = "FFF.F...F.F....FFFFFFFFFFF"
    (row,) = fp.run("sd3_digits", 26, [pat], seeds=[0], labels=[0])
    assert row["ran"] == pat.replace(".", "_")  # a planned skip runs no probe


def test_fixed_patterns_one_more_adds_a_call_at_each_chosen_skip(capsys):
    """``--one-more PATTERN [--every N]``: the pattern, then it with one more step computed at each N-th of its
    skipped steps (from the first) and at its last; misuse named."""
    import fixed_patterns as fp

    base = "FF._F._F.FF"
    assert fp.one_more(base) == [base, "FFF_F._F.FF", "FF.FF._F.FF", "FF._FF_F.FF", "FF._F.FF.FF", "FF._F._FFFF"]
    # every second skip (steps 2, 5, 8) and the last (8 already): each variant computes exactly one step more
    got = fp.one_more(base, every=2)
    assert got == [base, "FFF_F._F.FF", "FF._FF_F.FF", "FF._F._FFFF"]
    assert all(p.count("F") == base.count("F") + 1 for p in got[1:])
    assert fp.one_more("FF_F_F", every=3) == ["FF_F_F", "FFFF_F", "FF_FFF"]  # the last skip (4) joins step 2
    with pytest.raises(ValueError, match="every"):
        fp.one_more(base, every=0)
    with pytest.raises(ValueError, match="no step"):
        fp.one_more("FFFF")
    for argv, msg in ((["FF_F", "--every", "2"], "--every goes with --one-more"),
                      (["--one-more", "F_FX"], "made of F"),
                      (["--one-more", "FFFF"], "skips no step"),
                      ([], "give patterns")):
        with pytest.raises(SystemExit):
            fp.main(["wan_digits", "4", *argv])
        assert msg in capsys.readouterr().err


def test_reach_variants_swap_the_engines_reach_test_for_the_run(capsys):
    """``reach_variants.py VARIANT …``: each variant's reach on the entries the presets' runs leave (after the
    warm-up 1, 2, 4; a lengthening run 4, 7, 11; a call out of step 10, 12, 13), the engine's test swapped only
    inside the block (also on an error), misuse named."""
    import dicache.engine
    import reach_variants as rv
    from dicache.state import within_reach

    V = rv.VARIANTS
    cases = {  # (t0, t1, t2, step): quadratic taken under shorter / newest / longer / after_warmup
        (1, 2, 4, 5): (True, True, True, True), (1, 2, 4, 6): (False, True, True, True),
        (4, 7, 11, 14): (True, True, True, True), (4, 7, 11, 15): (False, True, True, False),
        (4, 7, 11, 16): (False, True, False, False),
        (10, 12, 13, 14): (True, True, True, True), (10, 12, 13, 15): (False, False, True, False),
        (10, 12, 13, 16): (False, False, False, False)}
    for entries, want in cases.items():
        got = tuple(V[n](*entries) for n in ("shorter", "newest", "longer", "after_warmup"))
        assert got == want, (entries, got)
    assert V["shorter"] is within_reach
    for name in V:
        with rv.reach_variant(name):
            assert dicache.engine.within_reach is V[name]
        assert dicache.engine.within_reach is within_reach
    with pytest.raises(RuntimeError):
        with rv.reach_variant("newest"):
            raise RuntimeError("boom")
    assert dicache.engine.within_reach is within_reach
    with pytest.raises(ValueError, match="variant must be one of"):
        with rv.reach_variant("widest"):
            pass
    assert rv.main([]) == 2 and "variants: shorter, newest, longer, after_warmup" in capsys.readouterr().out


def _add_noise_it_cannot_repeat(monkeypatch):
    """Each benchmark run's images get noise from a generator seeded anew: two uncached runs of a seed differ."""
    import quality as Q

    real = Q.sample

    def unseeded(*args, **kwargs):
        res = real(*args, **kwargs)
        g = torch.Generator()
        g.seed()  # a seed of its own every run
        res.images = res.images + torch.randn(res.images.shape, generator=g)
        return res

    monkeypatch.setattr(Q, "sample", unseeded)


def test_fixed_patterns_takes_another_scheduler_and_refuses_noise_it_cannot_repeat(monkeypatch, capsys):
    """``--scheduler`` / ``--scheduler-config`` as ``quality.py``'s (a sampler that draws its noise from the global
    generator, which each run seeds, included); a pipeline whose uncached runs of a seed differ is refused, as
    ``run_options.py`` refuses it."""
    import fixed_patterns as fp

    from dicache.zoo import _specs

    for name in ("cogvideox_digits", "flux_digits"):
        monkeypatch.setitem(_specs.SPECS, name, _specs.SPECS[name])  # restored after the test
    assert fp.main(["cogvideox_digits", "6", "FF_F_F", "--seeds", "0", "--labels", "0,1",
                    "--scheduler", "CogVideoXDPMScheduler"]) == 0
    out = capsys.readouterr().out
    assert "6 steps, sampled with CogVideoXDPMScheduler, seeds [0]" in out and "FF_F_F" in out
    noisy = ["--scheduler", "FlowMatchEulerDiscreteScheduler", "--scheduler-config", '{"stochastic_sampling": true}']
    assert fp.main(["flux_digits", "6", "FF_F_F", "--seeds", "0", "--labels", "0"] + noisy) == 0
    assert "stochastic_sampling=True" in capsys.readouterr().out
    _add_noise_it_cannot_repeat(monkeypatch)
    assert fp.main(["flux_digits", "6", "FF_F_F", "--seeds", "0", "--labels", "0"]) == 2
    assert "differ" in capsys.readouterr().err


def test_run_options_reports_the_engine_s_own_decisions():
    import importlib.util

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "run_options.py")
    spec = importlib.util.spec_from_file_location("run_options", path)
    ro = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ro)
    rows = list(ro.run("wan_digits", 8, [{"threshold": 0.0}, {"threshold": 100.0, "warmup": 2, "plan_runs": True,
                                                              "max_extrapolation": 1.0}], seeds=[0], labels=[0, 1]))
    never, planned = rows
    assert never["pattern"] == "FFFFFFFF" and never["fewer_flops"] == pytest.approx(1.0, abs=0.02)
    assert never["psnr"] == float("inf")
    # planned runs: one skip after the warm-up, then two, the last two steps computed by the preset
    assert planned["pattern"] == "FF_F__FF" and planned["fewer_flops"] > 1.3
    assert 10 < planned["psnr"] < 200
    with pytest.raises(SystemExit):
        ro.main(["wan_digits", "8", '{"threshold": -1}'])


def test_run_options_prints_each_call_s_summary_and_takes_another_scheduler(monkeypatch, capsys):
    """``--summaries``: ``dicache.summary`` after each seed's call (a budget's second call replays the first's
    errors); ``--scheduler``: as ``quality.py``'s, a bad name refused naming the argument; the process as it was."""
    import run_options as ro

    from dicache.zoo import _specs

    monkeypatch.setitem(_specs.SPECS, "cogvideox_digits", _specs.SPECS["cogvideox_digits"])  # restored after
    with pytest.raises(SystemExit):
        ro.main(["cogvideox_digits", "8", '{"threshold": 0.1}', "--scheduler", "Bogus"])
    assert "--scheduler: 'Bogus'" in capsys.readouterr().err
    argv = ["cogvideox_digits", "10", '{"target_speedup": 1.5}', "--seeds", "3,4", "--labels", "0,1",
            "--scheduler", "CogVideoXDPMScheduler", "--summaries"]
    assert ro.main(argv) == 0 and torch.is_grad_enabled()
    out = capsys.readouterr().out
    assert "10 steps, sampled with CogVideoXDPMScheduler, seeds [3, 4]" in out
    first, second = out.split("seed 3: ")[1].split("seed 4: ")
    assert "budget: planned, online" in first and "budget: planned, replay, δ=" in second
    assert all(len(part.split("pattern  ")[1].split()[0]) == 10 for part in (first, second))


def test_run_options_saves_the_budget_profiles_and_another_run_replays_them(tmp_path, capsys):
    """``--save-profiles``: the budget's error profiles after the last seed, as JSON; ``--budget-profiles``: another
    run (process) takes them, and its first call replays; bad uses refused naming the argument."""
    import run_options as ro

    path = tmp_path / "profiles.json"
    argv = ["wan_digits", "10", '{"target_speedup": 2}', "--seeds", "3", "--labels", "0,1", "--summaries"]
    assert ro.main(argv + ["--save-profiles", str(path)]) == 0
    out = capsys.readouterr().out
    assert "budget: online" in out and f"to {path}" in out
    saved = json.loads(path.read_text())
    assert "cond" in [r["branch"] for r in saved] and all(r["steps"] == 10 for r in saved)
    assert ro.main(argv + ["--budget-profiles", str(path)]) == 0
    assert "budget: replay, δ=" in capsys.readouterr().out.split("seed 3: ")[1]
    with pytest.raises(SystemExit):
        ro.main(argv[:3] + ['{"target_speedup": 3}'] + argv[3:] + ["--save-profiles", str(path)])
    assert "--save-profiles writes the profiles of one option set" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ro.main(argv + ["--budget-profiles", str(tmp_path / "missing.json")])
    assert "--budget-profiles:" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text(json.dumps([dict(saved[0], steps=0)]))
    with pytest.raises(SystemExit):
        ro.main(argv + ["--budget-profiles", str(tmp_path / "bad.json")])
    err = capsys.readouterr().err
    assert "--budget-profiles: budget_profiles" in err and "steps must be an int >= 2" in err


def test_run_options_first_calls_makes_every_seed_a_first_call(tmp_path, capsys):
    """``--first-calls``: each seed's call is the first of a fresh ``dicache.enable`` (the reports' online family),
    with ``--budget-profiles`` replaying from each; ``--save-profiles`` writes the last seed's."""
    import run_options as ro

    path = tmp_path / "profiles.json"
    argv = ["wan_digits", "10", '{"target_speedup": 2}', "--seeds", "3,4", "--labels", "0,1", "--summaries"]
    assert ro.main(argv + ["--first-calls", "--save-profiles", str(path)]) == 0
    out = capsys.readouterr().out
    assert "budget: online" in out.split("seed 4: ")[1] and "budget: replay" not in out
    assert {r["trajectories"] for r in json.loads(path.read_text())} == {1}
    assert ro.main(argv + ["--first-calls", "--budget-profiles", str(path)]) == 0
    out = capsys.readouterr().out
    assert "budget: replay, δ=" in out.split("seed 4: ")[0] and "budget: replay, δ=" in out.split("seed 4: ")[1]
    assert ro.main(argv) == 0  # without it the second seed replays the first's errors
    assert "budget: replay, δ=" in capsys.readouterr().out.split("seed 4: ")[1]


def test_run_options_online_size_power_fits_the_first_call_s_prediction(monkeypatch, capsys):
    """``--online-size-power PRIOR``: the first call predicts the errors to come as c·size^p, p fitted in log-log and
    pulled towards 1 by the prior; the library's rule is back afterwards; bad values refused."""
    import run_options as ro

    from dicache.budget import Budget

    sizes = [0.01 * 1.3 ** k for k in range(12)]
    for p_true in (0.5, 1.2):
        measured = {k: 2.0 * sizes[k] ** p_true for k in range(1, 9)}
        assert ro.fitted_size_power(measured, sizes, 0.0) == pytest.approx(p_true)
        assert ro.fitted_size_power(measured, sizes, 1e9) == pytest.approx(1.0, abs=1e-6)
        between = ro.fitted_size_power(measured, sizes, 1.0)
        assert min(p_true, 1.0) < between < max(p_true, 1.0)
    assert ro.fitted_size_power({k: sizes[k] ** 3 for k in range(4)}, sizes, 0.0) == ro.SIZE_POWER_MAX
    assert ro.fitted_size_power({k: 1.0 / sizes[k] for k in range(4)}, sizes, 0.0) == 0.0
    stock, fit, fits = Budget.online_profile, ro.fitted_size_power, []

    def counted(measured, sizes, prior):
        fits.append(prior)
        return fit(measured, sizes, prior)

    monkeypatch.setattr(ro, "fitted_size_power", counted)
    argv = ["wan_digits", "10", '{"target_speedup": 2}', "--seeds", "3", "--labels", "0,1", "--first-calls"]
    assert ro.main(argv + ["--online-size-power", "0.5"]) == 0
    assert fits and set(fits) == {0.5} and Budget.online_profile is stock
    with pytest.raises(SystemExit):
        ro.main(argv + ["--online-size-power", "-1"])
    assert "--online-size-power must be a finite number >= 0" in capsys.readouterr().err
    # a fixed exponent: no fit, the errors to come predicted as c·size^p, c so that they sum to those measured
    from dicache.config import DiCacheConfig
    from dicache.state import BranchState

    budget, state = Budget(DiCacheConfig(target_speedup=2.0, warmup=1), 10), BranchState("c")
    measured = {1: 0.2, 2: 0.3, 3: 0.25}
    state.increments.update(measured)
    fits.clear()
    with ro.online_size_power(None, 0.5):
        profile = Budget.online_profile(budget, state, 3, 12, sizes)
        # the library's own exponent (where the probe decides) gives way to the one asked for
        assert Budget.online_profile(budget, state, 3, 12, sizes, 0.85) == profile
    assert Budget.online_profile is stock and not fits
    c = sum(measured.values()) / sum(sizes[k] ** 0.5 for k in measured)
    assert {k: profile[k] for k in measured} == measured
    assert [profile[k] for k in range(4, 12)] == pytest.approx([c * sizes[k] ** 0.5 for k in range(4, 12)])
    assert ro.main(argv + ["--online-size-exponent", "0.5"]) == 0 and not fits
    for bad in (["--online-size-exponent", "0"], ["--online-size-exponent", "2"],
                ["--online-size-exponent", "0.8", "--online-size-power", "1"]):
        with pytest.raises(SystemExit):
            ro.main(argv + bad)
        assert "--online-size-exponent must be in (0, 1.5]" in capsys.readouterr().err


def test_run_options_thresholds_reads_each_option_set_on_its_curve(capsys):
    """``--thresholds``: each option set at each δ, then its PSNR interpolated at the ``--at`` savings (pooled /
    mean of the samples [the best δ saving at least that much]); bad values refused naming the argument."""
    import run_options as ro

    rows = [dict(options=dict(o, threshold=d), fewer_flops=f, psnr=p, psnr_mean=m)
            for o, d, f, p, m in [({}, 0.1, 1.5, 40.0, 42.0), ({}, 0.3, 2.5, 30.0, 34.0),
                                  ({"hindsight": 0}, 0.1, 2.0, 36.0, 37.0), ({"hindsight": 0}, 0.3, 3.0, 20.0, 21.0)]]
    assert ro.with_thresholds([{}, {"hindsight": 0}], [0.1, 0.3]) == [
        {"threshold": 0.1}, {"threshold": 0.3}, {"hindsight": 0, "threshold": 0.1}, {"hindsight": 0, "threshold": 0.3}]
    head, rule, plain, off = ro.curves_table(rows, [{}, {"hindsight": 0}], [2.0, 2.5, 3.0])
    assert head == "| options | 2× | 2.5× | 3× |" and rule.count("---:") == 3
    # at 2× the flop fraction 0.5 lies between 1/1.5 and 1/2.5, a share (1/1.5 − 0.5) / (1/1.5 − 0.4) = 0.625 along
    assert plain == "| `{}` | 33.8 / 37.0 [30.0] | 30.0 / 34.0 [30.0] | – / – [–] |"
    assert off == '| `{"hindsight": 0}` | 36.0 / 37.0 [36.0] | 26.4 / 27.4 [20.0] | 20.0 / 21.0 [20.0] |'
    argv = ["wan_digits", "8", '{"hindsight": 0}', "--seeds", "0", "--labels", "0,1", "--thresholds", "0,100"]
    assert ro.main(argv + ["--at", "1.2"]) == 0
    out = capsys.readouterr().out
    assert '{"hindsight": 0, "threshold": 0.0}' in out and '{"hindsight": 0, "threshold": 100.0}' in out
    # δ = 0 computes every call (an infinite PSNR, read by neither); δ = 100 saves more than 1.2×: the front's point
    assert out.splitlines()[-2] == "| --- | ---: |"
    assert re.fullmatch(r'\| `\{"hindsight": 0\}` \| – / – \[\d+\.\d\] \|', out.splitlines()[-1])
    for bad, says in ((["--at", "1"], "--at savings > 1"), (["--at", "x"], "comma-separated numbers")):
        with pytest.raises(SystemExit):
            ro.main(argv + bad)
        assert says in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ro.main(["wan_digits", "8", '{"threshold": 0.2}', "--thresholds", "0.1"])
    assert "leave threshold and target_speedup out" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ro.main(["wan_digits", "8", "{}", "--at", "2"])
    assert "give --thresholds" in capsys.readouterr().err


def test_front_reads_the_best_setting_saving_at_least_that_much():
    import quality as Q
    import quality_methods as qm

    def row(family, fewer, psnr, status="ok"):
        return dict(model="m", steps=20, family=family, setting=f"{fewer}", status=status, flop_fraction=1.0 / fewer,
                    psnr=psnr, ssim=1.0 - 1.0 / psnr)

    # a jagged family: the setting at 2.2× is unlucky, the one at 2.4× saves more and scores higher
    fam = [row(qm.DICACHE, 1.8, 50.0), row(qm.DICACHE, 2.2, 40.0), row(qm.DICACHE, 2.4, 46.0),
           row(qm.DICACHE, 3.1, 30.0), row(qm.DICACHE, 2.6, 99.0, status="fail-open")]
    assert Q.front_at(fam, 2.0) == (46.0, pytest.approx(2.4))
    assert Q.front_at(fam, 2.4) == (46.0, pytest.approx(2.4))  # at exactly the setting's savings
    assert Q.front_at(fam, 2.5) == (30.0, pytest.approx(3.1))  # the failed-open row counts for nothing
    assert Q.front_at(fam, 3.2) is None
    assert Q.front_at(fam, 2.0, "ssim")[0] == pytest.approx(1.0 - 1.0 / 46.0)
    # interpolation, by contrast, is pulled down by the unlucky neighbour
    assert Q.psnr_at(fam, 2.2) == pytest.approx(40.0) and Q.psnr_at(fam, 2.2) < Q.front_at(fam, 2.2)[0]
    w = (1 / 2.3 - 1 / 2.4) / (1 / 2.2 - 1 / 2.4)  # linear in the flop fraction
    assert Q.psnr_at(fam, 2.3) == pytest.approx(46.0 + w * (40.0 - 46.0))
    # two settings with the same savings: the better one (the best δ there), on either side of the order
    for tie in (36.0, 48.0):
        assert Q.psnr_at(fam + [row(qm.DICACHE, 2.2, tie)], 2.2) == pytest.approx(max(40.0, tie))

    peer = [row(qm.UNIFORM, 2.0, 41.0), row(qm.UNIFORM, 3.0, 35.0)]
    lines = Q.lead_table(fam + peer, front=True)
    two = next(ln for ln in lines if "| 2× |" in ln)
    assert "| uniform | 41.0 (2.00×) | DiCache | 46.0 (2.40×) | +5.0 | 46.0 (2.40×) | +0.0 |" in two
    three = next(ln for ln in lines if "| 3× |" in ln)
    assert "| uniform | 35.0 (3.00×) | DiCache | 30.0 (3.10×) | -5.0 |" in three

    # the per-sample mean is read the same way; rows of older runs without it count for nothing
    for r in fam + peer:
        r["psnr_mean"] = r["psnr"] + 2.0
    fam[2]["psnr_mean"] = ""
    assert Q.front_at(fam, 2.0, "psnr_mean") == (42.0, pytest.approx(2.2))  # 2.4× has no value
    w = (1 / 2.4 - 1 / 3.1) / (1 / 2.2 - 1 / 3.1)
    assert Q.psnr_at(fam, 2.4, "psnr_mean") == pytest.approx(32.0 + w * (42.0 - 32.0))
    two = next(ln for ln in Q.lead_table(fam + peer, front=True, metric="psnr_mean") if "| 2× |" in ln)
    assert "| uniform | 43.0 (2.00×) | DiCache | 42.0 (2.20×) | -1.0 |" in two
    with pytest.raises(ValueError, match="metric must be one of"):
        Q.psnr_at(fam, 2.0, "lpips")
    with pytest.raises(ValueError, match="metric must be one of"):
        Q.lead_table(fam, metric="PSNR")


def test_pool_rows_is_one_run_over_the_samples_of_both():
    import quality as Q

    def row(setting, frac, psnr, ssim, seeds=2, status="ok", family="DiCache"):
        return dict(model="m", steps=20, family=family, setting=setting, status=status, seeds=seeds,
                    flop_fraction=frac, block_fraction=frac, mac_fraction=frac, savings=1 - frac, fewer_flops=1 / frac,
                    psnr=psnr, psnr_mean=psnr + 3.0, ssim=ssim, wall_s=1.0)

    a = [row("δ=0.1", 0.5, 40.0, 0.99), row("δ=0.2", 0.4, 30.0, 0.9), row("only a", 0.3, 20.0, 0.8),
         row("ref", 1.0, math.inf, 1.0, family="no cache")]
    b = [row("δ=0.1", 0.4, 50.0, 0.97, seeds=6), row("δ=0.2", 0.4, 1.0, 0.0, status="fail-open"),
         row("ref", 1.0, math.inf, 1.0, family="no cache")]
    got = {r["setting"]: r for r in Q.pool_rows(a, b)}
    assert set(got) == {"δ=0.1", "δ=0.2", "ref"}  # a setting of one run alone is left out
    p = got["δ=0.1"]
    # the mean squared error over all samples: 2 seeds at 1e-4, 6 at 1e-5
    assert p["psnr"] == pytest.approx(-10 * math.log10((2 * 1e-4 + 6 * 1e-5) / 8))
    assert p["flop_fraction"] == pytest.approx(0.425) and p["fewer_flops"] == pytest.approx(1 / 0.425)
    assert p["savings"] == pytest.approx(0.575) and p["ssim"] == pytest.approx(0.975) and p["seeds"] == 8
    assert p["psnr_mean"] == pytest.approx(0.25 * 43.0 + 0.75 * 53.0)  # the mean over all 8 seeds' samples
    assert got["δ=0.2"]["status"] == "fail-open"  # not ok in either part: not pooled
    assert math.isinf(got["ref"]["psnr"])
    # a row that does not say its seed count (recovered from a report's tables) takes the run's
    a[0]["seeds"] = ""
    p = {r["setting"]: r for r in Q.pool_rows(a, b, seeds_a=6)}["δ=0.1"]
    assert p["flop_fraction"] == pytest.approx(0.45) and p["seeds"] == 12
    # a part run before the per-sample column: the pooled row has none (not the other part's alone)
    b[0]["psnr_mean"] = ""
    assert {r["setting"]: r for r in Q.pool_rows(a, b)}["δ=0.1"]["psnr_mean"] == ""


def test_reports_carry_the_per_sample_mean_and_older_ones_parse_without_it(tmp_path):
    import quality as Q
    import quality_methods as qm

    def row(family, setting, frac, psnr, psnr_mean):
        return dict(model="flux_digits", steps=20, family=family, setting=setting, status="ok", seeds=2, labels=10,
                    flop_fraction=frac, block_fraction=frac, mac_fraction=frac, savings=1 - frac,
                    fewer_flops=1 / frac, calls=20, wall_s=1.0, speedup=1 / frac, cpu_s=1.0, speedup_cpu=1 / frac,
                    psnr=psnr, psnr_mean=psnr_mean, ssim=0.99, weights="shipped weights", note="", lpips="")

    rows = [row(qm.NO_CACHE, "", 1.0, math.inf, math.inf), row(qm.UNIFORM, "k=2", 0.5, 38.25, 40.5),
            row(qm.DICACHE, "δ=0.2", 0.52, 49.0, 51.75), row(qm.DICACHE, "δ=0.4", 0.38, 44.0, 47.0),
            row(qm.DICACHE_BUDGET, "target_speedup=2 (no δ), after one call", 0.5, 46.0, 52.0)]
    meta = dict(command="quality.py --test", date="2026-12-02 15:00", threads=1, seconds=1.0, seeds=[0, 1],
                labels=list(range(10)), backend="auto")
    md = Q.markdown(rows, meta)
    assert "#### The same on the mean of the samples' PSNR" in md
    # no run at the default's setting (Flux at δ = 0.4): a line says so where its table would stand empty
    assert md.count("| model | steps | default |") == 2 and "nothing to read" not in md
    without = Q.markdown([r for r in rows if r["setting"] != "δ=0.4"], meta)
    assert without.count("nothing to read") == 2 and "| model | steps | default |" not in without
    # the budget row on the per-sample mean: 52.0 against the preset's 51.75 − (0.02/0.14)·4.75 at 2×
    pre = 51.75 + (47.0 - 51.75) * (0.52 - 0.5) / (0.52 - 0.38)
    budget = [ln for ln in Q.budget_table(rows, "psnr_mean") if "| replay |" in ln]
    assert len(budget) == 1 and f"| 52.0 | {pre:.1f} | {52.0 - pre:+.1f} ✓ |" in budget[0]
    pooled_budget = [ln for ln in Q.budget_table(rows) if "| replay |" in ln][0]
    pre = 49.0 + (44.0 - 49.0) * (0.52 - 0.5) / (0.52 - 0.38)
    assert f"| 46.0 | {pre:.1f} | {46.0 - pre:+.1f} ✗ |" in pooled_budget
    # the margins counted on both metrics: at 2× the preset (interpolated, 48.3 dB) leads the budget's 46.0 on the
    # pooled PSNR, the budget's 52.0 leads the preset's 51.1 on the per-sample mean; on the fronts the budget leads
    # at 2× on both (the preset's front there is δ = 0.4 at 2.63×); 2.25× and 2.5× have no peer
    crit = {ln.split(" | ")[0].lstrip("| "): ln.split(" | ")[1:] for ln in Q.criteria_table(rows)[2:]}
    assert crit["lead ≥ 1 dB over the best peer, interpolated"] == ["1 of 1", "1 of 1 |"]
    assert crit["preset within 0.5 dB of DiCache's best, interpolated"] == ["3 of 3", "2 of 3 |"]
    assert crit["preset within 0.5 dB of DiCache's best, on the fronts"] == ["2 of 3", "2 of 3 |"]
    assert crit["budget within ±10 % of its target"] == ["1 of 1", "1 of 1 |"]
    assert crit["budget within 0.5 dB of the fixed δ, interpolated: replay / online"] == [
        "0 of 1 / 0 of 0", "1 of 1 / 0 of 0 |"]
    assert crit["budget within 0.5 dB of the fixed δ, on the preset's front: replay / online"] == [
        "1 of 1 / 0 of 0", "1 of 1 / 0 of 0 |"]
    assert "| criterion | PSNR over all samples | mean of the samples' PSNR |" in md
    path = tmp_path / "quality.md"
    path.write_text(md)
    back, got_meta = Q.rows_from_report(str(path))
    assert [r["psnr_mean"] for r in back] == [math.inf, 40.5, 51.75, 47.0, 52.0]
    assert got_meta["seeds"] == [0, 1]
    # a report written before the column: 12 cells a row, the per-sample mean left empty
    old = []
    for ln in md.splitlines():
        cells = ln.split("|")
        if len(cells) == 15:  # the per-setting rows (13 cells): drop the per-sample column
            del cells[11]
        old.append("|".join(cells))
    path.write_text("\n".join(old))
    back = Q.rows_from_report(str(path))[0]
    assert [r["psnr"] for r in back] == [math.inf, 38.25, 49.0, 44.0, 46.0]
    assert [r["psnr_mean"] for r in back] == ["", "", "", "", ""]
    assert Q.psnr_at([r for r in back if r["family"] == qm.DICACHE], 2.0, "psnr_mean") is None
    assert Q.criteria_table(back)[0] == "| criterion | PSNR over all samples |"  # no per-sample column to count


def test_delta_position_options(monkeypatch):
    import quality as Q

    import dicache.budget as budget_module
    from dicache.config import DiCacheConfig

    with pytest.raises(SystemExit):
        Q.parse_args(["--out", "x", "--replay-delta-position", "1.5"])
    assert Q.parse_args(["--out", "x", "--replay-delta-position", "0.5"]).replay_delta_position == 0.5
    assert Q.parse_args(["--out", "x"]).replay_delta_position is None
    with pytest.raises(SystemExit):
        Q.parse_args(["--out", "x", "--online-delta-position", "-0.1"])
    assert Q.parse_args(["--out", "x", "--online-delta-position", "0.25"]).online_delta_position == 0.25
    # the solve reads the constant at call time: a profile whose δ range is wide picks another δ
    monkeypatch.setattr(budget_module, "REPLAY_DELTA_POSITION", 0.0)
    budget = budget_module.Budget(DiCacheConfig(target_speedup=2.0, warmup=1), 8)
    profile = {k: 0.01 for k in range(20)}
    low = budget.solve(profile, 20, 10.0)
    monkeypatch.setattr(budget_module, "REPLAY_DELTA_POSITION", 1.0)
    high = budget.solve(profile, 20, 10.0)
    assert high > low
    assert budget.simulate(list(profile.values()), 20, low) == budget.simulate(list(profile.values()), 20, high)


def test_online_sigma_weight_option():
    """``--online-sigma-weight a``: the told step sizes times 1 + a/σ_k; bad values rejected."""
    import torch

    import quality as Q

    from dicache.api import _step_sizes

    with pytest.raises(SystemExit):
        Q.parse_args(["--out", "x", "--online-sigma-weight", "-1"])
    with pytest.raises(SystemExit):
        Q.parse_args(["--out", "x", "--online-sigma-weight", "inf"])
    assert Q.parse_args(["--out", "x", "--online-sigma-weight", "0.3"]).online_sigma_weight == 0.3
    assert Q.parse_args(["--out", "x"]).online_sigma_weight is None

    class Sched:
        sigmas = torch.tensor([1.0, 0.7, 0.3, 0.1, 0.0])

    plain = _step_sizes(Sched(), 4)
    weighted = Q.sigma_weighted_step_sizes(_step_sizes, 0.3)(Sched(), 4)
    assert weighted == pytest.approx([d * (1 + 0.3 / s) for d, s in zip(plain, [1.0, 0.7, 0.3, 0.1])])
    assert weighted[-1] / plain[-1] == pytest.approx(4.0)  # the last step weighs most
    assert Q.sigma_weighted_step_sizes(_step_sizes, 0.0)(Sched(), 4) == pytest.approx(plain)
    assert Q.sigma_weighted_step_sizes(_step_sizes, 0.3)(Sched(), 3) is None  # not the scheduler's step count


def test_at_reads_families_at_chosen_savings_from_reports(tmp_path, capsys):
    """``quality.py at``: each family's PSNR interpolated at the savings asked for, from several reports' CSVs."""
    import quality as Q
    import quality_methods as qm

    def row(family, frac, psnr, steps=50):
        return dict(model="wan_digits", steps=steps, family=family, setting=f"{frac}", status="ok", seeds=1,
                    labels=10, flop_fraction=frac, block_fraction=frac, mac_fraction=frac, savings=1 - frac,
                    fewer_flops=1 / frac, calls=steps, wall_s=1.0, speedup=1 / frac, cpu_s=1.0,
                    speedup_cpu=1 / frac, psnr=psnr, psnr_mean=psnr + 1.5, ssim=0.99, weights="", note="", lpips="")

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    Q.write_csv([row(qm.DICACHE, 0.52, 47.0), row(qm.DICACHE, 0.37, 41.0), row(qm.DICACHE, 0.5, 30.0, steps=20)],
                str(a / "quality.csv"))
    Q.write_csv([row(qm.DICACHE_NOREACH, 0.45, 44.0), row(qm.DICACHE_NOREACH, 0.3, 36.0)], str(b / "quality.csv"))
    assert Q.at_main([str(a), str(b), "--families", f"{qm.DICACHE},{qm.DICACHE_NOREACH}", "--savings", "2,2.5",
                      "--steps", "50"]) == 0
    lines = capsys.readouterr().out.splitlines()
    def between(at, hi, lo):  # linear in the flop fraction between the settings at 0.52 and 0.37
        return hi + (lo - hi) * (0.52 - at) / (0.52 - 0.37)

    nr = 44.0 + (36.0 - 44.0) * (0.45 - 0.4) / (0.45 - 0.3)
    assert lines[0] == "| model | steps | family | 2× | 2.5× |"
    cells = [f"{between(x, 47.0, 41.0):.1f} / {between(x, 48.5, 42.5):.1f}" for x in (0.5, 0.4)]
    assert lines[2] == f"| wan_digits | 50 | DiCache | {cells[0]} | {cells[1]} |"
    assert lines[3] == f"| wan_digits | 50 | DiCache no reach | – / – | {nr:.1f} / {nr + 1.5:.1f} |"
    assert len(lines) == 4  # the 20-step row left out by --steps
    with pytest.raises(SystemExit):
        Q.at_main([str(a), "--families", "DiCache, no such family"])
    assert "not in the reports" in capsys.readouterr().err


def _pooled(samples):
    return -10 * math.log10(sum(10 ** (-v / 10) for v in samples) / len(samples))


def _sampled_report(seeds=(0, 1)):
    """A report's rows and per-run details made up sample by sample (2 seeds × 10 labels, 20 steps): the preset's
    setting at 0.45 of the flops has one sample (the first seed's index 7) at 20 dB, which sets its pooled PSNR;
    the rest of the samples agree. Returns (rows, runs, the samples every setting shares)."""
    import random

    import quality_methods as qm

    rnd = random.Random(3)
    n = 10 * len(seeds)

    def setting(family, frac, samples, steps=20):
        row = dict(model="wan_digits", steps=steps, family=family, setting=f"{family} {frac}", status="ok",
                   flop_fraction=frac, psnr=_pooled(samples), psnr_mean=sum(samples) / len(samples), ssim=0.99)
        runs = [dict(seed=str(sd), flops="1", calls="20",
                     sample_psnr=str([round(v, 3) for v in samples[10 * k:10 * k + 10]])) for k, sd in enumerate(seeds)]
        return row, dict(model="wan_digits", steps=steps, family=family, setting=row["setting"], runs=runs)

    base = [rnd.uniform(40.0, 50.0) for _ in range(n)]
    one_bad = list(base)
    one_bad[7] = 20.0  # one sample sets the pooled PSNR of this setting
    made = [setting(qm.DICACHE, 0.55, [v + 1.0 for v in base]), setting(qm.DICACHE, 0.45, one_bad),
            setting(qm.DICACHE_SCHED, 0.55, [v + 1.5 for v in base]), setting(qm.DICACHE_SCHED, 0.45, base),
            setting(qm.UNIFORM, 0.5, [v - 5.0 for v in base]), setting(qm.UNIFORM, 0.4, [v - 8.0 for v in base])]
    rows, runs = [r for r, _ in made], [d for _, d in made]
    rows.append(dict(model="wan_digits", steps=20, family=qm.NO_CACHE, setting="", status="ok", flop_fraction=1.0,
                     psnr=math.inf, psnr_mean=math.inf, ssim=1.0))
    return rows, runs, base


def _write_report(Q, rows, runs, path):
    Q.write_csv([dict(r, block_fraction=r["flop_fraction"], mac_fraction=r["flop_fraction"], savings=0,
                      fewer_flops=1 / r["flop_fraction"], calls=20, wall_s=1.0, speedup=1.0, cpu_s=1.0,
                      speedup_cpu=1.0, seeds=2, labels=10, weights="", note="", lpips="") for r in rows],
                str(path / "quality.csv"))
    (path / "quality_details.json").write_text(json.dumps(dict(meta={}, runs=runs)))


def test_spread_resamples_the_samples_behind_each_margin(tmp_path, capsys):
    """``quality.py spread``: the margins recomputed on resampled samples (one draw per model and steps, shared by
    every setting); a margin one sample sets has a wide interval, one every sample agrees on a narrow one."""
    import quality as Q

    rows, runs, _ = _sampled_report()
    res = {(r["kind"], r["point"]): r for r in Q.spread(rows, runs, resamples=200, seed=1)}
    # the measured margins are the report's (lead_points on the same rows)
    pt = next(p for p in Q.lead_points(rows) if p["fewer"] == 2.0)
    assert res[("preset", ("wan_digits", 20, 2.0))]["measured"] == pytest.approx(pt["preset"][0] - pt["best"][0], abs=1e-3)
    assert res[("lead", ("wan_digits", 20, 2.0))]["measured"] == pytest.approx(pt["best"][0] - pt["peer"][0], abs=1e-3)
    pre = res[("preset", ("wan_digits", 20, 2.0))]
    assert pre["measured"] < -0.5 and pre["low"] < pre["measured"] <= pre["high"]
    assert pre["high"] - pre["low"] > 3.0  # whether sample 7 is drawn moves it by dB
    assert 0.0 < pre["share"] < 1.0
    lead = res[("lead", ("wan_digits", 20, 2.0))]
    assert lead["share"] == 1.0 and lead["low"] > 1.0  # every sample agrees: the peer trails by 5–8 dB
    per = {(r["kind"], r["point"]): r for r in Q.spread(rows, runs, resamples=200, seed=1, metric="psnr_mean")}
    assert per[("preset", ("wan_digits", 20, 2.0))]["high"] - per[("preset", ("wan_digits", 20, 2.0))]["low"] < \
        pre["high"] - pre["low"]  # the mean of the samples' PSNR rests less on one sample
    # the same seed draws the same samples
    assert Q.spread(rows, runs, resamples=50, seed=4) == Q.spread(rows, runs, resamples=50, seed=4)
    with pytest.raises(ValueError, match="resamples"):
        Q.spread(rows, runs, resamples=0)
    with pytest.raises(ValueError, match="level"):
        Q.spread(rows, runs, level=1.0)
    with pytest.raises(ValueError, match="samples' PSNR"):
        Q.spread(rows, [])
    with pytest.warns(UserWarning, match="left out: uniform"):  # a run without its samples is named, not used
        partial = Q.spread(rows, runs[:4], resamples=20)
    assert not any(r["kind"] == "lead" for r in partial)  # no peer left to lead

    # the command reads a report directory
    _write_report(Q, rows, runs, tmp_path)
    assert Q.spread_main([str(tmp_path), "--resamples", "20"]) == 0
    out = capsys.readouterr().out
    assert "| preset − best DiCache (≥ −0.5) | wan_digits | 20 | 2× |" in out
    # the summary: the preset's one point misses as measured but not in every resample; the lead holds
    assert "| preset | over all samples | 1 | 0 | 1 | 0 |" in out
    assert "| lead | over all samples | 1 | 1 | 0 | 0 |" in out
    with pytest.raises(SystemExit):
        Q.spread_main([str(tmp_path / "nothing")])
    assert "not a report directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        Q.spread_main([str(tmp_path), "--level", "90"])


def test_without_recomputes_the_readings_without_the_named_samples(tmp_path, capsys):
    """``quality.py without``: PSNR over all samples and the mean of the samples' PSNR of every setting recomputed
    without the named (seed, index) samples, at the step counts named; the margins read from them."""
    import quality as Q
    import quality_methods as qm

    rows, runs, base = _sampled_report(seeds=(4, 5))
    left = Q.without_samples(rows, runs, {None: [(4, 7)]})
    by = {(r["family"], r["setting"]): r for r in left}
    others = [v for i, v in enumerate(base) if i != 7]
    bad = by[(qm.DICACHE, f"{qm.DICACHE} 0.45")]
    assert bad["psnr"] == pytest.approx(_pooled(others), abs=2e-3)  # the 20 dB sample is gone
    assert bad["psnr_mean"] == pytest.approx(sum(others) / len(others), abs=2e-3)
    peer = by[(qm.UNIFORM, f"{qm.UNIFORM} 0.5")]
    assert peer["psnr"] == pytest.approx(_pooled([v - 5.0 for v in others]), abs=2e-3)  # the same samples left out
    assert by[(qm.NO_CACHE, "")]["psnr"] == math.inf
    # with every sample the preset's pooled margin misses (one sample); without it, the preset holds
    full = {p["fewer"]: p for p in Q.lead_points(rows)}[2.0]
    cut = {p["fewer"]: p for p in Q.lead_points(left)}[2.0]
    assert full["preset"][0] - full["best"][0] < -0.5 <= cut["preset"][0] - cut["best"][0]
    # the second seed's sample 7 is another sample: leaving it out moves the bad setting by little
    other = {(r["family"], r["setting"]): r for r in Q.without_samples(rows, runs, {20: [(5, 7)]})}
    assert other[(qm.DICACHE, f"{qm.DICACHE} 0.45")]["psnr"] < bad["psnr"] - 5.0
    # only at the step counts named: a second step count's rows keep every sample
    rows50, runs50, _ = _sampled_report(seeds=(4, 5))
    for r in rows50 + runs50:
        r["steps"] = 50
    both = Q.without_samples(rows + rows50, runs + runs50, {20: [(4, 7)]})
    assert [r["psnr"] for r in both if r["steps"] == 50] == pytest.approx([r["psnr"] for r in rows50], abs=2e-3)
    assert [r["psnr"] for r in both if r["steps"] == 20] == pytest.approx([r["psnr"] for r in left], abs=2e-3)
    with pytest.raises(ValueError, match="index out of range"):
        Q.without_samples(rows, runs, {None: [(4, 10)]})
    with pytest.raises(ValueError, match=r"seeds \[6\] are not among the report's seeds \[4, 5\]"):
        Q.without_samples(rows, runs, {None: [(6, 1)]})
    with pytest.raises(ValueError, match="no run at \\[50\\] steps"):
        Q.without_samples(rows, runs, {50: [(4, 1)]})
    with pytest.raises(ValueError, match="no sample"):
        Q.without_samples(rows, runs, {None: [(sd, i) for sd in (4, 5) for i in range(10)]})
    # the command prints both readings
    _write_report(Q, rows, runs, tmp_path)
    assert Q.without_main([str(tmp_path), "--samples", "4:7"]) == 0
    out = capsys.readouterr().out
    assert "without 4:7" in out and out.count("| lead ≥ 1 dB over the best peer, interpolated |") == 2
    assert "| preset within 0.5 dB of DiCache's best, interpolated | 0 of 1 |" in out
    assert "| preset within 0.5 dB of DiCache's best, interpolated | 1 of 1 |" in out
    assert Q.parse_samples(["50=4:7,5:1", "4:2", "50=4:3"]) == {50: [(4, 7), (5, 1), (4, 3)], None: [(4, 2)]}
    assert Q.without_main([str(tmp_path), "--samples", "20=4:7", "--samples", "5:1"]) == 0
    assert "without 20 steps: 4:7; 5:1" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        Q.without_main([str(tmp_path), "--samples", "50=5:1"])
    assert "no run at [50] steps" in capsys.readouterr().err
    for bad_arg in ("4", "a:b", "", "x=4:7", "20="):
        with pytest.raises(SystemExit):
            Q.without_main([str(tmp_path), "--samples", bad_arg])
        assert "--samples" in capsys.readouterr().err


def test_patterns_labels_the_calls_each_setting_made(tmp_path, capsys):
    """``quality.py patterns``: the settings in a savings range, one label per call pattern (every seed and
    branch), and which patterns only one family's δ list hits."""
    import quality as Q
    import quality_methods as qm

    def setting(family, delta, frac, psnr, pats):
        row = dict(model="wan_digits", steps=50, family=family, setting=f"δ={delta}", status="ok", seeds=2,
                   labels=10, flop_fraction=frac, block_fraction=frac, mac_fraction=frac, savings=1 - frac,
                   fewer_flops=1 / frac, calls=100, wall_s=1.0, speedup=1.0, cpu_s=1.0, speedup_cpu=1.0, psnr=psnr,
                   psnr_mean=psnr + 2, ssim=0.99, weights="", note="", lpips="")
        runs = [dict(seed=k, flops=1, calls=100, pattern={"cond": p, "uncond": p}) for k, p in enumerate(pats)]
        return row, dict(model="wan_digits", steps="50", family=family, setting=row["setting"], runs=runs)

    a, b = "FF_F__F_F", "FF__F_F_F"
    made = [setting(qm.DICACHE, 0.9, 1 / 2.9, 46.3, [a, a]), setting(qm.DICACHE, 1.0, 1 / 2.9, 43.1, [b, a]),
            setting(qm.DICACHE_STEP_RUNS, 0.7, 1 / 2.9, 43.1, [b, a]),  # the same calls at another δ
            setting(qm.DICACHE_STEP_RUNS, 0.8, 1 / 2.9, 40.0, [b, b]),
            setting(qm.DICACHE, 0.3, 1 / 2.0, 50.0, [a, a])]  # outside the range asked for
    rows, runs = [r for r, _ in made], [d for _, d in made]
    lines = Q.patterns_table(rows, runs, [qm.DICACHE, qm.DICACHE_STEP_RUNS], 2.8, 3.0)
    body = [ln for ln in lines if ln.startswith("| wan_digits")]
    assert [ln.split(" | ")[-1] for ln in body] == ["a |", "b |", "b |", "c |"]
    assert "| 2.90× | 46.3 / 48.3 | DiCache | δ=0.9 | a |" in body[0]
    assert lines[-1] == "* wan_digits 50: DiCache: 2 patterns, only it: a; DiCache step runs: 2 patterns, only it: c"
    # a run without recorded patterns (a peer's) gets "?" and counts for nothing
    runs_missing = [dict(d, runs=[dict(r, pattern={}) for r in d["runs"]]) if d["setting"] == "δ=0.8" else d
                    for d in runs]
    assert Q.patterns_table(rows, runs_missing, [qm.DICACHE, qm.DICACHE_STEP_RUNS], 2.8, 3.0)[-1].endswith(
        "DiCache step runs: 1 patterns")
    assert Q._label(0) == "a" and Q._label(25) == "z" and Q._label(26) == "aa"

    # the command reads report directories
    Q.write_csv(rows, str(tmp_path / "quality.csv"))
    (tmp_path / "quality_details.json").write_text(json.dumps(dict(meta={}, runs=runs)))
    assert Q.patterns_main([str(tmp_path), "--families", f"{qm.DICACHE},{qm.DICACHE_STEP_RUNS}",
                            "--savings", "2.8,3"]) == 0
    assert "only it: c" in capsys.readouterr().out
    for bad in (["--savings", "3"], ["--savings", "3,2"], ["--savings", "0.5,2"]):
        with pytest.raises(SystemExit):
            Q.patterns_main([str(tmp_path), "--families", qm.DICACHE, *bad])
        assert "--savings" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        Q.patterns_main([str(tmp_path), "--families", "no such family", "--savings", "2,3"])
    assert "not in the reports" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        Q.patterns_main([str(tmp_path / "nothing"), "--families", qm.DICACHE, "--savings", "2,3"])
    assert "not a report directory" in capsys.readouterr().err


def test_extrapolation_error_rebuilds_a_polynomial_through_its_entries():
    """``extrapolation_error.py``: the Lagrange extrapolation is exact on a polynomial of its order, the relative L1
    miss is per sample, and the script refuses a step count too short for its tables."""
    import extrapolation_error as E

    g = torch.Generator().manual_seed(5)
    a, b, c = (torch.randn(2, 3, 4, generator=g) for _ in range(3))

    def f(t):
        return a + b * t + c * t * t

    nodes = (0, 1, 4)
    torch.testing.assert_close(E.extrapolate([f(n) for n in nodes], nodes, 7), f(7), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(E.extrapolate([f(1), f(4)], (1, 4), 7), f(1) + 2 * (f(4) - f(1)))
    true = torch.ones(2, 3)
    assert E.rel_error(true * torch.tensor([[1.5], [1.0]]), true) == pytest.approx(0.25)  # (0.5 + 0) / 2
    with pytest.raises(SystemExit):
        E.main(["flux_digits", "4"])


def test_entries_counts_the_settings_a_quad_balance_change_can_move(tmp_path, capsys):
    """``quality.py entries``: the skips after three unbalanced computed calls (the warm-up's pair and a far call:
    steps 0, 1, 4), counted per family over every seed's pattern; step counts where the probe sets γ are left out."""
    import quality as Q
    from dicache.config import STEPS_GAMMA_MIN_STEPS

    assert Q.unbalanced_skips("FF__F___F__F_", 0.5) == [5, 6, 7]  # after 0, 1, 4 (then 1, 4, 8 and 4, 8, 11)
    assert Q.unbalanced_skips("FF__F___F__F_", 0.8) == [5, 6, 7, 9, 10, 12]  # 1, 4, 8 and 4, 8, 11: 3 < 0.8·4
    assert Q.unbalanced_skips("FFF_F__F___F", 0.5) == []  # a three-call warm-up and runs growing by one
    assert Q.unbalanced_skips("F_F", 0.5) == []  # fewer than three computed calls: nothing to bend

    def details(steps, family, pats):
        runs = [dict(seed=k, flops=1, calls=2 * len(p), pattern={"cond": p, "uncond": p}) for k, p in enumerate(pats)]
        return dict(model="flux_digits", steps=str(steps), family=family, setting="δ=1", runs=runs)

    runs = [details(28, "DiCache", ["FFF_F__F___F", "FF__F___F__F"]), details(28, "DiCache", ["FFF_F__F___F"]),
            details(28, "DiCache budget", ["FF_F_F_F"]), details(STEPS_GAMMA_MIN_STEPS - 1, "DiCache", ["FF___F"]),
            details(28, "TaylorSeer", ["FF___F"]), details(28, "DiCache", [])]
    (tmp_path / "quality.csv").write_text("model,steps,family,setting\n")
    (tmp_path / "quality_details.json").write_text(json.dumps({"meta": {}, "runs": runs}))
    assert Q.entries_main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| flux_digits | 28 | DiCache | 2 | 1 |" in out and "| flux_digits | 28 | DiCache budget | 1 | 0 |" in out
    assert "TaylorSeer" not in out and f"| {STEPS_GAMMA_MIN_STEPS - 1} |" not in out
    with pytest.raises(SystemExit):
        Q.entries_main([str(tmp_path), "--balance", "0"])
    assert "--balance" in capsys.readouterr().err


def test_patterns_lists_the_lowest_samples_that_set_the_pooled_psnr(tmp_path, capsys):
    """``quality.py patterns --worst N``: each setting's N lowest samples (PSNR@seed:index) and how many settings
    have each sample among their lowest."""
    import quality as Q
    import quality_methods as qm

    def setting(delta, frac, samples):  # samples: seed -> the batch's PSNR per sample
        row = dict(model="wan_digits", steps=50, family=qm.DICACHE, setting=f"δ={delta}", status="ok", seeds=2,
                   labels=3, flop_fraction=frac, block_fraction=frac, mac_fraction=frac, savings=1 - frac,
                   fewer_flops=1 / frac, calls=100, wall_s=1.0, speedup=1.0, cpu_s=1.0, speedup_cpu=1.0, psnr=40.0,
                   psnr_mean=45.0, ssim=0.99, weights="", note="", lpips="")
        runs = [dict(seed=k, flops=1, calls=100, pattern={"cond": "FF_F"}, sample_psnr=list(v))
                for k, v in samples.items()]
        return row, dict(model="wan_digits", steps="50", family=qm.DICACHE, setting=row["setting"], runs=runs)

    made = [setting(0.2, 1 / 2.0, {0: [50.0, 31.5, 60.0], 1: [44.0, 55.0, 58.0]}),
            setting(0.3, 1 / 2.5, {0: [48.0, 30.0, 61.0], 1: [52.0, 41.2, 57.0]})]
    rows, runs = [r for r, _ in made], [d for _, d in made]
    lines = Q.patterns_table(rows, runs, [qm.DICACHE], 1.5, 3.0, worst=2)
    body = [ln for ln in lines if ln.startswith("| wan_digits")]
    assert body[0].endswith("| a | 31.5@0:1, 44.0@1:0 |") and body[1].endswith("| a | 30.0@0:1, 41.2@1:1 |")
    assert lines[-1] == "* wan_digits 50, among the 2 lowest samples of the 2 settings: 0:1 (2), 1:0 (1), 1:1 (1)"
    assert "lowest samples" not in Q.patterns_table(rows, runs, [qm.DICACHE], 1.5, 3.0)[0]  # off by default
    # a run that recorded no per-sample PSNR shows none
    bare = [dict(d, runs=[{k: v for k, v in r.items() if k != "sample_psnr"} for r in d["runs"]]) for d in runs]
    assert all(ln.endswith("| a | – |") for ln in Q.patterns_table(rows, bare, [qm.DICACHE], 1.5, 3.0, worst=2)
               if ln.startswith("| wan_digits"))
    Q.write_csv(rows, str(tmp_path / "quality.csv"))
    (tmp_path / "quality_details.json").write_text(json.dumps(dict(meta={}, runs=runs)))
    assert Q.patterns_main([str(tmp_path), "--families", qm.DICACHE, "--savings", "1.5,3", "--worst", "1"]) == 0
    assert "30.0@0:1 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        Q.patterns_main([str(tmp_path), "--families", qm.DICACHE, "--savings", "1.5,3", "--worst", "-1"])
    assert "--worst" in capsys.readouterr().err


def test_step_sizes_script_prints_each_step_s_error_beside_its_size(capsys):
    import step_sizes

    for model in ("wan_digits", "cogvideox_digits"):  # flow sigmas; DDIM's alphas on the flow scale
        assert step_sizes.main(["--steps", "5", "--models", model]) == 0
        out = capsys.readouterr().out
        rows = [ln for ln in out.splitlines() if ln.startswith("| ") and ln[2].isdigit()]
        assert len(rows) == 5 and rows[0].split(" | ")[3] == "–"  # the first call measures no increment
        assert all(float(r.split(" | ")[2]) > 0 for r in rows)  # the step sizes the scheduler told
        sigmas = [float(r.split(" | ")[1]) for r in rows]
        assert sigmas == sorted(sigmas, reverse=True) and 0 < sigmas[-1] and sigmas[0] <= 1
        assert "their ratio" in out and "x = step size / σ:" in out and "step size^p from step 3 on" in out
    with pytest.raises(SystemExit):
        step_sizes.main(["--models", "sdxl_digits"])
    # increments exactly proportional to the step size: that scaling has no spread, the others some
    rows = [(k, 1.0 - k / 10, 0.1 + 0.01 * k, 2.0 * (0.1 + 0.01 * k)) for k in range(9)]
    spread = step_sizes.scaling_spread(rows)
    assert spread["step size"] == pytest.approx(0.0, abs=1e-12)
    assert spread["step size / σ"] > 0.1 and spread["step size / √σ"] > 0.05
    assert step_sizes.scaling_spread(rows[:3]) == {}  # one step from step 2 on: nothing to spread
    # the power of the step size the increments follow, from step 3 on
    assert step_sizes.size_exponent(rows) == pytest.approx(1.0)
    assert step_sizes.size_exponent([(k, s, d, 0.5 * d ** 1.5) for k, s, d, _ in rows]) == pytest.approx(1.5)
    assert step_sizes.size_exponent(rows[:4]) is None  # one step from step 3 on


@pytest.mark.parametrize("steps", [7, 20])
def test_step_sizes_script_reads_ddpm_noise_levels_on_the_flow_scale(steps):
    """A DDPM-family state ``√ᾱ·x0 + √(1 − ᾱ)·ε`` divided by ``√ᾱ + √(1 − ᾱ)`` is the flow state at
    ``s = √(1 − ᾱ)/(√ᾱ + √(1 − ᾱ))``: the study reads DDIM's levels there, from ``alphas_cumprod`` at its timesteps and
    at the end; flow sigmas as they are."""
    import diffusers
    import step_sizes

    def flow_scale(ac):
        return (1 - ac).sqrt() / (ac.sqrt() + (1 - ac).sqrt())

    kw = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    for sched in (diffusers.DDIMScheduler(**kw, set_alpha_to_one=False),
                  diffusers.CogVideoXDDIMScheduler(**kw, prediction_type="v_prediction", snr_shift_scale=3.0,
                                                   rescale_betas_zero_snr=True, timestep_spacing="trailing")):
        sched.set_timesteps(steps)
        ac = sched.alphas_cumprod.double()
        want = flow_scale(torch.cat([ac[sched.timesteps.long()], sched.final_alpha_cumprod.double().view(1)]))
        levels = step_sizes.noise_levels(sched, steps)
        assert levels == pytest.approx(want.tolist(), abs=1e-12) and len(levels) == steps + 1
        assert all(a >= b for a, b in zip(levels, levels[1:])) and levels[0] > levels[-1]
        # the same as the VE sigma σ = √((1 − ᾱ)/ᾱ) of those timesteps read as σ/(1 + σ)
        ve = ((1 - ac[sched.timesteps.long()]) / ac[sched.timesteps.long()]).sqrt()
        as_ve = torch.where(torch.isinf(ve), torch.ones_like(ve), ve / (1 + ve))  # zero terminal SNR: σ = ∞, s = 1
        assert levels[:-1] == pytest.approx(as_ve.tolist(), abs=1e-12)
    flow = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0)
    flow.set_timesteps(steps)
    assert step_sizes.noise_levels(flow, steps) == pytest.approx(flow.sigmas.tolist())


def test_denser_fills_the_wide_gaps_of_a_delta_list():
    import quality_methods as qm

    r = 2 ** 0.25
    src = [0.02, 0.03, 0.08, 0.16, 0.3, 0.45, 0.9, 1.2, 2.4]
    out = qm.denser(src, lo=0.1, hi=1.2, ratio=r)
    assert set(src) <= set(out) and out == sorted(set(out))
    # no gap reaching into [0.1, 1.2] is wider than the ratio, allowing for the two-digit rounding
    for a, b in zip(out, out[1:]):
        if b > 0.1 and a < 1.2:
            assert b / a <= r * 1.06, (a, b)
    # the gaps outside the range are left as they were
    assert [d for d in out if d < 0.08] == [0.02, 0.03] and [d for d in out if d > 1.0] == [1.2, 2.4]
    assert qm.denser(out, lo=0.1, hi=1.2, ratio=r * 1.06) == out  # nothing left to fill
    # the preset's lists are the dense ones; a family that copies the sparse list keeps it
    for model in qm.SETTINGS:
        for steps in qm.SETTINGS[model]:
            lst = qm.SETTINGS[model][steps][qm.DICACHE]
            assert qm.denser(lst, ratio=r * 1.06) == lst
    assert len(qm.SETTINGS["wan_digits"][30][qm.DICACHE]) > len(qm.SETTINGS["wan_digits"][30][qm.DICACHE_REACH2]) + 6


def test_default_points_read_the_default_against_the_front():
    """The default of a model with a preset is its δ; of one without, the budget's first call at 2×."""
    import quality as Q
    import quality_methods as qm

    import dicache

    delta = qm.default_threshold("flux_digits", 30)
    wan = dicache.PRESETS["wan"]
    assert delta == dicache.PRESETS["flux"].threshold == qm.default_threshold("flux_digits", 20)
    # Wan: its probe_threshold where the probe decides (20 steps), its threshold where runs are planned
    assert qm.default_threshold("wan_digits", 30) == wan.threshold != qm.default_threshold("wan_digits", 20)
    assert qm.default_threshold("wan_digits", 20) == wan.probe_threshold
    # rows sampled on a DDPM-family schedule (flow_sigmas=False) plan their runs at 20 steps too
    assert qm.default_threshold("wan_digits", 20, flow_sigmas=False) == wan.threshold
    assert qm.default_threshold("wan_digits", 20, flow_sigmas=True) == wan.probe_threshold
    assert qm.default_threshold("hunyuan_digits", 20) == dicache.PRESETS["hunyuan_video"].threshold
    for model in qm.SETTINGS:  # the default is a setting of the preset's family at every step count
        for steps in qm.SETTINGS[model]:
            assert qm.default_threshold(model, steps) in qm.SETTINGS[model][steps][qm.DICACHE]

    def row(family, setting, fewer, psnr, model="flux_digits", steps=30, status="ok"):
        return dict(model=model, steps=steps, family=family, setting=setting, status=status,
                    flop_fraction=1.0 / fewer, psnr=psnr, psnr_mean=psnr + 1.0, ssim=0.99)

    rows = [row(qm.DICACHE, f"δ={delta}", 2.3, 52.8), row(qm.DICACHE, "δ=0.3", 1.9, 50.6),
            row(qm.DICACHE, "δ=0.6", 2.5, 51.7), row(qm.DICACHE_SCHED, f"δ={delta}, δ_end=0.8", 2.2, 60.0),
            row(qm.TAYLORSEER_LITE, "interval=3", 2.49, 47.0), row(qm.UNIFORM, "k=2", 1.8, 70.0),
            # Wan: the default is dominated by a setting of another family that saves more and scores higher
            row(qm.DICACHE, f"δ={qm.default_threshold('wan_digits', 30)}", 1.76, 45.5, model="wan_digits"),
            row(qm.DICACHE_BUDGET_ONLINE, "target_speedup=2 (no δ)", 1.99, 46.7, model="wan_digits"),
            # Wan at 20 steps: the default is the probe's δ, on the front; the planned runs' δ is another setting
            row(qm.DICACHE, f"δ={wan.probe_threshold}", 2.04, 34.8, model="wan_digits", steps=20),
            row(qm.DICACHE, f"δ={wan.threshold}", 1.71, 35.1, model="wan_digits", steps=20),
            # hunyuan: no row at its default δ, left out
            row(qm.DICACHE, "δ=0.123", 2.0, 40.0, model="hunyuan_digits"),
            # sd3 (no preset): the default is the budget's first call; its fixed δ = 0.2 is not the default
            row(qm.DICACHE, f"δ={qm.default_threshold('sd3_digits', 30)}", 2.1, 50.0, model="sd3_digits"),
            row(qm.DICACHE_BUDGET, "target_speedup=2 (no δ), after one call", 2.02, 44.0, model="sd3_digits"),
            row(qm.DICACHE_BUDGET_ONLINE, "target_speedup=2 (no δ), every call a first call", 2.03, 45.0,
                model="sd3_digits"),
            row(qm.DICACHE_BUDGET_ONLINE, "target_speedup=2.5 (no δ), every call a first call", 2.5, 40.0,
                model="sd3_digits")]
    assert qm.default_of("sd3_digits", 30) == (qm.DICACHE_BUDGET_ONLINE, 2.0)
    assert qm.default_of("flux_digits", 30) == (qm.DICACHE, delta)
    pts = {(p["model"], p["steps"]): p for p in Q.default_points(rows)}
    w20 = pts.pop(("wan_digits", 20))
    assert w20["default"] == f"δ={wan.probe_threshold:g}" and w20["fewer"] == pytest.approx(2.04)
    assert w20["value"] == 34.8 and w20["best"][0] == 34.8  # nothing saving as much scores higher
    pts = {m: p for (m, _), p in pts.items()}
    assert set(pts) == {"flux_digits", "wan_digits", "sd3_digits"}
    sd3 = pts["sd3_digits"]
    assert sd3["default"] == "target_speedup=2" and sd3["fewer"] == pytest.approx(2.03) and sd3["value"] == 45.0
    assert sd3["best"][0] == 50.0 and sd3["best"][2] == qm.DICACHE  # δ = 0.2 saves more and scores higher
    f, w = pts["flux_digits"], pts["wan_digits"]
    assert f["fewer"] == pytest.approx(2.3) and f["value"] == 52.8
    assert f["best"][0] == 52.8 and f["best"][2:] == (qm.DICACHE, f"δ={delta}")  # the δ schedule saves less
    assert f["peer"][0] == 47.0 and f["peer"][2] == qm.TAYLORSEER_LITE  # uniform saves less
    assert w["best"][0] == 46.7 and w["best"][2] == qm.DICACHE_BUDGET_ONLINE and w["peer"] is None
    lines = Q.default_table(rows)
    assert any(ln.startswith(f"| flux_digits | 30 | δ={delta:g} | 2.30× | 52.8 |") and "+0.0 ✓" in ln and "+5.8 |" in ln
               for ln in lines)
    assert any(ln.startswith("| wan_digits | 30 |") and "-1.2 ✗" in ln and ln.endswith("| – | – | – |")
               for ln in lines)
    crit = Q.criteria_table(rows)
    assert any(ln.startswith("| sd3_digits | 30 | target_speedup=2 | 2.03× | 45.0 |") and "-5.0 ✗" in ln for ln in lines)
    assert crit[-1] == "| the default (no options) within 0.5 dB of DiCache's front at its savings | 2 of 4 | 2 of 4 |"
    assert Q.default_points(rows, "psnr_mean")[0]["value"] == 53.8
    # the rows' own record of the sampler decides the default's δ, not this process's scheduler
    ddim = [dict(r, sampler="DDIMScheduler", flow_sigmas=False) for r in rows if r["steps"] == 20]
    (p,) = Q.default_points(ddim)
    assert p["default"] == f"δ={wan.threshold:g}" and p["value"] == 35.1 and p["best"][0] == 35.1
    with pytest.raises(ValueError, match="with flow sigmas and without"):
        Q.default_points(ddim + [dict(ddim[0], flow_sigmas=True)])
    assert Q._delta_of("δ=0.25") == 0.25 and Q._delta_of("δ=0.2, δ_end=0.4") is None and Q._delta_of("k=2") is None


def test_default_subcommand_reads_any_setting_as_the_default(capsys):
    """``quality.py default``: the committed SD3 report's default (its budget's first call, no preset there), and
    another setting read as the default; bad arguments are refused."""
    import quality as Q

    report = os.path.join(ROOT, "benchmarks", "results", "heldout_sd3")
    assert Q.default_main([report]) == 0
    out = capsys.readouterr().out
    assert "PSNR over all samples: within 0.5 dB of DiCache's front at 1 of 2" in out
    assert out.count("| sd3_digits | 20 | target_speedup=2 |") == 2  # on both readings
    assert Q.default_main([report, "--family", "DiCache", "--value", "0.2"]) == 0
    out = capsys.readouterr().out
    # (2.27×: since the forty-eighth round SD3's last two steps are forced, its last one being negligible)
    assert "| sd3_digits | 50 | δ=0.2 | 2.27× |" in out and "target_speedup=2 |" not in out
    for bad in (["--family", "DiCache"], ["--family", "MagCache", "--value", "0.1"]):
        with pytest.raises(SystemExit):
            Q.default_main([report, *bad])
    with pytest.raises(SystemExit):
        Q.default_main([os.path.join(ROOT, "benchmarks")])  # not a report directory
    assert "not a report directory" in capsys.readouterr().err


def test_ddpm_wan_trains_and_compares_the_two_reconstructions(tmp_path, capsys):
    """``benchmarks/ddpm_wan.py``: Wan's zoo transformer on a DDIM v-prediction schedule (a few training steps here),
    sampled by ``WanPipeline`` with DDIM; each pattern runs with the blocks' and with the output rebuilt. The zoo's
    own ``wan_digits`` is back afterwards."""
    import importlib.util

    from dicache import zoo

    path = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "ddpm_wan.py")
    spec = importlib.util.spec_from_file_location("ddpm_wan", path)
    dw = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dw)
    before = zoo.get_spec("wan_digits")
    weights = str(tmp_path / "wan_digits")
    info = dw.train_variant(weights, steps=20, threads=1)
    assert info["steps"] == 20 and math.isfinite(info["final_loss"])
    rows = dw.run_patterns(weights, 8, ["FFF.F._F"], seeds=[0], labels=[0, 1])
    assert zoo.get_spec("wan_digits") is before and zoo.make_scheduler("wan_digits").__class__.__name__ != "DDIMScheduler"
    blocks, output = rows
    assert (blocks["reconstruct_at"], output["reconstruct_at"]) == ("blocks", "output")
    # γ from the steps on a DDPM-family trajectory (gamma_source="auto"): the runs are planned, no skip probes
    assert blocks["ran"] == output["ran"] == "FFF_F__F"
    # the skips after two computed calls rebuild the output: steps 3, 5 and 6 (the follower branch's too)
    assert blocks["rebuilt"] == 0 and output["rebuilt"] == 6
    assert math.isfinite(blocks["psnr"]) and math.isfinite(output["psnr"]) and blocks["psnr"] != output["psnr"]
    assert len(output["sample_psnr"]) == 2 and min(output["sample_psnr"]) <= output["psnr_mean"] <= max(output["sample_psnr"])
    # ``options``: DiCache's own decisions on the variant (on the Wan preset), the same rule
    (row,) = dw.run_options(weights, 8, [{"threshold": 0.5}], seeds=[0], labels=[0, 1])
    assert zoo.get_spec("wan_digits") is before
    assert row["options"] == {"threshold": 0.5} and "." not in row["pattern"] and row["fewer_flops"] > 1.0, row
    assert math.isfinite(row["psnr"]) and len(row["pattern"]) == 8
    # ``report``: quality.py's report on the variant, from its weights, the DDIM scheduler driving WanPipeline
    out = tmp_path / "report"
    assert dw.run_report(weights, ["--quick", "--no-plot", "--families", "DiCache,TaylorSeer-Lite", "--out", str(out)]) == 0
    assert zoo.get_spec("wan_digits") is before and torch.is_grad_enabled()  # the process is as it was
    with open(out / "quality.csv") as f:
        rep = list(csv.DictReader(f))
    assert {r["family"] for r in rep} >= {"DiCache", "TaylorSeer-Lite"} and {r["model"] for r in rep} == {"wan_digits"}
    assert all(r["weights"] == f"trained weights from {weights}" for r in rep if r["status"] == "ok"), rep[0]
    assert {(r["sampler"], r["flow_sigmas"]) for r in rep} == {("DDIMScheduler", "False")}
    assert any(r["family"] == "DiCache" and float(r["fewer_flops"]) > 1.0 for r in rep)
    # ``merge``: a report from before the sampler columns, merged as the variant samples, records DDIM in its rows;
    # quality.py's own merge leaves them empty
    import quality as Q

    old = tmp_path / "old"
    old.mkdir()
    for r in rep:
        r["sampler"] = r["flow_sigmas"] = ""
    Q.write_csv([dict(r, steps=int(r["steps"])) for r in rep], str(old / "quality.csv"))
    shutil.copy(out / "quality_details.json", old / "quality_details.json")
    assert Q.merge([str(old)], str(tmp_path / "plain")) == 0
    assert {r["flow_sigmas"] for r in Q.read_csv(str(tmp_path / "plain" / "quality.csv"))} == {""}
    assert dw.main(["merge", str(tmp_path / "merged"), str(old)]) == 0
    merged = Q.read_csv(str(tmp_path / "merged" / "quality.csv"))
    assert {(r["sampler"], r["flow_sigmas"]) for r in merged} == {("DDIMScheduler", False)}
    assert zoo.get_spec("wan_digits") is before
    with pytest.raises(ValueError, match="named wan_digits"):
        dw.run_report(str(tmp_path), ["--quick", "--out", str(out)])
    # ``patterns --options``: more options for the fixed patterns (the line instead of the quadratic)
    capsys.readouterr()
    assert dw.main(["patterns", "--dir", weights, "--steps", "8", "--seeds", "0", "--labels", "0,1", "--per-sample",
                    "--options", '{"alignment_order": 1}', "FFF.F._F"]) == 0
    text = capsys.readouterr().out
    assert text.count("per sample (dB): s0/0") == 2 and "output" in text
    line = [float(ln.split("×")[1].split("/")[0]) for ln in text.splitlines() if "  output  " in ln][0]
    assert line != pytest.approx(output["psnr"], abs=1e-3)  # the quadratic's row above, the line here
    assert torch.is_grad_enabled()  # the command sets no-grad for itself only
    # ``fragile``: fragile_samples.py on the variant (DDIM driving WanPipeline, the variant's weights)
    capsys.readouterr()
    assert dw.main(["fragile", "--dir", weights, "--steps", "6", "--seeds", "0", "--labels", "0,1", "--at", "2",
                    "--all"]) == 0
    text = capsys.readouterr().out
    assert "| 0:1 | 1 |" in text and "nudged after step 2" in text, text
    assert zoo.get_spec("wan_digits") is before and torch.is_grad_enabled()


def test_fragile_samples_nudges_the_uncached_trajectory(capsys):
    """``benchmarks/fragile_samples.py``: each sample's PSNR against its uncached output after a nudge of the latents
    at each named step; a larger nudge changes the output more, the same arguments repeat, bad arguments are
    refused; ``flag`` picks the samples far under the median."""
    import fragile_samples as fs

    assert fs.default_steps(50) == [5, 10, 15, 20] and fs.default_steps(4) == [1, 2]
    small = fs.fragile("wan_digits", 5, [3], [0, 4], at=[1, 2], eps=1e-4)
    assert [(r["seed"], r["index"], r["label"]) for r in small] == [(3, 0, 0), (3, 1, 4)]
    for r in small:
        assert r["at"] == [1, 2] and len(r["psnr"]) == 2 and r["lowest"] == min(r["psnr"])
        assert all(math.isfinite(v) and v > 30.0 for v in r["psnr"])  # nudged, not broken
    big = fs.fragile("wan_digits", 5, [3], [0, 4], at=[1, 2], eps=1e-2)
    assert all(b["psnr"][j] < s["psnr"][j] - 5.0 for s, b in zip(small, big) for j in range(2))
    assert fs.fragile("wan_digits", 5, [3], [0, 4], at=[1, 2], eps=1e-4) == small
    for kw, msg in ((dict(at=[4]), "at"), (dict(eps=0.0), "eps"), (dict(at=[]), "at")):
        with pytest.raises(ValueError, match=msg):
            fs.fragile("wan_digits", 5, [3], [0], **kw)
    rows = [dict(seed=0, index=i, label=i, at=[1], psnr=[v], lowest=v) for i, v in enumerate([60, 62, 40, 61, 59])]
    assert [r["index"] for r in fs.flag(rows)] == [2] and fs.flag(rows, margin=25.0) == []
    assert fs.flag(rows, floor=40.0) == []  # 40 dB is not under a floor of 40
    stable = [dict(r, psnr=[r["lowest"] + 30], lowest=r["lowest"] + 30) for r in rows]  # 70 dB: 20 under the median
    assert fs.flag(stable) == [] and [r["index"] for r in fs.flag(stable, floor=80.0)] == [2]
    text = "\n".join(fs.table(rows))
    assert "| 0:2 | 2 | 40.0 | 40.0 | yes |" in text and "1 of 5 samples fragile" in text and "0:1" not in text
    assert fs.main(["wan_digits", "5", "--seeds", "3", "--labels", "0,4", "--at", "1", "--all"]) == 0
    out = capsys.readouterr().out
    assert "| 3:1 | 4 |" in out and out.rstrip().endswith("fragile: none")
    assert torch.is_grad_enabled()  # the process is as it was
    with pytest.raises(SystemExit):
        fs.main(["wan_digits", "5", "--at", "9"])
    assert "at:" in capsys.readouterr().err


def test_weights_replace_the_shipped_model_in_the_pattern_tools(tmp_path, capsys):
    """``--weights DIR`` (``DIR/<model>`` written by ``scripts/train_zoo.py --out``): ``fixed_patterns.py`` and
    ``fragile_samples.py`` sample that model instead of the shipped one, as ``quality.py`` does; a directory with no
    model is refused, naming the argument."""
    import fixed_patterns as fp
    import fragile_samples as fs
    import quality as Q

    with pytest.raises(ValueError, match="--weights .*no model in"):
        Q.trained_weights(str(tmp_path), "wan_digits")
    d = Q.random_model_dir("wan_digits", str(tmp_path))  # untrained: another model of the same configuration
    assert Q.trained_weights(str(tmp_path), "wan_digits") == d
    (shipped,) = fp.run("wan_digits", 6, ["FF..FF"], seeds=[0], labels=[0, 1])
    (other,) = fp.run("wan_digits", 6, ["FF..FF"], seeds=[0], labels=[0, 1], weights=d)
    assert other["ran"] == "FF..FF" and list(other["per_sample"]) == ["s0/0", "s0/1"]
    assert all(abs(a - b) > 0.1 for a, b in zip(shipped["per_sample"].values(), other["per_sample"].values()))
    mine = fs.fragile("wan_digits", 5, [3], [0], at=[1], weights=d)
    assert mine != fs.fragile("wan_digits", 5, [3], [0], at=[1])
    assert fp.main(["wan_digits", "5", "FF.FF", "--seeds", "0", "--labels", "0", "--weights", str(tmp_path)]) == 0
    assert "FF.FF" in capsys.readouterr().out and torch.is_grad_enabled()
    missing = str(tmp_path / "none")
    for main, argv in ((fp.main, ["wan_digits", "6", "FF"]), (fs.main, ["wan_digits", "6"])):
        with pytest.raises(SystemExit):
            main(argv + ["--weights", missing])
        assert f"--weights {missing}: no model in" in capsys.readouterr().err
    assert torch.is_grad_enabled()  # the process is as it was


def test_values_replace_a_familys_settings_for_a_study(capsys):
    """``quality.py --values FAMILY=v1,v2``: the family runs those settings in place of its list (whole intervals
    for the interval families); anything else is refused with the reason."""
    import quality as Q
    import quality_methods as qm

    assert qm.parse_values("DiCache order 1=0.3, 0.6") == (qm.DICACHE_ORDER1, [0.3, 0.6])
    assert qm.parse_values("uniform=2,4") == (qm.UNIFORM, [2, 4])
    methods = qm.build_methods("cogvideox_digits", 50, families=[qm.DICACHE_ORDER1, qm.UNIFORM],
                               values={qm.DICACHE_ORDER1: [0.3, 0.6]})
    assert [(m.family, m.setting) for m in methods] == [
        (qm.UNIFORM, "k=2 (x + R[-1])"), (qm.UNIFORM, "k=3 (x + R[-1])"),
        (qm.DICACHE_ORDER1, "δ=0.3, alignment_order=1"), (qm.DICACHE_ORDER1, "δ=0.6, alignment_order=1")]
    for text, msg in (("DiCache order 1", "FAMILY="), ("no such=1", "FAMILY="), ("TaylorSeer=3", "not numbers"),
                      ("DiCache=", "positive"), ("DiCache=0,1", "positive"), ("DiCache=a", "positive"),
                      ("uniform=2.5", "whole")):
        with pytest.raises(ValueError, match=msg):
            qm.parse_values(text)
    args = Q.parse_args(["--out", "x", "--values", "DiCache=0.2,0.4", "--values", "uniform=3"])
    assert args.values == {qm.DICACHE: [0.2, 0.4], qm.UNIFORM: [3]}
    with pytest.raises(SystemExit):
        Q.parse_args(["--out", "x", "--values", "uniform=2.5"])
    assert "--values: uniform: whole" in capsys.readouterr().err


def test_scheduler_option_samples_with_another_diffusers_scheduler(monkeypatch, capsys):
    """``--scheduler CLASS``: the models sample with that scheduler, built from their own's config (CogVideoX-5b's
    DPM sampler on ``cogvideox_digits``); the reports' headings name it; a name that is not a diffusers scheduler is
    refused, naming the argument."""
    import diffusers

    import quality as Q

    import dicache
    from dicache import zoo
    from dicache.metrics import psnr
    from dicache.zoo import _specs

    name = "cogvideox_digits"
    monkeypatch.setitem(_specs.SPECS, name, _specs.SPECS[name])  # restored after the test
    for bad in ("Bogus", "torch", "DiffusionPipeline"):
        with pytest.raises(ValueError, match="--scheduler: .*not a diffusers scheduler"):
            Q.use_scheduler([name], bad)
    assert Q.main(["--models", name, "--scheduler", "Bogus", "--out", "x", "--list"]) == 2
    assert "--scheduler: 'Bogus'" in capsys.readouterr().err
    own = zoo.make_scheduler(name).config
    Q.use_scheduler([name], "CogVideoXDPMScheduler")
    sched = zoo.make_scheduler(name)
    assert isinstance(sched, diffusers.CogVideoXDPMScheduler)
    for key in ("prediction_type", "snr_shift_scale", "rescale_betas_zero_snr", "timestep_spacing", "beta_end"):
        assert sched.config[key] == own[key], key
    args = Q.parse_args(["--out", "x", "--models", name, "--scheduler", "CogVideoXDPMScheduler"])
    assert Q.resolve_model_path(name, args)[1] == "shipped weights, sampled with CogVideoXDPMScheduler"
    # DiCache on the DPM sampler: a DDPM-family trajectory (the skipped outputs rebuilt at the model's output)
    pipe = zoo.pipeline(name)

    def kw():  # a fresh generator per call: the DPM sampler draws noise at every step
        return zoo.pipeline_call_kwargs(name, [0, 1], seed=0, num_inference_steps=12)

    ref = pipe(**kw())[0]
    assert torch.equal(pipe(**kw())[0], ref)
    dicache.enable(pipe, threshold=0.5)
    out = pipe(**kw())[0]
    branch = next(iter(dicache.summary(pipe).branches.values()))
    dicache.disable(pipe)
    assert branch.pattern.count("F") < 12 and branch.outputs_rebuilt > 0 and torch.isfinite(out).all()
    # an SDE sampler: the noise it adds at every step is what a skipped call misses, so at 12 steps any cache lands
    # far from the uncached output (benchmarks/RESULTS.md, thirty-second round); not garbage, not the same output
    assert 8 < psnr(zoo.images(name, pipe, out, kw()), zoo.images(name, pipe, ref, kw())) < 80


def test_scheduler_config_sets_the_swapped_schedulers_options(monkeypatch, capsys):
    """``--scheduler-config JSON``: options of the swapped-in scheduler on top of the model's config (a flow-matching
    sampler that adds noise at every step); a key the class does not take, text that is not a JSON object, or the
    option without ``--scheduler`` is refused, naming the argument."""
    import diffusers

    import quality as Q

    from dicache import zoo
    from dicache.zoo import _specs

    name = "flux_digits"
    monkeypatch.setitem(_specs.SPECS, name, _specs.SPECS[name])  # restored after the test
    shift = zoo.make_scheduler(name).config["shift"]
    cls = "FlowMatchEulerDiscreteScheduler"
    with pytest.raises(ValueError, match="--scheduler-config: .* takes no \\['bogus'\\]"):
        Q.use_scheduler([name], cls, {"bogus": 1})
    for text, word in (("[1]", "JSON object"), ("{x", "not JSON")):
        args = Q.parse_args(["--out", "x", "--models", name, "--scheduler", cls, "--scheduler-config", text])
        with pytest.raises(ValueError, match=word):
            Q.scheduler_overrides(args)
    noisy = '{"stochastic_sampling": true}'
    assert Q.main(["--models", name, "--scheduler-config", noisy, "--out", "x", "--list"]) == 2
    assert "needs --scheduler" in capsys.readouterr().err
    args = Q.parse_args(["--out", "x", "--models", name, "--scheduler", cls,
                         "--scheduler-config", '{"stochastic_sampling": true}'])
    Q.use_scheduler([name], cls, Q.scheduler_overrides(args))
    sched = zoo.make_scheduler(name)
    assert isinstance(sched, diffusers.FlowMatchEulerDiscreteScheduler)
    assert sched.config["stochastic_sampling"] is True and sched.config["shift"] == shift
    assert Q.sampled_with(args) == f", sampled with {cls} (stochastic_sampling=True)"


def test_probe_spans_reads_a_drift_and_a_random_walk(capsys):
    """``benchmarks/probe_spans.py``: a probe that drifts changes j times as much over j steps (α = 1), one that
    takes a random walk √j times (α ≈ 0.5); the script runs on a shipped model."""
    import probe_spans

    g = torch.Generator().manual_seed(0)
    base, v = torch.rand(4, 256, generator=g) + 5.0, torch.randn(4, 256, generator=g)
    drift = {k: base + 0.01 * k * v for k in range(20)}
    rows, alpha = probe_spans.span_table(drift, 20)
    assert alpha == pytest.approx(1.0, abs=0.02)
    assert rows[-1][2][3] == pytest.approx(3.0, rel=0.05)
    walk = {0: base}
    for k in range(1, 40):
        walk[k] = walk[k - 1] + 0.01 * torch.randn(4, 256, generator=g)
    assert probe_spans.span_table(walk, 40)[1] == pytest.approx(0.5, abs=0.08)
    grad = torch.is_grad_enabled()
    assert probe_spans.main(["cogvideox_digits", "--steps", "8"]) == 0
    assert torch.is_grad_enabled() == grad  # left as it found it
    out = capsys.readouterr().out
    assert "| 7 |" in out and "median α over steps 1–5" in out and "the replay's α: " in out
    assert "first three calls: 0.99" in out and "a smooth path" in out  # DDIM: the latents move along a smooth path
    assert probe_spans.main(["cogvideox_digits", "--steps", "8", "--targets", "2,3", "--scheduler",
                             "CogVideoXDPMScheduler"]) == 0
    out = capsys.readouterr().out
    assert out.count("the replay's α: ") == 2 and out.count("a random walk (the line)") == 2  # noise at every step
    with pytest.raises(SystemExit):
        probe_spans.main(["cogvideox_digits", "--targets", "1,x"])


def test_run_options_compares_a_sampler_that_draws_its_noise_from_the_global_generator(monkeypatch, capsys):
    """FluxPipeline passes no generator to ``step()``: a sampler that adds noise there draws it from the global
    generator, which each run seeds from its seed, so the uncached and cached runs of a seed see the same noise."""
    import run_options as ro

    from dicache.zoo import _specs

    monkeypatch.setitem(_specs.SPECS, "flux_digits", _specs.SPECS["flux_digits"])  # restored after
    argv = ["flux_digits", "6", '{"threshold": 0.4}', "--seeds", "0", "--labels", "0,1",
            "--scheduler", "FlowMatchEulerDiscreteScheduler", "--scheduler-config", '{"stochastic_sampling": true}']
    assert ro.main(argv) == 0 and torch.is_grad_enabled()
    assert "stochastic_sampling=True" in capsys.readouterr().out


def test_run_options_refuses_a_pipeline_that_is_not_deterministic(monkeypatch, capsys):
    """Two uncached runs of a seed that differ (noise from a generator the run does not seed): no cache can be
    compared with either; ``run_options.py`` says so."""
    import run_options as ro

    _add_noise_it_cannot_repeat(monkeypatch)
    assert ro.main(["flux_digits", "4", '{"threshold": 0.4}', "--seeds", "0", "--labels", "0,1"]) == 2
    assert "two uncached runs of seed 0 differ" in capsys.readouterr().err


def test_every_budget_calibration_call_draws_the_calibration_seeds_noise(monkeypatch, tmp_path):
    """Each setting of the replayed budget family calibrates on one call of the calibration seed: a generator of its
    own each time (one shared generator would hand each later setting the noise the earlier ones left)."""
    import quality as Q
    import quality_methods as qm

    states = []

    class Recording(qm.Context):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            factory = self.calibration_kwargs

            def recorded():
                kw = factory()
                states.append(kw["generator"].get_state().clone())
                return kw

            self.calibration_kwargs = recorded

    monkeypatch.setattr(qm, "Context", Recording)
    argv = ["--models", "cogvideox_digits", "--steps", "6", "--seeds", "0", "--labels", "0,1", "--families",
            "DiCache budget", "--values", "DiCache budget=2,3", "--no-plot", "--out", str(tmp_path / "q")]
    assert Q.main(argv) == 0 and torch.is_grad_enabled()  # left as it found it
    fresh = torch.Generator("cpu").manual_seed(1000).get_state()
    assert len(states) == 2 and all(torch.equal(s, fresh) for s in states)


def test_extrapolation_errors_sums_the_misses_of_the_line_and_the_quadratic():
    """``benchmarks/extrapolation_errors.py``: on a trajectory quadratic in the step the quadratic misses nothing and
    the line does; the step-weighted sums over the skipped and the computed steps, by hand on a scalar trajectory."""
    import extrapolation_errors as xe

    g = torch.Generator().manual_seed(7)
    a, b, c = (torch.randn(2, 5, 3, generator=g) for _ in range(3))
    quadratic = {t: a + b * t + c * t * t for t in range(11)}
    e = xe.extrapolation_errors(quadratic, "FFF__F_F__F")
    assert e["quad_rel"] < 1e-5 and e["line_rel"] > 1e-2
    assert e["skipped"][-1] < 1e-3 and e["computed"][-1] < 1e-3 and e["skipped"][0] > 1e-2
    line = {t: a + b * t for t in range(11)}
    assert max(xe.extrapolation_errors(line, "FFF__F_F__F")["computed"]) < 1e-4

    # R(t) = t²: at step 3 (skipped) the line through steps 1, 2 says 7 for 9; at step 4 (computed) 10 for 16
    square = {t: torch.tensor([float(t * t)]) for t in range(5)}
    e = xe.extrapolation_errors(square, "FFF_F", sizes=[1, 1, 1, 2, 3], blends=(0.0, 0.5, 1.0))
    assert e["skipped"] == pytest.approx([4.0, 2.0, 0.0]) and e["computed"] == pytest.approx([18.0, 9.0, 0.0])
    assert e["line_rel"] == pytest.approx(2 / 9) and e["quad_rel"] == pytest.approx(0.0)
    assert xe.extrapolation_errors(square, "FF_FF")["line_rel"] is None  # no skip after three computed steps
    for pattern, sizes in (("FFX_F", None), ("_FF_F", None), ("FFF_F_", None), ("FFF_F", [1, 1])):
        with pytest.raises(ValueError):
            xe.extrapolation_errors(square, pattern, sizes)
    for positions in ([0, 1, 2], [0, 1, 1, 2, 3]):
        with pytest.raises(ValueError, match="positions"):
            xe.extrapolation_errors(square, "FFF_F", positions=positions)


def test_extrapolation_errors_in_hindsight_and_along_the_sigmas():
    """The hindsight sum interpolates each run between the two computed steps before it and the one after it (by hand
    on t³); positions move the polynomials off the step index (an affine change of them moves nothing)."""
    import extrapolation_errors as xe

    # R(t) = t³, step 3 skipped: in hindsight the quadratic through steps 1, 2, 4 says 29 for 27, weighted by step 3's 2
    cube = {t: torch.tensor([float(t ** 3)]) for t in range(5)}
    e = xe.extrapolation_errors(cube, "FFF_F", sizes=[1, 1, 1, 2, 3])
    assert e["hindsight"] == pytest.approx(4.0)
    assert e["skipped"][-1] == pytest.approx(2 * 6.0)  # the quadratic through steps 0, 1, 2 says 21 at step 3
    g = torch.Generator().manual_seed(3)
    a, b, c = (torch.randn(4, 6, generator=g) for _ in range(3))
    quadratic = {t: a + b * t + c * t * t for t in range(12)}
    assert xe.extrapolation_errors(quadratic, "FFF__F_F___F")["hindsight"] < 1e-3
    assert xe.extrapolation_errors(quadratic, "FFF_FFFFFFFF")["hindsight"] < 1e-3  # (runs of one only)
    noisy = {t: v + 0.05 * torch.randn(4, 6, generator=g) for t, v in quadratic.items()}
    plain = xe.extrapolation_errors(noisy, "FFF__F_F___F")
    moved = xe.extrapolation_errors(noisy, "FFF__F_F___F", positions=[3 + 0.5 * t for t in range(12)])
    for key in ("line_rel", "quad_rel", "hindsight"):
        assert moved[key] == pytest.approx(plain[key], rel=1e-4)
    # linear in the positions, not in the steps: the line along them misses nothing, the line along the steps does
    u = [0, 1, 3, 4, 7, 8, 9, 12]
    along = {t: a + b * u[t] for t in range(8)}
    assert xe.extrapolation_errors(along, "FFF__F_F", positions=u)["skipped"][0] < 1e-4
    assert xe.extrapolation_errors(along, "FFF__F_F")["skipped"][0] > 1e-2


def test_jitter_tells_white_noise_from_a_smooth_residual():
    import extrapolation_errors as xe

    g = torch.Generator().manual_seed(5)
    noise = {t: torch.randn(2000, generator=g) for t in range(15)}
    j = xe.jitter(noise)
    assert j["cosine"] == pytest.approx(-2 / 3, abs=0.05) and j["second"] == pytest.approx(6 ** 0.5, rel=0.05)
    assert 1.0 < j["warmup"] < 2.0  # |e2 − 2e1 + e0| against |e1 − e0|: about √6/√2 for white noise
    a, b, c = (torch.randn(50, generator=g) for _ in range(3))
    smooth = xe.jitter({t: a + b * t + c * t * t for t in range(8)})
    assert smooth["cosine"] == pytest.approx(1.0, abs=1e-6) and smooth["second"] > 0
    straight = xe.jitter({t: torch.tensor([3.0, -1.0]) + t * torch.tensor([2.0, 5.0]) for t in range(6)})  # (exact)
    assert straight["cosine"] is None and straight["second"] == pytest.approx(0.0, abs=1e-12)
    assert straight["warmup"] == 0.0
    # by hand: R = 0, 2, 3 over steps 0–2 (then anything): second difference −1 against the larger first, 2
    assert xe.jitter({t: torch.tensor([float(v)]) for t, v in enumerate([0, 2, 3, 5, 4])})["warmup"] == 0.5
    assert xe.jitter({t: torch.zeros(2) for t in range(5)})["warmup"] is None
    for bad in ({t: a for t in range(4)}, {t: a for t in (0, 1, 2, 3, 5)}):
        with pytest.raises(ValueError, match="every step"):
            xe.jitter(bad)


def test_extrapolation_errors_records_the_uncached_trajectory(capsys):
    """The command line: every step of one uncached run recorded, a line per pattern; bad patterns refused."""
    import extrapolation_errors as xe

    threads = torch.get_num_threads()
    assert xe.main(["flux_digits", "8", "FFF_F__F", "FFF_F_FF", "--labels", "0,1", "--threads", "1"]) == 0
    assert torch.is_grad_enabled() and torch.get_num_threads() == threads  # left as they were
    out = capsys.readouterr().out
    assert "steps weighted by their size" in out and out.count("per skip: line") == 2
    assert out.count("in hindsight") == 2 and "step to step: first difference" in out
    assert xe.main(["flux_digits", "8", "FFF_F__F", "--labels", "0", "--positions", "sigmas"]) == 0
    assert "placed at their sigmas" in capsys.readouterr().out
    assert xe.main(["flux_digits", "8", "FFF_", "--labels", "0"]) == 0  # repeated: FFF_FFF_
    assert "FFF_FFF_  per skip" in capsys.readouterr().out
    for bad in (["flux_digits", "8", "FFX_F"], ["flux_digits", "8", "_FFFFFFF"], ["flux_digits", "3", "FFF"],
                ["flux_digits", "8", "FFF_F__F", "--ddpm-wan", "/nowhere"]):
        with pytest.raises(SystemExit):
            xe.main(bad)


def test_smooth_time_holds_the_fast_time_columns_at_zero(tmp_path, capsys):
    """``benchmarks/smooth_time.py``: the columns of the timestep embedding's fast frequencies (by hand: a period of
    2π·10000^(j/128) under 200 units for j ≤ 48) start at zero and stay there through training; the rest moves."""
    import diffusers
    import smooth_time as st

    from dicache import zoo

    assert st.fast_columns(128, 200.0) == list(range(49)) + list(range(128, 177))
    assert st.fast_columns(4, 1.0) == [] and len(st.fast_columns(4, 1e9)) == 8
    # with diffusers' shift of 1 the frequencies are spaced over half − 1: period 2π·10000^(j/127), j ≤ 47 under 200
    assert st.fast_columns(128, 200.0, shift=1.0) == list(range(48)) + list(range(128, 176))
    with pytest.raises(ValueError):
        st.fast_columns(0, 200.0)
    model = zoo.load("flux_digits")
    assert st.frequency_shift(model, 256) == 0.0 and st.frequency_shift(model, 3) == 0.0  # (none of 3 channels)
    layer = st.time_inputs(model)["time_text_embed.timestep_embedder.linear_1"]
    assert "guidance" not in " ".join(st.time_inputs(model))
    before = layer.weight.detach().clone()
    held = st.hold_fast_columns_at_zero(model, 200.0)
    cols = held["time_text_embed.timestep_embedder.linear_1"]
    assert cols == st.fast_columns(128, 200.0) and layer.weight[:, cols].abs().max() == 0
    opt = torch.optim.AdamW([layer.weight], lr=1e-2, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        x = torch.randn(3, 256, generator=g)
        opt.zero_grad()
        layer(x).square().sum().backward()
        opt.step()
    keep = [c for c in range(256) if c not in cols]
    assert layer.weight[:, cols].abs().max() == 0 and not torch.equal(layer.weight[:, keep], before[:, keep])
    with pytest.raises(ValueError, match="no timestep embedder"):
        st.time_inputs(torch.nn.Linear(2, 2))

    cls = diffusers.FluxTransformer2DModel
    with st.smooth_variant("flux_digits", 200.0):
        assert diffusers.FluxTransformer2DModel is not cls
    assert diffusers.FluxTransformer2DModel is cls  # restored
    threads = torch.get_num_threads()
    out = str(tmp_path / "flux_digits")
    assert st.main(["train", "--dir", out, "--steps", "2"]) == 0
    assert torch.is_grad_enabled() and torch.get_num_threads() == threads
    trained = zoo.load("flux_digits", path=out)
    w = trained.time_text_embed.timestep_embedder.linear_1.weight
    assert w[:, cols].abs().max() == 0 and w[:, keep].abs().max() > 0
    import run_options as ro  # its --weights samples the model written there

    assert ro.main(["flux_digits", "6", '{"threshold": 0.1}', "--seeds", "0", "--labels", "0", "--weights", out]) == 0
    assert f"flux_digits ({out}), 6 steps" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        ro.main(["flux_digits", "6", "{}", "--weights", str(tmp_path / "nowhere")])


def test_smooth_time_roughness_reads_the_output_against_the_timestep(capsys):
    import smooth_time as st

    r = st.roughness("flux_digits", steps=6, at=2)
    assert all(r[k] > 0 for k in ("first", "second", "step", "latent"))
    assert r["first"] < r["step"]  # an eighth of the step moves the output less than the step
    assert st.main(["roughness", "flux_digits", "--steps", "6", "--at", "2"]) == 0
    assert "per eighth of the step" in capsys.readouterr().out
    with pytest.raises(ValueError):
        st.roughness("flux_digits", steps=6, at=5)
    with pytest.raises(SystemExit):
        st.main(["train", "--dir", "/tmp/nowhere", "--min-period", "0"])


def _shipped_reports():
    """Every report directory shipped under benchmarks/results (the top level is the first rounds' report)."""
    top = os.path.join(ROOT, "benchmarks", "results")
    return [d for d in [top] + sorted(os.path.join(top, n) for n in os.listdir(top))
            if os.path.isfile(os.path.join(d, "quality.csv"))]


def test_shipped_reports_are_rendered_by_this_code():
    """Each shipped ``quality.md`` is what this code renders from the report's own rows: a change to the report's
    tables is rendered into every report (``quality.py render DIR…``) in the same commit, so no report reads on
    tables of an older version; and each of its families is one the benchmark still knows."""
    import quality as Q
    import quality_methods as qm

    dirs = _shipped_reports()
    assert len(dirs) >= 25
    for d in dirs:  # a family the benchmark no longer has would drop out of the comparisons: retire the report
        unknown = {r["family"] for r in Q.read_csv(os.path.join(d, "quality.csv"))} - {*qm.FAMILIES, qm.NO_CACHE}
        assert not unknown, f"{d}: families the benchmark no longer has: {sorted(unknown)}"
    stale = Q.stale_reports(dirs)
    assert not stale, f"render them again: .venv/bin/python benchmarks/quality.py render {' '.join(stale)}"


def test_render_writes_only_the_reports_out_of_date(tmp_path, capsys):
    """``quality.py render``: a report whose ``quality.md`` differs from this code's rendering is written again
    (rows, details and plot untouched); ``--check`` lists it and writes nothing."""
    import quality as Q

    rows, runs, _ = _sampled_report()
    meta = dict(command="quality.py --quick", date="2026-12-07 00:00", threads=1, seconds=1.0, seeds=[0, 1],
                labels=list(range(10)), backend="cpu")
    fresh, old = tmp_path / "fresh", tmp_path / "old"
    for d in (fresh, old):
        d.mkdir()
        _write_report(Q, rows, runs, d)
        details = json.loads((d / "quality_details.json").read_text())
        (d / "quality_details.json").write_text(json.dumps(dict(details, meta=meta)))
        (d / "quality.md").write_text(Q.markdown(Q.read_csv(str(d / "quality.csv")), meta) + "\n")
    current = (old / "quality.md").read_text()
    (old / "quality.md").write_text(current.replace("The margins at a glance", "Margins"))
    csv_before = (old / "quality.csv").read_text()
    assert Q.stale_reports([str(fresh), str(old)]) == [str(old)]
    assert Q.render_main([str(fresh), str(old), "--check"]) == 1
    assert f"{old}: out of date" in capsys.readouterr().out
    assert "Margins" in (old / "quality.md").read_text()  # --check writes nothing
    assert Q.render_main([str(fresh), str(old)]) == 0
    assert f"{old}: rendered again" in capsys.readouterr().out
    assert (old / "quality.md").read_text() == current and (old / "quality.csv").read_text() == csv_before
    assert Q.render_main([str(fresh), str(old), "--check"]) == 0
    assert "2 report(s) up to date" in capsys.readouterr().out
    (fresh / "quality.md").unlink()
    with pytest.raises(SystemExit):
        Q.render_main([str(fresh)])
    assert "no quality.md" in capsys.readouterr().err


def _overview_rows(with_mean=True):
    """A report's rows for the overview: Flux at 20 steps, uniform caching as the peer, the preset at two δ, the
    budget's replay at 2× (no first call), and without the per-sample mean where ``with_mean`` is False."""
    import quality_methods as qm

    def row(family, setting, frac, psnr, psnr_mean):
        return dict(model="flux_digits", steps=20, family=family, setting=setting, status="ok", flop_fraction=frac,
                    psnr=psnr, psnr_mean=psnr_mean if with_mean else "", ssim=0.99)

    return [row(qm.NO_CACHE, "", 1.0, math.inf, math.inf), row(qm.UNIFORM, "k=2", 0.5, 38.25, 40.5),
            row(qm.DICACHE, "δ=0.2", 0.52, 49.0, 51.75), row(qm.DICACHE, "δ=0.4", 0.38, 44.0, 47.0),
            row(qm.DICACHE_BUDGET, "target_speedup=2 (no δ), after one call", 0.5, 46.0, 52.0)]


def test_overview_row_counts_each_margin_pooled_and_per_sample():
    """The README's overview cells of one report: the counts of :func:`criteria_counts` pooled / on the mean of the
    samples, the fronts in brackets, the lead's range pooled; a rule with no run reads ``–``; a report whose only
    DiCache family is the preset has no preset margin to count."""
    import quality as Q
    import quality_methods as qm

    rows = _overview_rows()
    # at 2× the preset interpolates 49 + (44 − 49)·0.02/0.14 = 48.29 dB pooled against uniform's 38.25: +10.0; at
    # 2.25× and 2.5× no peer reaches; the budget at 2× (46.0) misses the preset's 48.29 pooled, beats its 51.07 on the
    # mean of the samples; on the fronts the preset's δ = 0.4 (2.63×) is its best at 2× and beyond
    lead, preset, on_target, budget, default = Q.overview_row(rows)
    assert lead == "1 / 1 of 1, +10.0 to +10.0 dB (1 / 1 of 1)"
    assert preset == "3 / 2 of 3 (2 / 2 of 3)"
    assert on_target == "1 of 1"
    assert budget == "0 of 1 / –; 1 of 1 / –"  # replay / first call, pooled; the same on the mean of the samples
    assert default == "1 / 1 of 1"  # Flux's default at 20 steps, δ = 0.4: nothing saves more
    assert Q.overview_row([r for r in rows if r["setting"] != "δ=0.4"])[4] == "–"  # no run at the default's δ
    # without the per-sample mean: the pooled counts alone, marked as such
    lead, preset, _, budget, _ = Q.overview_row(_overview_rows(with_mean=False))
    assert lead == "1 of 1 / –, +10.0 to +10.0 dB (1 of 1 / –)" and budget == "0 of 1 / –"
    # a lead under 1 dB is counted as a miss and shown with its sign
    worse = [dict(r, psnr=r["psnr"] - 11.0) if r["family"] in qm.DICACHES else r for r in rows]
    assert Q.overview_row(worse)[0].startswith("0 / 1 of 1, −1.0 to −1.0 dB")
    only_preset = [r for r in rows if r["family"] != qm.DICACHE_BUDGET]
    assert Q.overview_row(only_preset)[1:4] == ["–", "–", "–"]


def test_overview_writes_and_checks_the_readme_between_its_markers(tmp_path, monkeypatch, capsys):
    import quality as Q

    (tmp_path / "one").mkdir()
    Q.write_csv([dict(r, seeds=2, labels=10) for r in _overview_rows()], str(tmp_path / "one" / "quality.csv"))
    monkeypatch.setattr(Q, "OVERVIEW_REPORTS", (("one", "a made-up report"),))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{Q.OVERVIEW_BEGIN}\nold table\n{Q.OVERVIEW_END}\nafter\n")
    args = ["--results", str(tmp_path)]
    assert Q.overview_main(args + ["--check", str(readme)]) == 1
    assert "out of date" in capsys.readouterr().out and "old table" in readme.read_text()  # --check writes nothing
    assert Q.overview_main(args + ["--write", str(readme)]) == 0
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# x\n\nbefore\n") and text.endswith(f"{Q.OVERVIEW_END}\nafter\n")
    assert "| a made-up report (`one/`) | 1 / 1 of 1, +10.0 to +10.0 dB" in text
    assert Q.overview_main(args + ["--check", str(readme)]) == 0
    capsys.readouterr()
    for broken in ("no markers\n", f"{Q.OVERVIEW_END}\n{Q.OVERVIEW_BEGIN}\n"):
        readme.write_text(broken)
        with pytest.raises(SystemExit):
            Q.overview_main(args + ["--check", str(readme)])
        assert "overview markers" in capsys.readouterr().err


def test_readme_overview_is_rendered_from_the_shipped_reports():
    """The README's table of where the reports stand is what ``quality.py overview`` renders from the shipped reports:
    a report re-run, or a change to how the margins are counted, is written into the README in the same commit
    (``quality.py overview --write README.md``)."""
    import quality as Q

    assert all(os.path.isfile(os.path.join(ROOT, "benchmarks", "results", name, "quality.csv"))
               for name, _ in Q.OVERVIEW_REPORTS)
    assert Q.overview_main(["--check", os.path.join(ROOT, "README.md")]) == 0, \
        "write it again: .venv/bin/python benchmarks/quality.py overview --write README.md"


def _rival_rows(shift=0.0):
    """One report's rows at Wan 50: the preset reaches 2× to 3× (flop fractions 0.5 and 1/3), the budget and the δ
    schedule 2× to 2.5× only (0.5 and 0.4), each family level across its savings; a peer above them all."""
    import quality_methods as qm

    def row(family, frac, psnr, psnr_mean):
        return dict(model="wan_digits", steps=50, family=family, setting=f"{family} {frac}", status="ok",
                    flop_fraction=frac, psnr=psnr + shift, psnr_mean=psnr_mean + shift, ssim=0.99)

    return [row(qm.NO_CACHE, 1.0, math.inf, math.inf), row(qm.UNIFORM, 0.5, 60.0, 60.0),
            row(qm.UNIFORM, 0.3, 60.0, 60.0), row(qm.DICACHE, 0.5, 40.0, 45.0), row(qm.DICACHE, 1 / 3, 40.0, 45.0),
            row(qm.DICACHE_BUDGET, 0.5, 40.3, 46.0), row(qm.DICACHE_BUDGET, 0.4, 40.3, 46.0),
            row(qm.DICACHE_SCHED, 0.5, 39.0, 44.0), row(qm.DICACHE_SCHED, 0.4, 39.0, 44.0)]


def test_rival_gaps_set_each_family_against_the_best_of_the_others():
    """Each DiCache family minus the best of the other DiCache families at the points of LEAD_AT where another one
    reaches (the peers do not count): the preset at 2×, 2.25× and 2.5× only, where the budget and the schedule reach
    too."""
    import quality as Q
    import quality_methods as qm

    rows = _rival_rows()
    gaps = Q.rival_gaps(rows)
    assert set(gaps) == {qm.DICACHE, qm.DICACHE_BUDGET, qm.DICACHE_SCHED}
    assert gaps[qm.DICACHE] == pytest.approx([-0.3] * 3)  # 40.0 − the budget's 40.3; not at 2.75× and 3×
    assert gaps[qm.DICACHE_BUDGET] == pytest.approx([0.3] * 3)
    assert gaps[qm.DICACHE_SCHED] == pytest.approx([-1.3] * 3)
    assert Q.rival_gaps(rows, "psnr_mean")[qm.DICACHE] == pytest.approx([-1.0] * 3)
    assert Q.rival_gaps([r for r in rows if r["family"] in (qm.DICACHE, qm.UNIFORM)]) == {}  # no other DiCache
    with pytest.raises(ValueError, match="metric"):
        Q.rival_gaps(rows, "ssim_mean")


def test_rivals_sum_the_reports_points_apart(tmp_path, monkeypatch, capsys):
    """``quality.py rivals``: the counts within 0.5 dB and the median gaps, over each report's points (two reports of
    the same model and step count are not merged); no report named: the overview's."""
    import quality as Q

    for name, shift in (("a", 0.0), ("b", 2.0)):
        (tmp_path / name).mkdir()
        Q.write_csv([dict(r, seeds=2, labels=10) for r in _rival_rows(shift)], str(tmp_path / name / "quality.csv"))
    assert Q.rivals_main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    out = capsys.readouterr().out
    assert "over 2 report(s)" in out
    assert "| DiCache | 6 of 6 | -0.3 | 0 of 6 | -1.0 |" in out
    assert "| DiCache budget | 6 of 6 | +0.3 | 6 of 6 | +1.0 |" in out
    assert "| DiCache δ schedule | 0 of 6 | -1.3 | 0 of 6 | -2.0 |" in out
    assert out.index("| DiCache |") < out.index("| DiCache budget |")  # the preset first
    assert "uniform" not in out
    monkeypatch.setattr(Q, "OVERVIEW_REPORTS", (("a", "one report"),))
    assert Q.rivals_main(["--results", str(tmp_path)]) == 0
    assert "over 1 report(s)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        Q.rivals_main([str(tmp_path / "none")])
    assert "not a report directory" in capsys.readouterr().err
