"""Combine trained music classifiers into the shipped ensemble file (denoiser/bypass/classifier.py).

    python -m denoiser.training.bypass_ensemble OUT.npz A.npz[:K] B.npz[:K] ... [--combine max]
        [--report OUT.json --about TEXT --member-report NAME=REPORT.json ...]

Each source is a file written by `python -m denoiser.training.bypass_classifier` (one model) or
an ensemble file; `:K` picks its member K. Members keep their own input count (a member trained
on an older feature set reads the first inputs). With `--report`, the training reports of the
members are kept side by side in one JSON (models/bypass_classifier.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from denoiser.bypass.classifier import MEMBER_FIELDS


def read_member(spec: str) -> dict[str, np.ndarray]:
    """`path` (a single model) or `path:K` (member K of an ensemble file)."""
    path, sep, index = spec.rpartition(":")
    if not sep or not index.isdigit():
        path, index = spec, ""
    with np.load(path) as z:
        is_ensemble = "members" in z.files
        if is_ensemble and not index:
            raise ValueError(f"{path} is an ensemble of {int(z['members'])}: say which, {path}:K")
        if index and not is_ensemble:
            raise ValueError(f"{path} holds one model, not members")
        if index and int(index) >= int(z["members"]):
            raise ValueError(f"{path} has {int(z['members'])} members, no member {index}")
        suffix = f"_{index}" if index else ""
        member = {n: np.asarray(z[n + suffix], np.float32) for n in MEMBER_FIELDS}
    n_in, hidden = member["w1"].shape
    if (member["mean"].shape != (n_in,) or member["std"].shape != (n_in,)
            or member["b1"].shape != (hidden,) or member["w2"].shape[0] != hidden
            or member["b2"].shape != member["w2"].shape[1:]):
        raise ValueError(f"{spec}: inconsistent layer shapes")
    return member


def combine(specs: list[str], how: str = "max") -> dict[str, np.ndarray]:
    """The arrays of an ensemble file of `specs`, in order."""
    if how not in ("max", "mean"):
        raise ValueError(f"combine must be max or mean, got {how!r}")
    if not specs:
        raise ValueError("no members")
    out: dict[str, np.ndarray] = {"members": np.array(len(specs)), "combine": np.array(how)}
    for k, spec in enumerate(specs):
        for name, value in read_member(spec).items():
            out[f"{name}_{k}"] = value
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("members", nargs="+", help="model files, or ensemble:K")
    ap.add_argument("--combine", default="max", choices=("max", "mean"))
    ap.add_argument("--report", type=Path, default=None, help="write the members' reports here")
    ap.add_argument("--about", default="", help="what the ensemble is (kept in --report)")
    ap.add_argument("--member-report", action="append", default=[], metavar="NAME=REPORT.json",
                    help="a member's training report, in member order")
    args = ap.parse_args(argv)
    arrays = combine(args.members, args.combine)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]  # numpy types **kwds as allow_pickle
    print(f"{args.out}: {len(args.members)} members, combine={args.combine}")
    if args.report is not None:
        reports = {}
        for item in args.member_report:
            name, _, path = item.partition("=")
            reports[name] = json.loads(Path(path).read_text())
        args.report.write_text(json.dumps({"about": args.about, "members": reports}, indent=1)
                               + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
