#!/usr/bin/env bash
# The GPU checks in one run, for a lent or new CUDA box (see ../shared/gpu/README.md for the bare-box recipe
# that installs the wheels and the model first). Writes every log under $OUT (default ./gpu-check) and prints
# the tables last.
#   scripts/gpu_check.sh [all|shim|stt|realtime|fairness|streamcost|realtime4p]...
# - shim:     starts the real server WITHOUT any cuBLAS 12 on the loader path and checks that it finds a
#             cuBLAS 13 by itself (engines/cuda_libs.py), comes up on cuda, and transcribes a clip.
# - stt:      scripts/bench_stt.py, whisper base, 120 s WAV requests, C = 1, 8, 32, 64 against faster-whisper's
#             BatchedInferencePipeline given the same WAV path and a decoded array (GPU utilisation sampled).
# - realtime: scripts/bench_realtime.py, whisper base, streams paced in real time at 1, 16, 64 and 200.
# - fairness: scripts/bench_fairness.py, whisper base: a 5 s /stt idle and while a 30-minute /stt runs.
# - streamcost: scripts/bench_realtime.py --free-model at 100, 200 and 300 streams: what the streams cost the
#             server's one interpreter besides the model, on this box's CPU.
# - realtime4p: scripts/bench_realtime.py, whisper base, 64 and 200 streams over 4 server processes behind
#             HAProxy (--processes 4; needs the haproxy binary): whether spreading the per-stream Python over
#             interpreters holds 200.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-./gpu-check}"; mkdir -p "$out"
py="${PYTHON:-python3}"
steps=("$@"); [ ${#steps[@]} -eq 0 ] && steps=(all)
want() { [[ " ${steps[*]} " == *" all "* || " ${steps[*]} " == *" $1 "* ]]; }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYANNOTE_METRICS_ENABLED=false
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"

if want shim; then
  (
    # Only what a plain install has: no directory holding a libcublas.so.12 on the loader path.
    LD_LIBRARY_PATH="$(echo "${LD_LIBRARY_PATH:-}" | tr ':' '\n' | grep -v -e cu12 | paste -sd: -)"
    export LD_LIBRARY_PATH
    "$py" - "$out" <<'PY' 2>&1 | tee "$out/shim.txt"
import json, os, sys, tempfile
from pathlib import Path

sys.path.insert(0, os.getcwd())
import httpx

from server.launcher import ServerStartError, start_process

out = Path(sys.argv[1])
admin = "s7_gpu_check_admin_key_0123456789"
env = {"S7_DATA_DIR": tempfile.mkdtemp(), "S7_ADMIN_KEY": admin, "S7_LOG_LEVEL": "info"}
try:
    server = start_process(env, log=out / "shim-server.log", timeout_s=240)
except ServerStartError as exc:
    print("shim: the server did not come up:", str(exc)[-2000:])
    sys.exit(0)
try:
    health = httpx.get(f"{server.url}/healthz", timeout=30).json()
    print("shim: healthz", json.dumps({k: health.get(k) for k in ("status", "device", "warmupSeconds", "warmupErrors")}))
    key = httpx.post(f"{server.url}/accounts", json={"apiKey": admin, "startingMinutes": 10}, timeout=30).json()["apiKey"]
    clip = Path(os.environ.get("S7_TESTDATA", "../shared/testdata")) / "en" / "jfk.flac"
    with clip.open("rb") as fh:
        r = httpx.post(f"{server.url}/stt", headers={"x-api-key": key}, files={"audio": (clip.name, fh)}, timeout=120)
    print("shim: /stt", r.status_code, r.json().get("text", r.text)[:200])
finally:
    server.stop()
log = (out / "shim-server.log").read_text(errors="replace")
print("shim:", next((line for line in log.splitlines() if "CUDA: using cuBLAS" in line), "no cuBLAS re-exec line"))
PY
  )
fi

if want stt; then
  "$py" scripts/bench_stt.py --device cuda --model whisper:base --minutes 2 --concurrency 1,8,32,64 \
    2>&1 | grep -v -i "warn" | tee "$out/bench_stt.txt"
fi

if want realtime; then
  # The server is started here (its log kept in $OUT) and the bench drives it by URL.
  "$py" - "$out" <<'PY' 2>&1 | grep -v -i "warn" | tee "$out/bench_realtime.txt"
import os, subprocess, sys, tempfile
from pathlib import Path

sys.path.insert(0, os.getcwd())
import httpx

from server.launcher import start_process

out = Path(sys.argv[1])
admin = "s7_gpu_check_admin_key_0123456789"
env = {"S7_DATA_DIR": tempfile.mkdtemp(), "S7_ADMIN_KEY": admin, "S7_DEVICE": os.environ.get("CHECK_DEVICE", "cuda"), "S7_LOG_LEVEL": "warning",
       "S7_REALTIME_MAX_SESSIONS": "260"}
server = start_process(env, log=out / "realtime-server.log", timeout_s=240)
try:
    r = httpx.post(f"{server.url}/accounts", timeout=30,
                   json={"apiKey": admin, "startingMinutes": 100000, "sttApiKey": "whisper:base"})
    key = r.json()["apiKey"]
    subprocess.run([sys.executable, "scripts/bench_realtime.py", "--url", server.url, "--key", key,
                    "--streams", os.environ.get("CHECK_STREAMS", "1,16,64,200"), "--seconds", "20", "--all",
                    "--testdata", os.environ.get("S7_TESTDATA", "../shared/testdata")], check=False)
finally:
    server.stop()
PY
fi

if want fairness; then
  "$py" scripts/bench_fairness.py --device cuda --model whisper:base --long-minutes 30 --probes 5 --alone \
    2>&1 | grep -v -i "warn" | tee "$out/bench_fairness.txt"
fi

if want streamcost; then
  "$py" scripts/bench_realtime.py --device cuda --free-model --streams 100,200,300 --seconds 20 --all --max-lag 0 \
    2>&1 | grep -v -i "warn" | tee "$out/bench_streamcost.txt"
fi

if want realtime4p; then
  "$py" scripts/bench_realtime.py --device cuda --processes 4 --streams 64,200 --seconds 20 --all --max-lag 0 \
    2>&1 | grep -v -i "warn" | tee "$out/bench_realtime4p.txt"
fi

echo "=== tables ==="
for f in shim.txt bench_stt.txt bench_realtime.txt bench_fairness.txt bench_streamcost.txt bench_realtime4p.txt; do
  [ -f "$out/$f" ] && { echo "--- $f"; grep -E "^(path|server|batched|plain|  *[0-9]+ |SUMMARY|summary|shim| *N |  idle|  loaded|  long)" "$out/$f" | tail -30; }
done
