"""Atomic writes: a killed save leaves a temp file that the next save to the same path removes;
modes follow the umask (or the replaced file); unwritable targets are named, never the temp file."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import pytest

from wdecomp.errors import OutputPathError
from wdecomp.io import atomic_write_text, check_writable, stale_temp_files

KILLED_WRITER = """
import sys, time
from pathlib import Path
from wdecomp.io import atomic_write

def slow(tmp):
    with open(tmp, "wb") as fh:
        fh.write(b"x" * 1_000_000)
        fh.flush()
        Path(sys.argv[2]).write_text("started")
        time.sleep(60)

atomic_write(sys.argv[1], slow)
"""


def _killed_save(target, tmp_path):
    marker = tmp_path / "started"
    marker.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target), str(marker)])
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert time.monotonic() < deadline and proc.poll() is None, "writer never started"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_a_killed_save_leaves_a_temp_that_the_next_save_removes(tmp_path):
    target = tmp_path / "big.bin"
    atomic_write_text(target, "old")
    seen = []
    for _ in range(3):  # each killed save first removes the temp of the one killed before it
        _killed_save(target, tmp_path)
        leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".big.bin.")]
        assert len(leftovers) == 1 and leftovers[0].stat().st_size == 1_000_000
        seen.append(leftovers[0].name)
    assert len(set(seen)) == 3
    assert target.read_text() == "old"  # the reader never saw half a file
    assert sorted(stale_temp_files(target)) == sorted(leftovers)
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".big.bin.")] == []


def test_temps_of_live_writers_and_other_paths_are_kept(tmp_path):
    from wdecomp.io import _host

    target = tmp_path / "a.json"
    live = tmp_path / f".a.json.{_host()}.{os.getppid()}.abcd1234.wdecomp-tmp"  # our parent: alive
    other = tmp_path / f".b.json.{_host()}.999999999.abcd1234.wdecomp-tmp"  # another file's temp
    foreign = tmp_path / ".a.json.otherhost.999999999.abcd1234.wdecomp-tmp"  # written on another host
    for p in (live, other, foreign):
        p.write_text("partial")
    atomic_write_text(target, "{}")
    assert live.exists() and other.exists() and foreign.exists()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_new_files_follow_the_umask_and_overwrites_keep_the_mode(umask, tmp_path):
    old = os.umask(umask)
    try:
        fresh = atomic_write_text(tmp_path / "fresh.txt", "a")
        kept = tmp_path / "kept.txt"
        kept.write_text("old")
        os.chmod(kept, 0o644)
        atomic_write_text(kept, "new")
    finally:
        os.umask(old)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(kept.stat().st_mode) == 0o644 and kept.read_text() == "new"


@pytest.mark.refuses("saving to a path that is a folder", "a file name is needed; the error names the path, "
                     "not a hidden temp file")
def test_writing_to_a_folder_names_the_path(tmp_path):
    with pytest.raises(OutputPathError, match="it is a folder"):
        atomic_write_text(tmp_path, "x")


@pytest.mark.refuses("saving under a read-only folder", "the folder cannot be written; the error names the "
                     "target path, not a hidden temp file")
def test_writing_to_a_read_only_place_names_the_path():
    with pytest.raises(OutputPathError) as exc:
        atomic_write_text("/proc/wdecomp-test.json", "x")
    assert "/proc/wdecomp-test.json" in str(exc.value) and "wdecomp-tmp" not in str(exc.value)


@pytest.mark.refuses("an output path below a file", "a file cannot hold a folder; choose another path")
def test_check_writable_refuses_a_path_below_a_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        check_writable(blocker / "sub" / "out.json")
    with pytest.raises(OutputPathError, match="a folder is needed"):
        check_writable(blocker, folder=True)


def test_check_writable_accepts_new_nested_paths_and_leaves_nothing(tmp_path):
    assert check_writable(tmp_path / "new" / "deeper" / "out.json") == tmp_path / "new" / "deeper" / "out.json"
    assert check_writable(tmp_path / "report", folder=True) == tmp_path / "report"
    assert list(tmp_path.iterdir()) == []  # the probe file is gone and no folder was created
