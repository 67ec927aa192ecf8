"""The project the web UI's tests deploy: prints that try to be markup, an activity, a
secret var, a session that waits (for the stop button and for prints that stream), one
that starts two children, and sync webhooks whose answers try to act as the UI (a page
whose script reads the UI and posts its forms, a cookie named as the UI's login), and one
whose answer is a sound, to be played."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import Stack, write_project

SECRET = "ui-secret-value-8c1f"
HOSTILE = "<script>window.pwned=1</script><b>bold?</b>"
# What a project's author (or a handler echoing its webhook's sender) may answer on the
# UI's own origin: a page whose script reads the admin's Projects page and sets a var with
# its CSRF token. Its title says how far it got ("kept out: ..." once its fetch fails).
ATTACK_PAGE = """<!doctype html><title>loading</title><script>
(async () => {
  try {
    const page = await (await fetch("/ui/projects")).text();
    const csrf = page.match(/name="csrf" value="([^"]+)"/)[1];
    const prj = page.match(/<section class="project" id="(prj_\\w+)"/)[1];
    const set = await fetch(`/ui/projects/${prj}/vars/set`, {method: "POST",
      body: new URLSearchParams({csrf, name: "FROM_PAGE", value: "set by a webhook's page"})});
    document.title = "acted as the UI: " + set.status;
  } catch (e) {
    document.title = "kept out: " + e.name;
  }
})();
</script>"""

MANIFEST = f"""\
version: v1
project:
  name: ui_demo
  vars:
    - name: TOKEN
      value: {SECRET}
      secret: true
    - name: PLAIN
      value: plain-value
  triggers:
    - name: hook
      call: h.py:on_hook
      webhook: {{}}
    - name: wait
      call: h.py:waiter
      webhook: {{}}
    - name: more
      webhook: {{}}
    - name: spawn
      call: h.py:spawn
      webhook: {{}}
    - name: page
      call: h.py:page
      webhook: {{}}
      is_sync: true
    - name: cookie
      call: h.py:cookie
      webhook: {{}}
      is_sync: true
    - name: sound
      call: h.py:sound
      webhook: {{}}
      is_sync: true
"""

CODE = f"""\
import autokitteh


@autokitteh.activity
def double(n):
    return n * 2


def on_hook(event):
    print({HOSTILE!r})
    print("doubled", double(double(5)))


def waiter(event):
    sub = autokitteh.subscribe("more", "")
    print("waiting for more")
    got = autokitteh.next_event(sub, timeout=120)
    print("got", got.body.text)


def spawn(event):
    for n in range(2):
        print("started", autokitteh.start("h.py:child", {{"n": n}}))


def child(event):
    print("child", event.data.n)


def page(event):
    autokitteh.http_outcome(200, body={ATTACK_PAGE!r}, headers={{"Content-Type": "text/html"}})


def cookie(event):
    name = event.data.url.query.get("name", "ak_ui_token")
    headers = {{"Set-Cookie": f"{{name}}=theirs; Path=/ui"}}
    autokitteh.http_outcome(200, body="ok", headers=headers)


def sound(event):
    # a WAV of 1 s of near silence, every byte of it ASCII (a body is text); ?type= and
    # ?sniff= set its Content-Type and X-Content-Type-Options
    import struct

    data = b"\\x7f" * 8000
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, 8000, 8000, 1, 8)
    wav = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + fmt
    wav += b"data" + struct.pack("<I", len(data)) + data
    query = event.data.url.query
    headers = {{"Content-Type": query.get("type", "audio/wav")}}
    if query.get("sniff"):
        headers["X-Content-Type-Options"] = query.get("sniff")
    autokitteh.http_outcome(200, body=wav, headers=headers)
"""


def deploy(stack: Stack, root: Path) -> dict[str, str]:
    """Deploys the project; the webhook path of each trigger, by name."""
    project = write_project(root, {"autokitteh.yaml": MANIFEST, "h.py": CODE})
    return stack.deploy_paths(project)
