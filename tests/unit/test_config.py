"""Settings from the environment: defaults, and one clear message for a bad number."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from akcore.config import Settings


def test_numbers_default_and_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AK_RUNNER__CONCURRENCY", "AK_RUNNER__MAX_WAITING", "AK_RUNNER__FORK_WORKERS"):
        monkeypatch.delenv(name, raising=False)
    s = Settings.from_env()
    assert (s.runner_concurrency, s.runner_max_waiting, s.fork_workers) == (32, 200, True)
    monkeypatch.setenv("AK_RUNNER__MAX_WAITING", "0")
    monkeypatch.setenv("AK_RUNNER__FORK_WORKERS", "0")
    s = Settings.from_env()
    assert (s.runner_max_waiting, s.fork_workers) == (0, False)
    monkeypatch.setenv("AK_RUNNER__CONCURRENCY", "0")
    with pytest.raises(ValueError, match="AK_RUNNER__CONCURRENCY must be a whole number of at"):
        Settings.from_env()


def _ak_up(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``ak up --mode dev`` with ``env`` (one refused as it starts returns at once)."""
    return subprocess.run(
        [sys.executable, "-m", "ak_cli.main", "up", "--mode", "dev"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_ak_up_refuses_a_bad_setting_before_starting_anything() -> None:
    env = {**os.environ, "AK_RUNNER__MAX_WAITING": "lots"}
    res = _ak_up(env)
    assert res.returncode == 1
    assert res.stderr == (
        "Error: AK_RUNNER__MAX_WAITING must be a whole number of at least 0, not 'lots'\n"
    )


@pytest.mark.parametrize(
    ("name", "bad", "says"),
    [
        ("AK_JOBS__ACK_WAIT", "abc", "a number of seconds of at least 1, not 'abc'"),
        ("AK_JOBS__ACK_WAIT", "0.5", "a number of seconds of at least 1, not '0.5'"),
        ("AK_NATS__REPLICAS", "x", "a whole number of at least 1, not 'x'"),
        ("AK_NATS__REPLICAS", "7", "a whole number from 1 to 5, not 7"),
        ("AK_WEBHOOKS__RESPONSE_TIMEOUT", "soon", "a number of seconds of at least 1, not 'soon'"),
        ("AK_LOG_LEVEL", "loud", "one of DEBUG, INFO, WARNING, ERROR, CRITICAL, not 'loud'"),
    ],
)
def test_settings_read_as_modules_are_imported_are_checked_too(
    name: str, bad: str, says: str
) -> None:
    """Read where a module is imported, these crashed each service with a traceback as it
    started (`ak up` restarted them for ever): `ak up` now refuses them before starting
    anything, and a service started on its own says it once and exits with code 2."""
    env = {**os.environ, name: bad}
    res = _ak_up(env)
    assert (res.returncode, res.stderr) == (1, f"Error: {name} must be {says}\n")
    res = subprocess.run(
        [sys.executable, "-m", "ak_ingress"],
        env={**env, "AK_NATS_URL": "nats://127.0.0.1:1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2, res.stderr
    assert f"{name} must be {says}" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("name", "bad", "says"),
    [
        (
            "AK_SECRETS__KEY",
            "notakey",
            "a secrets key is not a valid Fernet key (check AK_SECRETS__KEYS, AK_SECRETS__KEY "
            "or the data home's secrets.key)",
        ),
        ("AK_HTTP__ADDR", "nonsense", "AK_HTTP__ADDR must be HOST:PORT (127.0.0.1:9980, :9980), "),
        (
            "AK_DB__DSN",
            "postgres://u:hunter2@db/ak",
            "AK_DB__DSN names a database this store cannot use ('postgres'): sqlite:///PATH or ",
        ),
        ("AK_DB__DSN", "://u:hunter2@", "AK_DB__DSN is not a database URL: sqlite:///PATH or "),
        (
            "AK_DB__DSN",
            "mysql://u:hunter2@db/ak",
            "AK_DB__DSN names a database this store cannot use ('mysql'): sqlite:///PATH or ",
        ),
        (
            "AK_DB__DSN",
            "postgresql+psycopg2://u:hunter2@db/ak",
            "AK_DB__DSN names a database this store cannot use ('postgresql+psycopg2'): ",
        ),
        ("AK_EVENT_LOOP", "bogus", "AK_EVENT_LOOP must be one of uvloop, asyncio, not 'bogus'"),
    ],
)
def test_ak_up_refuses_what_a_service_would_fail_on_at_start(
    name: str, bad: str, says: str, tmp_path: Path
) -> None:
    """Each was found by a service as it started, over and over (a store in a crash loop
    printing a traceback each time, or an event loop setting ignored): `ak up` says it once
    and starts nothing; a database URL's password is never in the message."""
    env = {
        **os.environ,
        name: bad,
        "XDG_DATA_HOME": str(tmp_path),
        "XDG_CONFIG_HOME": str(tmp_path),
    }
    res = _ak_up(env)
    assert res.returncode == 1, res.stderr
    assert res.stderr.startswith(f"Error: {says}") and res.stderr.count("\n") == 1, res.stderr
    assert "hunter2" not in res.stdout + res.stderr


def test_a_store_that_cannot_reach_its_database_says_so_in_a_line(tmp_path: Path) -> None:
    """The database away (or refusing the store): one line, without the URL's password, and
    exit code 1 (what passes: `ak up` restarts it), not a traceback or code 2 (a setting)."""
    env = {
        **os.environ,
        "AK_DB__DSN": "postgresql+psycopg://u:hunter2@127.0.0.1:1/ak",
        "AK_NATS_URL": "nats://127.0.0.1:1",
        "XDG_DATA_HOME": str(tmp_path),
    }
    res = subprocess.run(
        [sys.executable, "-m", "ak_store"], env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 1, res.stderr
    assert "cannot open the database (AK_DB__DSN): " in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and "hunter2" not in res.stderr, res.stderr


def test_settings_read_as_modules_are_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    from akcore import config

    for name in ("AK_JOBS__ACK_WAIT", "AK_NATS__REPLICAS", "AK_WEBHOOKS__RESPONSE_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AK_LOG_LEVEL", "warn")
    got = (config.job_ack_wait(), config.nats_replicas(), config.webhook_timeout())
    assert got + (config.log_level(),) == (15.0, 1, 30.0, "WARNING")
    monkeypatch.setenv("AK_JOBS__ACK_WAIT", "2.5")
    monkeypatch.setenv("AK_NATS__REPLICAS", "3")
    assert (config.job_ack_wait(), config.nats_replicas()) == (2.5, 3)
    monkeypatch.setenv("AK_JOBS__ACK_WAIT", "never")
    assert config.or_default(config.job_ack_wait, 15.0) == 15.0


def test_log_levels_logging_took_are_still_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    """AK_LOG_LEVEL was handed to ``logging`` as it was: FATAL and NOTSET worked, and
    a stack set so must not now be refused by ``ak up``."""
    from akcore import config

    for given, level in (("fatal", "CRITICAL"), ("NOTSET", "DEBUG"), ("Warn", "WARNING")):
        monkeypatch.setenv("AK_LOG_LEVEL", given)
        assert config.log_level() == level
        Settings.from_env()


def test_evaluator_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AK_DISPATCHER__EVALUATOR_MEMORY_MB", raising=False)
    assert Settings.from_env().evaluator_memory_mb == 1024
    monkeypatch.setenv("AK_DISPATCHER__EVALUATOR_MEMORY_MB", "0")
    assert Settings.from_env().evaluator_memory_mb == 0  # no limit
    monkeypatch.setenv("AK_DISPATCHER__EVALUATOR_MEMORY_MB", "1g")
    with pytest.raises(ValueError, match="EVALUATOR_MEMORY_MB must be a whole number"):
        Settings.from_env()


def test_filter_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AK_DISPATCHER__FILTER_BUDGET_MS", raising=False)
    assert Settings.from_env().filter_budget_ms == 100
    monkeypatch.setenv("AK_DISPATCHER__FILTER_BUDGET_MS", "250")
    assert Settings.from_env().filter_budget_ms == 250
    monkeypatch.setenv("AK_DISPATCHER__FILTER_BUDGET_MS", "0")
    with pytest.raises(ValueError, match="FILTER_BUDGET_MS must be a whole number of at least 1"):
        Settings.from_env()


def test_http_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AK_HTTP__MAX_HEADER_BYTES", "AK_HTTP__REQUEST_TIMEOUT", "AK_HTTP__MAX_API_BODY"):
        monkeypatch.delenv(name, raising=False)
    limits = Settings.from_env().http
    assert (limits.max_header_bytes, limits.max_headers) == (65536, 200)
    assert (limits.request_timeout, limits.idle_timeout) == (30, 5)
    assert (limits.max_connections, limits.max_api_body) == (1000, 8 * 1024 * 1024)
    monkeypatch.setenv("AK_HTTP__REQUEST_TIMEOUT", "3")
    assert Settings.from_env().http.request_timeout == 3
    monkeypatch.setenv("AK_HTTP__MAX_API_BODY", "100")
    with pytest.raises(ValueError, match="AK_HTTP__MAX_API_BODY must be a whole number of at"):
        Settings.from_env()


def test_sandbox_settings_default_and_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AK_RUNNER__SANDBOX", "AK_RUNNER__WORKER_UIDS", "AK_RUNNER__WORKER_ENV"):
        monkeypatch.delenv(name, raising=False)
    s = Settings.from_env()
    assert (s.sandbox, s.worker_uids, s.worker_env) == (True, (820000, 829999), ())
    assert (s.worker_memory_mb, s.worker_processes, s.session_timeout) == (1024, 64, 0)
    monkeypatch.setenv("AK_RUNNER__SANDBOX", "off")
    monkeypatch.setenv("AK_RUNNER__WORKER_UIDS", "5000-5009")
    monkeypatch.setenv("AK_RUNNER__WORKER_ENV", "MARKER_DIR,TOKEN")
    s = Settings.from_env()
    assert (s.sandbox, s.worker_uids, s.worker_env) == (
        False,
        (5000, 5009),
        ("MARKER_DIR", "TOKEN"),
    )
    for wrong in ("0-10", f"5000-{2**30}"):  # (ids above are the runner's own: kill_user)
        monkeypatch.setenv("AK_RUNNER__WORKER_UIDS", wrong)
        with pytest.raises(ValueError, match="must be FIRST-LAST user ids from 1000 to 107374"):
            Settings.from_env()
    monkeypatch.setenv("AK_RUNNER__WORKER_UIDS", "5000-5009")
    monkeypatch.setenv("AK_RUNNER__SANDBOX", "no")
    with pytest.raises(ValueError, match="AK_RUNNER__SANDBOX must be one of auto, off"):
        Settings.from_env()


def test_nats_credentials_from_a_password_or_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AK_NATS__USER", "AK_NATS__PASSWORD", "AK_NATS__PASSWORD_FILE"):
        monkeypatch.delenv(name, raising=False)
    assert (Settings.from_env().nats_user, Settings.from_env().nats_password) == ("", "")
    monkeypatch.setenv("AK_NATS__USER", "runner")
    monkeypatch.setenv("AK_NATS__PASSWORD", "pw-given")
    s = Settings.from_env()
    assert (s.nats_user, s.nats_password) == ("runner", "pw-given")
    assert "pw-given" not in repr(s)  # settings may be logged; their password never
    secret = tmp_path / "runner.password"
    secret.write_text("pw-in-file\n")
    monkeypatch.setenv("AK_NATS__PASSWORD_FILE", str(secret))
    with pytest.raises(ValueError, match="set AK_NATS__PASSWORD or AK_NATS__PASSWORD_FILE, not"):
        Settings.from_env()
    monkeypatch.delenv("AK_NATS__PASSWORD")
    assert Settings.from_env().nats_password == "pw-in-file"
    monkeypatch.setenv("AK_NATS__PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match=r"AK_NATS__PASSWORD_FILE: cannot read .*missing: No such"):
        Settings.from_env()


def test_a_service_with_an_unreadable_password_file_says_so() -> None:
    env = {**os.environ, "AK_NATS__PASSWORD_FILE": "/nonexistent/runner.password"}
    env.pop("AK_NATS__PASSWORD", None)
    res = subprocess.run(
        [sys.executable, "-m", "ak_runner"], env=env, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2
    assert "AK_NATS__PASSWORD_FILE: cannot read /nonexistent/runner.password" in res.stderr
    assert "Traceback" not in res.stderr


def test_parking_is_on_after_30_s_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AK_RUNNER__PARK_AFTER", raising=False)
    assert Settings.from_env().park_after == 30.0
    for text, seconds in (
        ("off", 0.0),
        ("0", 0.0),
        ("0.0", 0.0),
        ("1", 1.0),
        ("0.5", 0.5),
        (" 30 ", 30.0),
    ):
        monkeypatch.setenv("AK_RUNNER__PARK_AFTER", text)
        assert Settings.from_env().park_after == seconds
    for bad in ("-1", "soon", "nan", "inf"):
        monkeypatch.setenv("AK_RUNNER__PARK_AFTER", bad)
        with pytest.raises(
            ValueError,
            match=r"AK_RUNNER__PARK_AFTER must be a number of seconds more than 0, or off "
            rf"\(or 0\), not '{bad}'",
        ):
            Settings.from_env()


def test_build_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AK_RUNNER__BUILD_CACHE_MB", "AK_RUNNER__BUILD_CACHE_IDLE"):
        monkeypatch.delenv(name, raising=False)
    s = Settings.from_env()
    assert (s.build_cache_mb, s.build_cache_idle) == (1024, 86400.0)
    monkeypatch.setenv("AK_RUNNER__BUILD_CACHE_IDLE", "off")
    monkeypatch.setenv("AK_RUNNER__BUILD_CACHE_MB", "64")
    assert (Settings.from_env().build_cache_mb, Settings.from_env().build_cache_idle) == (64, 0)
    monkeypatch.setenv("AK_RUNNER__BUILD_CACHE_MB", "10")
    with pytest.raises(ValueError, match="BUILD_CACHE_MB must be a whole number of at least 64"):
        Settings.from_env()


def test_project_environments_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AK_RUNNER__VENVS_MB", "AK_RUNNER__VENVS_IDLE"):
        monkeypatch.delenv(name, raising=False)
    s = Settings.from_env()
    assert (s.venvs_mb, s.venvs_idle) == (10240, 0)
    monkeypatch.setenv("AK_RUNNER__VENVS_IDLE", "604800")
    monkeypatch.setenv("AK_RUNNER__VENVS_MB", "2048")
    assert (Settings.from_env().venvs_mb, Settings.from_env().venvs_idle) == (2048, 604800)
    monkeypatch.setenv("AK_RUNNER__VENVS_MB", "0")
    with pytest.raises(ValueError, match="VENVS_MB must be a whole number of at least 1"):
        Settings.from_env()


def test_worker_temp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AK_RUNNER__WORKER_TEMP", raising=False)
    assert Settings.from_env().worker_temp == "memory"
    monkeypatch.setenv("AK_RUNNER__WORKER_TEMP", "host")
    assert Settings.from_env().worker_temp == "host"
    monkeypatch.setenv("AK_RUNNER__WORKER_TEMP", "disk")
    with pytest.raises(ValueError, match="AK_RUNNER__WORKER_TEMP must be one of memory, host"):
        Settings.from_env()
