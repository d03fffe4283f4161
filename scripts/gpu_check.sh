#!/usr/bin/env bash
# The GPU checks in one run, for a lent or new CUDA box (see ../shared/gpu/README.md for the bare-box recipe
# that installs the wheels and the model first). Writes every log under $OUT (default ./gpu-check) and prints
# the tables last.
#   scripts/gpu_check.sh [all|shim|stt|realtime]...
# - shim:     starts the real server WITHOUT any cuBLAS 12 on the loader path and checks that it finds a
#             cuBLAS 13 by itself (engines/cuda_libs.py), comes up on cuda, and transcribes a clip.
# - stt:      scripts/bench_stt.py, whisper base, 120 s WAV requests, C = 1, 8, 32, 64 against faster-whisper's
#             BatchedInferencePipeline given the same WAV path and a decoded array (GPU utilisation sampled).
# - realtime: scripts/bench_realtime.py, whisper base, streams paced in real time at 1, 16, 64 and 200.
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
    # Only what a plain install has: no directory holding a libcublas.so.12 on the path.
    LD_LIBRARY_PATH="$(echo "${LD_LIBRARY_PATH:-}" | tr ':' '\n' | grep -v -e cu12 | paste -sd: -)"
    export LD_LIBRARY_PATH S7_DATA_DIR="$(mktemp -d)" S7_PORT=18931 S7_ADMIN_KEY=s7_gpu_check_admin_key_0123456789
    "$py" -m server.cli serve > "$out/shim-server.log" 2>&1 &
    pid=$!
    ok=""
    for _ in $(seq 1 120); do
      if curl -fsS "http://127.0.0.1:$S7_PORT/healthz" > "$out/shim-healthz.json" 2>/dev/null; then ok=1; break; fi
      sleep 1
    done
    if [ -n "$ok" ]; then
      key=$(curl -fsS -X POST "http://127.0.0.1:$S7_PORT/accounts" -H 'Content-Type: application/json' \
        -d "{\"apiKey\":\"$S7_ADMIN_KEY\",\"startingMinutes\":10}" | "$py" -c 'import json,sys; print(json.load(sys.stdin)["apiKey"])')
      clip="${S7_TESTDATA:-../shared/testdata}/en/jfk.flac"
      curl -fsS -X POST "http://127.0.0.1:$S7_PORT/stt" -H "x-api-key: $key" -F "audio=@$clip" > "$out/shim-stt.json"
    fi
    kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
    echo "shim: healthz $(cat "$out/shim-healthz.json" 2>/dev/null | head -c 300)" | tee "$out/shim.txt"
    echo "shim: /stt $(head -c 300 "$out/shim-stt.json" 2>/dev/null)" | tee -a "$out/shim.txt"
    grep -m1 "CUDA: using cuBLAS" "$out/shim-server.log" | tee -a "$out/shim.txt"
  )
fi

if want stt; then
  "$py" scripts/bench_stt.py --device cuda --model whisper:base --minutes 2 --concurrency 1,8,32,64 \
    2>&1 | grep -v -i "warn" | tee "$out/bench_stt.txt"
fi

if want realtime; then
  "$py" scripts/bench_realtime.py --device cuda --model whisper:base --streams 1,16,64,200 --seconds 20 \
    2>&1 | grep -v -i "warn" | tee "$out/bench_realtime.txt"
fi

echo "=== tables ==="
for f in shim.txt bench_stt.txt bench_realtime.txt; do
  [ -f "$out/$f" ] && { echo "--- $f"; grep -E "^(path|server|batched|plain|  *[0-9]+ |SUMMARY|summary|shim| *N )" "$out/$f" | tail -30; }
done
