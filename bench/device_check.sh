#!/usr/bin/env bash
# The GPU check, as one prepared run on a lent CUDA machine (the workplace's `device` tool):
# the model and scoring tests on CUDA (device "auto" picks it), then bench.model_speed on CUDA
# at the batch of 4,096 and at a large batch, and on one CPU thread of the same host.
#
#   bash bench/device_check.sh OUTDIR          # all of it
#   bash bench/device_check.sh OUTDIR kafka    # the Kafka worker's bench alone (below)
#
# The machine has torch but not this project's Kafka client, Faust or orjson: wheels for them
# lie in .whl/ (downloaded here for CPython 3.12, manylinux x86-64) and are installed to /tmp/site.
set -u
out=${1:-${OUT:-/tmp/device-check}}
part=${2:-all}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c 'import torch, os; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(), os.cpu_count(), "cores")'
} 2>&1 | tee "$out/machine.txt"

if [ "$part" = all ]; then
timeout 200 python3 -m pytest -q -p no:cacheprovider -m "not kafka and not prometheus" -o addopts="" \
  tests/test_models.py tests/test_score_kernels.py tests/test_neighbours.py tests/test_tails.py \
  tests/test_optim.py tests/test_pipeline.py tests/test_explain.py tests/test_feedback.py \
  2>&1 | tee "$out/tests_cuda.txt" | tail -25

for batch in 4096 65536; do
  timeout 150 python3 -m bench.model_speed --device cuda --threads 1 --variants ncae,ae --events 100000 --batch "$batch" \
    2>&1 | tee "$out/model_speed_cuda_$batch.txt"
done
timeout 120 python3 -m bench.model_speed --device cpu --threads 1 --variants ncae --events 30000 --steps 200 --batch 4096 \
  2>&1 | tee "$out/model_speed_cpu_1thread.txt"
fi

# The Kafka worker's bench, when a broker can run there: the machine has no JVM and no
# network, so a Java runtime (jlink, the modules Kafka needs) and the broker's resolved jars
# travel as .devbox/devbox.tar.xz (built here by bench/devbox.sh). Without it, skipped.
if [ -f .devbox/devbox.tar.xz ]; then
  mkdir -p /tmp/devbox && tar -xJf .devbox/devbox.tar.xz -C /tmp/devbox || exit 1
  export PATH=/tmp/devbox/jre/bin:$PATH STREAM_AE_CACHE_DIR=/tmp/devbox/cache STREAM_AE_DEVICE=cuda
  java -version 2>&1 | head -1 | tee -a "$out/machine.txt"
  for batch in 2048 8192; do
    timeout 220 python3 -m bench.throughput --events 150000 --variants ncae,ae --batch "$batch" \
      2>&1 | tee "$out/throughput_cuda_$batch.txt"
  done
fi
