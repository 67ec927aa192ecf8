"""The running compose stack as the tests see it: the `ak` CLI against its published port,
and `docker compose` for what an operator does to its containers."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers import AK, webhook_paths

OURS = ("store", "dispatcher", "runner", "ingress")


@dataclass
class ComposeStack:
    url: str
    work: Path
    project: str
    files: list[str]
    env: dict[str, str]

    @classmethod
    def from_env(cls) -> ComposeStack:
        work = Path(os.environ["AK_COMPOSE_WORK"])
        url = os.environ["AK_COMPOSE_URL"]
        env = dict(os.environ)
        env.update({"XDG_CONFIG_HOME": str(work / "cli"), "AK_HTTP__SERVICE_URL": url})
        env.pop("AK_TOKEN", None)
        return cls(
            url=url,
            work=work,
            project=os.environ["AK_COMPOSE_PROJECT"],
            files=os.environ["AK_COMPOSE_FILES"].split(),
            env=env,
        )

    # --- the user's side: ak and HTTP ---------------------------------------------------

    def ak(
        self, *args: str, check: bool = False, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [AK, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"ak {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
            )
        return res

    def login(self) -> None:
        """As docs/deploy.md says: the bootstrap token from the file compose gave the store."""
        token = (self.work / "ak-bootstrap.token").read_text().strip()
        self.ak("auth", "set-token", token, check=True)

    def deploy(self, manifest: Path) -> dict[str, str]:
        res = self.ak("deploy", "--manifest", str(manifest), check=True, timeout=300)
        return webhook_paths(res.stderr)

    def post(self, path: str, body: Any) -> tuple[int, str]:
        """POSTs JSON to a webhook: the status and the event id ("" when not accepted)."""
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.headers.get("autokitteh-event-id", "")
        except urllib.error.HTTPError as e:
            return e.code, ""
        except OSError:
            return 0, ""  # refused or reset while a container restarts: not accepted

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=5) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def wait_ready(self, timeout: float = 120) -> None:
        """Until ingress answers /readyz: every service answers over NATS. (Its published
        port is Docker's choice, anew when the container starts again.)"""
        deadline = time.monotonic() + timeout
        url = "http://" + self.ingress_address()
        if url != self.url:  # the CLI keeps its token per address
            self.url = self.env["AK_HTTP__SERVICE_URL"] = url
            self.login()
        while not self.ready():
            assert time.monotonic() < deadline, "the stack never became ready\n" + self.logs()
            time.sleep(0.5)

    def sessions(self, project: str) -> list[dict[str, Any]]:
        out = self.ak(
            "session", "list", "-p", project, "--page-size", "1000", "-j", check=True
        ).stdout
        return [json.loads(line) for line in out.splitlines()]

    def session_of(self, project: str, event_id: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            out = self.ak("session", "list", "-p", project, "--event-id", event_id, "-j").stdout
            for line in out.splitlines():
                return str(json.loads(line)["session_id"])
            assert time.monotonic() < deadline, f"no session for {event_id}\n" + self.logs()
            time.sleep(0.3)

    def wait_session(self, ref: str, timeout: float = 120) -> dict[str, Any]:
        res = self.ak(
            "session", "watch", ref, "--timeout", f"{timeout:.0f}s", "-q", timeout=timeout + 30
        )
        assert res.returncode == 0, res.stderr + self.logs()
        return json.loads(self.ak("session", "get", ref, "-j", check=True).stdout)  # type: ignore[no-any-return]

    def prints(self, ref: str) -> list[str]:
        return self.ak("session", "prints", ref, "-n", check=True).stdout.splitlines()

    # --- the operator's side: docker compose -----------------------------------------

    def compose(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        cmd = [
            "docker",
            "compose",
            "-p",
            self.project,
            *self.files,
            "--env-file",
            str(self.work / ".env"),
            *args,
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
        return res

    def docker(self, *args: str, check: bool = True) -> str:
        res = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
        if check and res.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)} failed:\n{res.stderr}")
        return res.stdout

    def ingress_address(self) -> str:
        return self.compose("port", "ingress", "9980").stdout.strip()

    def containers(self, service: str) -> list[str]:
        return self.compose("ps", "-q", service).stdout.split()

    def run_in(
        self, service: str, *cmd: str, index: int = 1, user: str = ""
    ) -> subprocess.CompletedProcess[str]:
        as_user = ["--user", user] if user else []
        return self.compose(
            "exec", "-T", "--index", str(index), *as_user, service, *cmd, check=False
        )

    def crash(self, container: str) -> None:
        """Kills the container's first process from the host, as a crash would (not `docker
        kill`, after which Docker does not restart a container)."""
        pid = int(self.docker("inspect", "-f", "{{.State.Pid}}", container).strip())
        assert pid > 0, f"{container} is not running"
        os.kill(pid, 9)

    def wait_healthy(self, timeout: float = 180) -> None:
        """Until every container of the stack runs and is healthy."""
        deadline = time.monotonic() + timeout
        while True:
            rows = [
                json.loads(line)
                for line in self.compose("ps", "-a", "--format", "json").stdout.splitlines()
                if line.strip()
            ]
            rows = [r for row in rows for r in (row if isinstance(row, list) else [row])]
            bad = [
                r["Name"]
                for r in rows
                if r["State"] != "running" or r.get("Health", "") not in ("", "healthy")
            ]
            if rows and not bad:
                return
            assert time.monotonic() < deadline, f"not healthy: {bad}\n" + self.logs()
            time.sleep(1)

    def logs(self, tail: int = 40) -> str:
        return self.compose("logs", "--no-color", "--tail", str(tail), check=False).stdout
