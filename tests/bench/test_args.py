"""A bad item in a bench's comma-separated list is a usage error naming it (exit 2), not a traceback."""

import pytest

from stream_meta.bench import scaleout, soak
from stream_meta.bench.args import floats, ints, one_of


@pytest.mark.parametrize("main, argv, named", [
    (soak.main, ["--sizes", "10000,abc"], "'abc' is not an integer"),
    (scaleout.main, ["--partition", "iid,weird"], "'weird' is not one of iid, noniid"),
    (scaleout.main, ["--sync-momentum", "0,x"], "'x' is not a number"),
])
def test_a_bad_list_item_is_a_usage_error(main, argv, named, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert named in capsys.readouterr().err


def test_lists_parse_and_skip_empty_items():
    assert ints("1,,64,") == [1, 64]
    assert floats(" 0.5 ,1") == [0.5, 1.0]
    assert one_of("off", "on")("on") == ["on"]
