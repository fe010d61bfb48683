"""Shared pytest setup. Keep fixtures specific to one module in that module's test file."""

import os
from pathlib import Path

import pytest

# The suite runs Ray workers, MLflow and test processes on 2 shared cores: spinning OpenMP
# waits made steps up to 5x slower there (benchmarks/RESULTS.md, Speed II). Before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REAL_MOCAP = SHARED / "data" / "real-mocap"


@pytest.fixture(scope="session")
def real_mocap_dir() -> Path:
    if not REAL_MOCAP.is_dir():
        pytest.skip(f"real-mocap fixtures not found at {REAL_MOCAP} (they live in ../shared beside the repo)")
    return REAL_MOCAP


# ---------------------------------------------------------------- platform fixtures
# A real MLflow server (sqlite backend) and a real local Ray runtime, both on 127.0.0.1,
# started once per test session and shut down at the end.


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    import os
    import signal

    from msclr_platform.tracking import start_server

    root = tmp_path_factory.mktemp("mlflow")
    info = start_server(root)
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = info["uri"]
    yield info["uri"]
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old
    try:
        os.killpg(info["pid"], signal.SIGTERM)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def ray_local():
    import os

    import ray

    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "120")
    if not ray.is_initialized():
        from msclr_platform.local_ray import start_local_ray

        start_local_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def msclr_home(tmp_path_factory):
    import os

    home = tmp_path_factory.mktemp("msclr_home")
    old = os.environ.get("MSCLR_HOME")
    os.environ["MSCLR_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("MSCLR_HOME", None)
    else:
        os.environ["MSCLR_HOME"] = old


# ---------------------------------------------------------------- fault report (issue 7)


def pytest_terminal_summary(terminalreporter):
    from fault_report import FAULTS, HOSTILE

    if not FAULTS and not HOSTILE:
        return
    terminalreporter.section("faults and hostile inputs")
    for name, survived, detail in FAULTS:
        terminalreporter.write_line(f"{'survived' if survived else 'FAILED':>8}  {name}" + (f"  ({detail})" if detail else ""))
    for target, n in sorted(HOSTILE.items()):
        terminalreporter.write_line(f"{n:>8}  hostile inputs: {target}")
    if HOSTILE:
        terminalreporter.write_line(f"{sum(HOSTILE.values()):>8}  hostile inputs in all")
