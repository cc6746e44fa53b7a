#!/usr/bin/env bash
# The GPU checks, in one command, for a machine with an NVIDIA GPU (an estimated 10 minutes on one H200; not yet
# timed on a GPU):
#   1. bench doctor --check on the GPU (every method's step in fp32 and bf16, resume = uninterrupted, repeated
#      evaluations equal, CPU vs GPU flags, export after SyncBatchNorm, a short ResNet18 vAFT/AFD speed),
#   2. the tests that need a GPU (pytest -m cuda),
#   3. one epoch of vAFT and AFD on ResNet18 / CIFAR-10 (JPEG) in fp32 and in bf16 (AFD Table 5's row), and the
#      strict determinism policy's cost on that step (bench speed, strict against fast).
# Everything it prints goes to $OUT (default ./gpu-check). Needs: the data archive cifar10-jpeg.tar.gz under
# $BENCH_DATA_ROOT (default ./data); pyautoattack and submitit, installed from ./wheels when that folder exists.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-check}"
mkdir -p "$OUT"
export BENCH_DATA_ROOT="${BENCH_DATA_ROOT:-$PWD/data}"
PY="${PYTHON:-python3}"
if [ -d wheels ]; then "$PY" -m pip install -q --no-index --find-links wheels pyautoattack submitit >"$OUT/pip.txt" 2>&1; fi
"$PY" -m pip install -q --no-deps -e . >>"$OUT/pip.txt" 2>&1
fail=0
step() { local name="$1"; shift; echo "== $name: $*" | tee -a "$OUT/summary.txt"
         local t0=$SECONDS; "$@" >"$OUT/$name.txt" 2>&1; local rc=$?
         echo "   exit $rc, $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"; [ $rc -eq 0 ] || fail=1; }
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1
step doctor "$PY" -m bench doctor --check --device cuda
step pytest-cuda "$PY" -m pytest -q -m cuda -p no:cacheprovider
for precision in fp32 bf16; do
  step "epoch-$precision" "$PY" -m bench run --grid scripts/gpu_epoch.toml --results "$OUT/results-$precision" \
       --device cuda --set "train.precision=$precision"
done
for policy in strict fast; do
  step "speed-$policy" "$PY" -m bench speed --model resnet18 --methods vaft,afd --precision fp32 --steps 30 \
       --warmup 5 --device cuda --determinism "$policy" --json
done
"$PY" - "$OUT" <<'PY' >>"$OUT/summary.txt" 2>&1
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for precision in ("fp32", "bf16"):
    for p in sorted((out / f"results-{precision}" / "runs").glob("*.json")):
        r = json.loads(p.read_text())
        if r["config"]["method"] in ("vaft", "afd"):
            print(precision, r["config"]["method"], r["status"], "s/epoch", round(r["seconds_per_epoch"], 1),
                  "peak MiB", round((r.get("peak_memory", {}).get("train", {}).get("bytes") or 0) / 2**20),
                  "device", r.get("device_name"))
PY
echo "failures: $fail" | tee -a "$OUT/summary.txt"
exit $fail
