"""`ak up`'s `Sandbox:` line: how handlers are boxed in, said once; and the network fence
it puts up (as the runners do), or why not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from ak_cli.up import _sandbox_note
from akcore import netfence
from akcore.errors import AKError


@pytest.fixture
def fences(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int, tuple[int, ...]]]:
    """What `ak up` asked of nftables (nothing reaches the machine's real rules)."""
    asked: list[tuple[str, int, int, tuple[int, ...]]] = []

    def put_up(first: int, last: int, ports: tuple[int, ...]) -> tuple[int, ...]:
        asked.append(("up", first, last, tuple(ports)))
        return (*ports, 7777)  # (and another live stack's port)

    monkeypatch.setattr(netfence, "put_up", put_up)

    def take_down(first: int, last: int) -> list[int]:
        asked.append(("down", first, last, ()))
        return []

    monkeypatch.setattr(netfence, "take_down", take_down)
    for name in ("AK_RUNNER__SANDBOX", "AK_RUNNER__NETWORK_FENCE", "AK_RUNNER__HOST_PORTS"):
        monkeypatch.delenv(name, raising=False)
    return asked


def test_a_runner_that_is_not_root_says_handlers_run_as_its_user(
    monkeypatch: pytest.MonkeyPatch, fences: list[object]
) -> None:
    monkeypatch.setenv("AK_RUNNER__SESSION_TIMEOUT", "30")
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert _sandbox_note("127.0.0.1:9980") == (
        "handlers run as this user: `ak up` is not root, so workers cannot get users of "
        "their own; limits: memory 1024 MiB, session timeout 30 s"
    )
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert _sandbox_note("127.0.0.1:9980").startswith(
        "workers run as user ids 820000-829999; limits:"
    )
    monkeypatch.setenv("AK_RUNNER__SANDBOX", "off")
    assert _sandbox_note("127.0.0.1:9980").startswith(
        "off (AK_RUNNER__SANDBOX=off): handlers run as this user"
    )


def test_as_root_it_fences_handlers_off_this_host_but_dns_http_and_the_ports_named(
    monkeypatch: pytest.MonkeyPatch, fences: list[object]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("AK_RUNNER__HOST_PORTS", "5432, 6379")
    note = _sandbox_note("0.0.0.0:9973")
    assert note.endswith(
        "; network: handlers reach no port of this host but 53, 5432, 6379, 9973, 7777"
    )
    assert fences == [("up", 820000, 829999, (53, 5432, 6379, 9973))]


def test_a_fence_that_cannot_be_put_up_is_said_or_stops_ak_up_when_required(
    monkeypatch: pytest.MonkeyPatch, fences: list[object]
) -> None:
    def refuse(first: int, last: int, ports: object) -> None:
        raise netfence.FenceError("the nft command is missing (install Debian's nftables package)")

    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(netfence, "put_up", refuse)
    assert _sandbox_note("127.0.0.1:9980").endswith(
        "; network: handlers MAY CONNECT TO THIS HOST: the nft command is missing (install "
        "Debian's nftables package) (docs/security.md, item 7)"
    )
    monkeypatch.setenv("AK_RUNNER__NETWORK_FENCE", "required")
    with pytest.raises(AKError, match=r"handlers cannot be fenced off this host: the nft command"):
        _sandbox_note("127.0.0.1:9980")


def test_with_the_fence_off_an_earlier_stacks_fence_is_taken_down(
    monkeypatch: pytest.MonkeyPatch, fences: list[object]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setenv("AK_RUNNER__NETWORK_FENCE", "off")
    assert _sandbox_note("127.0.0.1:9980").endswith(
        "; network: handlers may connect to this host (AK_RUNNER__NETWORK_FENCE=off)"
    )
    assert fences == [("down", 820000, 829999, ())]
    monkeypatch.setattr(netfence, "take_down", lambda first, last: [4242])
    assert _sandbox_note("127.0.0.1:9980").endswith(
        "; network: AK_RUNNER__NETWORK_FENCE=off, but the fence of these user ids stays for the "
        "other stacks that use them (processes 4242): give this one other AK_RUNNER__WORKER_UIDS"
    )


def test_it_says_whether_handlers_see_the_unix_sockets_of_this_hosts_services(
    monkeypatch: pytest.MonkeyPatch, fences: list[object]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(netfence, "hidden", lambda python, env: ("/run", ""))
    assert "; this host's Unix sockets in /run hidden; network: " in _sandbox_note("127.0.0.1:9980")
    why = "the runner may not make mount namespaces (no CAP_SYS_ADMIN)"
    monkeypatch.setattr(netfence, "hidden", lambda python, env: ("", why))
    assert f"; this host's Unix sockets in /run SEEN by handlers: {why}; network: " in (
        _sandbox_note("127.0.0.1:9980")
    )


def test_hiding_needs_the_right_to_make_mount_namespaces_and_nothing_workers_need_in_there(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    if os.geteuid() != 0:
        assert netfence.hidden() == (
            "",
            "the runner may not make mount namespaces (no CAP_SYS_ADMIN)",
        )
        return
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert netfence.hidden() == ("/run", "")  # (tried in a process of its own)
    env = {"PATH": "/usr/bin:/run/current-system/sw/bin", "LANG": "C.UTF-8"}
    assert netfence.hidden("", env) == (
        "",
        "workers need PATH=/run/current-system/sw/bin, which is in it",
    )
    monkeypatch.setenv("XDG_DATA_HOME", "/run/somewhere")
    assert netfence.hidden() == ("", "workers need the data home, which is in it")


@pytest.mark.skipif(os.geteuid() != 0, reason="as root, with the right to make namespaces")
def test_hiding_that_cannot_be_done_is_said_not_asked_of_workers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """CAP_SYS_ADMIN is not enough (an AppArmor profile or a seccomp filter may refuse
    mount): it is tried, and what went wrong is said."""
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.setattr(netfence, "HIDDEN", str(tmp_path / "not-a-directory"))
    (tmp_path / "not-a-directory").write_text("")
    folder, why = netfence.hidden()
    assert folder == "" and why == f"there is no {tmp_path}/not-a-directory"
    monkeypatch.setattr(netfence, "_TRY", "import sys; sys.exit('mount: Permission denied')")
    monkeypatch.setattr(netfence, "HIDDEN", "/run")
    assert netfence.hidden() == ("", "mount: Permission denied")
