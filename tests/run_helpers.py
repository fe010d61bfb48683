"""Helpers shared by the tests that run `msclr pretrain` for real (test_faults, test_lifecycle,
test_outage): a tiny config, the CLI as a subprocess, and what MLflow shows for a run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from msclr_platform.config import load_config
from msclr_platform.fault_injection import FAULT_ENV
from msclr_platform.train import load_state

MSCLR = str(Path(sys.executable).with_name("msclr"))

# 119 training clips (xview) in batches of 32: three steps per pass, so "step 1" is mid-epoch.
CONFIG = """
name: {name}
data: {{path: {data}, protocol: xview}}
conventions: [ntu-rgb+d, smplx_42]
model: {{hidden_channels: 8, hidden_dim: 16, num_blocks: 2, dropout: 0.1}}
method: {{feature_dim: 16, queue_size: 64, mining_epoch: 2}}
optim: {{epochs: {epochs}, batch_size: 32, lr: 0.05, passes_per_epoch: {passes}}}
eval: {{enabled: false}}
ray: {{num_workers: 1, checkpoint_every: {checkpoint_every}, max_failures: {max_failures}}}
tracking: {{experiment: faults, system_metrics: false, embedding_plot: false}}
"""


def write_tiny_dataset(root: Path) -> Path:
    from msclr_core.data.synth import write_synth_dataset

    write_synth_dataset(root, clips=160, seed=1, conventions=["ntu-rgb+d", "smplx_42"])
    return root


def make_config(tmp_path, dataset, name, *, epochs=3, max_failures=0, passes=1, checkpoint_every=1, overrides=()):
    path = tmp_path / f"{name}.yaml"
    path.write_text(CONFIG.format(name=name, data=dataset, epochs=epochs, max_failures=max_failures, passes=passes,
                                  checkpoint_every=checkpoint_every))  # fmt: skip
    return path, load_config(path, list(overrides))


def wait_for(condition, timeout=300.0, every=0.2) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(every)


def alive(pid: int) -> bool:
    try:
        return "(zombie)" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout: float = 120.0) -> None:
    """Ray kills a dead driver's workers: none may linger (it could finish a write later)."""
    wait_for(lambda: not alive(pid), timeout)


def the_run(client, cfg, name=None):
    """The one MLflow run of this msclr run name (a second run would be a resume bug)."""
    name = name or cfg.name
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`msclr.run_name` = '{name}'")
    assert len(runs) == 1, f"{len(runs)} MLflow runs named {name!r}"
    return runs[0]


def assert_history_shows(client, run, history: list[dict]) -> None:
    """MLflow shows exactly the run that continued: every metric of `history` (the final
    checkpoint's) at steps 1..N with the latest value at each step equal to the history's,
    and a step logged twice only where the first value was another (a replayed epoch)."""
    from msclr_platform.tracking import epoch_metrics

    want: dict[str, dict[int, float]] = {}
    for row in history:
        for m in epoch_metrics(row, row["epoch"], 0):
            want.setdefault(m.key, {})[m.step] = m.value
    assert {"loss", "lr", "samples_per_s"} <= want.keys(), want.keys()
    epochs = [row["epoch"] for row in history]
    for key, values in sorted(want.items()):
        entries = client.get_metric_history(run.info.run_id, key)
        assert sorted({m.step for m in entries}) == epochs, f"metric {key}: steps {sorted(m.step for m in entries)}"
        for step, value in values.items():
            at = sorted((m for m in entries if m.step == step), key=lambda m: m.timestamp)
            assert at[-1].value == value, f"metric {key} step {step}: MLflow shows {at[-1].value}, the run had {value}"
            assert all(m.value != at[-1].value for m in at[:-1]), f"metric {key} step {step}: an equal value logged twice"


def checkpoint_epoch(path: Path) -> int:
    return load_state(path)["epoch"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pretrain_args(config_path, *extra) -> list[str]:
    return [MSCLR, "pretrain", str(config_path), "--no-eval", *extra]


def run_cli(config_path, env, timeout=420, extra=()) -> subprocess.CompletedProcess:
    return subprocess.run(pretrain_args(config_path, *extra), env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def start_cli(args: list[str], env, log_dir: Path, tag: str) -> subprocess.Popen:
    """`msclr ...` in a session of its own (its own process group, as a terminal gives a
    command), stdout/stderr to files in log_dir (read them with `logs`)."""
    return subprocess.Popen(args, env=env, stdout=open(log_dir / f"{tag}.out", "w"),
                            stderr=open(log_dir / f"{tag}.err", "w"), start_new_session=True)  # fmt: skip


def logs(log_dir: Path, tag: str) -> tuple[str, str]:
    return (log_dir / f"{tag}.out").read_text(), (log_dir / f"{tag}.err").read_text()


def cli_env(**extra) -> dict:
    """Environment for an `msclr pretrain` subprocess: no fault unless given, and RAY_ADDRESS
    (set by the ray_local fixture) makes it a client of the session's Ray runtime, as a
    driver under `ray job submit` is, instead of paying for a runtime of its own."""
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    return {**env, **extra}
