"""Test-only fault injection (tests/test_faults.py): the driver (train.py) reads
MSCLR_FAULT_INJECT="ACTION:epoch=E[:step=S][:signal=TERM][:bytes=N]" and hands it to rank 0,
where it fires once per run (a marker file in the run directory):
    kill_worker:epoch=2:step=3    SIGKILL rank 0 itself after step 3 (0-based) of epoch 2
    kill_worker:epoch=2           ... while epoch 2's checkpoint file is half written
    kill_driver:epoch=2[:step=S]  signal the driver at the same places, then wait to be torn down
    fsize_limit:epoch=2:bytes=N   RLIMIT_FSIZE=N bytes while epoch 2's checkpoint is written
                                  (a real kernel limit: the write fails as on a full disk)
`signal=TERM` sends SIGTERM instead of SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from msclr_core.errors import ConfigError
from msclr_core.io_utils import atomic_write_text

FAULT_ENV = "MSCLR_FAULT_INJECT"
FAULT_ACTIONS = ("kill_worker", "kill_driver", "fsize_limit")
FAULT_WAIT_S = 300.0  # how long a fault's process waits to be torn down before giving up


@dataclass(frozen=True)
class Fault:
    """A test-only fault from MSCLR_FAULT_INJECT (grammar in the module docstring)."""

    spec: str
    action: str
    epoch: int
    step: int | None = None  # None: while the epoch's checkpoint is written
    signal: str = "KILL"
    nbytes: int = 0

    @classmethod
    def parse(cls, spec: str | None) -> "Fault | None":
        if not spec:
            return None
        action, *pairs = spec.split(":")
        try:
            opts = dict(p.split("=", 1) for p in pairs)
            step = opts.pop("step", None)
            fault = cls(spec, action, int(opts.pop("epoch")), None if step is None else int(step),
                        opts.pop("signal", "KILL").upper(), int(opts.pop("bytes", 0)))  # fmt: skip
        except (KeyError, ValueError) as err:
            raise ConfigError(f"{FAULT_ENV}={spec!r}: expected ACTION:epoch=E[:step=S][:signal=KILL|TERM][:bytes=N] ({err!r})") from None
        if action not in FAULT_ACTIONS or opts or fault.signal not in ("KILL", "TERM"):
            raise ConfigError(f"{FAULT_ENV}={spec!r}: actions are {', '.join(FAULT_ACTIONS)}, signals KILL or TERM")
        return fault


class FaultInjector:
    """Fires a Fault on rank 0 where it is due, once per run (also across restarts)."""

    def __init__(self, fault: Fault | None, run_dir: str, driver_pid: int):
        self.fault, self.run_dir, self.driver_pid = fault, Path(run_dir), driver_pid

    def _claim(self, action: str, epoch: int, step: int | None) -> bool:
        f = self.fault
        if f is None or f.action != action or (f.epoch, f.step) != (epoch, step):
            return False
        marker = self.run_dir / ".msclr-faults" / re.sub(r"[^\w.=-]", "_", f.spec)
        if marker.exists():
            return False
        atomic_write_text(marker, f"{f.spec}\npid={os.getpid()}\n")  # the test waits for this pid to die
        return True

    def kill_point(self, epoch: int, step: int | None = None) -> None:
        for action in ("kill_worker", "kill_driver"):
            if self._claim(action, epoch, step):
                sig = signal.SIGKILL if self.fault.signal == "KILL" else signal.SIGTERM
                print(f"fault injection: {self.fault.spec}", flush=True)
                os.kill(os.getpid() if action == "kill_worker" else self.driver_pid, sig)
                # Stay where the fault hit (mid-epoch, or the checkpoint half written) until the
                # signal, or the driver's death tearing the cluster down, ends this process.
                time.sleep(FAULT_WAIT_S)
                raise RuntimeError(f"fault injection {self.fault.spec!r}: still alive after {FAULT_WAIT_S:g} s")

    @contextlib.contextmanager
    def file_size_limit(self, epoch: int):
        """RLIMIT_FSIZE for this process while the block runs, when an fsize_limit fault is due."""
        if not self._claim("fsize_limit", epoch, None):
            yield
            return
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.fault.nbytes, hard))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
