"""Resume is explicit about the config.

Running `msclr pretrain` again with the name of an existing run resumes it (same MLflow run,
Ray's last checkpoint). Before anything starts, the resolved config of this command is
compared with the run's stored one (its `config.yaml` artifact, or `config_vN.yaml` for
the version N the run is at, tag `msclr.config_version`):

- the same: resume;
- different only in NEUTRAL_KEYS, keys that cannot change what is trained (where results
  are tracked and stored, how failures are retried, how often checkpoints are written):
  resume, and record the differences (tag `msclr.neutral_changes`);
- anything else: refuse (ConfigChanged, exit 2), naming each key with its old and new value,
  unless the command says what it wants:
  `--new-run`: a run of its own, named NAME-2 (or -3, ...: the first suffix that is free,
  or whose stored config is this one, so that the same command resumes it again);
  `--resume-changed`: continue this run with the new config, recorded as config version
  N+1 from the epoch it resumes at: tags `msclr.config_version` and `msclr.config_vN`,
  artifact `config_vN.yaml`, params `vN.<key>` for the changed keys and `vN.from_epoch`,
  and the metric `config_version` at that epoch. MLflow params cannot change, so the
  first version's stay as they were.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from msclr_core.errors import ConfigError

from .config import ExperimentConfig, flatten, from_dict

NEUTRAL_KEYS = frozenset({
    "tracking.experiment", "tracking.tracking_uri", "tracking.system_metrics", "tracking.embedding_plot",
    "tracking.retry_budget_s",
    "ray.address", "ray.max_failures", "ray.controller_failure_limit", "ray.worker_start_timeout_s",
    "ray.checkpoint_every", "ray.num_to_keep", "ray.storage_path", "ray.placement_strategy", "ray.wait_for_resources_s",
    "eval.enabled",
})  # fmt: skip
VERSION_TAG = "msclr.config_version"
POLICIES = ("refuse", "new-run", "resume-changed")
MAX_SUFFIX = 100


class ConfigChanged(ConfigError):
    """A resumed run's stored config differs in keys that change results (exit code 2)."""


@dataclass
class Plan:
    """What this attempt does with the run it found: `cfg` (renamed for --new-run), the
    run's stored config version, and the differences it resumes with."""

    cfg: ExperimentConfig
    version: int = 1
    neutral: dict[str, tuple] = field(default_factory=dict)
    changed: dict[str, tuple] = field(default_factory=dict)
    stored: bool = True  # False: the run has no stored config yet (new, or killed before it logged one)


def stored_config(client, run_id: str) -> tuple[dict | None, int]:
    """(the run's resolved config at its current version, that version); None when the run
    has none (an attempt killed before it logged it)."""
    run = client.get_run(run_id)
    version = int(run.data.tags.get(VERSION_TAG, "1"))
    name = "config.yaml" if version == 1 else f"config_v{version}.yaml"
    with tempfile.TemporaryDirectory() as d:
        try:
            path = client.download_artifacts(run_id, name, d)
        except Exception as err:  # noqa: BLE001 - no such artifact (mlflow raises several types)
            from .offline import transient

            if transient(err):
                raise
            return None, version
        return yaml.safe_load(Path(path).read_text()), version


def config_diff(old: dict, new: dict, where: str = "stored config") -> dict[str, tuple]:
    """{dotted key: (old, new)} for every key whose value differs. The old config is read
    through the current schema, so keys added since then compare at their defaults."""
    try:
        old = from_dict(ExperimentConfig, old, source=where).to_dict()
    except ConfigError:  # a key renamed or a rule tightened since: compare as stored
        pass
    a, b = flatten(old), flatten(new)
    return {k: (a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def describe(diff: dict[str, tuple]) -> str:
    return "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in diff.items())


def split(diff: dict[str, tuple]) -> tuple[dict, dict]:
    neutral = {k: v for k, v in diff.items() if k in NEUTRAL_KEYS}
    return neutral, {k: v for k, v in diff.items() if k not in NEUTRAL_KEYS}


def plan_resume(client, cfg: ExperimentConfig, run_id: str, policy: str, *, run_exists) -> Plan:
    """Compare `cfg` with the stored config of run `run_id` (named cfg.name); see the module
    docstring. `run_exists(name) -> run_id | None` finds a run by name (for --new-run)."""
    if policy not in POLICIES:
        raise ConfigError(f"unknown resume policy {policy!r} (one of {', '.join(POLICIES)})")
    stored, version = stored_config(client, run_id)
    if stored is None:
        return Plan(cfg, version, stored=False)
    neutral, changed = split(config_diff(stored, cfg.to_dict(), f"stored config of run {cfg.name!r}"))
    if not changed or policy == "resume-changed":
        return Plan(cfg, version, neutral, changed)
    if policy == "new-run":
        return _suffixed(client, cfg, run_exists)
    raise ConfigChanged(
        f"run {cfg.name!r} (MLflow run {run_id}) was trained with another config (version {version}); "
        f"{len(changed)} key(s) would change results: {describe(changed)}. Rerun with --new-run (a fresh run "
        f"named {cfg.name}-2) or --resume-changed (continue this run, recording config version {version + 1} "
        "from the epoch it resumes at)")  # fmt: skip


def _suffixed(client, cfg: ExperimentConfig, run_exists) -> Plan:
    """The first NAME-k that is free, or whose run has this config (it is resumed)."""
    from .train import run_directory

    for k in range(2, MAX_SUFFIX + 1):
        candidate = dataclasses.replace(cfg, name=f"{cfg.name}-{k}")
        found = run_exists(candidate.name)
        if found is None:
            if Path(run_directory(candidate)).exists():
                continue  # checkpoints without a run: never picked up silently
            return Plan(candidate, stored=False)
        stored, version = stored_config(client, found)
        neutral, changed = split(config_diff(stored, candidate.to_dict())) if stored else ({}, {})
        if not changed:
            return Plan(candidate, version, neutral, stored=stored is not None)
    raise ConfigError(f"--new-run: {cfg.name}-2 ... {cfg.name}-{MAX_SUFFIX} are all taken by other configs")


def log_config(client, run_id: str, cfg: ExperimentConfig, artifact: str = "config.yaml") -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / artifact
        path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        client.log_artifact(run_id, str(path))


def record(client, run_id: str, plan: Plan, from_epoch: int) -> None:
    """Record what this attempt resumes with (see the module docstring)."""
    if plan.neutral:
        tags = client.get_run(run_id).data.tags
        note = f"epoch {from_epoch}: {describe(plan.neutral)}"
        previous = tags.get("msclr.neutral_changes")
        client.set_tag(run_id, "msclr.neutral_changes", (f"{previous}\n{note}" if previous else note)[-5000:])
    if not plan.changed:
        return
    import time

    from mlflow.entities import Metric

    from .tracking import log_params

    version = plan.version + 1
    log_config(client, run_id, plan.cfg, f"config_v{version}.yaml")
    log_params(client, run_id, {f"v{version}.from_epoch": from_epoch,
                                **{f"v{version}.{k}": new for k, (_, new) in plan.changed.items()}})  # fmt: skip
    client.set_tag(run_id, f"msclr.config_v{version}", f"from epoch {from_epoch}: {describe(plan.changed)}"[:5000])
    client.set_tag(run_id, VERSION_TAG, str(version))
    client.log_batch(run_id, metrics=[Metric("config_version", float(version), int(time.time() * 1000), from_epoch)])
    print(f"msclr: run {plan.cfg.name!r} continues with config version {version} from epoch {from_epoch}: "
          f"{describe(plan.changed)}", flush=True)  # fmt: skip
