"""``ak session ...``: list, get, prints, log, watch, start, stop, restart, delete, and the
print log as a file."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from akcore import timefmt, wire
from akcore.errors import AKError, InvalidArgument, NotFound

from . import client
from .options import FailOpt, silent_unless
from .render import emit, emit_list, terminal_safe
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
JsonOpt = Annotated[
    bool, typer.Option("--json", "-j", help="Print one JSON object per line instead of text.")
]
Ref = Annotated[str, typer.Argument(help="A session ID, or a project for its newest session.")]
NoTimestampsOpt = Annotated[
    bool, typer.Option("--no-timestamps", "-n", help="Leave out each line's time.")
]
PollOpt = Annotated[
    str, typer.Option("--poll-interval", "-i", help="How often to look for more (e.g. 250ms).")
]
EndPrintOpt = Annotated[
    str,
    typer.Option("--end-print-re", "-r", help="Stop after the first print this regex matches."),
]


@app.command("list")
def list_(
    project: Annotated[str, typer.Option("--project", "-p", help="Project name or ID.")] = "",
    deployment: Annotated[
        str, typer.Option("--deployment-id", "-d", help="Only this deployment's sessions.")
    ] = "",
    event_id: Annotated[
        str, typer.Option("--event-id", help="Only the sessions this event started.")
    ] = "",
    state: Annotated[
        str,
        typer.Option(
            "--state-type",
            "--state",
            "-s",
            help="Only sessions in this state: CREATED, RUNNING, COMPLETED, ERROR, STOPPED.",
        ),
    ] = "",
    page_size: Annotated[
        int, typer.Option("--page-size", help="Sessions per page (at most 1000).")
    ] = 50,
    skip: Annotated[int, typer.Option("--skip-rows", help="Sessions to skip first.")] = 0,
    page_token: Annotated[
        str, typer.Option("--next-page-token", help="Continue after a previous page.")
    ] = "",
    as_json: JsonOpt = False,
) -> None:
    """Sessions, newest first, a page at a time. When there are more, the last line is
    "next-page-token: T" (on stderr with --json): pass T to --next-page-token."""
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
    text = terminal_safe(rec["data"].get("text", ""))
    return text if no_timestamps else f"[{timefmt.go_string(rec['t_us'])}] {text}"


def _print_json(rec: dict[str, Any]) -> str:
    return json.dumps(
        {"t": timefmt.rfc3339(rec["t_us"]), "print": {"text": rec["data"].get("text", "")}}
    )


def _regex(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern) if pattern else None
    except re.error as e:
        raise InvalidArgument(f"invalid regular expression {pattern!r}: {e}") from None


@app.command()
def prints(
    ref: Ref,
    no_timestamps: NoTimestampsOpt = False,
    tail: Annotated[
        bool, typer.Option("--tail", "-t", help="Keep printing new prints until the session ends.")
    ] = False,
    end_print_re: EndPrintOpt = "",
    poll_interval: PollOpt = "250ms",
    as_json: JsonOpt = False,
    fail: FailOpt = False,
) -> None:
    """What the session printed, in order."""
    end = _regex(end_print_re)
    interval = client.parse_duration(poll_interval)
    shown = 0
    try:
        sid = client.call("session.get", session=ref)["session_id"] if tail else ref
    except NotFound as e:
        silent_unless(fail, e)
        return
    while True:
        final = tail and client.call("session.get", session=sid)["state"] in wire.FINAL_STATES
        for rec in client.records(sid, kinds=["print"], skip=shown):
            shown += 1
            typer.echo(_print_json(rec) if as_json else print_line(rec, no_timestamps))
            if end is not None and end.search(rec["data"].get("text", "")):
                return
        if not tail or final:
            return
        time.sleep(interval)


def _show_log(records: Iterable[dict[str, Any]], as_json: bool, no_timestamps: bool) -> int:
    """Prints the records' log entries; returns how many records there were."""
    n = 0
    for rec in records:
        n += 1
        for e in log_entries(rec):
            if as_json:
                typer.echo(json.dumps(e, separators=(",", ":")))
            else:
                text = terminal_safe(entry_text(e))
                typer.echo(text if no_timestamps else f"[{e['t']}] {text}")
    return n


@app.command()
def log(
    ref: Ref,
    no_timestamps: NoTimestampsOpt = False,
    order: Annotated[
        str,
        typer.Option(
            "--order", "-o", help="With --page-size: desc gives the newest page, asc the oldest."
        ),
    ] = "desc",
    page_size: Annotated[
        int, typer.Option("--page-size", help="Records per page (0: the whole log).")
    ] = 0,
    skip: Annotated[int, typer.Option("--skip-rows", help="Records to skip first.")] = 0,
    page_token: Annotated[
        str, typer.Option("--next-page-token", help="Continue after a previous page.")
    ] = "",
    as_json: JsonOpt = False,
    fail: FailOpt = False,
) -> None:
    """The session's history: state changes, activity calls, sleeps and prints, oldest
    first. With --page-size, one page (--order desc: the newest), still printed oldest first;
    "next-page-token: T" on stderr when there are more."""
    try:
        records = list(client.records(ref))
    except NotFound as e:
        silent_unless(fail, e)
        return
    if page_size > 0 or skip or page_token:
        start = skip + (int(page_token) if page_token.isdigit() else 0)
        if page_token and not page_token.isdigit():
            raise InvalidArgument(f"invalid page token {page_token!r}")
        ordered = records[::-1] if order.lower() == "desc" else records
        size = page_size if page_size > 0 else len(ordered)
        page = ordered[start : start + size]
        if start + size < len(ordered):
            typer.echo(f"next-page-token: {start + size}", err=True)
        records = sorted(page, key=lambda r: (r["t_us"], r["seq"]))
    _show_log(records, as_json, no_timestamps)


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
        typer.echo(terminal_safe(line))


@app.command()
def watch(
    ref: Ref,
    end_state: Annotated[
        str,
        typer.Option("--end-state", "-e", help="Stop when the session reaches this state."),
    ] = "",
    end_print_re: EndPrintOpt = "",
    timeout: Annotated[
        str, typer.Option("--timeout", "-t", help="Give up after this long (e.g. 30s; 0: never).")
    ] = "0",
    poll_interval: PollOpt = "250ms",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print nothing; just wait.")] = False,
    no_timestamps: NoTimestampsOpt = False,
    wait_created: Annotated[
        bool, typer.Option("--wait-created", help="Wait for the session to exist.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Follow a session's history until it ends (or reaches --end-state, or prints a line
    --end-print-re matches); exit 1 on timeout or when it ended in another state."""
    limit = client.parse_duration(timeout)
    interval = client.parse_duration(poll_interval)
    want = end_state.upper().removeprefix("SESSION_STATE_TYPE_")
    if want and want not in ("CREATED", "RUNNING", *wire.FINAL_STATES):
        raise InvalidArgument(f"end state: unknown state {end_state}")
    end = _regex(end_print_re)
    deadline = time.monotonic() + limit if limit else None
    sid = _await_session(ref, wait_created, interval, deadline, timeout)
    shown = 0
    while True:
        s = client.call("session.get", session=sid)
        if not quiet or end is not None:  # quiet: the state is all it needs
            fresh = list(client.records(sid, skip=shown))
            shown += len(fresh)
            if not quiet:
                _show_log(fresh, as_json, no_timestamps)
            if end is not None and any(
                r["kind"] == "print" and end.search(r["data"].get("text", "")) for r in fresh
            ):
                return
        if s["state"] in wire.FINAL_STATES or (want and s["state"] == want):
            if want and s["state"] != want:
                raise AKError(f"session ended in state {s['state']}, not {want}")
            return
        if deadline is not None and time.monotonic() > deadline:
            raise AKError(
                f"timed out after {timeout} waiting for session {sid} (state {s['state']})"
            )
        time.sleep(interval)


def _await_session(
    ref: str, wait_created: bool, interval: float, deadline: float | None, timeout: str
) -> str:
    """The session's id; with ``wait_created``, polls until it exists."""
    while True:
        try:
            return str(client.call("session.get", session=ref)["session_id"])
        except NotFound:
            if not wait_created:
                raise
        if deadline is not None and time.monotonic() > deadline:
            raise AKError(f"timed out after {timeout} waiting for session {ref} to be created")
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
    entrypoint: Annotated[
        str, typer.Option("--entrypoint", "-p", help="Handler to run: file.py:function.")
    ],
    deployment_id: Annotated[
        str, typer.Option("--deployment-id", "-d", help="Run in this deployment.")
    ] = "",
    project: Annotated[
        str, typer.Option("--project", "-o", help="Run in this project's active deployment.")
    ] = "",
    build_id: Annotated[
        str, typer.Option("--build-id", "-b", help="Run this build of the same project.")
    ] = "",
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            "-I",
            metavar="NAME=JSON",
            help="name=<JSON value> in event.data (repeatable).",
        ),
    ] = None,
    memo: Annotated[
        list[str] | None,
        typer.Option("--memo", "-m", metavar="KEY=VALUE", help="key=value memo (repeatable)."),
    ] = None,
    durable: Annotated[
        bool, typer.Option("--durable", "-D", help="Journal it, so it survives restarts.")
    ] = False,
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
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why; kept with the session.")] = "",
    force: Annotated[
        bool, typer.Option("--force", "-f", help="Mark the reason as forced, as AutoKitteh does.")
    ] = False,
) -> None:
    """Stop a running session wherever it is waiting; it ends STOPPED with the reason."""
    client.call("session.stop", session=ref, reason=reason, force=force)


@app.command()
def restart(ref: Ref, as_json: JsonOpt = False) -> None:
    """Start a new session with the same deployment, entry point and inputs."""
    res = client.call("session.restart", session=ref)
    typer.echo(json.dumps(res) if as_json else f"session_id: {res['session_id']}")


@app.command()
def delete(
    session_id: Annotated[str, typer.Argument(help="Session ID (ses_...).")],
    as_json: JsonOpt = False,
    fail: FailOpt = False,
) -> None:
    """Delete an ended session with its log and trace; prints what it was."""
    try:
        shown = client.call("session.get", session=session_id)
        client.call("session.delete", session_id=session_id)
    except NotFound as e:
        silent_unless(fail, e)
        return
    emit(shown, as_json, SESSION_KEYS, label="session")


def log_file_lines(records: Iterable[dict[str, Any]]) -> list[str]:
    """AutoKitteh's downloaded print log: ``[YYYY-MM-DD HH:MM:SS]:  <text>`` per print,
    its further lines indented 24 spaces."""
    out = []
    for rec in records:
        stamp = timefmt.from_us(rec["t_us"]).strftime("%Y-%m-%d %H:%M:%S")
        first, *rest = rec["data"].get("text", "").split("\n")
        out.append(f"[{stamp}]:  {first}")
        out.extend(" " * 24 + line for line in rest)
    return out


@app.command("download-logs")
def download_logs(
    ref: Ref,
    output: Annotated[
        str,
        typer.Option(
            "--output", "-o", help="File to write (default ./<session id>_<local time>.txt)."
        ),
    ] = "",
    fail: FailOpt = False,
) -> None:
    """Write the session's prints to a text file."""
    try:
        sid = client.call("session.get", session=ref)["session_id"]
        lines = log_file_lines(client.records(sid, kinds=["print"]))
    except NotFound as e:
        silent_unless(fail, e)
        return
    path = Path(output or f"{sid}_{datetime.now().strftime('%Y%m%d_%H%M%S')}.txt")
    try:
        path.write_text("".join(line + "\n" for line in lines))
    except OSError as e:
        raise AKError(f"failed to download logs: {e}") from None
    typer.echo(f"Logs written to {path}")
