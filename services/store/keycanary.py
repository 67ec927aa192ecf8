"""The secrets key's canary in the database (``akcore.keycheck`` keeps one in JetStream).

Both are checked as the store starts, and neither is written until both are judged
(``keycheck.admit``, then ``keycheck.settle``, then ``settle``): JetStream can be lost or
reset on its own (its files deleted, a new NATS cluster) while the database keeps every
secret var, journal and event sealed with the old key. With only the JetStream canary, a
store then given another key found no canary, sealed a new one and went on writing what
nothing else could open beside what it could not open itself. (Sealing this one before the other was
judged would have a store given the wrong key, on a database of an earlier version, leave
it sealed with that key.)
"""

from __future__ import annotations

from akcore import keycheck
from akcore.datakey import Keyring
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from .models import KeyCanary

WHERE = f"the database (table {KeyCanary.__tablename__})"
ALTERED = keycheck.CANARY_ALTERED.format(where=WHERE)
_TABLE = KeyCanary.__table__  # type: ignore[attr-defined]


def read(engine: Engine) -> bytes | None:
    """The canary in the database (None: none)."""
    with engine.connect() as conn:
        return conn.execute(select(_TABLE.c.sealed).where(_TABLE.c.id == 1)).scalar()


async def settle(engine: Engine, keys: Keyring, lost: frozenset[str]) -> None:
    """The store's part for the database's canary (``keycheck.seal_when_due``)."""

    async def unchanged() -> tuple[bytes | None, bytes | None]:
        blob = read(engine)
        return blob, blob

    async def swap(seen: bytes | None, fresh: bytes) -> bool:
        try:
            with engine.begin() as conn:
                if seen is None:
                    conn.execute(insert(_TABLE).values(id=1, sealed=fresh))
                    return True
                done = conn.execute(
                    update(_TABLE)
                    .where(_TABLE.c.id == 1, _TABLE.c.sealed == seen)
                    .values(sealed=fresh)
                )
                return bool(done.rowcount == 1)
        except IntegrityError:  # (another store sealed it first: that one is judged)
            return False

    await keycheck.seal_when_due(keys, lost, ALTERED, WHERE, unchanged, swap)
