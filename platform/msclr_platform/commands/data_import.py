"""`msclr data import KIND ...`: bring outside data into the dataset format.

    msclr data import skeletonclr --out DIR --labels train=train_label.pkl --labels val=val_label.pkl \\
        --data ntu-rgb+d:train=train_position.npy --data ntu-rgb+d:val=val_position.npy \\
        --data smplx_42:train=smplx_train.npy --data smplx_42:val=smplx_val.npy
    msclr data import pyskl ntu60_3danno.pkl --out DIR --convention ntu-rgb+d
    msclr data import poses POSE_DIR --dataset DIR --convention smplx_42 --frame camera-ydown   (adds to DIR)
    msclr data import mocap bandai1_10cls.npz --out DIR --conventions ntu-rgb+d,h36m_17
"""

from __future__ import annotations

import argparse
import json

KINDS = ("skeletonclr", "pyskl", "poses", "mocap")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=KINDS, help="what to import")
    parser.add_argument("source", nargs="?", help="pyskl: the .pkl; poses: the pose folder; mocap: the .npz")
    parser.add_argument("--out", help="dataset directory to create (skeletonclr, pyskl, mocap)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    parser.add_argument("--frames", type=int, default=50, help="frames per clip after resizing (default 50)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON document")
    g = parser.add_argument_group("skeletonclr (AimCLR / MS-CLR npy + label pkl)")
    g.add_argument("--data", action="append", default=[], metavar="CONV:SPLIT=NPY",
                   help="one array per convention and split (split: train, val or test); repeat")
    g.add_argument("--labels", action="append", default=[], metavar="SPLIT=PKL",
                   help="the (sample_names, labels) pickle of a split; repeat")
    g.add_argument("--protocol", default="xsub", help="split protocol name to record (default xsub)")
    g.add_argument("--unit", action="append", default=[], metavar="CONV=UNIT",
                   help="unit of a convention's array (default: ntu-rgb+d m, others mm)")
    g.add_argument("--preprocess", choices=["auto", "yes", "no"], default="auto",
                   help="frame-50 preprocessing: auto = only arrays whose T differs from --frames")
    g = parser.add_argument_group("pyskl and poses")
    g.add_argument("--convention", default="ntu-rgb+d", help="convention of the keypoints / pose files")
    g.add_argument("--persons", type=int, default=2, help="persons kept per clip (default 2)")
    g = parser.add_argument_group("poses (per-sample estimator output <name>.npy/.pt)")
    g.add_argument("--dataset", help="existing dataset directory to add the convention to")
    g.add_argument("--pose-unit", default="mm", help="unit of the pose files (MeTRAbs: mm)")
    g.add_argument("--frame", default="camera-ydown",
                   choices=["camera-ydown", "camera-ydown-mirrored", "camera-yup", "kinect"],
                   help="coordinate frame of the pose files, converted to the dataset's (NTU Kinect: x to the "
                        "camera's left, y up, z forward). camera-ydown (default): MeTRAbs/OpenCV camera "
                        "coordinates, x right, y down, z forward, which are the Kinect frame turned 180 degrees "
                        "about z, so x and y are negated; camera-ydown-mirrored: the same from a video mirrored "
                        "left-right (x kept, left/right joints swapped); camera-yup: OpenGL, x right, y up, "
                        "z backward; kinect: already the dataset frame. Recorded in the manifest; "
                        "`msclr data check` reports a wrong choice (e.g. 'y axis flipped')")
    g.add_argument("--missing", choices=["error", "zero"], default="error",
                   help="a sample without a pose file: fail (default) or zero-fill and report")
    g.add_argument("--replace", action="store_true", help="overwrite the convention if the dataset has it")
    g = parser.add_argument_group("mocap (real-mocap .npz)")
    g.add_argument("--conventions", default="ntu-rgb+d,h36m_17", help="comma-separated conventions to derive")
    g.add_argument("--normalize", choices=["ntu", "clip"], default="ntu",
                   help="ntu: per-frame frame-50 pipeline; clip: keep the trajectory")
    g.add_argument("--offset-scale", type=float, default=0.0, help="per-convention joint offsets (bone fraction)")
    g.add_argument("--noise", type=float, default=0.0, help="per-frame joint jitter in metres")
    g.add_argument("--seed", type=int, default=0)


def _pairs(values, flag):
    from msclr_core.errors import ConfigError

    out = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or not key or not val:
            raise ConfigError(f"{flag} {v!r}: expected KEY=VALUE")
        out[key] = val
    return out


def _require(args, *names):
    from msclr_core.errors import ConfigError

    for name in names:
        if not getattr(args, name):
            flag = name if name == "source" else "--" + name.replace("_", "-")
            raise ConfigError(f"msclr data import {args.kind}: {flag} is required")


def _run(args):
    from msclr_core.errors import ConfigError

    if args.kind == "skeletonclr":
        from msclr_core.data.importers import import_skeletonclr

        _require(args, "out", "data", "labels")
        data: dict[str, dict[str, str]] = {}
        for key, path in _pairs(args.data, "--data").items():
            conv, sep, split = key.rpartition(":")
            if not sep:
                raise ConfigError(f"--data {key}={path}: expected CONV:SPLIT=NPY")
            data.setdefault(conv, {})[split] = path
        pre = {"auto": "auto", "yes": True, "no": False}[args.preprocess]
        return import_skeletonclr(data, _pairs(args.labels, "--labels"), args.out, protocol=args.protocol,
                                  units=_pairs(args.unit, "--unit"), T=args.frames, preprocess=pre,
                                  overwrite=args.overwrite), {}
    if args.kind == "pyskl":
        from msclr_core.data.importers import import_pyskl

        _require(args, "source", "out")
        return import_pyskl(args.source, args.out, args.convention, T=args.frames, persons=args.persons,
                            overwrite=args.overwrite), {}
    if args.kind == "poses":
        from msclr_core.data.poses import add_pose_convention

        _require(args, "source", "dataset")
        rep = add_pose_convention(args.dataset, args.source, args.convention, unit=args.pose_unit, T=args.frames,
                                  persons=args.persons, missing=args.missing, replace=args.replace, frame=args.frame)
        return rep.dataset, {"zero_filled": rep.zero_filled}
    from msclr_core.data.mocap import import_real_mocap_npz

    _require(args, "source", "out")
    convs = tuple(c.strip() for c in args.conventions.split(",") if c.strip())
    return import_real_mocap_npz(args.source, args.out, convs, T=args.frames, normalize=args.normalize,
                                 persons=args.persons, offset_scale=args.offset_scale, noise=args.noise,
                                 seed=args.seed, overwrite=args.overwrite), {}


def main(args) -> int:
    ds, extra = _run(args)
    summary = {"out": str(ds.root), "kind": args.kind, "samples": len(ds), "classes": len(ds.classes),
               "conventions": {c: {"shape": list(i.shape), "unit": i.unit} for c, i in ds.conventions.items()},
               "splits": {p: {part: len(i) for part, i in parts.items()} for p, parts in ds.splits.items()}, **extra}
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{args.kind}: {summary['samples']} samples, {summary['classes']} classes -> {summary['out']}")
    for conv, info in summary["conventions"].items():
        print(f"  {conv}: shape {info['shape']} ({info['unit']})")
    for proto, parts in summary["splits"].items():
        print(f"  split {proto}: " + ", ".join(f"{p} {n}" for p, n in parts.items()))
    if extra.get("zero_filled"):
        print(f"  {len(extra['zero_filled'])} sample(s) without a pose file were zero-filled, e.g. "
              f"{extra['zero_filled'][0]}")
    return 0
