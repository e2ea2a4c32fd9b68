"""Filesystem primitives for packages: link-free enumeration, ``O_NOFOLLOW`` reads, exclusive durable writes."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator

from shared_core.errors import VerificationError

__all__ = ["READ_BLOCK", "fsync_dir", "list_tree", "open_dir", "open_member", "read_blocks", "write_new"]

READ_BLOCK = 4 * 1024 * 1024
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


def open_dir(path: str | os.PathLike[str], *, dir_fd: int | None = None, name: str | None = None) -> int:
    """Open a directory without following a link at its last component."""
    try:
        return os.open(path, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        shown = name or os.fspath(path)
        raise VerificationError(
            f"{shown}: cannot open as a directory without following links ({exc.strerror})",
            path=shown,
            check="layout",
        ) from None


def list_tree(root_fd: int, prefix: str = "") -> Iterator[str]:
    """Yield the relative names of every regular file under ``root_fd``; refuse links, specials and hardlinks.

    Raises:
        VerificationError: ``check="layout"`` for a symlink, a hardlinked file, a device, FIFO or socket;
            ``check="unlisted"`` for an empty folder.
    """
    with os.scandir(root_fd) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            rel = prefix + entry.name
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                raise VerificationError(f"{rel}: symbolic links are refused in a package", path=rel, check="layout")
            if stat.S_ISDIR(info.st_mode):
                sub = open_dir(entry.name, dir_fd=root_fd, name=rel)
                try:
                    found = False
                    for name in list_tree(sub, rel + "/"):
                        found = True
                        yield name
                finally:
                    os.close(sub)
                if not found:  # the manifest lists files only: an empty folder is something it does not describe
                    raise VerificationError(
                        f"{rel}/: an empty folder that the signed manifest does not list", path=rel, check="unlisted"
                    )
            elif stat.S_ISREG(info.st_mode):
                if info.st_nlink != 1:
                    raise VerificationError(
                        f"{rel}: hard-linked file ({info.st_nlink} links) is refused in a package",
                        path=rel,
                        check="layout",
                    )
                yield rel
            else:
                raise VerificationError(f"{rel}: not a regular file", path=rel, check="layout")


def open_member(root_fd: int, rel: str) -> int:
    """Open ``rel`` (``/``-separated) under ``root_fd`` for reading, following no link at any component.

    Raises:
        VerificationError: the file is missing, a link, not regular or hard-linked.
    """
    parts = rel.split("/")
    fds: list[int] = []
    try:
        parent = root_fd
        for part in parts[:-1]:
            parent = open_dir(part, dir_fd=parent, name=rel)
            fds.append(parent)
        try:
            fd = os.open(parts[-1], os.O_RDONLY | _NOFOLLOW | _CLOEXEC, dir_fd=parent)
        except FileNotFoundError:
            raise VerificationError(
                f"{rel}: listed in the signed manifest but missing", path=rel, check="missing"
            ) from None
        except OSError as exc:
            raise VerificationError(
                f"{rel}: cannot open without following links ({exc.strerror})", path=rel, check="layout"
            ) from None
    finally:
        for opened in fds:
            os.close(opened)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
        os.close(fd)
        raise VerificationError(f"{rel}: not a single-link regular file", path=rel, check="layout")
    return fd


def read_blocks(fd: int, limit: int, *, block: int = READ_BLOCK) -> Iterator[bytes]:
    """Yield the bytes of ``fd`` from its current offset, stopping after ``limit`` bytes."""
    remaining = limit
    while remaining > 0:
        data = os.read(fd, min(block, remaining))
        if not data:
            return
        remaining -= len(data)
        yield data


def write_new(dir_fd: int, name: str, blocks: Iterator[bytes] | list[bytes], *, mode: int = 0o644) -> int:
    """Create ``name`` under ``dir_fd`` exclusively, write ``blocks``, fsync; return the byte count."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, mode, dir_fd=dir_fd)
    total = 0
    try:
        for data in blocks:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
                total += written
        os.fsync(fd)
    finally:
        os.close(fd)
    return total


def fsync_dir(fd_or_path: int | str | os.PathLike[str]) -> None:
    """fsync a directory (best effort on platforms that do not support it)."""
    if isinstance(fd_or_path, int):
        with contextlib.suppress(OSError):
            os.fsync(fd_or_path)
        return
    with contextlib.suppress(OSError):
        fd = os.open(fd_or_path, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
