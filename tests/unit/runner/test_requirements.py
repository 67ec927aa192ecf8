"""Which requirements.txt lines reach pip: package requirements only, as parsed here."""

from __future__ import annotations

import pytest
from ak_runner.requirements import RequirementsRefused, check_requirements


def test_requirements_pass_as_pip_should_get_them() -> None:
    text = (
        "# integrations\n"
        "\n"
        "requests[socks] ~= 2.31  # the client\n"
        'tomli>=1.1; python_version < "3.11"\n'
        "six\n"
        "Django>=4,!=4.0.1,<5\n"
        "autokitteh ~= 0.2\n"
    )
    assert check_requirements(text, "requirements.txt") == (
        "requests[socks]~=2.31\n"
        'tomli>=1.1; python_version < "3.11"\n'
        "six\n"
        "Django!=4.0.1,<5,>=4\n"
        "autokitteh~=0.2\n"
    )
    assert check_requirements("# nothing\n\n", "requirements.txt") == ""


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("-r /etc/passwd", "is a pip option (-r)"),
        ("--requirement=/etc/passwd", "is a pip option (--requirement)"),
        ("-c constraints.txt", "is a pip option (-c)"),
        ("-e git+https://example.com/x.git", "is a pip option (-e)"),
        ("-i https://evil.example/simple", "is a pip option (-i)"),
        ("--index-url https://user:pw@evil.example/simple", "is a pip option (--index-url)"),
        ("--extra-index-url=https://evil.example", "is a pip option (--extra-index-url)"),
        ("-f /tmp", "is a pip option (-f)"),
        ("/etc/passwd", "is not a package requirement"),
        ("./pkg", "is not a package requirement"),
        ("../secrets/pkg", "is not a package requirement"),
        ("https://evil.example/pkg.tar.gz", "is not a package requirement"),
        ("pkg @ file:///etc/passwd", "installs from a URL or path (@)"),
        ("pkg @ https://evil.example/pkg.whl", "installs from a URL or path (@)"),
        ("pkg-1.0-py3-none-any.whl", "names an archive file"),
        ("pkg==${HOME}", "names an environment variable ($)"),
        ("pkg --hash=sha256:00", "is not a package requirement"),
        ("pkg \\", "is not a package requirement"),
    ],
)
def test_anything_else_is_refused_by_its_line_number(line: str, says: str) -> None:
    with pytest.raises(RequirementsRefused) as e:
        check_requirements(f"six\n# fine\n{line}\nrequests\n", "requirements.txt")
    message = str(e.value)
    assert message.startswith(f"requirements.txt line 3 {says}; only package requirements")
    assert "passwd" not in message and "evil" not in message and "pw@" not in message
