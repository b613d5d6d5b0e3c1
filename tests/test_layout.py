"""The module map's arrows: each layer imports only the layers below it (read from the sources, nothing runs)."""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def imports_of(path: str):
    """The modules ``path`` imports, relative imports resolved against the ``dicache`` package."""
    tree = ast.parse(open(os.path.join(ROOT, path), encoding="utf-8").read())
    pkg = os.path.dirname(path).replace(os.sep, ".")
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def hits(path: str, banned):
    return sorted(m for m in imports_of(path) if any(m == b or m.startswith(b + ".") for b in banned))


# the layers above the method: model classes, hooks, the public API, the shipped models
ABOVE_METHOD = ("diffusers", "transformers", "dicache.adapters", "dicache.hooks", "dicache.api", "dicache.zoo",
                "dicache.summary", "dicache.demo")


@pytest.mark.parametrize("path", ["dicache/engine.py", "dicache/state.py", "dicache/budget.py", "dicache/config.py"])
def test_the_method_knows_no_model_class_and_no_hook(path):
    assert hits(path, ABOVE_METHOD) == []


def test_the_budget_decides_on_host_numbers_only():
    # no tensor, no kernel: it reads the branch's state and answers with a threshold or a skip
    assert hits("dicache/budget.py", ("torch", "dicache.ops", "dicache.engine", "triton")) == []


def test_the_state_does_not_reach_up_into_the_engine_or_the_budget():
    assert hits("dicache/state.py", ("dicache.engine", "dicache.budget")) == []


@pytest.mark.parametrize("path", sorted(
    [os.path.join("kernels", f) for f in os.listdir(os.path.join(ROOT, "kernels")) if f.endswith(".py")]
    + [os.path.join("dicache", "ops", f) for f in os.listdir(os.path.join(ROOT, "dicache", "ops"))
       if f.endswith(".py")]))
def test_kernels_and_ops_import_nothing_from_the_engine(path):
    assert hits(path, ABOVE_METHOD + ("dicache.engine", "dicache.state", "dicache.budget", "dicache.config")) == []


def test_the_resolver_reads_relative_imports():
    # the check above would pass vacuously if relative imports were not resolved
    assert {"dicache.budget.Budget", "dicache.state.BranchState", "dicache.ops"} <= imports_of("dicache/engine.py")
