"""What a package's build script may reach while a runner installs a project's
requirements.txt (a third adversarial review): the script is anyone's code (an sdist on the
index), runs as a throwaway user, and what it prints `ak deploy` shows the deployer, who may
hold a token limited to one project.

It got the runner's whole environment (the operator's shell: PGPASSWORD, cloud keys, a
DSN) and printed it to the deployer; it could open 20,000 files in each of its 512
processes (ten million: the kernel's one table of open files holds 2.5 million for every
process of the machine); a handler of any project could hold the lock of the default
environment for ever (it was a 0644 file on a path every worker reaches), so that no
runner could build it again; any number of environments were built at once (a token
limited to one project had twelve built together, each allowed 4 GiB and 512 processes);
and it wrote what it liked to the machine's /tmp and /var/tmp, on the disk of the data home.
"""

from __future__ import annotations

import asyncio
import os
import sys
import typing

import pytest
from ak_runner import pyenv
from ak_runner.sandbox import kill_user

SECRETS = {
    "PGPASSWORD": "hunter2-pgpassword",
    "AWS_SECRET_ACCESS_KEY": "hunter2-aws",
    "DATABASE_URL": "postgresql://ak:hunter2-dsn@db/ak",
}

PRINT_ENV = "import os\nfor k, v in sorted(os.environ.items()):\n    print(f'{k}={v}')\n"


def test_a_build_script_gets_none_of_the_runners_other_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A build script gets a worker's environment and pip's settings: nothing of the
    operator's shell that `ak deploy` would show the deployer."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/simple")
    monkeypatch.setenv("CFLAGS", "-O2")
    build = pyenv.Build(typing.cast(pyenv.Spec, None), 60, env_names=("CFLAGS",))
    asyncio.run(pyenv._run(build, "pip install", sys.executable, "-c", PRINT_ENV))
    shown = "\n".join(build.lines)
    assert not [value for value in SECRETS.values() if value in shown], shown
    # What pip and compilers need still comes: its settings, PATH, and what the operator
    # listed for workers (AK_RUNNER__WORKER_ENV).
    assert "PIP_INDEX_URL=https://mirror.example/simple" in build.lines
    assert "CFLAGS=-O2" in build.lines
    assert any(line.startswith("PATH=") for line in build.lines)


# Opens files until it may open no more, and says how many it opened.
OPEN_FILES = (
    "import os\n"
    "opened = []\n"
    "try:\n"
    "    while len(opened) < 5000:\n"
    "        opened.append(os.open('/dev/null', os.O_RDONLY))\n"
    "except OSError:\n"
    "    pass\n"
    "print('opened', len(opened))\n"
)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
def test_a_build_script_opens_no_more_files_than_a_worker() -> None:
    """A sandboxed build's processes each hold at most a worker's open files
    (AK_RUNNER__WORKER_FILES): the runner's own limit (20,000 under `ak up`) times the
    512 processes a build may run would fill the kernel's one table of open files,
    after which nothing on the machine opens a file or a socket."""
    build = pyenv.Build(typing.cast(pyenv.Spec, None), 60, files=256)
    uid = 779983  # outside the workers' range
    try:
        asyncio.run(pyenv._run(build, "pip install", sys.executable, "-c", OPEN_FILES, uid=uid))
    finally:
        kill_user(uid)
    [said] = [line for line in build.lines if line.startswith("opened ")]
    assert said == "opened 253", build.lines  # 256, less stdin, stdout and stderr
