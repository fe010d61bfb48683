"""Does the Ray cluster have what a run (or a sweep trial) needs? One check for both.

A run that asks for more than the cluster has would make the Train controller (or Tune)
wait forever. On a fixed cluster we fail at once, naming each missing resource. On an
autoscaling cluster the missing nodes are not there *yet*: with a wait
(`ray.wait_for_resources_s`, `--wait-for-resources S`, or MSCLR_WAIT_FOR_RESOURCES_S,
which the cluster files set) we ask the autoscaler for the bundles
(`ray.autoscaler.sdk.request_resources`) and wait, printing what is still missing, then
fail naming what never came.

Why not detect the autoscaler: a plain `ray start --head` runs the same monitor process
in read-only mode, and Ray 2.60 has no public call that tells the two apart; so the
cluster recipes (cluster/*.yaml) say it, through the environment.
"""

from __future__ import annotations

import os
import sys
import time

from msclr_core.errors import ConfigError

from .config import ExperimentConfig

WAIT_ENV = "MSCLR_WAIT_FOR_RESOURCES_S"
POLL_S = 5.0


def wait_budget(cfg: ExperimentConfig) -> float:
    """Seconds to wait for missing resources: the config's, else the environment's, else 0."""
    if cfg.ray.wait_for_resources_s:
        return cfg.ray.wait_for_resources_s
    try:
        return max(0.0, float(os.environ.get(WAIT_ENV) or 0))
    except ValueError:
        raise ConfigError(f"{WAIT_ENV}={os.environ[WAIT_ENV]!r}: expected seconds (a number)") from None


def worker_bundle(cfg: ExperimentConfig) -> dict[str, float]:
    bundle = {"CPU": cfg.ray.cpus_per_worker}
    if cfg.ray.use_gpu:
        bundle["GPU"] = cfg.ray.gpus_per_worker
    return bundle


def missing(cfg: ExperimentConfig, nodes: list[dict], extra_cpus: float = 0.0) -> list[str]:
    """What the alive `nodes` (ray.nodes() entries) lack for cfg's workers plus `extra_cpus`
    (a Tune trial's driver): totals, and for STRICT_SPREAD one node per worker."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", True)]
    have = {k: sum(r.get(k, 0.0) for r in alive) for k in ("CPU", "GPU")}
    n = cfg.ray.num_workers
    out = []
    for key, each in worker_bundle(cfg).items():
        need = n * each + (extra_cpus if key == "CPU" else 0.0)
        if have[key] + 1e-9 < need:
            extra = f" + {extra_cpus:g} for the trial driver" if key == "CPU" and extra_cpus else ""
            out.append(f"{key}: need {need:g} ({n} workers x {each:g}{extra}), cluster has {have[key]:g}")
    if not out and cfg.ray.placement_strategy == "STRICT_SPREAD":
        fit = sum(all(r.get(k, 0.0) + 1e-9 >= v for k, v in worker_bundle(cfg).items()) for r in alive)
        if fit < n:
            out.append(f"nodes: STRICT_SPREAD needs {n} nodes that each fit one worker {worker_bundle(cfg)}, "
                       f"the cluster has {fit}")
    return out


def check_resources(cfg: ExperimentConfig, extra_cpus: float = 0.0, who: str = "the run", log=None) -> None:
    """Return when the cluster can place cfg's workers (+ extra_cpus); else raise ConfigError
    naming what is missing: at once (no wait budget) or after asking the autoscaler and
    waiting out the budget."""
    import ray

    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    lack = missing(cfg, ray.nodes(), extra_cpus)
    budget = wait_budget(cfg)
    if lack and budget:
        lack = _wait_for_autoscaler(cfg, extra_cpus, budget, lack, who, log)
    if lack:
        waited = f" after waiting {budget:g} s for the autoscaler" if budget else ""
        hint = "" if budget else (f" (on an autoscaling cluster, wait for nodes with --wait-for-resources SECONDS, "
                                  f"ray.wait_for_resources_s or {WAIT_ENV})")
        raise ConfigError(f"not enough Ray resources for {who} (ray.num_workers/use_gpu/placement_strategy)"
                          f"{waited}: " + "; ".join(lack) + hint)


def _wait_for_autoscaler(cfg, extra_cpus, budget, lack, who, log) -> list[str]:
    import ray
    from ray.autoscaler.sdk import request_resources

    bundles = [worker_bundle(cfg)] * cfg.ray.num_workers + ([{"CPU": extra_cpus}] if extra_cpus else [])
    request_resources(bundles=bundles)  # a standing request: the autoscaler adds nodes until they fit
    deadline = time.monotonic() + budget
    try:
        while lack and time.monotonic() < deadline:
            log(f"msclr: waiting for the autoscaler ({deadline - time.monotonic():.0f} s left) for {who}: "
                + "; ".join(lack))
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
            lack = missing(cfg, ray.nodes(), extra_cpus)
    finally:
        # The Train placement group that follows holds the nodes; a standing request would
        # keep them after the run too.
        request_resources(bundles=[])
    if not lack:
        log(f"msclr: the cluster has the resources for {who}")
    return lack
