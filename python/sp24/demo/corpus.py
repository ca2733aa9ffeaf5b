"""The demo's corpus: the standard library's *.py files as bytes, a fixed train/eval split by file
name, and batches of byte windows (see sp24.demo for the rules and why)."""

from __future__ import annotations

import hashlib
import os
import platform
import sysconfig
import zlib
from pathlib import Path

import torch

STDLIB_PACKAGES = (  # pure-Python packages present in CPython 3.10-3.13; a missing one is skipped
    "asyncio", "collections", "concurrent", "ctypes", "curses", "dbm", "email", "html", "http",
    "importlib", "json", "logging", "multiprocessing", "re", "sqlite3", "tomllib", "unittest",
    "urllib", "wsgiref", "xml", "xmlrpc", "zoneinfo",
)
SKIP_DIRS = {"test", "tests", "__pycache__"}
EVAL_MOD = 10  # 1 file in ~10 is held out
DOC_SEP = b"\x00"  # never occurs in source text: marks file boundaries in the byte stream


def corpus_files(root: Path) -> list[str]:
    """The fixed, sorted list of corpus files (paths relative to the stdlib root, '/'-separated)."""
    files = [p.name for p in root.glob("*.py")]
    for pkg in STDLIB_PACKAGES:
        for dirpath, dirnames, filenames in os.walk(root / pkg):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
            rel = Path(dirpath).relative_to(root).as_posix()
            files += [f"{rel}/{f}" for f in filenames if f.endswith(".py")]
    return sorted(files)


def is_eval_file(rel: str) -> bool:
    return zlib.crc32(rel.encode()) % EVAL_MOD == 0


def load_corpus(root: str | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(train bytes, eval bytes, info): two uint8 streams of disjoint sets of files."""
    root_p = Path(root or sysconfig.get_paths()["stdlib"])
    files = corpus_files(root_p)
    if not files:
        raise RuntimeError(f"sp24.demo: no *.py files found under the stdlib folder {root_p}")
    parts: dict[bool, list[bytes]] = {False: [], True: []}
    digest = hashlib.sha256()
    for rel in files:
        data = (root_p / rel).read_bytes().replace(DOC_SEP, b"") + DOC_SEP
        parts[is_eval_file(rel)].append(data)
        digest.update(rel.encode() + DOC_SEP + data)
    for held, what in ((False, "training"), (True, "held-out eval")):
        if not parts[held]:
            raise RuntimeError(f"sp24.demo: the {what} split of the corpus under {root_p} is empty "
                               f"({len(files)} files in all); the demo needs the full standard library sources")
    train, evl = (torch.frombuffer(bytearray(b"".join(parts[k])), dtype=torch.uint8) for k in (False, True))
    info = {
        "source": "CPython standard library *.py files (bytes)", "stdlib_root": ("sysconfig.get_paths()['stdlib']" if root is None else root_p.name),  # no machine paths
        "python_version": platform.python_version(), "files_train": len(parts[False]),
        "files_eval": len(parts[True]), "bytes_train": train.numel(), "bytes_eval": evl.numel(),
        "sha256": digest.hexdigest(), "eval_rule": f"crc32(relative path) % {EVAL_MOD} == 0",
    }
    return train, evl, info


def get_batch(data: torch.Tensor, starts: torch.Tensor, seq_len: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    idx = starts[:, None] + torch.arange(seq_len + 1)
    chunk = data[idx].long()
    return chunk[:, :-1].to(device, non_blocking=True), chunk[:, 1:].to(device, non_blocking=True)
