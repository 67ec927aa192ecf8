"""The services' NATS users: what each may call, and the passwords `ak up` makes."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from akcore import natsauth, natsserver, subjects


def test_each_service_may_call_only_its_operations() -> None:
    assert natsauth.may_call("ingress", "ak.store.var.get")  # the CLI's, forwarded
    assert not natsauth.may_call("ingress", "ak.store.session.env")  # a session's secrets
    assert natsauth.may_call("runner", "ak.store.session.env")
    assert not natsauth.may_call("runner", "ak.store.var.get")
    assert not natsauth.may_call("runner", "ak.runner.pyenv.prepare")
    assert natsauth.may_call("ingress", "ak.runner.pyenv.prepare")
    assert not natsauth.may_call("store", "ak.store.var.get")


def test_passwords_are_owner_only_and_kept(tmp_path: Path) -> None:
    folder = tmp_path / "nats-users"
    files = natsauth.ensure_passwords(folder)
    assert set(files) == set(subjects.SERVICES)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    first = {s: natsauth.read_password(p) for s, p in files.items()}
    for path in files.values():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(set(first.values())) == len(first) and all(len(p) >= 40 for p in first.values())
    again = natsauth.ensure_passwords(folder)  # a second `ak up` uses the same ones
    assert {s: natsauth.read_password(p) for s, p in again.items()} == first


def test_no_user_for_an_unknown_service() -> None:
    with pytest.raises(ValueError, match="no NATS permissions for 'cli'"):
        natsauth.permissions("cli")


def test_new_passwords_parse_as_nats_server_reads_them_from_its_environment(
    tmp_path: Path,
) -> None:
    """nats-server reads ``$AK_NATS_<SERVICE>_PASSWORD`` as a configuration value: a password
    starting with "-7D" stopped the compose cluster's nodes from starting."""
    conf = tmp_path / "ak.conf"
    conf.write_text(natsauth.operator_block())
    check = [natsserver.binary(), "-c", str(conf), "-t"]
    for _ in range(10):
        env = dict(line.split("=", 1) for line in natsauth.env_lines().splitlines())
        assert all(len(p) == 44 and p.isalnum() and p[0].isalpha() for p in env.values())
        res = subprocess.run(check, env={**os.environ, **env}, capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
    env[natsauth.password_variable("store")] = "-7D" + "x" * 40  # token_urlsafe gave that
    res = subprocess.run(check, env={**os.environ, **env}, capture_output=True, text=True)
    assert res.returncode != 0


def _allowed(patterns: tuple[str, ...], subject: str) -> bool:
    """Whether NATS lets ``subject`` through an allow-list (``*``: one token; ``>``: the
    rest)."""

    def match(pattern: str) -> bool:
        want, have = pattern.split("."), subject.split(".")
        for i, token in enumerate(want):
            if token == ">":
                return len(have) > i
            if i >= len(have) or (token != "*" and token != have[i]):
                return False
        return len(want) == len(have)

    return any(match(p) for p in patterns)


def test_the_dispatcher_reads_consumers_of_deferred_events_the_store_makes() -> None:
    """A dispatcher's user that could make or change a consumer could give it any
    configuration: a push consumer delivering what it publishes to ``ak.deferred.x`` on to
    any subject (past its publish permissions), a window of one event. The store makes
    them (``deferred.consumer``); the dispatcher reads and acks them."""
    allowed = natsauth.permissions("dispatcher").publish
    create = "$JS.API.CONSUMER.CREATE"
    assert _allowed(allowed, "ak.store.deferred.consumer")
    assert _allowed(allowed, "$JS.API.CONSUMER.MSG.NEXT.AK_DEFERRED.deferred-trg_1")
    assert _allowed(allowed, "$JS.API.CONSUMER.INFO.AK_DEFERRED.deferred-trg_1")
    assert _allowed(allowed, "$JS.ACK.AK_DEFERRED.deferred-trg_1.1.2.3.4.5.0")
    assert not _allowed(allowed, f"{create}.AK_DEFERRED.deferred-trg_1.ak.deferred.trg_1")
    assert not _allowed(allowed, f"{create}.AK_DEFERRED.all")
    assert not _allowed(allowed, f"{create}.AK_EVENTS.x.ak.events.>")
    assert not _allowed(allowed, "$JS.API.CONSUMER.DURABLE.CREATE.AK_DEFERRED.x")
    assert not _allowed(allowed, "$JS.API.CONSUMER.DELETE.AK_DEFERRED.deferred-trg_1")
    assert not _allowed(allowed, "$JS.API.CONSUMER.MSG.NEXT.AK_EVENTS.store-events")
    store = natsauth.permissions("store").publish
    assert _allowed(store, f"{create}.AK_DEFERRED.deferred-trg_1.ak.deferred.trg_1")
    assert not _allowed(store, f"{create}.AK_EVENTS.x.ak.events.x")
    store = natsauth.permissions("store").publish
    assert _allowed(store, "$JS.API.CONSUMER.DELETE.AK_DEFERRED.dispatcher-deferred")
    assert not _allowed(store, "$JS.API.CONSUMER.DELETE.AK_EVENTS.dispatcher")
