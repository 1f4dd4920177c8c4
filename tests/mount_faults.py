"""Disk and installation faults made real: a command run in a private mount namespace
(``unshare --user --map-root-user --mount``) where the test mounts what it needs first, e.g. a
tmpfs of a few kilobytes (a full disk: ENOSPC), a read-only tmpfs (EROFS), or an empty tmpfs over
a Java installation (no Java). The mounts are seen by that command only, and vanish with it.

Why not chmod: the tests may run as root (they do in this project's containers), and a mode never
stops root. Why not RLIMIT_FSIZE: it limits every file of the process, temporary files included,
so it cannot tell "the cache's disk is full" from "every disk is full". A user namespace needs
no privilege; where the kernel forbids unprivileged ones, :func:`require_mount_namespaces` skips
the test, saying so.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Mount:
    """A tmpfs mounted at ``target`` (created if missing) with tmpfs ``options``, e.g.
    ``size=64k``, ``nr_inodes=8``, ``ro``."""

    target: Path
    options: str = ""

    def shell(self) -> str:
        options = f"-o {shlex.quote(self.options)} " if self.options else ""
        target = shlex.quote(str(self.target))
        return f"mkdir -p {target} && mount -t tmpfs {options}tmpfs {target}"


def in_mount_namespace(
    command: Sequence[str], mounts: Sequence[Mount], prepare: str = ""
) -> list[str]:
    """``command`` run after ``mounts`` (in order) and the shell lines ``prepare`` (e.g. filling
    a tmpfs, then remounting it read-only), in a mount namespace of its own."""
    setup = " && ".join([*(mount.shell() for mount in mounts), *([prepare] if prepare else [])])
    script = f'set -e; {setup}; exec "$@"' if setup else 'exec "$@"'
    return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", *command]


def require_mount_namespaces(tmp_path: Path) -> None:
    """Skips the test unless this machine lets a process mount a tmpfs in a namespace of its
    own (the ``unshare`` command, and unprivileged user namespaces, or root)."""
    if shutil.which("unshare") is None:
        pytest.skip("the unshare command (util-linux) is not installed")
    probe = in_mount_namespace(["true"], [Mount(tmp_path / "mount-probe", "size=16k")])
    done = subprocess.run(probe, capture_output=True, timeout=30, check=False)
    if done.returncode != 0:
        pytest.skip(f"no private mount namespace here: {done.stderr.decode().strip()}")
