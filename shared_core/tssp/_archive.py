"""The deterministic transport archive: an uncompressed pax tar with the envelope first (TSSP.md 6.1).

Members are regular files only, envelope first and the rest sorted by UTF-8 bytes, with mtime 0, uid/gid 0, empty
owner names and mode 0644, so the same package directory always gives the same archive bytes. The archive itself is
not signed: the manifest inside is.
"""

from __future__ import annotations

import contextlib
import os
import tarfile
import tempfile
from pathlib import Path

from shared_core.tssp._fs import open_member
from shared_core.tssp._manifest import ENVELOPE_NAME

__all__ = ["write_archive"]


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def write_archive(root_fd: int, names: list[str], dest: Path) -> Path:
    """Write ``names`` (read through ``root_fd``) into a temp file next to ``dest``, fsynced; return the temp path.

    The caller renames it into place once everything else succeeded.
    """
    ordered = [ENVELOPE_NAME, *sorted((n for n in names if n != ENVELOPE_NAME), key=lambda n: n.encode("utf-8"))]
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".partial")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            with tarfile.open(fileobj=fh, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for name in ordered:
                    src_fd = open_member(root_fd, name)
                    with os.fdopen(src_fd, "rb") as src:
                        tar.addfile(_member(name, os.fstat(src.fileno()).st_size), src)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return tmp
