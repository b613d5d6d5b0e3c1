"""Compile checks of the CUDA sources, runnable without a GPU.

* every ``csrc/*.cu`` compiles with nvcc for sm_80 and sm_90 (both in one nvcc
  call, ``-gencode`` twice) into an object file in a temporary folder, without
  register spills, well under a minute;
* the torch binding ``csrc/cuda_ops.cpp`` (host code, built by the C++ compiler
  in the real CUDA build) passes a syntax check against torch's headers and the
  CUDA runtime headers;
* no source pulls in the heavy headers (``torch/extension.h``,
  ``ATen/cuda/CUDAContext.h``).

Running the kernels needs a CUDA build of torch and a GPU: that is exercised
by the ``backend="cuda"`` tests where they exist, not here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sysconfig
import time
from pathlib import Path
from typing import List, Optional

import pytest
import torch
from torch.utils import cpp_extension

REPO = Path(__file__).resolve().parents[1]
CSRC = REPO / "csrc"
ARCHS = ("80", "90")
COMPILE_BUDGET_S = 60.0


def _nvcc() -> Optional[str]:
    found = shutil.which("nvcc")
    if found:
        return found
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and os.path.isfile(os.path.join(home, "bin", "nvcc")):
            return os.path.join(home, "bin", "nvcc")
    return None


NVCC = _nvcc()
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found (not on PATH, CUDA_HOME, or /usr/local/cuda)")


def _include_flags() -> List[str]:
    """torch's include paths and Python's, as the JIT build uses them (works with a CPU torch)."""
    flags = [f"-I{CSRC}"]
    for path in cpp_extension.include_paths():
        flags.append(f"-I{path}")
    flags.append(f"-I{sysconfig.get_paths()['include']}")
    return flags


def _cuda_include_flags() -> List[str]:
    """The CUDA runtime include folders, as nvcc itself reports them (nvcc may be a wrapper script)."""
    r = subprocess.run([NVCC, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                       capture_output=True, text=True, timeout=60)
    flags = []
    for line in (r.stdout + r.stderr).splitlines():
        m = re.match(r'#\$ (INCLUDES|SYSTEM_INCLUDES)=(.*)', line)
        if m:
            flags += [tok for tok in re.findall(r'"([^"]+)"', m.group(2)) if tok != "-isystem"]
    return [f if f.startswith("-I") else f"-I{f}" for f in flags]


CU_FILES = sorted(CSRC.glob("*.cu"))


def test_there_are_cuda_sources():
    assert CU_FILES, f"no .cu files in {CSRC}"


@needs_nvcc
@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: p.name)
def test_nvcc_compiles_sm80_sm90(source: Path, tmp_path: Path):
    obj = tmp_path / (source.stem + ".o")
    cmd = [NVCC, "-c", "-std=c++20", "-O3"]
    for arch in ARCHS:
        cmd += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
    cmd += _include_flags()
    cmd += ["-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE", "-Xptxas", "-v", "-Xcompiler", "-fPIC"]
    # The flags torch's JIT build adds to every nvcc call (no implicit half/bf16 conversions).
    cmd += list(cpp_extension.COMMON_NVCC_FLAGS)
    cmd += ["-o", str(obj), str(source)]
    start = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=5 * COMPILE_BUDGET_S)
    elapsed = time.perf_counter() - start
    assert r.returncode == 0, f"nvcc failed ({' '.join(cmd)}):\n{r.stderr[-6000:]}"
    assert obj.is_file() and obj.stat().st_size > 0
    # Every kernel compiled for both architectures, none spilling registers.
    log = r.stdout + r.stderr
    for arch in ARCHS:
        assert f"for 'sm_{arch}'" in log, f"no kernels compiled for sm_{arch}"
    spills = [line for line in log.splitlines() if re.search(r"[1-9]\d* bytes spill (stores|loads)", line)]
    assert not spills, "register spills:\n" + "\n".join(spills)
    assert elapsed < COMPILE_BUDGET_S, f"{source.name}: {elapsed:.1f} s for two architectures (light headers only?)"


@needs_nvcc
def test_binding_compiles_against_torch_and_cuda_headers():
    """csrc/cuda_ops.cpp (the host side of the CUDA extension) with the host compiler."""
    cxx = os.environ.get("CXX", "c++")
    if shutil.which(cxx) is None:
        pytest.skip(f"no host C++ compiler ({cxx})")
    cmd = [cxx, "-fsyntax-only", "-std=c++20", "-Wall", "-Werror=return-type"]
    cuda_inc = _cuda_include_flags()
    assert cuda_inc, "nvcc --dryrun reported no include folders"
    cmd += _include_flags() + cuda_inc + ["-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE"]
    cmd += [str(CSRC / "cuda_ops.cpp")]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{' '.join(cmd)}:\n{r.stderr[-6000:]}"
    assert "warning" not in r.stderr, r.stderr[-3000:]


def test_light_headers_only():
    heavy = ("torch/extension.h", "ATen/cuda/CUDAContext.h")
    for f in sorted(CSRC.iterdir()):
        if f.suffix in (".cpp", ".cu", ".h", ".cuh"):
            text = f.read_text()
            for h in heavy:
                assert f"#include <{h}>" not in text and f'#include "{h}"' not in text, f"{f.name} includes {h}"
    # The kernels file is plain CUDA: no ATen / torch headers at all (fast nvcc).
    for f in CU_FILES:
        includes = re.findall(r'#include\s*[<"]([^>"]+)[>"]', f.read_text())
        assert not [i for i in includes if i.startswith(("ATen/", "torch/", "c10/"))], f"{f.name}: {includes}"


def test_cuda_backend_reports_why_not_here():
    """On a CPU-only torch the cuda backend is unavailable with a reason, and auto never picks it for CPU."""
    from dicache.ops import BackendUnavailableError, load_backend, select_backend

    if torch.version.cuda is not None and torch.cuda.is_available():
        pytest.skip("a CUDA torch with a GPU: the cuda backend may build here")
    assert select_backend("auto", "cpu").name in ("cpu", "torch")
    try:
        backend = load_backend("cuda")
    except BackendUnavailableError as exc:
        assert str(exc)
    else:  # a CUDA torch without a visible GPU: built, but it cannot run
        assert backend.check_device(torch.device("cuda")) is not None
