"""Shared test helpers: a real nats-server per test, the real `ak` CLI, a real `ak up` stack."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from akcore import bus, config, natsauth, natsserver
from nats.aio.client import Client

AK = str(Path(sys.executable).parent / "ak")
R = TypeVar("R")
WEBHOOK_RE = re.compile(r'trigger "(\w+)" created, webhook path is "(/webhooks/[0-9a-z]{26})"')


def webhook_paths(deploy_stderr: str) -> dict[str, str]:
    """Trigger name -> webhook path, from what `ak deploy` printed for created triggers."""
    return dict(WEBHOOK_RE.findall(deploy_stderr))


def free_port() -> int:
    return natsserver.free_port()


@dataclass
class Stack:
    """An `ak up --mode dev` stack with its own homes and ports."""

    proc: subprocess.Popen[bytes]
    url: str
    env: dict[str, str]
    log: Path

    def ak(
        self, *args: str, cwd: Path | None = None, check: bool = False, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [AK, *args],
            env=self.env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
            input=input,
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"ak {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
            )
        return res

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def token(self) -> str:
        """The API token `ak up` stored for this stack's CLI (in its credentials file)."""
        creds = Path(self.env["XDG_CONFIG_HOME"]) / "autokitteh" / "credentials"
        key = self.url.split("://", 1)[1]
        return str(yaml.safe_load(creds.read_text())[key])

    def auth(self) -> dict[str, str]:
        """Headers of a raw `/api` call that the CLI would make."""
        return {"Authorization": f"Bearer {self.token}"}

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(
            self.url + path, data=body, method=method, headers=headers or {}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def api(self, op: str, **args: Any) -> Any:
        """The result of API operation ``op`` over HTTP ``/api`` (msgpack, with the token)."""
        status, reply = self.api_reply(op, args)
        assert status == 200 and reply.ok, f"{op}: {status} {reply.error}"
        return reply.result

    def api_reply(self, op: str, args: dict[str, Any]) -> tuple[int, Any]:
        """The HTTP status and the reply (``wire.StoreReply``) of API operation ``op``,
        whatever they are."""
        from akcore import wire

        body = wire.encode(wire.StoreRequest(args))
        headers = {"Content-Type": "application/msgpack", **self.auth()}
        status, _, raw = self.request("POST", f"/api/{op}", body, headers)
        return status, wire.decode(wire.StoreReply, raw)

    def post_json(self, path: str, body: Any) -> tuple[int, str]:
        """POSTs JSON to a webhook: the status and the event id ("" when not accepted)."""
        status, headers, _ = self.request("POST", path, json.dumps(body).encode())
        return status, headers.get("autokitteh-event-id", "")

    def sessions_of_events(
        self, project: str, events: set[str], timeout: float = 60
    ) -> list[dict[str, str]]:
        """Waits until the events have as many COMPLETED sessions as there are events;
        returns every session of those events (callers check there is exactly one each)."""
        deadline = time.monotonic() + timeout
        while True:
            out = self.ak("session", "list", "-p", project, "--page-size", "1000", "-j").stdout
            mine = [s for s in map(json.loads, out.splitlines()) if s["event_id"] in events]
            done = sum(s["state"] == "COMPLETED" for s in mine)
            if done >= len(events):
                return mine
            assert time.monotonic() < deadline, (
                f"{done}/{len(events)} completed\n" + self.output()[-4000:]
            )
            time.sleep(0.3)

    def spans(self, ref: str) -> list[dict[str, Any]]:
        """The spans of a session's trace, as `ak session trace -j` gives them."""
        out = self.ak("session", "trace", ref, "-j", check=True).stdout
        return [json.loads(line) for line in out.splitlines()]

    def deploy(
        self, project_dir: Path, *extra: str
    ) -> tuple[subprocess.CompletedProcess[str], str]:
        """Deploys and returns the result and the first webhook path printed ("" if none)."""
        res = self.ak(
            "deploy", "--manifest", str(project_dir / "autokitteh.yaml"), *extra, check=True
        )
        return res, next(iter(webhook_paths(res.stderr).values()), "")

    def deploy_paths(self, project_dir: Path) -> dict[str, str]:
        """Deploys and returns the webhook path of every trigger it created, by name."""
        return webhook_paths(self.deploy(project_dir)[0].stderr)

    def wait_session(self, ref: str, timeout: float = 30) -> dict[str, str]:
        res = self.ak("session", "watch", ref, "--timeout", f"{timeout}s", "-q")
        assert res.returncode == 0, res.stderr + self.output()[-3000:]
        got: dict[str, str] = json.loads(self.ak("session", "get", ref, "-j", check=True).stdout)
        if got.get("state") == "ERROR":  # shown by pytest when the test then fails
            print(f"session {ref} ended in ERROR: {got.get('error')}\n{got.get('traceback')}")
        return got

    def event(self, event_id: str) -> dict[str, Any] | None:
        """``ak event get -j`` of an event, or None while there is none."""
        res = self.ak("event", "get", event_id, "-j")
        return json.loads(res.stdout) if res.returncode == 0 else None

    def session_of(self, project: str, event_id: str, timeout: float = 20) -> str:
        """The id of the session an event started in ``project`` (waits for it to appear)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            args = ("-p", project, "--event-id", event_id, "-j")
            out = self.ak("session", "list", *args, check=True).stdout
            for line in out.splitlines():
                return str(json.loads(line)["session_id"])
            time.sleep(0.1)
        raise AssertionError(f"no session for {event_id}:\n{self.output()[-3000:]}")

    def pids(self, service: str) -> list[int]:
        """The processes of one service (``ak_<service>``) that `ak up` runs now."""
        return self.processes(f"ak_{service}")

    def processes(self, name: str) -> list[int]:
        """The processes `ak up` runs now whose command line holds ``name`` (a zombie's
        command line is empty: an ended one is not among them)."""
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True
        ).stdout
        found = []
        for pid in out.split():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except FileNotFoundError:  # it exited meanwhile
                continue
            if name.encode() in cmdline:
                found.append(int(pid))
        return found

    def as_service(self, service: str, work: Callable[[Client], Awaitable[R]]) -> R:
        """Runs ``work`` on a connection to this stack's embedded NATS as ``service``'s
        user (what a test reads or sends past the API, as that service would)."""
        found = re.search(r"(nats://\S+) \(embedded", self.output())
        assert found, self.output()[-2000:]
        users = Path(self.env["XDG_DATA_HOME"]) / "autokitteh" / "nats-users"
        password = natsauth.read_password(users / f"{service}.password")

        async def run() -> R:
            nc = await bus.connect(
                found.group(1),
                f"ak-{service}",
                user=service,
                password=password,
                inbox_prefix=natsauth.inbox_prefix(service),
            )
            try:
                return await work(nc)
            finally:
                await nc.close()

        return asyncio.run(run())

    def kill_runner(self) -> None:
        """SIGKILLs the runner process of this stack (`ak up` restarts it)."""
        pids = self.pids("runner")
        assert pids, "no runner process"
        os.kill(pids[0], signal.SIGKILL)

    def wait_output(self, text: str, *args: str, timeout: float = 60) -> None:
        """Polls ``ak <args>`` until its output contains ``text``."""
        wait_until(
            lambda: text in self.ak(*args).stdout,
            f"{text!r} in the output of ak {' '.join(args)}",
            timeout,
        )

    def wait_until(self, probe: Callable[[], object], what: str, timeout: float = 30) -> None:
        wait_until(probe, what, timeout)

    def stop(self, nats_restarted: bool = False) -> int:
        """Stops the stack; fails when its NATS refused a service something (the services'
        users must be allowed all that they do; tests/security's "attacker" may not be).
        ``nats_restarted``: but a reply to a request that came through the server before it
        restarted (a client sends what it had to send once reconnected, and the new server,
        which never saw the request, refuses the reply)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        code = self.proc.wait()
        nats_log = Path(self.env["XDG_DATA_HOME"]) / "autokitteh" / "nats-server.log"
        text = nats_log.read_text(errors="replace") if nats_log.exists() else ""
        refused = [
            x
            for x in text.splitlines()
            if "Violation" in x
            and ':attacker"' not in x
            and not (nats_restarted and 'Publish Violation - Subject "_INBOX.' in x)
        ]
        assert not refused, "\n".join(refused)
        return code


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """Process ``pid`` stopped (SIGSTOP) for the block, continued however it ends. The
    block begins once every thread of it is stopped: a stop is delivered to each thread
    as it next runs, and one busy on another core went on answering requests meanwhile."""
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(lambda: stopped(pid), f"process {pid} stopped")
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def stopped(pid: int) -> bool:
    """Whether every thread of process ``pid`` is stopped (False when it is gone)."""
    threads = _threads(pid)
    return bool(threads) and all(_stopped(pid, t) for t in threads)


def _threads(pid: int) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []


def _stopped(pid: int, thread: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/task/{thread}/stat").read_text()
    except OSError:  # (a thread that ended)
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")


def wait_until(probe: Callable[[], object], what: str, timeout: float = 30) -> None:
    """Polls ``probe`` until it is true: waiting on a state, never on a chosen time (the
    timeout only bounds a test that fails). ``what`` names the state for the failure."""
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, f"waited {timeout:g} s for {what}"
        time.sleep(0.1)


def until_throttled(send: Callable[[int], R], status: Callable[[R], int]) -> list[R]:
    """What ``send(n)`` (n = 0, 1, ...) gave, sent 8 at a time until one has ``status`` 429
    (at most 1,000). Refusal budgets (ingress's throttle: 50 at once, then 10 a second) are
    spent so however slow the machine, as long as it answers 8 requests at once faster than
    10 a second; one by one, a loaded machine's requests may come slower than the refill.
    Answers are in the order sent, not the order the server took them in: count them."""
    got: list[R] = []
    with ThreadPoolExecutor(8) as pool:
        while len(got) < 1000 and not any(status(r) == 429 for r in got[-8:]):
            got += list(pool.map(send, range(len(got), len(got) + 8)))
    return got


def start_stack(
    home: Path, extra_env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> Stack:
    port = free_port()
    env = dict(os.environ)
    env.update(
        {
            "XDG_DATA_HOME": str(home / "data"),
            "XDG_CONFIG_HOME": str(home / "config"),
            "AK_HTTP__ADDR": f"127.0.0.1:{port}",
            "AK_HTTP__SERVICE_URL": f"http://127.0.0.1:{port}",
            "AK_LOG_LEVEL": "INFO",
        }
    )
    for k in ("AK_NATS_URL", "AK_DB__DSN", "AK_NATS__REPLICAS"):
        env.pop(k, None)
    # Workers run on the test's own Python (which has the SDK) unless a test asks for venvs
    # by passing AK_WORKER_PYTHON="": building the default venv takes a while and the network.
    env["AK_WORKER_PYTHON"] = sys.executable
    # The whole suite runs with API tokens on: `ak up` stores one for the CLI.
    env["AK_AUTH__TOKENS"] = "on"
    env.pop("AK_TOKEN", None)
    # Variables a test sets for its handlers (markers in its own directories) reach them,
    # and so do those directories: such handlers run as the test's user, not sandboxed.
    mine = [k for k in extra_env or {} if not k.startswith(config.INTERNAL_ENV_PREFIXES)]
    if mine:
        env[config.ENV_WORKER_ENV] = ",".join(mine)
        env[config.ENV_SANDBOX] = "off"
    env.update(extra_env or {})
    if not env["AK_WORKER_PYTHON"]:
        del env["AK_WORKER_PYTHON"]
    home.mkdir(parents=True, exist_ok=True)
    log = home / "ak-up.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([AK, "up", "--mode", "dev", *args], env=env, stdout=out, stderr=out)
    stack = Stack(proc, f"http://127.0.0.1:{port}", env, log)
    # (a bound, not a measure: the stack takes ~5 s idle, and over a minute on a machine
    # whose two cores run three suites)
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        if "[ak] ready" in stack.output():
            return stack
        if proc.poll() is not None:
            raise RuntimeError("ak up exited:\n" + stack.output())
        time.sleep(0.1)
    stack.stop()
    raise RuntimeError("ak up did not become ready:\n" + stack.output())


def write_project(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root
