#!/usr/bin/env bash
# A local Ray head node on loopback, then one experiment submitted as a Ray job.
#   bash cluster/local-head.sh experiments/quickstart.yaml
set -euo pipefail
config=${1:-experiments/quickstart.yaml}
ray start --head --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 --port=6379 --num-cpus="${NUM_CPUS:-2}"
trap 'ray stop' EXIT
ray job submit --address http://127.0.0.1:8265 --working-dir . -- msclr pretrain "$config"
