"""Which lines a package list (requirements.txt) may hold before pip sees it: package
requirements (PEP 508: a name with extras, versions and markers), comments and blank lines.

Nothing else: no pip options (``-r``, ``-c``, ``-e``, ``-i``, ``--index-url``,
``--extra-index-url``, ``-f`` ...), no paths or archives, no URLs (``name @ url``), no
environment variables (``${VAR}``). pip reads those as files to open or places to download
from, and its error would show what it found there (``-r /etc/passwd`` printed a line of
that file). pip gets the requirements as parsed here, one a line, never the text as sent.
"""

from __future__ import annotations

import re

from packaging.requirements import InvalidRequirement, Requirement

# As pip strips comments: a "#" at the start of a line or after whitespace.
_COMMENT_RE = re.compile(r"(^|\s)#.*$")
# Names pip would take for a local archive file rather than a package on the index (pip's
# ARCHIVE_EXTENSIONS: ``foo.tar.xz`` was installed from pip's working directory, the
# runner's, and pip's error named that directory).
_ARCHIVE_SUFFIXES = (
    *(".whl", ".zip", ".tar", ".tgz", ".tbz", ".txz", ".tlz"),
    *(".gz", ".bz2", ".xz", ".lz", ".lzma"),
)
_ALLOWED = (
    "only package requirements are allowed, one a line: a name with optional extras, "
    'version and markers, e.g. requests[socks]>=2.31; python_version >= "3.11"'
)


class RequirementsRefused(ValueError):
    """A line pip must not see; the message names it by number, never quotes other files."""


def check_requirements(text: str, source: str) -> str:
    """The requirements of ``text``, one a line as pip should get them.

    Raises:
        RequirementsRefused: for the first line that is not a package requirement, naming
            it as ``<source> line <n>``.
    """
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = _COMMENT_RE.sub("", raw).strip()
        if line:
            out.append(str(_requirement(line, f"{source} line {number}")))
    return "".join(f"{req}\n" for req in out)


def _requirement(line: str, where: str) -> Requirement:
    if line.startswith("-"):
        option = line.split()[0].split("=")[0]
        raise RequirementsRefused(f"{where} is a pip option ({option}); {_ALLOWED}")
    if "$" in line:
        raise RequirementsRefused(f"{where} names an environment variable ($); {_ALLOWED}")
    try:
        req = Requirement(line)
    except InvalidRequirement:
        raise RequirementsRefused(f"{where} is not a package requirement; {_ALLOWED}") from None
    if req.url:
        raise RequirementsRefused(f"{where} installs from a URL or path (@); {_ALLOWED}")
    if req.name.lower().endswith(_ARCHIVE_SUFFIXES):
        raise RequirementsRefused(f"{where} names an archive file; {_ALLOWED}")
    if _split_by_pip(str(req)):
        raise RequirementsRefused(
            f"{where} has a marker value pip would read as an option or a comment "
            f"(a word starting with - or #); {_ALLOWED}"
        )
    return req


def _split_by_pip(line: str) -> bool:
    """Whether pip would cut ``line`` (as written for it) short: at the first word starting
    with ``-``, the rest read as its options, or at a ``#`` after a space, a comment. Only a
    marker's quoted value holds such a word; the part pip keeps then ends inside that
    value, so pip refuses the line, but what it would do with the rest is pip's to change."""
    words = line.split(" ")
    return any(w.startswith("-") for w in words[1:]) or _COMMENT_RE.search(line) is not None
