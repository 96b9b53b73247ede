"""What makes an offline run the same run: the rule by which tools resume.

A resumable tool writes ``run_identity.json`` into its output folder: the model and checkpoints,
protocol and thresholds, hyper-parameters, world size and a fingerprint of the dataset. It resumes
only when the identity of the new invocation is the same; otherwise it stops with one line naming
what differs, before touching anything (the earlier run's files stay as they are).
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
from typing import IO, Any, Dict, Iterable, List, Optional, Sequence, Tuple

IDENTITY_FILE = "run_identity.json"
_SAMPLE = 1 << 20  # bytes hashed at each end of a large file


class RunMismatchError(ValueError):
    """The output folder holds a run that is not the one asked for."""


def file_fingerprint(path: str) -> Optional[str]:
    """Identity of a file (checkpoint, annotations): size plus a hash of its content, or of its first
    and last MiB when it is large (a checkpoint of gigabytes is not read whole on every start)."""
    if not path:
        return None
    if not os.path.isfile(path):
        return f"missing:{os.path.basename(path)}"
    size = os.path.getsize(path)
    h = hashlib.sha1()
    with open(path, "rb") as f:
        if size <= 4 * _SAMPLE:
            h.update(f.read())
        else:
            h.update(f.read(_SAMPLE))
            f.seek(size - _SAMPLE)
            h.update(f.read(_SAMPLE))
    return f"{size}:{h.hexdigest()[:16]}"


def dataset_fingerprint(paths: Sequence[str]) -> str:
    """Identity of a list of image files: their count, relative names and sizes (not contents: a
    dataset of 100k images is fingerprinted in a second)."""
    paths = sorted(paths)
    root = os.path.commonpath([os.path.abspath(p) for p in paths]) if paths else ""
    h = hashlib.sha1()
    for p in paths:
        size = os.path.getsize(p) if os.path.isfile(p) else -1
        h.update(f"{os.path.relpath(os.path.abspath(p), root)}\0{size}\n".encode())
    return f"{len(paths)} files:{h.hexdigest()[:16]}"


def config_identity(cfg, exclude: Iterable[str] = (), files: Iterable[str] = ()) -> Dict[str, Any]:
    """A config dataclass as identity fields: ``exclude`` drops fields that do not change results
    (paths of outputs, worker counts, logging); ``files`` are paths replaced by their fingerprints."""
    out = {}
    files = set(files)
    for f in dataclasses.fields(cfg):
        if f.name in exclude:
            continue
        value = getattr(cfg, f.name)
        if f.name in files:
            value = file_fingerprint(value)
        out[f.name] = value
    return json.loads(json.dumps(out, default=str))  # tuples -> lists: comparable with the file


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def differences(old: Dict[str, Any], new: Dict[str, Any], prefix: str = "") -> list:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, prefix + key + ".")
        elif a != b:
            out.append(f"{prefix}{key} {_short(a)} -> {_short(b)}")
    return out


def check_run_identity(
    out_dir: str, identity: Dict[str, Any], resume: bool, write: bool = True, state: Sequence[str] = ()
) -> bool:
    """Compare ``identity`` with the run recorded in ``out_dir``.

    Returns True when there is a matching earlier run to continue, False when starting fresh (no
    earlier run, or ``resume`` is False: the caller then discards the earlier run's state).
    Raises RunMismatchError when an earlier, different run is there and ``resume`` is True, or when
    any of ``state`` (an earlier run's outputs: paths or glob patterns) exists without a recorded
    identity (nothing says whose they are). ``write``: record ``identity`` (only one process of a
    distributed job writes).
    """
    identity = json.loads(json.dumps(identity, default=str))
    path = os.path.join(out_dir, IDENTITY_FILE)
    previous = None
    if os.path.isfile(path):
        try:
            with open(path) as f:
                previous = json.load(f)
        except (OSError, json.JSONDecodeError):
            previous = {"unreadable": True}
    if previous is None and resume and any(glob.glob(p) for p in state):
        raise RunMismatchError(
            f"{out_dir} holds outputs of a run without a recorded identity: use a new --out-dir, "
            "or --resume false to discard them"
        )
    if previous is not None and resume and previous != identity:
        diff = differences(previous, identity)
        shown = "; ".join(diff[:4]) + (f"; and {len(diff) - 4} more" if len(diff) > 4 else "")
        raise RunMismatchError(
            f"{out_dir} holds a different run ({shown}): use a new --out-dir, or --resume false to discard it"
        )
    if write:
        os.makedirs(out_dir, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(identity, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    return previous is not None and resume


def read_records(path: str) -> Tuple[List[dict], int]:
    """The complete JSON lines of a run's record file and the number of bytes they span.

    A line cut by a killed run (only ever the last one) is not returned, and ``open_records``
    cuts it off before appending, so that the next record starts on a line of its own.
    """
    rows: List[dict] = []
    good = 0
    if not os.path.isfile(path):
        return rows, 0
    with open(path, "rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                break
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
            good += len(line)
    return rows, good


def open_records(path: str, resume: bool) -> Tuple[List[dict], IO[str]]:
    """(records kept, file open for appending more): the earlier complete records when resuming
    (a cut last line is removed), none otherwise (the file starts empty)."""
    rows, good = read_records(path) if resume else ([], 0)
    f = open(path, "a" if resume else "w")
    if resume:
        f.truncate(good)
    return rows, f
