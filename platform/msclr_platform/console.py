"""What `msclr` shows on the terminal: quiet by default, everything with `-v`, one JSON line with `--json`.

Quiet (the default) keeps the lines a user reads: msclr's own messages, the MLflow run and its
link, one line per epoch from rank 0 (without Ray's `(RayTrainWorker pid=...)` prefix), the
results, errors. What it holds back, and the switch that does it:

- Ray Train's INFO logs, on the controller and the workers (`Requesting resources ...`,
  `Setting up process group ...`, `Reporting training result N: TrainingReport(...)`):
  `RunConfig(logging_config=ray.train.LoggingConfig(log_level="WARNING"))` (train_logging_config);
- the driver's `ray` INFO logs (`Started a local Ray instance ...`) and the token-auth notice
  (msclr makes the token itself, local_ray.py): a filter on the `ray` logger's handlers
  (quiet_ray_driver; ray.init resets the `ray` logger's level, not its handlers' filters);
- the controller's C++ error line about the `PreemptionWatcher` actor's constructor arguments
  (harmless, ray-project/ray#53727) and the workers' `Reporting training result N:
  TrainingReport(...)` (its logger is named after its file, not `ray.train.*`, so LoggingConfig
  misses it): RAY_DEDUP_LOGS_SKIP_REGEX, which Ray's driver applies to every forwarded line;
- MLflow's INFO logs (system metrics monitor start/stop): MLFLOW_LOGGING_LEVEL=WARNING, its
  UserWarnings on dataset sources and inferred schemas: a `warnings` filter for mlflow.*, and
  its artifact download bars: MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false.

Colour: none when NO_COLOR is set or stderr is not a terminal (RAY_COLOR_PREFIX=0 for Ray's
prefixes, ANSI stripped from Ray's driver logs). A progress bar within the epoch
(ray.experimental.tqdm_ray: the worker sends its state, the driver draws it with tqdm on
stderr) when stderr is a terminal and NO_COLOR is unset (MSCLR_PROGRESS=1, read by the
workers; tqdm_ray colours its prefix unconditionally, and a bar in a log file is noise).

`--json` (commands whose module sets JSON_STDOUT = True): stdout holds exactly one line, the
JSON document; all else (msclr's lines, Ray's forwarded worker output, MLflow's "View run"
links, subprocesses) goes to stderr, since file descriptor 1 is pointed at stderr for the
command's duration. Settings the user exported (RAY_*, MLFLOW_LOGGING_LEVEL, MSCLR_PROGRESS) win.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import sys
import warnings

VERBOSE_ENV = "MSCLR_VERBOSE"  # 1: as -v (also for library callers and Ray job drivers)
PROGRESS_ENV = "MSCLR_PROGRESS"  # 1: rank 0 draws a progress bar within each epoch
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# Forwarded worker lines dropped by the driver when quiet: Ray core's error line for the Train controller's
# PreemptionWatcher actor, on every run (ray-project/ray#53727), the worker's per-report TrainingReport
# dump (logged by a logger named after its file, which LoggingConfig's `ray.train` filter misses), and
# Train's placement-group cleaner announcing its work after a sweep's scheduler stopped a trial driver.
RAY_SKIP = (r"has constructor arguments in the object store and max_restarts > 0|Reporting training result \d+: TrainingReport\("
            r"|Detected that the Ray Train controller actor \(\w+\) is dead\. Cleaning up placement group")

_state = {"verbose": None, "json_fd": None}


def verbose() -> bool:
    if _state["verbose"] is not None:
        return _state["verbose"]
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def colour() -> bool:
    """ANSI colour on stderr: a terminal, and NO_COLOR (https://no-color.org) unset."""
    return not os.environ.get("NO_COLOR") and _isatty(sys.stderr)


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def configure(is_verbose: bool | None = None) -> None:
    """Set the verbosity of this process and of the Ray runtime it starts. Call before Ray and
    MLflow are imported (the CLI does): some switches are read once, at import."""
    if is_verbose is not None:
        _state["verbose"] = bool(is_verbose)
        if is_verbose:  # for the processes Ray starts from here (a sweep's trial drivers make trainers too)
            os.environ[VERBOSE_ENV] = "1"
    loud = verbose()
    env = {PROGRESS_ENV: "1" if colour() else "0"}  # tqdm_ray paints its "(pid=...)" prefix whatever NO_COLOR says
    if not colour():
        env["RAY_COLOR_PREFIX"] = "0"
    if not loud:
        env.update(RAY_DISABLE_WORKER_LOG_PREFIX="1", MLFLOW_LOGGING_LEVEL="WARNING",
                   MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false")  # fmt: skip
        skip = os.environ.get("RAY_DEDUP_LOGS_SKIP_REGEX")
        os.environ["RAY_DEDUP_LOGS_SKIP_REGEX"] = f"(?:{skip})|{RAY_SKIP}" if skip and RAY_SKIP not in skip else (skip or RAY_SKIP)
        warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow(\.|$)")
        for name in ("urllib3.connectionpool", "alembic", "mlflow.system_metrics"):
            logging.getLogger(name).setLevel(logging.WARNING)
    for key, value in env.items():
        os.environ.setdefault(key, value)


def worker_env() -> dict[str, str]:
    """The settings above that Ray workers on other machines need (init_ray's runtime_env)."""
    keys = (PROGRESS_ENV, VERBOSE_ENV, "MLFLOW_LOGGING_LEVEL")
    return {k: os.environ[k] for k in keys if k in os.environ}


def train_logging_config():
    """Ray Train's logging on its controller and workers: INFO only with -v (RunConfig.logging_config)."""
    import ray.train

    return ray.train.LoggingConfig(log_level="INFO" if verbose() else "WARNING")


class _RayDriverFilter(logging.Filter):
    """On the `ray` logger's handlers: quiet drops records below WARNING and the token-auth
    notice; without colour, ANSI codes are stripped (ray.init paints the dashboard URL)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not verbose() and (record.levelno < logging.WARNING or "Token authentication is enabled" in str(record.msg)):
            return False
        if not colour():
            record.msg = ANSI.sub("", record.getMessage())
            record.args = None
        return True


def quiet_ray_driver() -> None:
    """Install _RayDriverFilter on the driver's `ray` logger handlers (after `import ray`, idempotent)."""
    import ray  # noqa: F401 - configures the "ray" logger and its handlers

    for handler in logging.getLogger("ray").handlers:
        if not any(isinstance(f, _RayDriverFilter) for f in handler.filters):
            handler.addFilter(_RayDriverFilter())


@contextlib.contextmanager
def step_progress(desc: str, enabled: bool = True):
    """Yield on_step(step, n) that draws a progress bar within one epoch (tqdm_ray from a Ray
    worker, rendered by the driver) when MSCLR_PROGRESS=1 and `enabled`; else a no-op."""
    if not enabled or os.environ.get(PROGRESS_ENV) != "1":
        yield lambda step, n: None
        return
    bar = None

    def on_step(step: int, n: int) -> None:
        nonlocal bar
        if bar is None:
            from ray.experimental.tqdm_ray import tqdm

            bar = tqdm(desc=desc, total=n, unit="step")
        bar.update(step + 1 - bar.n)

    try:
        yield on_step
    finally:
        if bar is not None:
            bar.close()


@contextlib.contextmanager
def session(*, is_verbose: bool = False, json_stdout: bool = False):
    """One CLI command: configure(); with json_stdout, fd 1 goes to stderr until the end
    and print_json writes to the real stdout."""
    configure(is_verbose or None)
    if not json_stdout:
        yield
        return
    sys.stdout.flush()
    real = os.dup(1)
    os.dup2(2, 1)
    _state["json_fd"] = real
    try:
        yield
    finally:
        _state["json_fd"] = None
        with contextlib.suppress(OSError, ValueError):
            sys.stdout.flush()
        os.dup2(real, 1)
        os.close(real)


def _finite(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def print_json(doc, **dumps_kwargs) -> None:
    """The command's result, one line of JSON: on stdout, which under session(json_stdout=True)
    holds nothing else. A closed stdout raises BrokenPipeError (the CLI exits 141)."""
    doc = _finite(json.loads(json.dumps(doc, **dumps_kwargs)))  # strict JSON: NaN/inf become null
    line = (json.dumps(doc, allow_nan=False) + "\n").encode()
    fd = _state["json_fd"]
    if fd is None:
        sys.stdout.write(line.decode())
        sys.stdout.flush()
        return
    while line:
        line = line[os.write(fd, line):]
