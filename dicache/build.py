"""Just-in-time build of the compiled kernels in ``csrc/`` (C++ for CPU, CUDA for GPUs).

Nothing is compiled at install time: ``setup.py`` must not import torch (pip's
isolated build environment would download a CUDA torch of several GB), and a
wheel cannot know the user's torch ABI. Instead each extension is built with
``torch.utils.cpp_extension.load`` and ninja on first use, into a cache
directory keyed by the Python and torch versions, the CPU instruction set and
the compiler, and loaded from there afterwards.

* ``dicache_cpu_ext`` — ``csrc/cpu_ops.cpp``; registers ``torch.ops.dicache_cpu.*``.
* ``dicache_cuda_ext`` — ``csrc/cuda_ops.cpp`` + ``csrc/cuda_kernels.cu``; registers
  ``torch.ops.dicache_cuda.*``. Built only where torch is a CUDA build and nvcc exists.

Both use light headers (``ATen/ATen.h`` + ``torch/library.h``, ``TORCH_LIBRARY``)
and are loaded with ``torch.ops.load_library``: no pybind11 module, no
``torch/extension.h``: a CPU build takes ~20-35 s on 2 cores instead of ~50-75 s.

Environment:

``DICACHE_BUILD_CPU=0``     never build / load the C++ CPU kernels.
``DICACHE_BUILD_CUDA=0|1``  never build the CUDA kernels / try even when the checks say it cannot work.
``DICACHE_BUILD_DIR``       cache root (default ``$TORCH_EXTENSIONS_DIR/dicache`` if that is set,
                            else ``~/.cache/dicache``).
``DICACHE_CPU_ARCH_FLAGS``  instruction-set flags for the CPU build (default ``-mavx2 -mf16c``
                            where the CPU has both, else none); part of the cache key.
``DICACHE_BUILD_VERBOSE=1`` show the compiler commands and output.
``DICACHE_BUILD_PROBE=0``   build in this process with ``CXX`` and load the library unprobed (see below).
``MAX_JOBS``                parallel compile jobs (read by torch's ninja driver).

Each build runs in a separate process, which then calls every op of the new
library with a bad argument: the library is loaded here only if each error
arrives in Python as ValueError (some toolchains link libraries whose C++
exceptions end the process); otherwise the other C++ compilers on PATH are
tried (:func:`_jit_load`). The verdict is kept in the build folder, keyed by
sources, flags, compilers and torch, so later processes load at once.

A build that is skipped or fails is reported with one log line on the
``"dicache"`` logger and by :func:`build_info`; the ops then fall back to the
next backend (see :func:`dicache.ops.select_backend`). If a build was killed
half-way, a stale ``lock`` file in its build directory makes later builds wait:
delete that file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

logger = logging.getLogger("dicache")

CPU_EXT_NAME = "dicache_cpu_ext"
CUDA_EXT_NAME = "dicache_cuda_ext"
CPU_OPS_NAMESPACE = "dicache_cpu"
CUDA_OPS_NAMESPACE = "dicache_cuda"

CPU_SOURCES = ("cpu_ops.cpp",)
CUDA_SOURCES = ("cuda_ops.cpp", "cuda_kernels.cu")
HEADERS = ("common.h", "decide.h", "cuda_kernels.h")


class BuildError(RuntimeError):
    """An extension is unavailable; the message says why (skipped, not supported, or failed)."""


@dataclass
class ExtensionStatus:
    """What happened to one extension in this process."""

    name: str
    #: ``True`` once the library is built (or found up to date) and loaded.
    built: bool = False
    #: ``False`` until a build / load was attempted in this process.
    attempted: bool = False
    #: Why it is not available (skipped by an env switch, unsupported here, or the build failed).
    reason: Optional[str] = None
    #: The loaded shared library.
    library: Optional[str] = None
    build_dir: Optional[str] = None
    #: The C++ compiler (and nvcc for CUDA) with the first line of its ``--version``.
    compiler: Optional[str] = None
    nvcc: Optional[str] = None
    cflags: List[str] = field(default_factory=list)
    cuda_cflags: List[str] = field(default_factory=list)
    ldflags: List[str] = field(default_factory=list)
    cuda_arch_list: Optional[str] = None
    #: Wall time of the build (or of loading the cached build).
    seconds: Optional[float] = None
    #: ``True`` when an up-to-date build from the cache was loaded without compiling.
    cached: Optional[bool] = None
    #: Tail of the compiler output of a failed build.
    log: Optional[str] = None
    #: Compilers whose library was built but not loaded, each with why: a C++ error raised by the library
    #: ended the probe process (see :func:`_build_and_probe`) instead of arriving as a Python exception.
    rejected: List[str] = field(default_factory=list)


_lock = threading.RLock()
_status: Dict[str, ExtensionStatus] = {}


# ---------------------------------------------------------------------------
# paths


def source_dir() -> Path:
    """The folder with the C++/CUDA sources: ``dicache/csrc`` in a wheel, ``csrc/`` in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "csrc", here.parent / "csrc"):
        if (candidate / CPU_SOURCES[0]).is_file():
            return candidate
    raise BuildError(
        f"the C++ sources are missing (looked for {CPU_SOURCES[0]} in {here / 'csrc'} and "
        f"{here.parent / 'csrc'}); reinstall dicache"
    )


def _cache_root() -> Path:
    if os.environ.get("DICACHE_BUILD_DIR"):
        return Path(os.environ["DICACHE_BUILD_DIR"]).expanduser()
    if os.environ.get("TORCH_EXTENSIONS_DIR"):
        return Path(os.environ["TORCH_EXTENSIONS_DIR"]).expanduser() / "dicache"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "dicache"


def _build_dir(ext: str, isa_tag: str = "") -> Path:
    """One folder per extension, Python, torch (ABI), instruction set, source folder and compiler.

    The source folder and the compilers (``CXX``, ``CC``, resolved to files) are part of the key
    (as a short hash) so that a checkout and an installed wheel, whose ninja files name different
    source paths, or two compilers, do not rebuild over each other.
    """
    tag = f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}"
    if isa_tag:
        tag += f"-{isa_tag}"
    compilers = [_resolve(os.environ.get("CXX") or "c++"), _resolve(os.environ.get("CC") or "")]
    tag += "-" + hashlib.sha1("\0".join([str(source_dir())] + compilers).encode()).hexdigest()[:8]
    return _cache_root() / tag / ext


def _resolve(command: str) -> str:
    """The file a compiler command runs (``c++`` -> ``/usr/bin/x86_64-linux-gnu-g++-12``); ``""`` for none."""
    found = shutil.which(command) if command else None
    return os.path.realpath(found) if found else command


# ---------------------------------------------------------------------------
# toolchain


def _env_switch(name: str) -> Optional[bool]:
    """``True`` / ``False`` for 1/0 (yes/no, true/false, on/off), ``None`` when unset."""
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "auto"):
        return None
    if value in ("1", "yes", "true", "on"):
        return True
    if value in ("0", "no", "false", "off"):
        return False
    raise BuildError(f"{name}={os.environ[name]!r}: expected 0 or 1")


def _version_line(cmd: str) -> str:
    try:
        out = subprocess.run([cmd, "--version"], capture_output=True, text=True, timeout=30)
        lines = [line for line in (out.stdout or out.stderr).splitlines() if line.strip()]
        # nvcc prints its release on the last line, compilers on the first.
        return lines[-1 if "nvcc" in os.path.basename(cmd) else 0] if lines else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def _ensure_ninja() -> None:
    """Put a ninja on PATH (the venv's or the ``ninja`` package's) when there is none."""
    if shutil.which("ninja"):
        return
    candidates = [os.path.dirname(sys.executable)]
    try:
        import ninja  # type: ignore

        candidates.insert(0, getattr(ninja, "BIN_DIR", ""))
    except ImportError:
        pass
    for folder in candidates:
        if folder and os.path.isfile(os.path.join(folder, "ninja")):
            os.environ["PATH"] = folder + os.pathsep + os.environ.get("PATH", "")
            return
    raise BuildError("ninja is not installed (pip install ninja)")


def _cpu_features() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_arch_flags() -> List[str]:
    """Instruction-set flags of the CPU build (``DICACHE_CPU_ARCH_FLAGS`` overrides)."""
    if "DICACHE_CPU_ARCH_FLAGS" in os.environ:
        return os.environ["DICACHE_CPU_ARCH_FLAGS"].split()
    if platform.machine().lower() in ("x86_64", "amd64") and {"avx2", "f16c"} <= _cpu_features():
        # AVX2 for 8-wide fp32, F16C for fp16 <-> fp32 conversions. No -march=native:
        # the cache may be shared by machines of the same family, and AVX-512 does not help
        # a memory-bound loop here.
        return ["-mavx2", "-mf16c"]
    return []


def cpu_build_flags() -> Dict[str, List[str]]:
    """``{"cflags": [...], "ldflags": [...]}`` of the C++ CPU extension."""
    if os.name == "nt":  # MSVC (not tried in this project's CI)
        return {"cflags": ["/O2", "/openmp", "/fp:precise"], "ldflags": []}
    if sys.platform == "darwin":  # Apple clang has no OpenMP runtime: SIMD pragmas only (not tried in CI)
        return {"cflags": ["-O3", "-fopenmp-simd", "-ffp-contract=off"] + cpu_arch_flags(), "ldflags": []}
    # -fopenmp links libgomp.so.1, which resolves to the copy torch already loaded.
    return {"cflags": ["-O3", "-fopenmp", "-ffp-contract=off"] + cpu_arch_flags(), "ldflags": ["-fopenmp"]}


def cuda_build_flags() -> Dict[str, List[str]]:
    """``{"cflags", "cuda_cflags", "ldflags"}`` of the CUDA extension (arch list from torch)."""
    return {
        "cflags": ["-O3"],
        # No --use_fast_math: exact division and no flush-to-zero, like the reference.
        "cuda_cflags": ["-O3"],
        "ldflags": [],
    }


# ---------------------------------------------------------------------------
# building and loading


_PROBE_FILE = "dicache_probe.json"  # in each build folder: the verdict on the library built there
_RESULT_TAG = "DICACHE_BUILD_RESULT "  # the lines of the build process that the parent reads
_BUILD_TIMEOUT_S = 3600


def _jit_load(status: ExtensionStatus, kind: str, sources: List[str], flags: Dict[str, List[str]], with_cuda: bool,
              isa_tag: str) -> None:
    """Build (when needed) and load one extension; fills ``status``, raises BuildError.

    A library is loaded only once a separate process has built it and seen its C++ errors arrive in
    Python (:func:`_build_and_probe`); that verdict is kept in the build folder, keyed by the sources,
    flags, compiler and torch, so later processes load at once. Where the configured compiler
    (``CXX``, default ``c++``) builds a library whose errors end the process, each other C++ compiler
    on PATH is tried in turn (``status.rejected`` says which failed and how).
    """
    from torch.utils import cpp_extension

    _ensure_ninja()
    namespace = CPU_OPS_NAMESPACE if kind == "cpu" else CUDA_OPS_NAMESPACE
    start = time.perf_counter()
    for overrides in _compiler_candidates():
        with _compiler_env(overrides):
            build_dir = _build_dir(status.name, isa_tag)
            build_dir.mkdir(parents=True, exist_ok=True)
            cxx = cpp_extension.get_cxx_compiler()
            spec = dict(  # fresh lists: torch appends its own flags to them in place
                name=status.name,
                sources=sources,
                extra_cflags=list(flags.get("cflags", [])),
                extra_cuda_cflags=list(flags.get("cuda_cflags", [])) or None,
                extra_ldflags=list(flags.get("ldflags", [])),
                extra_include_paths=[str(source_dir())],
                build_directory=str(build_dir),
                with_cuda=with_cuda,
                is_python_module=False,
                verbose=_env_switch("DICACHE_BUILD_VERBOSE") is True,
            )
            status.build_dir, status.compiler = str(build_dir), f"{cxx} ({_version_line(cxx)})"
            if _env_switch("DICACHE_BUILD_PROBE") is False:  # build here, load unprobed
                _load_built(status, spec, namespace, compiled=False)
                status.seconds = round(time.perf_counter() - start, 3)
                return
            key = _build_key(spec)
            verdict, compiled = _read_verdict(build_dir, key), False
            if verdict is None:
                verdict, compiled = _build_and_probe(status, kind, spec, namespace)
                _write_verdict(build_dir, key, verdict)
            if verdict == "ok":
                _load_built(status, spec, namespace, compiled)
                status.seconds = round(time.perf_counter() - start, 3)
                return
            status.rejected.append(f"{cxx}: {verdict}")
            logger.warning("dicache: the library built by %s is not loaded: %s", cxx, verdict)
    raise BuildError(
        "no compiler built a usable library (" + "; ".join(status.rejected) + "); set CXX to another C++ compiler"
    )


def _compiler_candidates() -> List[Dict[str, Optional[str]]]:
    """Compiler settings to try, in order: as configured, then each other C++ compiler on PATH (CC unset)."""
    seen = {_resolve(os.environ.get("CXX") or "c++")}
    out: List[Dict[str, Optional[str]]] = [{}]
    for cxx in ("c++", "g++", "clang++"):
        found = _resolve(cxx)
        if shutil.which(cxx) and found not in seen:
            seen.add(found)
            out.append({"CXX": cxx, "CC": None})
    return out


@contextlib.contextmanager
def _compiler_env(overrides: Dict[str, Optional[str]]):
    """Set (a str) or unset (None) environment variables for the duration of the block."""
    def apply(values: Dict[str, Optional[str]]) -> None:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    saved = {name: os.environ.get(name) for name in overrides}
    try:
        apply(overrides)
        yield
    finally:
        apply(saved)


def _build_key(spec: Dict[str, Any]) -> str:
    """What the library built from ``spec`` depends on: sources, headers, flags, compilers, torch."""
    h = hashlib.sha1()
    settings = [{k: v for k, v in spec.items() if k != "verbose"}, torch.__version__, sys.version,
                _resolve(os.environ.get("CXX") or "c++"), _resolve(os.environ.get("CC") or ""),
                os.environ.get("TORCH_CUDA_ARCH_LIST")]
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name in sorted(set(CPU_SOURCES + CUDA_SOURCES + HEADERS)):
        path = source_dir() / name
        h.update(name.encode() + b"\0" + (path.read_bytes() if path.is_file() else b""))
    return h.hexdigest()


def _read_verdict(build_dir: Path, key: str) -> Optional[str]:
    try:
        saved = json.loads((build_dir / _PROBE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return saved.get("verdict") if isinstance(saved, dict) and saved.get("key") == key else None


def _write_verdict(build_dir: Path, key: str, verdict: str) -> None:
    tmp = build_dir / f"{_PROBE_FILE}.{os.getpid()}"
    try:  # written whole, then renamed: a process building beside this one never reads half of it
        tmp.write_text(json.dumps({"key": key, "verdict": verdict}))
        os.replace(tmp, build_dir / _PROBE_FILE)
    except OSError:  # a read-only cache: probe again next time
        pass


def _build_and_probe(status: ExtensionStatus, kind: str, spec: Dict[str, Any], namespace: str) -> Tuple[str, bool]:
    """Build in a separate process and make the library raise errors there (:func:`_probe_calls`).

    Returns the verdict, ``"ok"`` when the error arrived in Python as ValueError, else what happened
    instead (on a GPU machine whose ``CXX`` was a relocated g++, the process died with SIGSEGV), and
    whether the process compiled (``False``: ninja found the library up to date). Raises BuildError
    when the build itself fails.
    """
    cmd = [sys.executable, str(Path(__file__).resolve()), "--build-and-probe",
           json.dumps({"spec": spec, "namespace": namespace})]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=_BUILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"build did not finish in {_BUILD_TIMEOUT_S} s") from exc
    except OSError as exc:
        raise BuildError(f"could not start the build process: {exc}") from exc
    if spec["verbose"]:
        sys.stderr.write(done.stdout + done.stderr)
    result: Dict[str, Any] = {}
    for line in done.stdout.splitlines():
        if line.startswith(_RESULT_TAG):
            result.update(json.loads(line[len(_RESULT_TAG):]))
    if "error" in result:  # compiler errors arrive as RuntimeError carrying the output
        text = result["error"]
        status.log = text[-6000:]
        lines = text.splitlines()
        first = next((line for line in lines if "error" in line.lower()), lines[0] if lines else "")
        raise BuildError(f"build failed: {first.strip()[:300]} (full log: dicache.build_info()['{kind}']['log'])")
    if not result.get("built"):
        status.log = (done.stdout + done.stderr)[-6000:]
        raise BuildError(f"the build process ended ({_exit_text(done.returncode)}) before the library was built "
                         f"(log: dicache.build_info()['{kind}']['log'])")
    compiled = bool(result.get("compiled", True))
    if "probe" in result:
        return ("ok" if result["probe"] == "raised" else result["probe"]), compiled
    status.log = (done.stdout + done.stderr)[-6000:]
    return (f"a C++ error raised in it ({result.get('calling', '?')}) ended the process "
            f"({_exit_text(done.returncode)}) instead of arriving in Python as ValueError"), compiled


def _exit_text(returncode: int) -> str:
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def _load_built(status: ExtensionStatus, spec: Dict[str, Any], namespace: str, compiled: bool) -> None:
    """Load the library built and probed from ``spec`` into this process (ninja finds it up to date)."""
    from torch.utils import cpp_extension

    lib = Path(spec["build_directory"]) / (status.name + (".pyd" if os.name == "nt" else ".so"))  # torch's naming
    before = lib.stat().st_mtime_ns if lib.exists() else None
    try:
        cpp_extension.load(**spec)
    except Exception as exc:
        raise BuildError(f"loading {lib} failed: {exc}") from exc
    after = lib.stat().st_mtime_ns if lib.exists() else None
    status.cached = not compiled and before is not None and before == after
    status.library = str(lib)
    if not hasattr(getattr(torch.ops, namespace), "probe_decide"):
        raise BuildError(f"{lib} loaded but registered no torch.ops.{namespace} ops")
    status.built = True


class _Skip(Exception):
    """Not built on purpose (env switch) or because it cannot work here."""

    def __init__(self, reason: str, expected: bool = False):
        super().__init__(reason)
        self.reason, self.expected = reason, expected


def _load_cpu(status: ExtensionStatus) -> None:
    if _env_switch("DICACHE_BUILD_CPU") is False:
        raise _Skip("skipped: DICACHE_BUILD_CPU=0", expected=True)
    flags = cpu_build_flags()
    status.cflags, status.ldflags = flags["cflags"], flags["ldflags"]
    isa = "-".join(f.lstrip("-/").replace("=", "") for f in cpu_arch_flags()) or "generic"
    src = source_dir()
    _jit_load(status, "cpu", [str(src / s) for s in CPU_SOURCES], flags, with_cuda=False, isa_tag=isa)


def _load_cuda(status: ExtensionStatus) -> None:
    force = _env_switch("DICACHE_BUILD_CUDA")
    if force is False:
        raise _Skip("skipped: DICACHE_BUILD_CUDA=0", expected=True)
    from torch.utils import cpp_extension

    if not force:
        if torch.version.cuda is None:
            raise _Skip(
                f"torch {torch.__version__} is not a CUDA build (no CUDA runtime to link against); "
                "DICACHE_BUILD_CUDA=1 tries anyway",
                expected=True,
            )
        if cpp_extension.CUDA_HOME is None:
            raise _Skip("no CUDA toolkit found (nvcc; set CUDA_HOME)")
    flags = cuda_build_flags()
    status.cflags, status.cuda_cflags, status.ldflags = flags["cflags"], flags["cuda_cflags"], flags["ldflags"]
    status.cuda_arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST")
    if status.cuda_arch_list is None and torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        status.cuda_arch_list = ";".join(f"{a}.{b}" for a, b in caps) + " (visible GPUs)"
    if cpp_extension.CUDA_HOME is not None:
        nvcc = os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc")
        status.nvcc = f"{nvcc} ({_version_line(nvcc)})"
    src = source_dir()
    _jit_load(status, "cuda", [str(src / s) for s in CUDA_SOURCES], flags, with_cuda=True,
              isa_tag=f"cu{(torch.version.cuda or 'none').replace('.', '')}")


_LOADERS = {
    "cpu": (_load_cpu, CPU_EXT_NAME, "C++ CPU kernels"),
    "cuda": (_load_cuda, CUDA_EXT_NAME, "CUDA kernels"),
}


def ensure(kind: str) -> ExtensionStatus:
    """Build / load the ``"cpu"`` or ``"cuda"`` extension, once per process.

    Returns its status when the ops are registered (``torch.ops.dicache_cpu`` /
    ``torch.ops.dicache_cuda``); raises :class:`BuildError` with the reason
    otherwise. The outcome is logged once (one line); later calls return or
    raise the same result without retrying.
    """
    loader, ext_name, label = _LOADERS[kind]
    with _lock:
        status = _status.get(kind)
        if status is None:
            status = ExtensionStatus(name=ext_name, attempted=True)
            try:
                loader(status)
                what = "loaded from cache" if status.cached else "built"
                logger.info("dicache: %s %s in %.1f s (%s)", label, what, status.seconds, status.library)
            except _Skip as skip:
                status.reason = skip.reason
                # Deliberate skips and a CPU-only torch (no CUDA tensors can exist) are not warnings.
                log = logger.info if skip.expected else logger.warning
                log("dicache: %s not built (%s); falling back to the next backend", label, skip.reason)
            except Exception as exc:  # BuildError, or anything else from the toolchain: never crash the caller
                status.reason = str(exc) if isinstance(exc, BuildError) else f"{type(exc).__name__}: {exc}"
                logger.warning("dicache: %s unavailable (%s); falling back to the next backend", label, status.reason)
            _status[kind] = status
        if not status.built:
            raise BuildError(status.reason or "not built")
        return status


def build_info(build: bool = True) -> Dict[str, Any]:
    """What the compiled extension built here, how, and why anything was not built.

    With ``build=True`` (default) both extensions are built or loaded first if
    this process has not tried yet (the CPU build takes ~20 s the first time,
    then well under a second from the cache). Returns a plain dict::

        {"cpu":  {"built": bool, "reason": str | None, "compiler": ..., "cflags": [...],
                  "seconds": float, "cached": bool, "library": path, "build_dir": path, ...},
         "cuda": {...},
         "sources": path of csrc, "torch": version, "torch_cuda": version or None}
    """
    info: Dict[str, Any] = {}
    for kind in ("cpu", "cuda"):
        if build:
            try:
                ensure(kind)
            except BuildError:
                pass
        with _lock:
            status = _status.get(kind)
        if status is None:
            status = ExtensionStatus(name=_LOADERS[kind][1], reason="not attempted in this process yet")
        info[kind] = asdict(status)
    try:
        info["sources"] = str(source_dir())
    except BuildError as exc:
        info["sources"] = None
        info["sources_error"] = str(exc)
    info["torch"] = torch.__version__
    info["torch_cuda"] = torch.version.cuda
    info["build_root"] = str(_cache_root())
    return info


__all__ = [
    "BuildError",
    "CPU_OPS_NAMESPACE",
    "CUDA_OPS_NAMESPACE",
    "ExtensionStatus",
    "build_info",
    "cpu_arch_flags",
    "cpu_build_flags",
    "cuda_build_flags",
    "ensure",
    "source_dir",
]


def _probe_calls(ops: Any, device: Optional[str]) -> List[Tuple[str, Any]]:
    """Calls that must raise ValueError from inside the library: its probe op, then (where its tensors can
    exist here) each op with one bad argument. Several, because a broken toolchain need not break every
    function: on the GPU machine of 2026-12-04 some checks raised and others crashed."""
    calls: List[Tuple[str, Any]] = [("_exception_probe", lambda: ops._exception_probe())]
    if device is None:
        return calls
    z = lambda n=2: torch.zeros(n, device=device)  # noqa: E731
    x = torch.zeros(2, 3, 5, device=device)
    flag = torch.zeros(1, dtype=torch.int32, device=device)
    return calls + [
        ("probe_decide (acc of the wrong size)", lambda: ops.probe_decide(
            x, x, x.clone(), None, None, z(3), z(), torch.zeros(2, 5, device=device), flag, z(), 0.3, 1.0, 1.5, 0, 0)),
        ("reconstruct (gamma of the wrong size)", lambda: ops.reconstruct(x, x, x, z(3), torch.empty_like(x))),
        ("refresh (den of the wrong size)", lambda: ops.refresh(x, x, x, x.clone(), x.clone(), None, z(3), z())),
        ("quad_blend (w of the wrong size)", lambda: ops.quad_blend(z() + 1, z(3), z(), z(), 3.0, 5.0, 6.0)),
        ("quad_blend (stride 0)", lambda: ops.quad_blend(
            z() + 1, z(), z(), z(), 3.0, 5.0, 6.0, None, None, None, None, None, 0, 0)),
    ]


def _build_and_probe_main(argument: str) -> int:
    """The build process of :func:`_build_and_probe`: build, load, raise through the library."""
    task = json.loads(argument)
    from torch.utils import cpp_extension

    spec = task["spec"]
    lib = Path(spec["build_directory"]) / (spec["name"] + (".pyd" if os.name == "nt" else ".so"))
    before = lib.stat().st_mtime_ns if lib.exists() else None
    try:
        cpp_extension.load(**spec)
    except Exception as exc:
        print(_RESULT_TAG + json.dumps({"error": (str(exc) or type(exc).__name__)[-20000:]}), flush=True)
        return 0
    compiled = before is None or not lib.exists() or lib.stat().st_mtime_ns != before
    print(_RESULT_TAG + json.dumps({"built": True, "compiled": compiled}), flush=True)
    ops = getattr(torch.ops, task["namespace"])
    device = "cpu" if task["namespace"] == CPU_OPS_NAMESPACE else ("cuda" if torch.cuda.is_available() else None)
    verdict = "raised"
    for name, call in _probe_calls(ops, device):
        print(_RESULT_TAG + json.dumps({"calling": name}), flush=True)  # the parent names the call that crashed
        try:
            call()
            verdict = f"{name} returned instead of raising ValueError"
        except ValueError:
            continue
        except Exception as exc:
            verdict = f"{name} raised {type(exc).__name__} instead of ValueError: {str(exc)[:300]}"
        break
    print(_RESULT_TAG + json.dumps({"probe": verdict}), flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--build-and-probe":
        sys.exit(_build_and_probe_main(sys.argv[2]))
    sys.exit(f"usage: python {Path(__file__).name} --build-and-probe TASK_JSON (used by dicache itself)")
