"""Kubernetes clients for a ``kubernetes`` connection (``kubernetes ~= 31.0``)."""

from __future__ import annotations

import json
from types import ModuleType

from kubernetes import client, config

from ._helpers import required
from .errors import ConnectionInitError


def kubernetes_client(connection: str) -> ModuleType:
    """The ``kubernetes.client`` module, configured (for the whole process) from the
    connection's kubeconfig, given as JSON text in ``config_file``."""
    (text,) = required(connection, "config_file")
    try:
        config.load_kube_config_from_dict(json.loads(text))
    except config.ConfigException:
        raise ConnectionInitError(connection) from None
    except Exception as e:
        raise RuntimeError(f"Internal error while initializing Kubernetes client: {e}") from e
    return client  # type: ignore[no-any-return]
