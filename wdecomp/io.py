"""Atomic file writes: a reader sees the old file or the new one, never half a file.

Every file wdecomp writes (components, cached models, graphs, reports, JSON results) goes to a
temporary file in the destination's directory, is flushed to disk, and is moved into place with
:func:`os.replace`, which is atomic on POSIX and Windows within one file system.

Permissions: a new file gets the usual ``0o666`` less the process umask (what ``open(path, "w")``
gives); overwriting an existing file keeps that file's mode. Temporary files are named
``.<name>.<host>.<pid>.<random>.wdecomp-tmp``; one left behind by a killed writer (its process no
longer runs on this host) is removed by the next save to the same path.

:func:`check_writable` answers, before any long computation, whether a file could be written at a
path, so that a command fails in a second instead of after an hour's work.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import stat
from collections.abc import Callable
from pathlib import Path

from wdecomp.errors import OutputPathError

_TMP_SUFFIX = ".wdecomp-tmp"


def _host() -> str:
    return socket.gethostname().replace(".", "_") or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but belongs to someone else (or cannot be asked): leave its file alone
    return True


def stale_temp_files(path: str | os.PathLike) -> list[Path]:
    """Temporary files of earlier saves to ``path`` whose writer no longer runs on this host.

    Only files named by :func:`atomic_write` for this exact ``path`` and this host are considered;
    a file whose process is still alive (a concurrent save) is never listed.
    """
    path = Path(path)
    prefix = f".{path.name}.{_host()}."
    out = []
    with contextlib.suppress(OSError):
        for entry in path.parent.iterdir():
            name = entry.name
            if not (name.startswith(prefix) and name.endswith(_TMP_SUFFIX)):
                continue
            pid_text = name[len(prefix):].split(".", 1)[0]
            if pid_text.isdigit() and int(pid_text) != os.getpid() and not _pid_alive(int(pid_text)):
                out.append(entry)
    return out


def _new_temp(path: Path) -> tuple[int, str]:
    """Create the temporary file with mode ``0o666 & ~umask`` (the kernel applies the umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{_host()}.{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}"
        try:
            return os.open(tmp, flags, 0o666), str(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file next to {path}")


def check_writable(path: str | os.PathLike, *, folder: bool = False) -> Path:
    """Check, without leaving anything behind, that wdecomp could write ``path``.

    Args:
        path: The file (or, with ``folder=True``, the folder) to be written.
        folder: ``path`` is a folder that will be created if missing and filled with files.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OutputPathError: ``path`` is a folder where a file is expected (or a file where a folder
            is expected), a parent is a file, or the folder cannot be created or written.
    """
    path = Path(path)
    if folder:
        if path.exists() and not path.is_dir():
            raise OutputPathError(f"'{path}' is a file, but a folder is needed there: choose another path")
        target_dir = path
    else:
        if path.is_dir():
            raise OutputPathError(f"'{path}' is a folder; give a file name (for example '{path / 'out.json'}')")
        if path.exists() and not os.access(path, os.W_OK):
            raise OutputPathError(f"'{path}' exists and is read-only: choose another path or make it writable")
        target_dir = path.parent
    existing = target_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"cannot write '{path}': '{existing}' is a file, not a folder")
    probe_dir = target_dir if target_dir.exists() else existing
    try:
        fd, tmp = _new_temp(probe_dir / (path.name or "probe"))
    except OSError as exc:
        raise OutputPathError(f"cannot write '{path}': folder '{probe_dir}' is not writable ({exc.strerror}); "
                              "choose another path") from exc
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(tmp)
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, fsync it, then move it into place.

    Stale temporary files of earlier, killed saves to the same path are removed first (see
    :func:`stale_temp_files`). The written file's mode is that of the file it replaces, or
    ``0o666`` less the umask for a new file.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OutputPathError: ``path`` is a folder, or its folder cannot be created or written (the
            message names ``path``, not the temporary file).
    """
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"cannot write '{path}': it is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in stale_temp_files(path):
            with contextlib.suppress(OSError):
                stale.unlink()
        fd, tmp = _new_temp(path)
    except OSError as exc:
        raise OutputPathError(f"cannot write '{path}': {exc.strerror or exc}; choose another path") from exc
    os.close(fd)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable where the platform allows
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
