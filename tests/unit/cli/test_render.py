"""Text the CLI prints from sessions: nothing a terminal would act on."""

from __future__ import annotations

from ak_cli.render import terminal_safe


def test_control_characters_but_tab_and_newline_are_written_out() -> None:
    assert terminal_safe("a\tb\nc") == "a\tb\nc"
    assert terminal_safe("\x1b]0;title\x07") == "\\x1b]0;title\\x07"
    assert terminal_safe("ok\rforged") == "ok\\rforged"
    assert terminal_safe("\x00\x7f\x9b[2J") == "\\x00\\x7f\\x9b[2J"  # (C1: a one-byte CSI)
    assert terminal_safe("abc\u202edcba\u2066x\u2069") == "abc\\u202edcba\\u2066x\\u2069"
    assert terminal_safe("a\u200eb\u200fc\u061cd\u2028e") == "a\\u200eb\\u200fc\\u061cd\\u2028e"
    assert terminal_safe("héllo ✓ 日本") == "héllo ✓ 日本"
