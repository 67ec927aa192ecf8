"""Fixtures: a real nats-server on a random port for each test that asks for one, with the
services' users (akcore.natsauth) as in production, and a test user allowed everything."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from akcore import bus, natsauth, natsserver, subjects
from akcore.config import Settings
from nats.aio.client import Client

# The services' passwords on each test server, by URL (``as_service``).
PASSWORDS: dict[str, dict[str, str]] = {}


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    """The URL with the test user's credentials in it (an admin, for probing). A test
    after which the server logged a permissions violation fails: the services' users must
    be allowed all that they do."""
    passwords = {s: natsauth.new_password() for s in subjects.SERVICES}
    admin = natsauth.new_password()
    auth = natsauth.authorization_block(
        {s: json.dumps(pw) for s, pw in passwords.items()}, {"test": json.dumps(admin)}
    )
    log = tmp_path / "nats-server.log"
    proc, url = natsserver.start(tmp_path / "nats", auth=auth, log_file=log)
    url = url.replace("nats://", f"nats://test:{admin}@")
    PASSWORDS[url] = passwords
    yield url
    del PASSWORDS[url]
    proc.terminate()
    proc.wait(timeout=10)
    violations = [line for line in log.read_text().splitlines() if "Violation" in line]
    assert not violations, "\n".join(violations)


async def connect_as(nats_url: str, service: str) -> Client:
    """A connection to the test server (``nats_url`` of the fixture) as ``service``'s own
    user: its permissions, its inbox prefix."""
    plain = re.sub(r"//[^@/]*@", "//", nats_url)
    return await connect_user(plain, service, PASSWORDS[nats_url][service])


async def connect_user(url: str, service: str, password: str) -> Client:
    """A connection to any server as ``service``'s user, with ``password``."""
    return await bus.connect(
        url,
        f"ak-{service}",
        user=service,
        password=password,
        inbox_prefix=natsauth.inbox_prefix(service),
    )


def as_service(settings: Settings, service: str) -> Settings:
    """``settings`` with the credentials of ``service``'s own user on the test server."""
    password = PASSWORDS[settings.nats_url][service]
    return dataclasses.replace(settings, nats_user=service, nats_password=password)


def pytest_configure(config: pytest.Config) -> None:
    """As root, each run keeps its files in a directory of its own rather than under
    /tmp/pytest-of-root: a root runner makes the way to a stack's data home searchable for
    its workers' users (o+x), and every pytest that starts takes o+x off pytest-of-root again,
    so a second run on the machine would lock the first one's workers out of their code
    (PermissionError as they start). ``--basetemp`` still wins."""
    if os.geteuid() != 0 or config.option.basetemp:
        return
    config.option.basetemp = tempfile.mkdtemp(prefix="ak-pytest-")
    config.stash[_OWN_BASETEMP] = config.option.basetemp


_OWN_BASETEMP = pytest.StashKey[str]()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Removes the run's own directory when every test passed (kept to look at otherwise)."""
    own = session.config.stash.get(_OWN_BASETEMP, "")
    if own and exitstatus == 0:
        shutil.rmtree(own, ignore_errors=True)
