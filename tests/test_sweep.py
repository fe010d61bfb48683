"""Ray Tune sweep files: validation before anything starts.

The end-to-end smoke sweep (ASHA, resume, MLflow parent/child) is issue 5's open work.
"""

from pathlib import Path

import pytest

from msclr_core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "experiments/sweeps/smoke.yaml"


@pytest.fixture(scope="module")
def sweep_dataset(tmp_path_factory):
    from msclr_core.data.synth import write_synth_dataset

    root = tmp_path_factory.mktemp("sweepdata") / "synth"
    write_synth_dataset(root, clips=480, seed=5, conventions=["ntu-rgb+d", "smplx_42", "smpl_24"])
    return root


def write_sweep(tmp_path, search, extra=""):
    p = tmp_path / "sweep.yaml"
    p.write_text(f"name: t\nbase: {REPO / 'experiments/quickstart.yaml'}\nsearch:\n{search}\n{extra}")
    return p


def test_sweep_validation_names_file_and_key(tmp_path, sweep_dataset, msclr_home):
    from msclr_platform.sweep import load_sweep

    data = [f"data.path={sweep_dataset}"]
    bad = write_sweep(tmp_path, "  method.temperatur: {choice: [0.1]}")
    with pytest.raises(ConfigError, match="temperatur") as e:
        load_sweep(bad, data)
    assert str(bad) in str(e.value)
    bad = write_sweep(tmp_path, "  method.queue_size: {choice: [1024, 1000]}")
    with pytest.raises(ConfigError, match="queue_size"):
        load_sweep(bad, data)
    bad = write_sweep(tmp_path, "  conventions: {choice: [[ntu-rgb+d, berkeley_mhad_43]]}")
    with pytest.raises(ConfigError, match="berkeley_mhad_43"):
        load_sweep(bad, data)
    bad = write_sweep(tmp_path, "  optim.lr: {normal: [0, 1]}")
    with pytest.raises(ConfigError, match="search.optim.lr"):
        load_sweep(bad, data)
    bad = write_sweep(tmp_path, "  optim.lr: {loguniform: [0.01, 0.1]}", "search_alg: nevergrad\n")
    from msclr_platform.search_space import searcher

    with pytest.raises(ConfigError, match="nevergrad"):
        searcher(load_sweep(bad, data).spec)


def test_shipped_sweeps_validate(sweep_dataset, msclr_home):
    from msclr_platform.sweep import load_sweep

    sweep = load_sweep(SMOKE, [f"data.path={sweep_dataset}"])
    assert {"method.temperature", "method.queue_size", "conventions"} <= set(sweep.spec.search)
    ntu = REPO / "experiments/sweeps/ntu60_temperature_queue_skeletons.yaml"
    with pytest.raises(ConfigError, match="berkeley_mhad_43|smpl_24"):  # the synthetic set lacks MHAD
        load_sweep(ntu, [f"data.path={sweep_dataset}", "ray.storage_path=/tmp/unused"])
