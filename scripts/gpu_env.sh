#!/usr/bin/env bash
# Runs a command with the CUDA 12 libraries that pip installed (nvidia-cublas-cu12, nvidia-cudnn-cu12) on the
# loader path. CTranslate2's PyPI wheel links against cuBLAS 12 / cuDNN 9; a host or image that has only a
# newer CUDA (e.g. CUDA 13) still runs it this way, as long as the driver is new enough.
#   scripts/gpu_env.sh .venv/bin/python scripts/bench_stt.py --device cuda
set -euo pipefail
py="${S7_PYTHON:-$(dirname "$0")/../.venv/bin/python}"
[ -x "$py" ] || py=python3
libs="$("$py" - <<'PY'
import importlib.util, os
out = []
for pkg in ("nvidia.cublas", "nvidia.cudnn", "nvidia.cuda_runtime", "nvidia.cuda_nvrtc"):
    try:
        spec = importlib.util.find_spec(pkg)
    except ModuleNotFoundError:
        continue
    if spec and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            lib = os.path.join(loc, "lib")
            if os.path.isdir(lib):
                out.append(lib)
print(":".join(out))
PY
)"
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$@"
