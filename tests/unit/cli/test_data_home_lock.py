"""`ak up`'s lock on its data home: one `ak up` per data home, and a clear word when the
file system cannot lock."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import pytest
from ak_cli import up
from akcore.errors import AKError


def test_a_second_lock_is_refused_naming_the_holder(tmp_path: Path) -> None:
    fd = up._lock_data_home(tmp_path)
    try:
        with pytest.raises(AKError) as refused:
            up._lock_data_home(tmp_path)
        assert refused.value.message.startswith(
            f"another `ak up` is using the data home {tmp_path} (processes {os.getpid()})"
        )
    finally:
        os.close(fd)
    os.close(up._lock_data_home(tmp_path))  # free again once its holders are gone


@pytest.mark.parametrize("err", [errno.ENOLCK, errno.EOPNOTSUPP])
def test_a_file_system_without_locks_is_said_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int
) -> None:
    def no_locks(fd: int, op: int) -> None:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(AKError) as refused:
        up._lock_data_home(tmp_path)
    assert refused.value.message == (
        f"cannot lock {tmp_path / up.LOCK_FILE}: {os.strerror(err)}: `ak up` needs a data "
        "home on a file system with file locks, to keep a second one off it (XDG_DATA_HOME)"
    )
