from stream_meta.daemon.stats import POSITION_BUCKETS, RunStats, format_summary, position_bucket


def test_position_buckets_cover_every_position_once():
    assert [position_bucket(p) for p in (1, 5, 6, 10, 11, 20, 21, 50, 51, 10**6)] == [
        "1-5", "1-5", "6-10", "6-10", "11-20", "11-20", "21-50", "21-50", "51+", "51+"]
    assert [b for b, _, _ in POSITION_BUCKETS] == ["1-5", "6-10", "11-20", "21-50", "51+"]


def test_accuracy_by_position_and_round_trip():
    s = RunStats(accuracy_window=4)
    for i in range(12):
        s.observe_prediction("a", correct=i >= 5)
    s.observe_prediction("b", correct=True)
    s.cpu_seconds = 1.25
    summary = s.summary()
    assert summary["accuracy_by_task_position"]["1-5"] == 1 / 6  # a:0 of 5, b:1 of 1
    assert summary["accuracy_by_task_position"]["6-10"] == 1.0
    assert summary["tasks_seen"] == 2 and s.window_accuracy == 1.0
    t = RunStats(accuracy_window=4)
    t.load_state_dict(s.state_dict())
    assert t.summary() == summary and t.next_position("a") == 13
    assert t.cpu_seconds == 1.25  # checkpointed with the rest
    assert "accuracy at task position" in format_summary(summary)
