#!/usr/bin/env bash
# A local Ray head node on loopback, then one experiment submitted as a Ray job: the same
# path a cluster takes (`ray job submit --working-dir .`), on one machine.
#   bash cluster/local-head.sh experiments/quickstart.yaml
# NUM_CPUS (default 2) sets the head's CPUs. The head is stopped when the script ends, and
# `ray stop` stops every Ray runtime of this user, so the script refuses to start when one
# is already running (stop it yourself, or submit to it with `ray job submit`).
set -euo pipefail
cd "$(dirname "$0")/.."   # the repository root: what --working-dir uploads (see .rayignore)
config=${1:-experiments/quickstart.yaml}
if python -c "import socket; socket.create_connection(('127.0.0.1', 6379), 1)" 2> /dev/null; then
  echo "something (a Ray runtime?) already listens on 127.0.0.1:6379; not starting (or stopping) another" >&2
  exit 1
fi
trap 'ray stop' EXIT
ray start --head --node-ip-address=127.0.0.1 --dashboard-host=127.0.0.1 --port=6379 --num-cpus="${NUM_CPUS:-2}"
ray job submit --address http://127.0.0.1:8265 --working-dir . -- msclr pretrain "$config"
