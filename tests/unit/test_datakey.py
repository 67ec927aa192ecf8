"""The data key: journal records and values sealed with AES-GCM, bound to their place, and
keys rotated without losing what older keys sealed."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
from akcore import journal, wire
from akcore.datakey import Keyring, SealError
from akcore.errors import AKError
from akcore.secrets import Sealer, load_keys
from cryptography.fernet import Fernet

SECRET = b"tok-3kf9q-planted"
OLD, NEW = Fernet.generate_key(), Fernet.generate_key()


def test_sealed_bytes_open_only_where_they_were_sealed() -> None:
    keys = Keyring([OLD])
    blob = keys.seal(SECRET, b"ses_a/3/result")
    assert SECRET not in blob
    assert keys.open(blob, b"ses_a/3/result") == SECRET
    with pytest.raises(SealError, match="altered or moved"):
        keys.open(blob, b"ses_b/3/result")
    with pytest.raises(SealError, match="altered or moved"):
        keys.open(blob[:-1] + bytes([blob[-1] ^ 1]), b"ses_a/3/result")
    with pytest.raises(SealError, match="should be sealed is not"):
        keys.open(SECRET, b"ses_a/3/result")
    text = keys.seal_text(SECRET, b"x")
    assert text.startswith("ak1:") and keys.open_text(text, b"x") == SECRET


def test_rotation_new_key_seals_old_keys_still_open() -> None:
    before = Keyring([OLD]).seal(SECRET, b"aad")
    rotated = Keyring([NEW, OLD])
    assert rotated.open(before, b"aad") == SECRET
    after = rotated.seal(SECRET, b"aad")
    assert Keyring([NEW]).open(after, b"aad") == SECRET  # sealed with the new primary
    with pytest.raises(SealError, match="AK_SECRETS__KEYS"):
        Keyring([NEW]).open(before, b"aad")  # the old key dropped too soon: a clear error
    # Secret vars rotate the same way.
    var = Sealer(OLD).seal("v")
    assert Sealer(NEW, OLD).open(var) == "v"
    assert Sealer(NEW).open(Sealer(NEW, OLD).seal("w")) == "w"


def test_keys_from_env_or_the_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.delenv("AK_SECRETS__KEY", raising=False)
    monkeypatch.delenv("AK_SECRETS__KEYS", raising=False)
    (made,) = load_keys()  # made on first start, owner-only
    path = tmp_path / "autokitteh" / "secrets.key"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    path.write_bytes(NEW + b"\n" + made + b"\n")  # rotated: the new key first
    assert load_keys() == [NEW, made]
    path.write_bytes(b"\n")  # emptied (by hand, or a crash of an earlier version)
    with pytest.raises(AKError, match=f"{path} holds no secrets key"):
        load_keys()
    monkeypatch.setenv("AK_SECRETS__KEY", OLD.decode())
    assert load_keys() == [OLD]
    monkeypatch.setenv("AK_SECRETS__KEYS", f"{NEW.decode()}, {OLD.decode()}")
    assert load_keys() == [NEW, OLD]


def test_services_starting_together_on_a_new_data_home_share_one_key(tmp_path: Path) -> None:
    """Four services start at once and each makes the key file if it is missing: all of
    them read the same key (never an empty file, never an error)."""
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path)}
    env.pop("AK_SECRETS__KEY", None)
    env.pop("AK_SECRETS__KEYS", None)
    go = tmp_path / "go"
    code = (
        "import os, sys\nfrom akcore.secrets import load_keys\nprint(flush=True)\n"
        f"while not os.path.exists({str(go)!r}): pass\nprint(load_keys()[0].decode())"
    )
    for _ in range(5):
        key = tmp_path / "autokitteh" / "secrets.key"
        key.unlink(missing_ok=True)
        go.unlink(missing_ok=True)
        runs = [
            subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE)
            for _ in range(4)
        ]
        for run in runs:  # each has imported and waits for the go
            assert run.stdout is not None and run.stdout.readline() == b"\n"
        go.touch()
        keys = {run.communicate(timeout=60)[0].strip() for run in runs}
        assert [run.returncode for run in runs] == [0] * 4
        assert keys == {key.read_text().strip().encode()}
    assert sorted(p.name for p in key.parent.iterdir()) == ["secrets.key"]  # none left aside


DIGEST = "5f2b9c0d1e3a4b6c"


def _records() -> list[wire.JournalRecord]:
    s = SECRET.decode()
    return [
        journal.record("ses_a", 1, journal.Print(text=f"token {s}", n=1), 1),
        journal.record(
            "ses_a",
            2,
            journal.Activity(step=1, function="getenv", ok=True, result=SECRET, digest=DIGEST),
            2,
        ),
        journal.record(
            "ses_a",
            3,
            journal.Syscall(step=2, function="signal", args={"to": s}, result=SECRET, error=s),
            3,
        ),
        journal.record(
            "ses_a",
            4,
            journal.Ended(state=wire.ERROR, error=s, traceback=s, result=SECRET),
            4,
        ),
    ]


def test_journal_records_rest_sealed_and_unseal_as_written() -> None:
    keys = Keyring([OLD])
    for rec in _records():
        resting = journal.seal(rec, keys)
        assert SECRET not in wire.encode(resting)
        assert journal.unseal(wire.decode(wire.JournalRecord, wire.encode(resting)), keys) == rec
    # What the system needs in the clear stays clear (the store reads it).
    ended = journal.seal(_records()[-1], keys)
    assert ended.data["state"] == wire.ERROR and journal.SEALED in ended.data


def test_an_activitys_argument_digest_rests_sealed() -> None:
    # A digest of a short secret passed to an activity could be matched offline by guessing.
    keys = Keyring([OLD])
    activity = _records()[1]
    assert DIGEST.encode() not in wire.encode(journal.seal(activity, keys))
    # Journals written before digests were sealed still read.
    assert journal.unseal(journal.seal(activity, keys), keys).data["digest"] == DIGEST
    earlier = journal.seal(
        journal.record("ses_a", 2, journal.Activity(step=1, function="f", ok=True, result=b""), 2),
        keys,
    )
    earlier.data["digest"] = DIGEST
    assert journal.unseal(earlier, keys).data["digest"] == DIGEST


def test_a_record_moved_or_left_unsealed_is_malformed() -> None:
    keys = Keyring([OLD])
    printed = journal.seal(_records()[0], keys)
    for moved in (
        dataclasses.replace(printed, session_id="ses_b"),
        dataclasses.replace(printed, seq=9),
    ):
        with pytest.raises(journal.MalformedRecord, match="altered or moved"):
            journal.unseal(moved, keys)
    activity = journal.seal(_records()[1], keys)
    swapped = dataclasses.replace(activity, seq=3)
    with pytest.raises(journal.MalformedRecord, match="altered or moved"):
        journal.unseal(swapped, keys)
    with pytest.raises(journal.MalformedRecord, match="not sealed"):
        journal.unseal(_records()[0], keys)
    with pytest.raises(journal.MalformedRecord, match="should be sealed"):
        journal.unseal(_records()[1], keys)
    # Records without anything a handler produced need no key.
    started = journal.record("ses_a", 0, journal.Started(runner="r", attempt=1), 0)
    assert journal.unseal(journal.seal(started, keys), keys) == started
