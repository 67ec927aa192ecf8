"""Storing an event in ``AK_EVENTS``, however it came in (a webhook, a GitHub or Slack
delivery, ``ak event dispatch`` or ``redispatch``): its data sealed, tried again while
JetStream cannot take it for a reason that may pass, and each way it can fail told apart,
so that whoever sent it knows whether to send it again."""

from __future__ import annotations

from akcore import bus, eventdata, subjects, tracing, wire
from akcore.datakey import Keyring
from akcore.errors import InvalidArgument, Unavailable
from nats.aio.client import Client
from nats.errors import MaxPayloadError
from nats.js.errors import APIError

# Seconds an event may take to be stored while JetStream cannot take it for a reason that
# may pass (a cluster electing a new leader after losing a node), before it is refused.
PUBLISH_WITHIN = 8.0

EVENTS_FULL = (
    "the event stream is full (AK_RETENTION__EVENTS_MAX_BYTES); the event was not accepted, "
    "send it again later"
)

# Room kept beside an event's own bytes in a NATS message: ``event.get`` answers the event
# with its dispatch notes and its view's fields. One of 8 MiB less 256 bytes was kept, and
# then no ``event.get`` of it fit: `ak event get`, `ak event redispatch`, `ak session
# restart` of its sessions and their pages in the web UI failed, every time.
EVENT_ROOM = 64 * 1024


def check_size(nc: Client, size: int) -> None:
    """InvalidArgument unless an event of ``size`` bytes (as sent) leaves ``EVENT_ROOM``
    in a NATS message."""
    limit = nc.max_payload - EVENT_ROOM
    if size > limit:
        raise InvalidArgument(
            f"the event is {size} bytes, over the NATS message limit less what its notes "
            f"need ({limit} bytes, its headers included): send less data (keep big data "
            "elsewhere and send a reference)"
        )


class EventsFull(Unavailable):
    """``AK_EVENTS`` is at its limit: the event was not stored."""


class NotAcknowledged(Unavailable):
    """The event was sent and JetStream did not answer in time: it may still be stored
    (and run), so sending it again may run it twice."""


async def store_event(nc: Client, event: wire.Event, keys: Keyring) -> None:
    """Stores ``event`` (its data sealed), its trace's context with it.

    Raises:
        EventsFull: the stream is full.
        InvalidArgument: the event is over NATS's message limit.
        NotAcknowledged: a try went unanswered and none was acknowledged in time.
        Unavailable: it was not stored (JetStream refused it, or NATS is away).
    """
    data = wire.encode(eventdata.sealed(event, keys))
    headers = tracing.inject({subjects.HDR_MSG_ID: event.event_id})
    check_size(nc, len(data) + sum(len(k) + len(v) + 4 for k, v in headers.items()))
    try:
        await bus.publisher(nc).publish_within(
            PUBLISH_WITHIN, subjects.event_subject(event.project_id, event.event_id), data, headers
        )
    except APIError as e:
        if bus.is_full(e):
            raise EventsFull(EVENTS_FULL) from None
        raise Unavailable(
            f"the event was not stored: JetStream refused it ({e.description or e.code}); "
            "send it again later"
        ) from None
    except MaxPayloadError:  # (so every time: not NATS away, not to be sent again)
        raise InvalidArgument(
            f"the event is over the NATS message limit ({nc.max_payload} bytes, its headers "
            "included): send less data (keep big data elsewhere and send a reference)"
        ) from None
    except TimeoutError:
        raise NotAcknowledged(
            f"the event store did not answer within {PUBLISH_WITHIN:g}s: event "
            f"{event.event_id} may still be stored and run (ak event get {event.event_id}); "
            "check before sending it again"
        ) from None
    except Exception as e:  # NATS away (a reconnect), a connection closed
        # (Its name only: the text of an error of the client is not this module's to vet.)
        raise Unavailable(
            f"the event was not stored: NATS is not available ({type(e).__name__}); send it "
            "again later"
        ) from None
