"""AWS clients for an ``aws`` connection (``boto3 ~= 1.35``)."""

from __future__ import annotations

from typing import Any

import boto3

from ._helpers import var
from .connections import check_connection_name


def boto3_client(connection: str, service: str, region: str = "", **kwargs: Any) -> Any:
    """A boto3 client of ``service`` with the connection's keys (``AccessKeyID``,
    ``SecretKey``, ``Token``) and region (``Region``, unless ``region`` is given). Keys not
    set are left to boto3's own credential chain, as AutoKitteh does."""
    check_connection_name(connection)
    if not service:
        raise ValueError("AWS service name is required")
    return boto3.client(
        service,
        region_name=region or var(connection, "Region") or None,
        aws_access_key_id=var(connection, "AccessKeyID") or None,
        aws_secret_access_key=var(connection, "SecretKey") or None,
        aws_session_token=var(connection, "Token") or None,
        **kwargs,
    )
