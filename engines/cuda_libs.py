"""Finding the cuBLAS that CTranslate2 needs on a GPU box, so `scripts/serve` works there without flags.

CTranslate2's PyPI wheel links the CUDA runtime statically and `dlopen`s `libcublas.so.12` for its nine
cuBLAS calls. Where that library is missing but a cuBLAS 13 is installed (torch's CUDA 13 wheels bring
`nvidia/cu13/lib/libcublas.so.13`; CUDA 13 toolkits), those nine functions exist unchanged in 13 (checked
on an H200, driver 580), so a symlink named `libcublas.so.12` pointing at it serves. The pip wheel
`nvidia-cublas-cu12` (the `gpu` extra, for drivers older than CUDA 13 needs) is used when present.

`dlopen` reads LD_LIBRARY_PATH once, when the process starts, so the directories found here must be on it
before Python starts: `loader_dirs` decides, `server.cli` re-executes itself once with them. Pure functions
apart from the file-system lookups; nothing here imports CUDA.
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path


def nvidia_gpu_present() -> bool:
    """An NVIDIA driver is installed and exposes a device (no CUDA library is loaded to find out)."""
    return Path("/dev/nvidiactl").exists() or bool(glob.glob("/dev/nvidia[0-9]*"))


def loadable(name: str) -> bool:
    try:
        ctypes.CDLL(name)
        return True
    except OSError:
        return False


def _site_dirs() -> list[Path]:
    return [Path(p) for p in sys.path if p.endswith("site-packages") and Path(p).is_dir()]


def candidate_dirs(site_dirs: Iterable[Path]) -> tuple[list[Path], list[Path]]:
    """(directories holding libcublas.so.12, directories holding libcublas.so.13), best first."""
    roots = [d / "nvidia" for d in site_dirs]
    cu12 = [r / "cublas" / "lib" for r in roots]
    cu13 = [r / "cu13" / "lib" for r in roots] + [r / "cublas" / "lib" for r in roots]
    system = [Path(p) for p in sorted(glob.glob("/usr/local/cuda*/lib64"), reverse=True)]
    system += [Path("/usr/lib/x86_64-linux-gnu"), Path("/usr/lib/aarch64-linux-gnu")]
    have12 = [d for d in cu12 + system if (d / "libcublas.so.12").exists()]
    have13 = [d for d in cu13 + system if (d / "libcublas.so.13").exists()]
    return have12, have13


def loader_dirs(shim_dir: Path, *, cublas12_loadable: bool, site_dirs: Sequence[Path]) -> list[Path]:
    """Directories to put in front of LD_LIBRARY_PATH so that `libcublas.so.12` resolves (empty: nothing to
    do, or nothing found). Creates the `libcublas.so.12 -> .../libcublas.so.13` symlink in `shim_dir` when
    only cuBLAS 13 is there."""
    if cublas12_loadable:
        return []
    have12, have13 = candidate_dirs(site_dirs)
    if have12:
        return [have12[0]]
    if not have13:
        return []
    shim_dir.mkdir(parents=True, exist_ok=True)
    link = shim_dir / "libcublas.so.12"
    target = have13[0] / "libcublas.so.13"
    if link.is_symlink() and os.readlink(link) != str(target):
        link.unlink()
    if not link.exists():
        link.symlink_to(target)
    # cuBLAS 13 needs its own cublasLt beside it: the directory itself goes on the path too.
    return [shim_dir, have13[0]]


def reexec_with_cuda_libs(shim_dir: Path, argv: Sequence[str]) -> None:
    """Starts this process again (same interpreter, `argv`) with the cuBLAS it needs on the loader path, when
    that is needed and possible (see `environment_for_cuda`); returns when nothing needs to change."""
    env = environment_for_cuda(shim_dir, dict(os.environ))
    if env is not None:
        print(f"[speech7] CUDA: using cuBLAS from {env['LD_LIBRARY_PATH'].split(':')[0]}", flush=True)
        os.execve(sys.executable, [sys.executable, *argv], env)


def environment_for_cuda(shim_dir: Path, environ: dict[str, str]) -> dict[str, str] | None:
    """The environment to re-execute with on a GPU box whose cuBLAS 12 is not loadable; None when nothing
    needs to change (no GPU, already done, or no usable cuBLAS found)."""
    if environ.get("S7_DEVICE", "auto") == "cpu" or environ.get("S7_CUDA_LIBS_DONE") or not nvidia_gpu_present():
        return None
    dirs = loader_dirs(shim_dir, cublas12_loadable=loadable("libcublas.so.12"), site_dirs=_site_dirs())
    if not dirs:
        return None
    path = ":".join([str(d) for d in dirs] + ([environ["LD_LIBRARY_PATH"]] if environ.get("LD_LIBRARY_PATH") else []))
    return {**environ, "LD_LIBRARY_PATH": path, "S7_CUDA_LIBS_DONE": "1"}
