"""The table that `python -m bench --peers` writes (the benchmark itself is not run here)."""

from pathlib import Path

from bench import peerlib


def system(name: str, short: str, **metrics: float | None) -> dict[str, object]:
    return {"name": name, "short": short, "metrics": metrics, "notes": {}}


def test_ratio_table_puts_ours_over_each_peer() -> None:
    ours = system("this project", "ours", step_p50_ms=0.5, closed_rate=400.0, mem50_mib=2.0)
    restate = system("Restate 1.7", "Restate", step_p50_ms=2.0, closed_rate=200.0, mem50_mib=-0.01)
    temporal = system("Temporal", "Temporal", step_p50_ms=50.0, closed_rate=None)
    temporal["notes"] = {"step_p50_ms": "local activity: 2.40", "replay_ms": "n/a: none"}

    lines = peerlib.ratio_table([ours, restate, temporal])

    assert lines[0] == (
        "| metric | this project | Restate 1.7 | ours / Restate | Temporal | ours / Temporal |"
    )
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in lines[2:]}
    step = rows["per durable step p50 (1,000 sequential trivial steps), ms"]
    assert step.endswith("| 0.50 | 2.00 | 0.25x | 50.0 (local activity: 2.40) | 0.01x |")
    rate = rows["closed loop: workflows/s (64 in flight, one step each), /s"]
    assert rate.endswith("| 400 | 200 | 2.00x | n/a | n/a |")
    # a growth within the noise (negative) is shown but not divided by
    mem = rows["memory per waiting workflow (50 in a durable sleep), MiB"]
    assert mem.endswith("| 2.00 | -0.010 | n/a | n/a | n/a |")
    assert rows["replay of a 1,000-step history, ms"].endswith(
        "| n/a | n/a | n/a | n/a: none | n/a |"
    )
    # metrics no system measured get no row
    assert not any("CPU per workflow" in line for line in lines)


def test_section_is_replaced_in_place_and_others_are_kept(tmp_path: Path) -> None:
    notes = tmp_path / "benchmarks-notes.md"
    notes.write_text("# Notes\n\n## Someone else's\n\nkept\n")
    first = f"{peerlib.BEGIN}\n## Side by side\n\nold\n{peerlib.END}"
    peerlib.put_section(notes, first)
    notes.write_text(notes.read_text() + "\n## Added later by others\n\nkept too\n")

    peerlib.put_section(notes, first.replace("old", "new"))

    text = notes.read_text()
    assert "old" not in text and text.count(peerlib.BEGIN) == 1
    assert text.index("Someone else's") < text.index("new") < text.index("Added later")
    assert text.endswith("## Added later by others\n\nkept too\n")
