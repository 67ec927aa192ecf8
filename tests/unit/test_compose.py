"""compose.yaml is consistent with the code: commands exist, one image, names resolve.
(`docker compose config` runs too where the docker CLI is installed.)"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from akcore import natsauth, natsserver
from sqlalchemy.engine import make_url

ROOT = Path(__file__).parents[2]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
OURS = {"store", "dispatcher", "runner", "ingress"}


def test_our_services_share_one_image_and_run_their_module() -> None:
    assert OURS <= set(SERVICES)
    assert {SERVICES[s]["image"] for s in OURS} == {"autokitteh-nats"}
    assert (ROOT / "Dockerfile").is_file()
    for name in OURS:
        command = SERVICES[name]["command"]
        assert command[:2] == ["python", "-m"], name
        assert command[2] == f"ak_{name}"
        assert importlib.util.find_spec(f"{command[2]}.__main__") is not None, command


def test_addresses_point_at_services_of_the_file() -> None:
    env = SERVICES["store"]["environment"]
    nats_hosts = [urlparse(u).hostname for u in env["AK_NATS_URL"].split(",")]
    assert len(nats_hosts) == 3 and all(h in SERVICES for h in nats_hosts)
    assert env["AK_NATS__REPLICAS"] == "3"
    db = make_url(_filled(env["AK_DB__DSN"]))
    assert db.drivername == "postgresql+psycopg" and db.host in SERVICES
    assert db.username == SERVICES[db.host]["environment"]["POSTGRES_USER"]
    assert set(SERVICES["runner"]["depends_on"]) >= set(nats_hosts)
    assert SERVICES["store"]["depends_on"]["postgres"] == {"condition": "service_healthy"}


def _filled(text: str) -> str:
    """``text`` with each ``${...}`` of compose's interpolation replaced by ``pw``."""
    return re.sub(r"\$\{[^}]*\}", "pw", text)


def test_the_database_password_comes_from_the_environment_and_only_stores_reach_it() -> None:
    """No fixed password, and PostgreSQL on a network of its own with the stores alone: a
    handler (on a runner) cannot reach it, nor does any other service get its DSN."""
    postgres = SERVICES["postgres"]
    assert postgres["environment"]["POSTGRES_PASSWORD"].startswith("${AK_POSTGRES_PASSWORD:?")
    dsn = SERVICES["store"]["environment"]["AK_DB__DSN"]
    assert ":${AK_POSTGRES_PASSWORD:?" in dsn and make_url(_filled(dsn)).password == "pw"
    assert postgres["networks"] == ["db"] and COMPOSE["networks"]["db"]["internal"] is True
    on_db = {name for name, s in SERVICES.items() if "db" in s.get("networks", [])}
    assert on_db == {"postgres", "store"}
    for name in OURS - {"store"}:
        assert "AK_DB__DSN" not in SERVICES[name]["environment"], name


def test_jaeger_is_an_optional_profile_on_loopback_and_export_is_off_by_default() -> None:
    jaeger = SERVICES["jaeger"]
    assert jaeger["profiles"] == ["jaeger"]
    assert all(p.startswith("127.0.0.1:") for p in jaeger["ports"])
    for name in OURS:
        env = SERVICES[name]["environment"]
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "${OTEL_EXPORTER_OTLP_ENDPOINT:-}"
        assert "jaeger" not in SERVICES[name]["depends_on"]


def test_only_the_runner_runs_as_root_with_few_capabilities() -> None:
    """The image's user is `ak`; the runner is root for its worker sandbox, with only the
    capabilities tests/compose shows it needs (a session, and stopping one)."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "\nUSER ak\n" in dockerfile and dockerfile.count("\nHEALTHCHECK ") == 1
    for name in OURS - {"runner"}:
        assert "user" not in SERVICES[name], name
    runner = SERVICES["runner"]
    assert runner["user"] == "root" and runner["cap_drop"] == ["ALL"]
    caps = {"SETUID", "SETGID", "KILL", "CHOWN", "FOWNER", "DAC_OVERRIDE"}
    assert set(runner["cap_add"]) == caps
    assert runner["security_opt"] == ["no-new-privileges:true"]


def test_ingress_is_published_on_9980() -> None:
    ingress = SERVICES["ingress"]
    assert ingress["environment"]["AK_HTTP__ADDR"] == "0.0.0.0:9980"
    assert ingress["ports"] == ["${AK_INGRESS_PORT:-9980}:9980"]
    assert SERVICES["runner"]["deploy"]["replicas"] >= 2
    assert SERVICES["runner"]["init"] is True  # an init as PID 1 reaps orphaned workers


def test_the_api_needs_tokens_and_the_store_gets_a_first_one() -> None:
    for name in OURS:
        assert SERVICES[name]["environment"]["AK_AUTH__TOKENS"] == "on", name
    store = SERVICES["store"]
    path = store["environment"]["AK_AUTH__BOOTSTRAP_TOKEN_FILE"]
    (secret,) = store["secrets"]
    assert path == f"/run/secrets/{secret}" and secret in COMPOSE["secrets"]
    assert COMPOSE["secrets"][secret]["file"] == "./ak-bootstrap.sha256"  # a digest


def test_nats_nodes_form_one_cluster() -> None:
    conf = COMPOSE["configs"]["nats_conf"]["content"]
    nodes = [n for n in SERVICES if n.startswith("nats-")]
    assert len(nodes) == 3
    for n in nodes:
        assert SERVICES[n]["command"] == ["-c", "/etc/nats/ak.conf", "--server_name", n]
        assert f"nats-route://{n}:6222" in conf
    assert "max_payload: 8MB" in conf and "jetstream" in conf


def test_each_service_has_its_own_nats_user(tmp_path: Path) -> None:
    """Its user and password, which the NATS nodes know: deploy/nats-auth.conf is what
    `ak nats-config` prints, and nats-server accepts the configuration it is part of."""
    passwords = {natsauth.password_variable(s): f"pw-{s}" for s in OURS}
    for name in OURS:
        env = SERVICES[name]["environment"]
        assert env["AK_NATS__USER"] == name
        assert env["AK_NATS__PASSWORD"].startswith(f"${{{natsauth.password_variable(name)}:?")
    auth = COMPOSE["configs"]["nats_auth"]["file"]
    assert (ROOT / auth).read_text() == natsauth.operator_block()
    conf = tmp_path / "ak.conf"
    conf.write_text(COMPOSE["configs"]["nats_conf"]["content"])
    (tmp_path / "auth.conf").write_text((ROOT / auth).read_text())
    for n in (n for n in SERVICES if n.startswith("nats-")):
        assert set(SERVICES[n]["environment"]) == set(passwords)
        targets = {c["source"]: c["target"] for c in SERVICES[n]["configs"]}
        assert targets == {"nats_conf": "/etc/nats/ak.conf", "nats_auth": "/etc/nats/auth.conf"}
    check = [natsserver.binary(), "-c", str(conf), "-t"]
    res = subprocess.run(check, env={**os.environ, **passwords}, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    res = subprocess.run(check, capture_output=True, text=True)  # a password not given
    assert "AK_NATS_INGRESS_PASSWORD" in res.stderr


def _has_compose() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(not _has_compose(), reason="no `docker compose` on this machine")
def test_docker_compose_accepts_the_file() -> None:
    env = {**os.environ, "AK_SECRETS__KEY": "x" * 43 + "=", "AK_POSTGRES_PASSWORD": "pw"}
    env.update({natsauth.password_variable(s): "pw" for s in OURS})
    res = subprocess.run(
        ["docker", "compose", "-f", str(ROOT / "compose.yaml"), "config", "-q"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
