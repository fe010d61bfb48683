"""How a run ends: every MLflow run msclr opens ends FINISHED, FAILED or KILLED.

Signals (driver side). `signal_guard()` installs msclr's SIGINT/SIGTERM handler for the
whole command; a signal raises `Interrupted` (a KeyboardInterrupt carrying the signal and
the exit code, 130 or 143), which `closing_run` turns into a KILLED run. While Ray Train
runs, the first signal instead asks the workers to stop at their next step boundary
(`stop_at_step_boundary`): the driver puts a stop request into Ray's key-value store
(GCS), rank 0 polls it, and every rank learns it at the same step by a broadcast, so all
stop together; one that stops at the end of an epoch writes that epoch's checkpoint first.
A second signal, or workers still running STOP_GRACE_S later, aborts the Ray Train run.

Ray's own handlers are replaced on purpose: `ray.init` makes SIGTERM `sys.exit` (which
ends in a C++ abort and exit 134 during a `ray.get`), and Train V2's `fit()` makes SIGINT
abort the workers mid-step and exit 0 or 1 (train.make_trainer keeps it from registering).
Ray's own processes start with SIGINT blocked, so a Ctrl-C in a terminal (the whole
process group) reaches only the driver: the workers stop because the driver asks them to.

SIGKILL cannot be caught: the next start of the same run name finds the run still
RUNNING and says so (`claim_run`), then resumes it, into the same MLflow run, from its
last checkpoint. The driver tags the run with its host, pid and process start time, so a
run whose driver still lives on this machine is refused instead of trained twice.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

from msclr_core.errors import ConfigError

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
STOP_GRACE_S = 30.0  # after the first signal, how long the workers have to reach a step boundary
STOP_POLL_S = 0.5  # how often rank 0 asks the GCS for a stop request (at step boundaries)
STOP_NAMESPACE = "msclr"
DRIVER_TAG = "msclr.driver"


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped the command; `exit_code` is 128 + the signal number."""

    def __init__(self, signum: int, detail: str = "", *, resumable: bool = False):
        self.signum, self.detail, self.resumable = signum, detail, resumable
        self.exit_code = 128 + signum
        super().__init__(f"stopped by {signal.Signals(signum).name}" + (f": {detail}" if detail else ""))


class StopTraining(Exception):
    """Raised inside a worker's epoch at the step boundary where every rank agreed to stop."""

    def __init__(self, step: int, steps: int):
        super().__init__(f"stop requested after step {step + 1} of {steps}")
        self.step, self.steps = step, steps


# ---------------------------------------------------------------- driver: signals


class SignalGuard:
    """msclr's SIGINT/SIGTERM handler. `signum` is the first stop signal received (or None).

    With `on_first` set (while the workers train), the first signal calls it instead of
    raising; any other signal raises Interrupted in the main thread (after `on_force`)."""

    def __init__(self):
        self.signum: int | None = None
        self.count = 0
        self.on_first = None
        self.on_force = None
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        """(Re)install the handlers: call again after anything that installs its own (ray.init)."""
        if threading.current_thread() is not threading.main_thread():
            return  # a Tune trial or a library thread: signals are not ours to take
        for sig in STOP_SIGNALS:
            previous = signal.signal(sig, self._handle)
            self._previous.setdefault(sig, previous)

    @contextlib.contextmanager
    def graceful(self, on_first, on_force=None):
        """While the block runs, the first signal calls on_first(signum) instead of raising;
        a later one calls on_force() and raises."""
        self.count, self.on_first, self.on_force = 0, on_first, on_force
        try:
            yield self
        finally:
            self.on_first = self.on_force = None

    def restore(self) -> None:
        for sig, previous in self._previous.items():
            with contextlib.suppress(TypeError, ValueError):
                signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        self.count += 1
        self.signum = self.signum or signum
        name = signal.Signals(signum).name
        if self.on_first is not None and self.count == 1:
            print(f"msclr: {name}: stopping the workers at their next step (an epoch that just ended is "
                  "checkpointed); send it again to stop at once", file=sys.stderr, flush=True)  # fmt: skip
            self.on_first(signum)
            return
        if self.on_force is not None:
            self.on_force()
        raise Interrupted(signum)


_active: SignalGuard | None = None


@contextlib.contextmanager
def signal_guard():
    """The command's SignalGuard (nested calls share the outermost one). Signals are the
    main thread's: elsewhere (a Tune trial, a library thread) the guard installs nothing."""
    global _active
    if threading.current_thread() is not threading.main_thread():
        yield SignalGuard()
        return
    if _active is not None:
        yield _active
        return
    guard = _active = SignalGuard()
    guard.install()
    try:
        yield guard
    finally:
        guard.restore()
        _active = None


def as_interrupted(err: BaseException, guard: SignalGuard, detail: str = "", *, resumable: bool = False) -> Interrupted:
    """Interrupted for `err`: a KeyboardInterrupt that went through Ray (which re-raises a
    plain one) or an abort after a stop signal keeps the signal that caused it."""
    signum = getattr(err, "signum", None) or guard.signum or signal.SIGINT
    return Interrupted(signum, detail, resumable=resumable)


# ---------------------------------------------------------------- driver <-> workers: stop requests


def new_stop_key(run_id: str) -> str:
    """A fresh key per attempt: a request left by an earlier attempt never stops a new one."""
    return f"stop/{run_id}/{uuid.uuid4().hex}"


def request_stop(key: str, signum: int) -> None:
    from ray.experimental.internal_kv import _internal_kv_put

    _internal_kv_put(key, str(signum), overwrite=True, namespace=STOP_NAMESPACE)


def stop_requested(key: str) -> bool:
    from ray.experimental.internal_kv import _internal_kv_get

    try:
        return _internal_kv_get(key, namespace=STOP_NAMESPACE) is not None
    except Exception:  # noqa: BLE001 - the GCS unreachable for a moment: ask again next step
        return False


def clear_stop(key: str) -> None:
    from ray.experimental.internal_kv import _internal_kv_del

    with contextlib.suppress(Exception):
        _internal_kv_del(key, namespace=STOP_NAMESPACE)


@contextlib.contextmanager
def stop_at_step_boundary(guard: SignalGuard, trainer, stop_key: str, grace_s: float = STOP_GRACE_S):
    """While the block runs `trainer.fit()`: the first signal asks the workers to stop (see
    the module docstring); a second one, or `grace_s` without the fit returning, aborts
    the Ray Train run through its controller (`trainer.controller`, see train.make_trainer)."""
    import ray

    done = threading.Event()

    def abort() -> None:
        controller = getattr(trainer, "controller", None)
        if controller is not None:
            with contextlib.suppress(Exception):
                ray.get(controller.abort.remote(), timeout=60)

    def stop(signum: int) -> None:
        with contextlib.suppress(Exception):
            request_stop(stop_key, signum)
        if not done.wait(grace_s):
            print(f"msclr: the workers did not stop within {grace_s:g} s: aborting the Ray Train run",
                  file=sys.stderr, flush=True)  # fmt: skip
            abort()

    # Not from the handler itself: it runs inside Ray's own wait loop, which must not block.
    try:
        with guard.graceful(lambda signum: threading.Thread(target=stop, args=(signum,), daemon=True).start(),
                            lambda: threading.Thread(target=abort, daemon=True).start()):  # fmt: skip
            yield
    finally:
        done.set()
        clear_stop(stop_key)


class StopCheck:
    """Worker side: True at the step boundary where the driver's stop request is seen.

    Rank 0 asks the GCS (at most every STOP_POLL_S); with several ranks, every step
    broadcasts rank 0's answer, so that all ranks stop after the same step (a rank that
    stopped alone would leave the others waiting in a collective). No key: never stops."""

    def __init__(self, key: str | None, rank: int, world: int, device, poll_s: float = STOP_POLL_S):
        self.key, self.rank, self.world, self.device, self.poll_s = key, rank, world, device, poll_s
        self.requested = False
        self._next_poll = 0.0

    def __call__(self) -> bool:
        if self.key is None:
            return False
        if self.rank == 0 and not self.requested and time.monotonic() >= self._next_poll:
            self._next_poll = time.monotonic() + self.poll_s
            self.requested = stop_requested(self.key)
        if self.world > 1:
            import torch
            import torch.distributed as dist

            flag = torch.tensor([int(self.requested)], device=self.device)
            dist.broadcast(flag, 0)
            self.requested = bool(flag.item())
        return self.requested


# ---------------------------------------------------------------- MLflow run state


@contextlib.contextmanager
def closing_run(client, run_id: str, guard: SignalGuard, name: str, *, resumable: bool = True):
    """Whatever leaves the block early leaves run `name` KILLED (a stop signal, Ctrl-C,
    SystemExit after a signal), raised on as Interrupted, or FAILED (anything else); the
    block ends it FINISHED itself. During an MLflow outage (offline.TrackingUnavailable) the
    state cannot be set: the fallback directory records it for `msclr runs sync`."""
    from .offline import TrackingUnavailable

    try:
        yield
    except BaseException as err:
        status = "KILLED" if isinstance(err, KeyboardInterrupt) or guard.signum else "FAILED"
        if not isinstance(err, TrackingUnavailable):
            with contextlib.suppress(Exception):
                client.set_terminated(run_id, status)
        if status == "KILLED" and not isinstance(err, TrackingUnavailable):
            detail = getattr(err, "detail", "")
            note = f"run {name!r} (MLflow run {run_id}) is KILLED"
            raise as_interrupted(err, guard, f"{detail}; {note}" if detail else note, resumable=resumable) from None
        raise


def driver_identity(pid: int | None = None) -> str:
    """host:pid:start-time of a process (the start time tells a reused pid apart)."""
    pid = pid or os.getpid()
    try:
        ticks = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        ticks = "?"
    return f"{socket.gethostname()}:{pid}:{ticks}"


def claim_run(client, run, name: str) -> None:
    """Before this process resumes `run` (an mlflow Run): refuse if the driver that runs it
    is alive on this machine; say so in one line when an earlier attempt left it RUNNING
    (SIGKILL, a lost machine: nothing could close it); then tag it with this driver."""
    run_id, holder = run.info.run_id, run.data.tags.get(DRIVER_TAG, "")
    if run.info.status == "RUNNING":
        host, _, rest = holder.partition(":")
        pid = rest.partition(":")[0]
        if host == socket.gethostname() and pid.isdigit() and int(pid) != os.getpid() \
                and driver_identity(int(pid)) == holder:  # fmt: skip
            raise ConfigError(f"run {name!r} (MLflow run {run_id}) is being trained right now by process {pid} on this "
                              f"machine; wait for it, or stop it (Ctrl-C there, or kill -TERM {pid})")  # fmt: skip
        who = f"driver {holder}" if holder else "an earlier driver"
        print(f"msclr: run {name!r} (MLflow run {run_id}) was left RUNNING by an attempt that never ended ({who} "
              "killed or lost); resuming it from its last checkpoint", file=sys.stderr, flush=True)  # fmt: skip
        client.set_tag(run_id, "msclr.stale_attempt", f"{holder or 'unknown driver'} left it RUNNING; "
                       f"resumed at {time.strftime('%Y-%m-%d %H:%M:%S')}")  # fmt: skip
    client.set_tag(run_id, DRIVER_TAG, driver_identity())
