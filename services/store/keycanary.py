"""The secrets key's canary in the database (``akcore.keycheck`` keeps one in JetStream).

Both are checked as the store starts, and neither is written until both are judged
(``keycheck.admit``, then ``keycheck.settle``, then ``settle``): JetStream can be lost or reset on
its own (its files deleted, a new NATS cluster) while the database keeps every secret var,
journal and event sealed with the old key. With only the JetStream canary, a store then
given another key found no canary, sealed a new one and went on writing what nothing else
could open beside what it could not open itself. (Sealing this one before the other was
judged would have a store given the wrong key, on a database of an earlier version, leave
it sealed with that key.)
"""

from __future__ import annotations

from akcore import keycheck
from akcore.datakey import Keyring
from akcore.errors import AKError
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from .models import KeyCanary

ALTERED = keycheck.CANARY_ALTERED.format(where=f"the database (table {KeyCanary.__tablename__})")
_TABLE = KeyCanary.__table__  # type: ignore[attr-defined]


def read(engine: Engine) -> bytes | None:
    """The canary in the database (None: none)."""
    with engine.connect() as conn:
        return conn.execute(select(_TABLE.c.sealed).where(_TABLE.c.id == 1)).scalar()


async def settle(engine: Engine, keys: Keyring, lost: frozenset[str]) -> None:
    """Opens the database's canary, or seals it (first start, rotation, a key named lost:
    ``keycheck.judge``), once ``keycheck.admit`` passed; KeyMismatch when it does not open."""
    for _ in range(100):  # (stores starting together: a few rounds at most)
        blob = read(engine)
        if not keycheck.judge(keys, blob, lost, ALTERED):
            return
        fresh = keycheck.seal_canary(keys)
        try:
            with engine.begin() as conn:
                if blob is None:
                    conn.execute(insert(_TABLE).values(id=1, sealed=fresh))
                    return
                done = conn.execute(
                    update(_TABLE)
                    .where(_TABLE.c.id == 1, _TABLE.c.sealed == blob)
                    .values(sealed=fresh)
                )
                if done.rowcount == 1:
                    return
        except IntegrityError:  # (another store sealed it first: that one is judged)
            continue
    raise AKError(
        "the secrets key's canary in the database kept changing while this store started: "
        "is something else writing it?"
    )
