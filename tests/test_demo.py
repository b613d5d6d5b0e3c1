"""The demo command on the shipped models: it runs, prints the table and writes the side-by-side PNG."""

import os

import pytest
import torch

from dicache.__main__ import main


def _demo(tmp_path, model: str, steps: int) -> str:
    """Run the demo on one model, one repeat (torch's thread count restored); returns its table."""
    threads = torch.get_num_threads()
    try:
        rc = main(["demo", "--out", str(tmp_path), "--model", model, "--steps", str(steps), "--repeats", "1"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    png = tmp_path / f"{model}_dicache.png"
    assert png.exists() and os.path.getsize(png) > 0
    return (tmp_path / "demo.txt").read_text()


def test_demo_writes_png_and_table(tmp_path, capsys):
    table = _demo(tmp_path, "flux_digits", 6)
    assert "no cache" in table and "DiCache (" in table and "δ=0.4)" in table
    out = capsys.readouterr().out
    assert "cond:" in out and "uncond:" in out  # the summary of both CFG branches


def test_demo_on_a_family_without_a_preset_budgets(tmp_path, capsys):
    """sd3_digits: SD3 has no preset, so the demo's ``dicache.enable(pipe)`` runs the generic rule on a 2× budget."""
    assert "target_speedup=2)" in _demo(tmp_path, "sd3_digits", 20)
    out = capsys.readouterr().out
    assert "default:" in out and "; budget: online" in out  # one branch (CFG batched), its first call online


def test_demo_rejects_unknown_model(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--out", str(tmp_path), "--model", "sdxl"])
    assert "--model must be one of" in capsys.readouterr().err
