"""The project the web UI's tests deploy: prints that try to be markup, an activity, a
secret var, a session that waits (for the stop button and for prints that stream), and one
that starts two children."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import Stack, write_project

SECRET = "ui-secret-value-8c1f"
HOSTILE = "<script>window.pwned=1</script><b>bold?</b>"

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
"""


def deploy(stack: Stack, root: Path) -> dict[str, str]:
    """Deploys the project; the webhook path of each trigger, by name."""
    project = write_project(root, {"autokitteh.yaml": MANIFEST, "h.py": CODE})
    return stack.deploy_paths(project)
