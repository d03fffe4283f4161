"""Finding the cuBLAS CTranslate2 loads on a GPU box (engines/cuda_libs.py): the decisions, on fake library
directories laid out the way pip's CUDA wheels install them."""

from __future__ import annotations

import os
from pathlib import Path

from engines.cuda_libs import environment_for_cuda, loader_dirs


def _lib(site: Path, rel: str) -> Path:
    path = site / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF")
    return path


def test_nothing_to_do_when_cublas12_already_loads(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    _lib(site, "nvidia/cu13/lib/libcublas.so.13")
    assert loader_dirs(tmp_path / "shim", cublas12_loadable=True, site_dirs=[site]) == []
    assert not (tmp_path / "shim").exists()


def test_the_cuda12_wheel_is_used_when_installed(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    _lib(site, "nvidia/cu13/lib/libcublas.so.13")
    twelve = _lib(site, "nvidia/cublas/lib/libcublas.so.12")
    assert loader_dirs(tmp_path / "shim", cublas12_loadable=False, site_dirs=[site]) == [twelve.parent]


def test_torch_cuda13_cublas_is_linked_under_the_old_name(tmp_path: Path) -> None:
    site = tmp_path / "site-packages"
    thirteen = _lib(site, "nvidia/cu13/lib/libcublas.so.13")
    shim = tmp_path / "data" / "cuda-libs"
    dirs = loader_dirs(shim, cublas12_loadable=False, site_dirs=[site])
    assert dirs == [shim, thirteen.parent]  # its cublasLt must be found beside it too
    assert os.readlink(shim / "libcublas.so.12") == str(thirteen)
    # Idempotent, and it follows the library when torch is upgraded to another directory.
    assert loader_dirs(shim, cublas12_loadable=False, site_dirs=[site]) == dirs
    moved = _lib(tmp_path / "other-site", "nvidia/cu13/lib/libcublas.so.13")
    loader_dirs(shim, cublas12_loadable=False, site_dirs=[tmp_path / "other-site"])
    assert os.readlink(shim / "libcublas.so.12") == str(moved)


def test_no_cublas_at_all_changes_nothing(tmp_path: Path) -> None:
    assert loader_dirs(tmp_path / "shim", cublas12_loadable=False, site_dirs=[tmp_path]) == []


def test_cpu_servers_and_second_starts_are_left_alone(tmp_path: Path) -> None:
    assert environment_for_cuda(tmp_path, {"S7_DEVICE": "cpu"}) is None
    assert environment_for_cuda(tmp_path, {"S7_CUDA_LIBS_DONE": "1"}) is None  # no restart loop
