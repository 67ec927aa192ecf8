"""How ``ak up`` sets up API tokens: on, with a first token stored for the local CLI, unless
dev mode on a loopback address leaves them off (``AK_AUTH__TOKENS`` decides)."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from akcore import config, tokens, wire
from akcore.errors import AKError

from . import credentials


def tokens_on(mode: str, host: str, env: dict[str, str]) -> bool:
    """Whether ``/api`` calls need a token. Off only when asked for or by default in dev
    mode on loopback; refused anywhere else."""
    open_ok = mode == "dev" and config.is_loopback(host)
    asked = env.get(config.ENV_AUTH_TOKENS, "").strip().lower()
    if not asked:
        return not open_ok
    on = asked in ("on", "true", "1")
    if not on and not open_ok:
        raise AKError(
            f"{config.ENV_AUTH_TOKENS}={asked} is refused: API tokens may be off only with "
            "--mode dev on a loopback address (127.0.0.1, ::1, localhost)"
        )
    return on


def bootstrap(env: dict[str, str], data: Path, url: str) -> tuple[str, str]:
    """Makes sure the store keeps a token the local CLI has (its entry for ``url``, the
    URL it calls the stack by); says where it is, and returns it too. A token file the
    operator gives (``AK_AUTH__BOOTSTRAP_TOKEN_FILE``) is left to the store (no token)."""
    given = env.get(config.ENV_AUTH_BOOTSTRAP)
    if given:
        return f"the bootstrap token of {given} ({config.ENV_AUTH_BOOTSTRAP})", ""
    token = env.pop(config.ENV_TOKEN, "").strip()
    key = credentials.host_key(url)
    where = f"{config.ENV_TOKEN}"
    if not token:
        token = credentials.load().get(key, "")
        where = f"{credentials.path()} (entry {key})"
    if not token:
        token = tokens.new_token()
        credentials.save(key, token)
        where = f"{credentials.path()} (entry {key}, new)"
    try:
        digest = tokens.bootstrap_digest(token)
    except ValueError as e:
        raise AKError(f"the token of {where} cannot be the first API token: {e}") from None
    # The store is given the digest, never the token itself.
    path = data / "auth" / "bootstrap.sha256"
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(tokens.DIGEST_PREFIX + digest + "\n")
    env[config.ENV_AUTH_BOOTSTRAP] = str(path)
    return f"the CLI's token is in {where}; `ak auth create-token` makes more", token


def refused(url: str, token: str) -> str:
    """Why the stack at ``url`` refuses ``token`` (expired, revoked: the store keeps a
    revoked token's digest refused even when given it again), "" when it takes it or
    cannot be asked."""
    body = wire.encode(wire.StoreRequest(args={}))
    headers = {"Content-Type": "application/msgpack", "Authorization": f"Bearer {token}"}
    req = urllib.request.Request(f"{url}/api/auth.whoami", body, headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5):
            return ""
    except urllib.error.HTTPError as e:
        if e.code != 401:
            return ""
        try:
            return wire.decode(wire.StoreReply, e.read()).error or "refused"
        except Exception:  # (not our answer: nothing to say)
            return ""
    except OSError:
        return ""
