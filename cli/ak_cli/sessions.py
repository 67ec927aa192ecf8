"""``ak session ...``: list, get, prints, log, watch."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Annotated, Any

import typer
from akcore import timefmt, wire
from akcore.errors import AKError

from . import client
from .render import emit, emit_list
from .sessionlog import entry_text, log_entries
from .tracetree import render as render_trace

app = typer.Typer(help="Sessions: runs of a handler.", no_args_is_help=True)

SESSION_KEYS = [
    "session_id",
    "project",
    "deployment_id",
    "build_id",
    "event_id",
    "entrypoint",
    "state",
    "error",
    "created_at",
    "updated_at",
]
JsonOpt = Annotated[bool, typer.Option("--json", "-j", help="One JSON object per line.")]
Ref = Annotated[str, typer.Argument(help="A session id, or a project for its newest session.")]


@app.command("list")
def list_(
    project: Annotated[str, typer.Option("--project", "-p")] = "",
    deployment: Annotated[str, typer.Option("--deployment-id", "-d")] = "",
    event_id: Annotated[str, typer.Option("--event-id")] = "",
    state: Annotated[str, typer.Option("--state-type", "--state", "-s")] = "",
    page_size: Annotated[int, typer.Option("--page-size", help="At most 1000.")] = 50,
    skip: Annotated[int, typer.Option("--skip-rows")] = 0,
    page_token: Annotated[str, typer.Option("--next-page-token")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Sessions, newest first, a page at a time: when there are more, the last line is
    ``next-page-token: T`` (on stderr with --json); pass it back with --next-page-token."""
    page = client.call(
        "session.list",
        project=project,
        deployment=deployment,
        event_id=event_id,
        state=state,
        page_size=page_size,
        skip=skip,
        page_token=page_token,
    )
    emit_list(page["sessions"], as_json, SESSION_KEYS)
    if page["next_page_token"]:
        typer.echo(f"next-page-token: {page['next_page_token']}", err=as_json)


@app.command()
def get(ref: Ref, as_json: JsonOpt = False) -> None:
    """One session."""
    emit(client.call("session.get", session=ref), as_json, SESSION_KEYS, label="session")


def print_line(rec: dict[str, Any], no_timestamps: bool) -> str:
    text = rec["data"].get("text", "")
    return text if no_timestamps else f"[{timefmt.go_string(rec['t_us'])}] {text}"


@app.command()
def prints(
    ref: Ref,
    no_timestamps: Annotated[bool, typer.Option("--no-timestamps", "-n")] = False,
    as_json: JsonOpt = False,
) -> None:
    """What the session printed, in order."""
    for rec in client.records(ref, kinds=["print"]):
        if as_json:
            typer.echo(
                json.dumps(
                    {
                        "t": timefmt.rfc3339(rec["t_us"]),
                        "print": {"text": rec["data"].get("text", "")},
                    }
                )
            )
        else:
            typer.echo(print_line(rec, no_timestamps))


def _show_log(records: Iterable[dict[str, Any]], as_json: bool, no_timestamps: bool) -> int:
    """Prints the records' log entries; returns how many records there were."""
    n = 0
    for rec in records:
        n += 1
        for e in log_entries(rec):
            if as_json:
                typer.echo(json.dumps(e, separators=(",", ":")))
            else:
                text = entry_text(e)
                typer.echo(text if no_timestamps else f"[{e['t']}] {text}")
    return n


@app.command()
def log(
    ref: Ref,
    no_timestamps: Annotated[bool, typer.Option("--no-timestamps", "-n")] = False,
    as_json: JsonOpt = False,
) -> None:
    """The session's history so far: state changes, activity calls, sleeps and prints."""
    _show_log(client.records(ref), as_json, no_timestamps)


@app.command()
def trace(ref: Ref, as_json: JsonOpt = False) -> None:
    """The session's trace: every span from webhook to handler steps, with durations."""
    res = client.call("session.trace", session=ref)
    if res.get("more"):
        typer.echo(f"(the first {len(res['spans'])} spans; {res['more']} more not shown)", err=True)
    if as_json:
        for span in res["spans"]:
            typer.echo(json.dumps(span))
        return
    if not res["spans"]:
        typer.echo(f"no spans recorded for {res['session_id']} (yet)", err=True)
        return
    typer.echo(f"trace {res['spans'][0]['trace_id']}")
    for line in render_trace(res["spans"]):
        typer.echo(line)


@app.command()
def watch(
    ref: Ref,
    end_state: Annotated[str, typer.Option("--end-state", "-e")] = "",
    timeout: Annotated[str, typer.Option("--timeout", "-t")] = "0",
    poll_interval: Annotated[str, typer.Option("--poll-interval", "-i")] = "250ms",
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    no_timestamps: Annotated[bool, typer.Option("--no-timestamps", "-n")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Follows a session until it ends (or reaches --end-state), printing its history."""
    limit = client.parse_duration(timeout)
    interval = client.parse_duration(poll_interval)
    want = end_state.upper()
    deadline = time.monotonic() + limit if limit else None
    shown = 0
    sid = client.call("session.get", session=ref)["session_id"]
    while True:
        s = client.call("session.get", session=sid)
        if not quiet:  # quiet: the state is all it needs
            shown += _show_log(client.records(sid, skip=shown), as_json, no_timestamps)
        if s["state"] in wire.FINAL_STATES or (want and s["state"] == want):
            if want and s["state"] != want:
                raise AKError(f"session ended in state {s['state']}, not {want}")
            return
        if deadline is not None and time.monotonic() > deadline:
            raise AKError(
                f"timed out after {timeout} waiting for session {sid} (state {s['state']})"
            )
        time.sleep(interval)


def _inputs(pairs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise AKError(f"invalid input {pair!r}: use name=<JSON value>")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError as e:
            raise AKError(
                f"input {name!r} is not JSON ({e.msg}); quote strings: {name}='\"text\"'"
            ) from None
    return out


@app.command()
def start(
    entrypoint: Annotated[str, typer.Option("--entrypoint", "-p", help="file.py:function")],
    deployment_id: Annotated[str, typer.Option("--deployment-id", "-d")] = "",
    project: Annotated[str, typer.Option("--project", "-o")] = "",
    build_id: Annotated[str, typer.Option("--build-id", "-b")] = "",
    inputs: Annotated[list[str] | None, typer.Option("--input", "-I", help="name=JSON")] = None,
    memo: Annotated[list[str] | None, typer.Option("--memo", "-m", help="key=value")] = None,
    durable: Annotated[bool, typer.Option("--durable", "-D")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Start a session by hand (non-durable unless --durable)."""
    if not deployment_id and not project:
        raise AKError("at least one of the flags in the group [deployment-id project] is required")
    memo_map = dict(m.partition("=")[::2] for m in memo or [])
    res = client.call(
        "session.start",
        entrypoint=entrypoint,
        deployment_id=deployment_id,
        project=project,
        build_id=build_id,
        inputs=_inputs(inputs or []),
        memo=memo_map,
        durable=durable,
    )
    typer.echo(json.dumps(res) if as_json else f"session_id: {res['session_id']}")


@app.command()
def stop(
    ref: Ref,
    reason: Annotated[str, typer.Option("--reason", "-r")] = "",
    force: Annotated[bool, typer.Option("--force", "-f")] = False,
) -> None:
    """Stop a running session wherever it is waiting; it ends STOPPED with the reason."""
    client.call("session.stop", session=ref, reason=reason, force=force)


@app.command()
def restart(ref: Ref, as_json: JsonOpt = False) -> None:
    """Start a new session with the same deployment, entry point and inputs."""
    res = client.call("session.restart", session=ref)
    typer.echo(json.dumps(res) if as_json else f"session_id: {res['session_id']}")
