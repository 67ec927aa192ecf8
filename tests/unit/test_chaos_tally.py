"""The chaos soak's counting rules (bench/chaos_tally.py), on made-up runs."""

from __future__ import annotations

from bench.chaos_tally import Effect, interleaved, parse_effects, rerun_kinds, tally


def test_effect_lines_parse_and_a_torn_last_line_is_skipped() -> None:
    text = "ses_a step_one 100.5 41\nses_a step_two 101.25 41\nses_a step_th"
    assert parse_effects(text) == [Effect("step_one", 100.5, 41), Effect("step_two", 101.25, 41)]


def test_a_run_after_the_record_is_a_finished_activity_run_again() -> None:
    first, in_flight, late = Effect("a", 10.0, 1), Effect("a", 10.5, 2), Effect("a", 12.0, 3)
    assert rerun_kinds([first], 11.0) == (0, 0)
    assert rerun_kinds([first, in_flight], 11.0) == (1, 0)  # both before the record
    assert rerun_kinds([first, in_flight, late], 11.0) == (1, 1)
    assert rerun_kinds([first, late], None) == (1, 0)  # no record: none had finished


def test_two_workers_taking_turns_in_one_session_are_two_attempts_at_once() -> None:
    one_after_other = [Effect("a", 1, 7), Effect("a", 2, 8), Effect("b", 3, 8)]
    taking_turns = [Effect("a", 1, 7), Effect("a", 2, 8), Effect("b", 3, 7)]
    assert not interleaved(one_after_other)
    assert interleaved(taking_turns)


def test_lost_duplicated_stuck_and_runs_again_are_counted() -> None:
    answers = [("202", "evt_1"), ("202", "evt_2"), ("202", "evt_3"), ("503", ""), ("timeout", "")]
    sessions = [
        {"session_id": "ses_1", "event_id": "evt_1", "state": "COMPLETED"},
        {"session_id": "ses_1b", "event_id": "evt_1", "state": "COMPLETED"},
        {"session_id": "ses_2", "event_id": "evt_2", "state": "RUNNING"},
    ]
    effects = {
        "ses_1": [Effect(n, 1.0, 5) for n in ("step_one", "step_two", "step_three")]
        + [Effect("step_one", 3.0, 6)],
        "ses_1b": [Effect(n, 1.0, 9) for n in ("step_one", "step_two")],
    }
    t = tally(answers, sessions, effects, {"ses_1": {"step_one": 2.0}})
    assert t.answers == {"202": 3, "503": 1, "timeout": 1}
    assert t.failures() == {
        "lost": 1,  # evt_3
        "duplicated": 1,  # evt_1
        "stuck": 1,  # ses_2
        "finished activity run again": 1,  # ses_1's step_one at 3.0, recorded at 2.0
        "unlisted sessions that ran activities": 0,  # (counted by the harness: chaos.py)
    }
    assert t.missing_effects == 1  # ses_1b completed without step_three
    assert t.examples["lost (event)"] == ["evt_3"]
