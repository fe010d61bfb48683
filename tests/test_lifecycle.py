"""Run lifecycle (issue 13): Ctrl-C and SIGTERM on `msclr pretrain` stop the workers at a step
boundary, close the MLflow run as KILLED and exit 130 / 143 with one line saying how to
resume; the same command resumes from the checkpoint and ends FINISHED. A rerun with a
changed config is refused (exit 2, naming the keys) before anything starts, unless
--resume-changed says to continue with it as a new config version.

Real processes: `msclr pretrain` in a session of its own (as a terminal starts it), real
signals, the session's MLflow server; the MLflow state is read back from the server.
"""

from __future__ import annotations

import os
import shlex
import signal
import time

import pytest
from fault_report import fault_case
from run_helpers import (
    assert_history_shows, cli_env, logs, make_config, pretrain_args, run_cli, start_cli, the_run, wait_for,
    write_tiny_dataset,
)  # fmt: skip

from msclr_platform.lifecycle import Interrupted, signal_guard
from msclr_platform.runs import latest_checkpoint
from msclr_platform.train import load_state

# 5 epochs of 6 steps: a signal sent once epoch 1 is checkpointed lands mid-run.
EPOCHS, PASSES = 5, 2


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("lifecycle-ds") / "synth")


def test_signal_guard_raises_typed_interrupts_and_restores_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with signal_guard() as guard:
        with pytest.raises(Interrupted) as err:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler runs at the next bytecode
        assert err.value.exit_code == 143 and "SIGTERM" in str(err.value)
        asked, forced = [], []
        with guard.graceful(asked.append, lambda: forced.append(True)):  # while training
            os.kill(os.getpid(), signal.SIGINT)  # the first signal asks the workers to stop
            time.sleep(0.2)
            assert asked == [signal.SIGINT] and not forced
            with pytest.raises(Interrupted) as err:  # a second one stops at once
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)
        assert err.value.exit_code == 130 and forced == [True]
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_run_left_running_is_resumed_unless_its_driver_is_alive(mlflow_server, capsys):
    """SIGKILL leaves the run RUNNING: the next start says so and takes it over; a driver
    that still runs it on this machine (pid and start time match) is not trained over."""
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    from msclr_core.errors import ConfigError
    from msclr_platform.lifecycle import DRIVER_TAG, claim_run, driver_identity
    from msclr_platform.tracking import get_or_create_run

    client = MlflowClient(mlflow_server)
    run_id, _ = get_or_create_run(client, "lifecycle", "left-running")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        client.set_tag(run_id, DRIVER_TAG, driver_identity(other.pid))
        with pytest.raises(ConfigError, match=rf"being trained right now by process {other.pid}"):
            claim_run(client, client.get_run(run_id), "left-running")
    finally:
        other.kill()
        other.wait()
    claim_run(client, client.get_run(run_id), "left-running")  # that driver is gone: a stale run
    said = [line for line in capsys.readouterr().err.splitlines() if "was left RUNNING" in line]
    assert len(said) == 1 and run_id in said[0] and str(other.pid) in said[0], said
    tags = client.get_run(run_id).data.tags
    assert tags[DRIVER_TAG] == driver_identity() and str(other.pid) in tags["msclr.stale_attempt"]


def checkpoint_epochs(cfg) -> int:
    try:
        return int(latest_checkpoint(cfg).parent.name.split("-")[1])
    except Exception:  # noqa: BLE001 - none yet
        return 0


def signal_when_checkpointed(proc, cfg, epoch: int, sig: int, *, group: bool) -> float:
    """Send `sig` (to the process group, as a terminal's Ctrl-C, or to the driver alone) once
    the run's checkpoint of `epoch` exists; return when it was sent."""
    wait_for(lambda: checkpoint_epochs(cfg) >= epoch or proc.poll() is not None, timeout=400)
    assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before the signal"
    (os.killpg if group else os.kill)(proc.pid, sig)
    return time.monotonic()


def stopped_line(err: str, sig: str) -> str:
    """The one line the CLI ends with: how it stopped and the command that resumes."""
    lines = [line for line in err.splitlines() if line.startswith(f"msclr: stopped by {sig}")]
    assert len(lines) == 1, err[-3000:]
    assert "Traceback" not in err and "Aborted" not in err, err[-3000:]
    return lines[0]


def first_epoch_trained(out: str, name: str) -> int:
    return int(out.split(f"[{name}] epoch ", 1)[1].split("/", 1)[0])


@pytest.mark.slow
@pytest.mark.faults
def test_ctrl_c_to_the_process_group_kills_the_run_and_the_same_command_resumes(
    tmp_path, tiny_dataset, mlflow_server, ray_local, msclr_home
):
    from mlflow.tracking import MlflowClient

    path, cfg = make_config(tmp_path, tiny_dataset, "ctrl-c-group", epochs=EPOCHS, passes=PASSES)
    client = MlflowClient(mlflow_server)
    env = cli_env(MLFLOW_TRACKING_URI=mlflow_server, MSCLR_HOME=str(msclr_home))
    # Its own Ray runtime, started by the driver: Ray's processes are in the process group too.
    own = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
    with fault_case("Ctrl-C (SIGINT to the process group) on msclr pretrain") as case:
        proc = start_cli(pretrain_args(path), own, tmp_path, "first")
        sent = signal_when_checkpointed(proc, cfg, 1, signal.SIGINT, group=True)
        code = proc.wait(timeout=300)
        took = time.monotonic() - sent
        out, err = logs(tmp_path, "first")
        assert code == 130, (code, err[-3000:])
        line = stopped_line(err, "SIGINT")
        assert "KILLED" in line and f"resume with: msclr pretrain {path}" in line, line
        run = the_run(client, cfg)
        assert run.info.status == "KILLED", run.info.status
        wait_for(lambda: not _group_alive(proc.pid), timeout=120)  # nothing left running in the group
        stopped_at = checkpoint_epochs(cfg)
        assert 1 <= stopped_at < EPOCHS, stopped_at
        case["detail"] = f"exit 130 {took:.0f} s after the signal; MLflow KILLED; {line[len('msclr: '):][:160]}..."

    with fault_case("Ctrl-C, then the printed resume command: resumes from the checkpoint, FINISHED") as case:
        command = shlex.split(line.split("resume with: ", 1)[1])
        assert command[:2] == ["msclr", "pretrain"], command
        again = run_cli(command[2], env, extra=command[3:])  # the session's runtime: same command, cheaper
        assert again.returncode == 0, again.stderr[-3000:]
        assert "(resumed)" in again.stdout and first_epoch_trained(again.stdout, cfg.name) == stopped_at + 1
        final = load_state(latest_checkpoint(cfg))
        assert [h["epoch"] for h in final["history"]] == list(range(1, EPOCHS + 1))
        run = the_run(client, cfg)
        assert run.info.status == "FINISHED"
        assert_history_shows(client, run, final["history"])
        case["detail"] = f"resumed at epoch {stopped_at + 1} of {EPOCHS} into the same MLflow run; FINISHED"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.mark.slow
@pytest.mark.faults
def test_sigterm_then_a_changed_config_is_refused_and_resume_changed_continues_it(
    tmp_path, tiny_dataset, mlflow_server, ray_local, msclr_home
):
    from mlflow.tracking import MlflowClient

    path, cfg = make_config(tmp_path, tiny_dataset, "sigterm-driver", epochs=EPOCHS, passes=PASSES)
    client = MlflowClient(mlflow_server)
    env = cli_env(MLFLOW_TRACKING_URI=mlflow_server, MSCLR_HOME=str(msclr_home))
    with fault_case("SIGTERM to the msclr pretrain driver") as case:
        proc = start_cli(pretrain_args(path), env, tmp_path, "term")
        signal_when_checkpointed(proc, cfg, 1, signal.SIGTERM, group=False)
        code = proc.wait(timeout=300)
        out, err = logs(tmp_path, "term")
        assert code == 143, (code, err[-3000:])
        assert "KILLED" in stopped_line(err, "SIGTERM")
        assert the_run(client, cfg).info.status == "KILLED"
        first_stop = checkpoint_epochs(cfg)
        case["detail"] = f"exit 143, MLflow KILLED, no C++ abort; last checkpoint epoch {first_stop}"

    with fault_case("rerun with a changed optim.lr: refused before anything starts") as case:
        t0 = time.monotonic()
        refused = run_cli(path, env, extra=["--set", "optim.lr=0.5"])
        took = time.monotonic() - t0
        assert refused.returncode == 2, (refused.returncode, refused.stderr[-3000:])
        assert "optim.lr: 0.05 -> 0.5" in refused.stderr and "--new-run" in refused.stderr, refused.stderr
        assert "--resume-changed" in refused.stderr and "Traceback" not in refused.stderr
        assert "epoch" not in refused.stdout and "Ray instance" not in refused.stdout + refused.stderr
        run = the_run(client, cfg)
        assert run.info.status == "KILLED" and "msclr.config_version" not in run.data.tags  # untouched
        case["detail"] = f"exit 2 in {took:.0f} s: {refused.stderr.strip().splitlines()[-1][13:200]}..."

    with fault_case("--resume-changed, stopped by SIGINT to the driver alone, then the same command: FINISHED") as case:
        changed = ["--resume-changed", "--set", "optim.lr=0.5"]
        proc = start_cli(pretrain_args(path, *changed), env, tmp_path, "changed")
        signal_when_checkpointed(proc, cfg, first_stop + 1, signal.SIGINT, group=False)
        code = proc.wait(timeout=300)
        out, err = logs(tmp_path, "changed")
        assert code == 130, (code, err[-3000:])
        assert "resume-changed" in stopped_line(err, "SIGINT")
        assert the_run(client, cfg).info.status == "KILLED"
        again = run_cli(path, env, extra=changed)
        assert again.returncode == 0, again.stderr[-3000:]
        run = the_run(client, cfg)
        tags, params = run.data.tags, run.data.params
        assert run.info.status == "FINISHED"
        assert tags["msclr.config_version"] == "2", tags  # the rerun's config is version 2: no third version
        assert params["optim.lr"] == "0.05" and params["v2.optim.lr"] == "0.5"
        assert params["v2.from_epoch"] == str(first_stop + 1) and "optim.lr: 0.05 -> 0.5" in tags["msclr.config_v2"]
        assert "config_v2.yaml" in {a.path for a in client.list_artifacts(run.info.run_id)}
        version = client.get_metric_history(run.info.run_id, "config_version")
        assert [(m.step, m.value) for m in version] == [(first_stop + 1, 2.0)]
        final = load_state(latest_checkpoint(cfg))
        assert {h["lr"] for h in final["history"] if h["epoch"] > first_stop} == {0.5}
        assert_history_shows(client, run, final["history"])  # replayed epochs show the lr=0.5 run's values
        case["detail"] = (f"exit 130 then FINISHED; config version 2 from epoch {first_stop + 1} (tags, v2.* params, "
                          "config_v2.yaml, metric config_version); MLflow's latest values are the continuing run's")

