"""Issue 13, data rows: NaN/inf refused when training opens a dataset, non-regular files
refused by the readers, empty datasets and splits fail `data check`, `--skip-bad` that skips
everything fails, and stale `.partial` temporaries of a killed writer are removed by the next.

Real files on disk, real `msclr` subprocesses where the row is about a process (the FIFO
cases run under a timeout, so a regression fails instead of hanging the suite). Each test
records its row for the table `pytest -m faults` prints (tests/fault_report.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fault_report import record_fault

from msclr_core.data.dataset import check_dataset, load_dataset
from msclr_core.data.finite import NonFiniteDataError, nonfinite_rows
from msclr_core.data.writer import DatasetWriter
from msclr_core.errors import DataError, MsclrError
from msclr_core.io_utils import HOST, atomic_write_bytes, remove_stale_temporaries

pytestmark = pytest.mark.faults

MSCLR = str(Path(sys.executable).with_name("msclr"))
CONVS = ["ntu-rgb+d", "smplx_42"]
CONFIG = """
name: nan-check
data: {{path: {data}, protocol: xsub}}
conventions: [ntu-rgb+d, smplx_42]
optim: {{epochs: 1, batch_size: 8}}
eval: {{enabled: false}}
"""


def _outcome(name: str, detail: str, **checks: bool) -> None:
    """Record the row in the fault table (survived = every check held), then assert."""
    failed = [k for k, ok in checks.items() if not ok]
    record_fault(name, not failed, detail if not failed else f"failed {failed}: {detail}")
    assert not failed, f"{name}: {failed}\n{detail}"


def _msclr(*args, timeout=120):
    return subprocess.run([MSCLR, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    from msclr_core.data.synth import write_synth_dataset

    root = tmp_path_factory.mktemp("data-faults") / "synth"
    write_synth_dataset(root, clips=48, seed=3, conventions=CONVS)
    return root


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


# ----------------------------------------------------------------------------- NaN / inf

def test_nonfinite_coordinates_refused_when_training_opens_dataset(tmp_path, small_dataset):
    from msclr_platform.config import load_config
    from msclr_platform.data import dataset_for

    root = _copy(small_dataset, tmp_path / "ds")
    ds = load_dataset(root)
    cfg_path = tmp_path / "nan.yaml"
    cfg_path.write_text(CONFIG.format(data=root))
    cfg = load_config(cfg_path)
    dataset_for(cfg)  # clean data opens

    def poke(conv, sample, value):
        """Set one coordinate, writing a new file (a new inode) as any real rewrite does."""
        arr = np.load(root / f"{conv}.npy")
        arr[sample, 1, 4, 3, 0] = value
        np.save(root / f".{conv}.new.npy", arr)
        os.replace(root / f".{conv}.new.npy", root / f"{conv}.npy")

    poke("smplx_42", 7, np.nan)
    poke("ntu-rgb+d", 11, -np.inf)
    with pytest.raises(NonFiniteDataError) as first:
        dataset_for(cfg)
    poke("ntu-rgb+d", 11, 0.0)
    with pytest.raises(NonFiniteDataError) as second:
        dataset_for(cfg)
    msg1, msg2 = str(first.value), str(second.value)
    report = check_dataset(root)
    # the scan is chunked: a chunk of one row finds the same samples as one big chunk
    arr = ds.array("smplx_42")
    same = nonfinite_rows(arr, chunk_bytes=1).tolist() == nonfinite_rows(arr).tolist() == [7]
    _outcome(
        "NaN/inf coordinates: refused when training opens the dataset", f"{msg1} | {msg2}",
        typed=isinstance(first.value, MsclrError) and isinstance(first.value, DataError),
        names_file=str(root / "ntu-rgb+d.npy") in msg1 and str(root / "smplx_42.npy") in msg2,
        names_sample=f"sample 11 ({ds.sample_names[11]})" in msg1 and f"sample 7 ({ds.sample_names[7]})" in msg2,
        names_convention="'ntu-rgb+d'" in msg1 and "'smplx_42'" in msg2 and first.value.field == "conventions.ntu-rgb+d",
        names_value="-inf" in msg1 and "nan" in msg2 and "frame 4, joint 3" in msg2,
        check_lists_it=not report["ok"] and any("sample 7" in p for p in report["problems"]),
        chunked_scan_agrees=same,
    )


def test_pretrain_on_nonfinite_data_exits_2_naming_the_sample(tmp_path, small_dataset, mlflow_server, msclr_home):
    """The row as a user meets it: `msclr pretrain` on a dataset with one NaN stops before
    training (today: an epoch, then FloatingPointError naming no file)."""
    root = _copy(small_dataset, tmp_path / "ds")
    arr = np.load(root / "smplx_42.npy", mmap_mode="r+")
    arr[5, 2, 0, 0, 0] = np.nan
    arr.flush()
    del arr
    name = load_dataset(root).sample_names[5]
    (tmp_path / "p.yaml").write_text(CONFIG.format(data=root))
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server, "MSCLR_HOME": str(msclr_home)}
    t0 = time.perf_counter()
    out = subprocess.run([MSCLR, "pretrain", tmp_path / "p.yaml"], capture_output=True, text=True, timeout=300, env=env)
    _outcome(
        "NaN coordinates, msclr pretrain: exit 2 before training, naming file/sample/convention",
        f"rc {out.returncode} in {time.perf_counter() - t0:.0f} s: {out.stderr.strip()[-400:]}",
        exits_2=out.returncode == 2,
        names_all=str(root / "smplx_42.npy") in out.stderr and f"sample 5 ({name})" in out.stderr
        and "'smplx_42'" in out.stderr,
        no_traceback="Traceback" not in out.stderr and "FloatingPointError" not in out.stderr + out.stdout,
    )


# ----------------------------------------------------------------------------- non-regular files

READERS = r"""
import faulthandler, json, os, sys
faulthandler.dump_traceback_later({timeout}, exit=True)  # a reader that blocks fails loudly
from pathlib import Path
from msclr_core.errors import DataError
d = Path(sys.argv[1])
def case(name, fn):
    try:
        fn()
    except DataError as err:
        print(json.dumps([name, type(err).__name__, str(err)]), flush=True)
    except Exception as err:
        print(json.dumps([name, "UNTYPED " + type(err).__name__, str(err)]), flush=True)
    else:
        print(json.dumps([name, "accepted", ""]), flush=True)
from msclr_core.data.dataset import load_dataset, open_npy
from msclr_core.data.safe_pickle import restricted_load
from msclr_core.data.ntu import read_skeleton, build_ntu_dataset
from msclr_core.data.bvh import read_bvh
from msclr_core.data.mocap import import_real_mocap_npz
from msclr_core.data.poses import read_pose_file
case("load_dataset", lambda: load_dataset(d / "ds"))
case("open_npy", lambda: open_npy(d / "ds" / "smplx_42.npy", field="x"))
case("manifest", lambda: load_dataset(d / "ds_manifest"))
case("pickle", lambda: restricted_load(d / "labels.pkl", field="labels"))
case("skeleton", lambda: read_skeleton(d / "skel" / "S001C001P001R001A001.skeleton"))
case("bvh", lambda: read_bvh(d / "walk.bvh"))
case("npz", lambda: import_real_mocap_npz(d / "mocap.npz", d / "mocap-out", ("ntu-rgb+d",)))
case("pose_pt", lambda: read_pose_file(d / "pose.pt", 42))
case("directory", lambda: open_npy(d / "dir.npy", field="x"))
rep = build_ntu_dataset(d / "skel", d / "ntu-out", skip_bad=True)
print(json.dumps(["ntu_skip_bad", "listed" if rep.bad else "not listed", json.dumps(rep.bad)]), flush=True)
"""


def test_fifo_named_like_data_files_is_refused_not_hung(tmp_path, small_dataset):
    from test_ntu import write_skeleton

    ds = _copy(small_dataset, tmp_path / "ds")
    (ds / "smplx_42.npy").unlink()
    os.mkfifo(ds / "smplx_42.npy")
    man = _copy(small_dataset, tmp_path / "ds_manifest")
    (man / "manifest.json").unlink()
    os.mkfifo(man / "manifest.json")
    skel = tmp_path / "skel"
    skel.mkdir()
    os.mkfifo(skel / "S001C001P001R001A001.skeleton")
    write_skeleton(skel / "S001C002P003R001A002.skeleton", np.random.default_rng(0), frames=12)
    for name in ("labels.pkl", "walk.bvh", "mocap.npz", "pose.pt"):
        os.mkfifo(tmp_path / name)
    (tmp_path / "dir.npy").mkdir()

    t0 = time.perf_counter()
    try:
        check = _msclr("data", "check", ds, timeout=60)
        script = subprocess.run([sys.executable, "-c", READERS.format(timeout=90), tmp_path], capture_output=True,
                                text=True, timeout=120)
    except subprocess.TimeoutExpired as err:
        _outcome("FIFO named like a data file", f"hung: {err}", no_hang=False)
    seconds = time.perf_counter() - t0
    results = {r[0]: r[1:] for r in map(json.loads, script.stdout.splitlines())}
    fifo = str(ds / "smplx_42.npy")
    expect = {"load_dataset": fifo, "open_npy": fifo, "manifest": str(man / "manifest.json"),
              "pickle": str(tmp_path / "labels.pkl"), "skeleton": "S001C001P001R001A001.skeleton",
              "bvh": str(tmp_path / "walk.bvh"), "npz": str(tmp_path / "mocap.npz"), "pose_pt": str(tmp_path / "pose.pt")}
    refused = {k: k in results and results[k][0].endswith("Error") and "UNTYPED" not in results[k][0]
               and path in results[k][1] and "FIFO" in results[k][1] for k, path in expect.items()}
    _outcome(
        "FIFO named like a data file: refused, not hung",
        f"{seconds:.1f} s; data check rc {check.returncode}; refused by "
        f"{ {k: v[0] for k, v in results.items()} }"
        + ("" if all(refused.values()) else f"; readers: {results}; stderr: {script.stderr[-500:]}"),
        check_fails=check.returncode == 1 and "FIFO" in check.stdout and fifo in check.stdout,
        readers_refuse=all(refused.values()) and script.returncode == 0,
        skeleton_typed=results.get("skeleton", [""])[0] == "SkeletonFormatError",
        directory_refused="a directory" in results.get("directory", ["", ""])[1],
        skip_bad_lists_it=results.get("ntu_skip_bad", [""])[0] == "listed"
        and "S001C001P001R001A001" in results["ntu_skip_bad"][1],
    )


# ----------------------------------------------------------------------------- empty data

def test_empty_dataset_and_empty_split_fail_data_check(tmp_path, small_dataset):
    # a 0-sample dataset as an older writer (or a hand edit) could leave it
    empty = tmp_path / "empty"
    empty.mkdir()
    manifest = json.loads((small_dataset / "manifest.json").read_text())
    for conv, info in manifest["conventions"].items():
        info["shape"][0] = 0
        np.save(empty / info["file"], np.zeros(info["shape"], np.float32))
    manifest["samples"] = {k: [] for k in manifest["samples"]}
    manifest["splits"] = {"xsub": {"train": [], "test": []}}
    (empty / "manifest.json").write_text(json.dumps(manifest))
    # a dataset whose xsub test part is empty
    split = _copy(small_dataset, tmp_path / "split")
    manifest = json.loads((split / "manifest.json").read_text())
    manifest["splits"]["xsub"]["test"] = []
    (split / "manifest.json").write_text(json.dumps(manifest))

    a, b = _msclr("data", "check", empty), _msclr("data", "check", split)
    ok = _msclr("data", "check", small_dataset)
    # and the writer refuses to create an empty dataset at all
    with pytest.raises(DataError) as info:
        with DatasetWriter(tmp_path / "new", capacity=4, shapes={"ntu-rgb+d": (3, 5, 25, 2)}) as w:
            w.commit(name="x", classes=["a"], sample_names=[], labels=[], splits={"xsub": {"train": [], "test": []}})
    _outcome(
        "empty dataset / empty split: errors in data check",
        f"empty: rc {a.returncode} {a.stdout.strip().splitlines()[-3:]}; split: rc {b.returncode} "
        f"{b.stdout.strip().splitlines()[-2:]}; writer: {info.value}",
        empty_fails=a.returncode == 1 and "no samples" in a.stdout,
        split_fails=b.returncode == 1 and "splits.xsub.test: empty" in b.stdout,
        good_passes=ok.returncode == 0 and ok.stdout.strip().endswith("ok"),
        writer_refuses="no samples" in str(info.value) and _hidden(tmp_path) == [] and not (tmp_path / "new").exists(),
    )


def test_empty_training_split_refused_when_training_opens_dataset(tmp_path, small_dataset):
    from msclr_platform.config import load_config
    from msclr_platform.data import dataset_for

    root = _copy(small_dataset, tmp_path / "ds")
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["splits"]["xsub"]["train"] = []
    (root / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "c.yaml").write_text(CONFIG.format(data=root))
    with pytest.raises(DataError) as info:
        dataset_for(load_config(tmp_path / "c.yaml"))
    assert info.value.field == "splits.xsub.train" and str(root / "manifest.json") in str(info.value)


def test_skip_bad_with_every_file_bad_is_an_error(tmp_path):
    skel = tmp_path / "skel"
    skel.mkdir()
    names = ["S001C001P001R001A001", "S001C002P003R001A002", "S002C003P002R002A003"]
    for name in names:
        (skel / f"{name}.skeleton").write_text("3\n1\nnot a body\n")
    out = _msclr("data", "ntu", skel, "--out", tmp_path / "out", "--skip-bad", "--workers", 1)
    _outcome(
        "data ntu --skip-bad with every file bad: an error, nothing written",
        f"rc {out.returncode}: {out.stderr.strip()[-300:]}",
        exits_2=out.returncode == 2,
        says_so="all 3 ntu60 .skeleton file(s) are bad" in out.stderr and names[0] in out.stderr,
        nothing_written=not (tmp_path / "out").exists() and _hidden(tmp_path) == [],
        no_traceback="Traceback" not in out.stderr,
    )


# ----------------------------------------------------------------------------- stale temporaries

SYNTH_CONVS = "ntu-rgb+d,smpl_24,smplx_42,berkeley_mhad_43,h36m_17,mpi_inf_3dhp_28,mediapipe_33,kinectv2_25"


def _kill_synth_mid_write(parent: Path, name: str) -> tuple[subprocess.Popen, list[Path]]:
    """Start `msclr data synth` and SIGKILL it once 5 MB of array data are on disk in its
    temporary directory; return the process and the .partial directories it left."""
    proc = subprocess.Popen([MSCLR, "data", "synth", "--out", parent / name, "--clips", "200", "--seed", "5",
                             "--conventions", SYNTH_CONVS], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                parts = [p for p in parent.glob(f".{name}.*.partial")
                         if sum(f.stat().st_blocks * 512 for f in p.glob("*.npy")) > 5e6]
            except OSError:  # renamed or removed while we looked
                parts = []
            if parts:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        if proc.poll() is None and time.monotonic() >= deadline:
            proc.kill()
        proc.wait()
    return proc, sorted(parent.glob(f".{name}.*.partial"))


def test_sigkill_during_synth_then_next_writer_removes_the_partial(tmp_path):
    for attempt in range(3):  # the write phase is short: if the writer finished first, try again
        name = f"synth{attempt}"
        proc, left = _kill_synth_mid_write(tmp_path, name)
        if proc.returncode == -signal.SIGKILL and left:
            break
    assert proc.returncode == -signal.SIGKILL and left, "could not kill `msclr data synth` mid-write"
    stale_bytes = sum(f.stat().st_size for f in left[0].iterdir())
    written = sum(f.stat().st_blocks * 512 for f in left[0].iterdir())
    own_name = left[0].name.startswith(f".{name}.{HOST}.{proc.pid}.")

    dead = proc.pid
    decoys = {  # similar names that are not this writer's stale temporaries: all must survive
        f".{name}.notes.partial": "pattern, no pid",
        f".{name}.{HOST}.{os.getpid()}.abcdefgh.partial": "a live writer (this test)",
        f".{name}.other-host.{dead}.abcdefgh.partial": "another host on a shared filesystem",
        f".other.{HOST}.{dead}.abcdefgh.partial": "another target",
        f"{name}.{HOST}.{dead}.abcdefgh.partial": "not hidden",
        f".{name}.{HOST}.{dead}.abcdefgh.partial.keep": "suffix after the pattern",
        f".{name}.{HOST}.{dead}.abcdefgh.tmp": "file pattern, but a directory",
    }
    for decoy in decoys:
        (tmp_path / decoy).mkdir()
        (tmp_path / decoy / "data").write_text("keep me")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / f".{name}.{HOST}.{dead}.abcdefgh.partial").mkdir()  # same pattern, another directory
    target_of_link = tmp_path / "linked"
    target_of_link.mkdir()
    (target_of_link / "data").write_text("keep me")
    (tmp_path / f".{name}.{HOST}.{dead}.zzzzzzzz.partial").symlink_to(target_of_link)  # never followed

    again = _msclr("data", "synth", "--out", tmp_path / name, "--clips", "30", "--seed", "1",
                   "--conventions", "ntu-rgb+d,smpl_24")
    survivors = [d for d in decoys if (tmp_path / d / "data").is_file()]
    _outcome(
        "SIGKILL during data synth: next writer removes the stale .partial",
        f"killed pid {dead} left {[p.name for p in left]} ({stale_bytes / 1e6:.0f} MB, {written / 1e6:.0f} MB "
        f"on disk); second run rc "
        f"{again.returncode} {again.stderr.strip()[-200:]}; decoys kept {len(survivors)}/{len(decoys)}",
        named_after_writer=own_name,
        second_run_ok=again.returncode == 0 and len(load_dataset(tmp_path / name)) == 30,
        stale_removed=not any(p.exists() for p in left),
        decoys_kept=survivors == list(decoys),
        other_dir_kept=(elsewhere / f".{name}.{HOST}.{dead}.abcdefgh.partial").is_dir(),
        link_kept=(tmp_path / f".{name}.{HOST}.{dead}.zzzzzzzz.partial").is_symlink()
        and (target_of_link / "data").is_file(),
    )


def test_stale_file_temporaries_and_old_copies(tmp_path):
    """atomic_write_bytes cleans a dead writer's `.tmp` files; an `.old` copy is kept while
    the target is missing (the last complete version) and removed once the target exists."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale_tmp = tmp_path / f".out.json.{HOST}.{dead}.k2j4h5g6.tmp"
    stale_tmp.write_text("half")
    old = tmp_path / f".ds.{HOST}.{dead}.old"
    old.mkdir()
    atomic_write_bytes(tmp_path / "out.json", b"{}")
    assert not stale_tmp.exists() and (tmp_path / "out.json").read_bytes() == b"{}"
    assert remove_stale_temporaries(tmp_path / "ds") == [] and old.is_dir()  # no target: keep the old copy
    (tmp_path / "ds").mkdir()
    assert remove_stale_temporaries(tmp_path / "ds") == [old] and not old.exists()
