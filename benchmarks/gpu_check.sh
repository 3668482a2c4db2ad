#!/usr/bin/env bash
# Every GPU check of Chisel in one run, on a CUDA machine: the CUDA-only tests (compiled path vs eager, compiled VAE
# encoder/decoder, per-step noise on the device), then the SD1.5 and SDXL benchmarks through Engine.run beside
# diffusers. Results go to OUT (default results/gpu): pytest's JUnit XML and log, each benchmark's JSON and log.
#
#   bash benchmarks/gpu_check.sh [OUT] [tests|sd15|sdxl ...]   (default: all three, in that order)
#
# It needs a CUDA build of torch in the active Python (pip install -e '.[test]' beside it); nothing is downloaded.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results/gpu}
shift || true
PARTS=${*:-tests sd15 sdxl}
PY=${PYTHON:-python}
mkdir -p "$OUT"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))" \
  | tee "$OUT/device.txt" || exit 1
status=0
for part in $PARTS; do
  case $part in
    tests) "$PY" -m pytest -q -p no:randomly tests/test_gpu_compile.py tests/test_gpu_noise.py \
             --junitxml "$OUT/gpu_tests.xml" 2>&1 | tee "$OUT/gpu_tests.log" || status=1 ;;
    sd15)  "$PY" benchmarks/gpu_sd15.py --json "$OUT/gpu_sd15.json" 2>&1 | tee "$OUT/gpu_sd15.log" || status=1 ;;
    sdxl)  "$PY" benchmarks/gpu_sdxl.py --json "$OUT/gpu_sdxl.json" 2>&1 | tee "$OUT/gpu_sdxl.log" || status=1 ;;
    *) echo "unknown part: $part (tests, sd15, sdxl)" >&2; exit 2 ;;
  esac
done
exit $status
