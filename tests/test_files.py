"""asr.files.atomic_file: all or nothing, with the mode a plain open() would give."""
from __future__ import annotations

import os
import stat

import pytest

from asr.files import atomic_file


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_file(path) as f:
            f.write("half")
            raise RuntimeError("stopped")
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_the_file_mode_follows_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        with atomic_file(tmp_path / "sub" / "out.bin", "wb", fsync=True) as f:
            f.write(b"\x00\x01")
        open(tmp_path / "plain", "w").close()
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "sub" / "out.bin").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain").stat().st_mode) == 0o666 & ~umask
    assert (tmp_path / "sub" / "out.bin").read_bytes() == b"\x00\x01"
