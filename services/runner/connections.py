"""What the runner does for ``autokitteh.connections``: JWTs signed with the server's key."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

# The GitHub app's private key (PEM), read from the runner's environment as AutoKitteh's
# server reads it. Workers never get it (they get only what the sandbox lets through).
ENV_GITHUB_PRIVATE_KEY = "GITHUB_PRIVATE_KEY"


class JWTError(Exception):
    """A JWT that cannot be made; the message says why (never the key)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


MAX_LIFETIME = 600  # seconds: what GitHub accepts for an app's JWT


def encode_jwt(payload: dict[str, Any], algorithm: str, app_id: str) -> str:
    """A compact JWT of ``payload`` (``iat``, ``exp`` and ``iss``, integers), signed with
    the GitHub app key, for the app ``app_id`` of the session's own connection only: its
    ``iss`` must be that app, and it lives at most ``MAX_LIFETIME`` seconds."""
    if algorithm != "RS256":
        raise JWTError(f"unsupported signing method: {algorithm}")
    if not all(isinstance(k, str) and type(v) is int for k, v in payload.items()):
        raise JWTError("payload must map claim names to integers")
    if set(payload) - {"iat", "exp", "iss"}:
        raise JWTError("payload may hold only the claims iat, exp and iss")
    if str(payload.get("iss", "")) != app_id:
        raise JWTError(f"the claim iss must be the connection's app_id ({app_id})")
    if payload.get("exp", 0) - payload.get("iat", 0) > MAX_LIFETIME:
        raise JWTError(f"a JWT may live at most {MAX_LIFETIME} seconds (exp - iat)")
    pem = os.environ.get(ENV_GITHUB_PRIVATE_KEY, "")
    if not pem.strip():
        raise JWTError(f"missing GitHub private key (set {ENV_GITHUB_PRIVATE_KEY} on the runner)")
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise JWTError("invalid GitHub private key: not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise JWTError("invalid GitHub private key: not an RSA key")
    header = _b64(json.dumps({"alg": "RS256", "typ": "JWT"}, separators=(",", ":")).encode())
    claims = _b64(json.dumps(payload, separators=(",", ":")).encode())
    signing_input = f"{header}.{claims}".encode()
    signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{claims}.{_b64(signature)}"
