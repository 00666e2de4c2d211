import pytest

from stream_meta.bench.continual.metrics import cl_metrics


def test_metrics_by_hand_on_three_tasks():
    a = [[0.9, 0.2, 0.1],
         [0.6, 0.8, 0.3],
         [0.5, 0.7, 0.95]]
    m = cl_metrics(a)
    assert m.ra == pytest.approx((0.5 + 0.7 + 0.95) / 3)
    assert m.learning_accuracy == pytest.approx((0.9 + 0.8 + 0.95) / 3)
    assert m.bti == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)
    assert m.forgetting == pytest.approx(((0.9 - 0.5) + (0.8 - 0.7)) / 2)


def test_no_forgetting_and_positive_backward_transfer():
    m = cl_metrics([[0.5, 0.0], [0.7, 0.9]])
    assert m.bti == pytest.approx(0.2) and m.forgetting == pytest.approx(-0.2)
    assert cl_metrics([[0.4]]).bti == 0.0


def test_rejects_a_ragged_matrix():
    with pytest.raises(ValueError):
        cl_metrics([[0.1, 0.2]])


@pytest.mark.slow
def test_peak_rss_of_a_worker_is_its_own_not_its_parents():
    """A child of a large parent reports its own peak; ru_maxrss would report the parent's."""
    import subprocess
    import sys

    from stream_meta.bench.continual.metrics import peak_rss_mb

    ballast = bytearray(1200 * 1024 * 1024)  # the parent holds 1.2 GiB, touched
    ballast[::4096] = b"x" * len(ballast[::4096])
    code = ("import resource; from stream_meta.bench.continual.metrics import peak_rss_mb; "
            "print(peak_rss_mb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    own, inherited = map(float, child.stdout.split())
    assert peak_rss_mb() > 1200
    assert inherited > 1200  # the trap: Linux keeps ru_maxrss across exec
    assert 0 < own < 1000  # the child's own peak (imports included)
    del ballast
