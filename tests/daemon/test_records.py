import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_meta.errors import RecordError
from stream_meta.daemon.records import DEFAULT_TASK, REASONS, Decoder, Record, encode

D = Decoder(input_dim=3, num_classes=4, max_bytes=512)


def reason(raw: bytes) -> str:
    with pytest.raises(RecordError) as info:
        D.decode(raw)
    assert info.value.reason in REASONS
    return info.value.reason


def test_valid_record_round_trips_through_encode():
    rec = D.decode(encode([0.5, -1, 2e3], y=3, task="t1", id="r-7"))
    assert rec == Record(x=(0.5, -1.0, 2000.0), y=3, task="t1", id="r-7")


def test_missing_label_and_task_mean_predict_only_in_default_task():
    rec = D.decode(b'{"x": [1, 2, 3]}')
    assert rec.y is None and not rec.labelled and rec.task == DEFAULT_TASK


@pytest.mark.parametrize(
    "raw, expected",
    [
        (b"\xff\xfe{}", "not_utf8"),
        (b"{not json", "not_json"),
        (b"", "not_json"),
        (b"[1, 2, 3]", "not_object"),
        (b'"x"', "not_object"),
        (b'{"y": 1}', "missing_x"),
        (b'{"x": "1,2,3"}', "x_not_list"),
        (b'{"x": [1, 2]}', "x_wrong_length"),
        (b'{"x": [1, 2, 3, 4]}', "x_wrong_length"),
        (b'{"x": [1, "2", 3]}', "x_not_number"),
        (b'{"x": [1, true, 3]}', "x_not_number"),
        (b'{"x": [1, null, 3]}', "x_not_number"),
        (b'{"x": [1, [2], 3]}', "x_nested"),
        (b'{"x": [1, {"a": 2}, 3]}', "x_nested"),
        (b'{"x": [1, NaN, 3]}', "x_not_finite"),
        (b'{"x": [1, Infinity, 3]}', "x_not_finite"),
        (b'{"x": [1, -Infinity, 3]}', "x_not_finite"),
        (b'{"x": [1, 1e999, 3]}', "x_not_finite"),
        (b'{"x": [1, 2, 3], "y": 4}', "y_out_of_range"),
        (b'{"x": [1, 2, 3], "y": -1}', "y_out_of_range"),
        (b'{"x": [1, 2, 3], "y": 1.5}', "y_not_integer"),
        (b'{"x": [1, 2, 3], "y": "1"}', "y_not_integer"),
        (b'{"x": [1, 2, 3], "y": true}', "y_not_integer"),
        (b'{"x": [1, 2, 3], "task": 7}', "task_not_string"),
        (b'{"x": [1, 2, 3], "task": ""}', "task_not_string"),
        (b'{"x": [1, 2, 3], "id": 5}', "id_not_string"),
        (b'{"x": [' + b"1," * 300 + b"1]}", "too_large"),
    ],
)
def test_every_kind_of_bad_input_gets_its_reason(raw, expected):
    assert reason(raw) == expected


def test_integral_float_label_is_accepted():
    assert D.decode(b'{"x": [1, 2, 3], "y": 2.0}').y == 2


def test_deeply_nested_json_is_a_record_error_not_a_crash():
    assert reason(b'{"x": ' + b"[" * 100 + b"]" * 100 + b"}") in {"x_nested", "x_wrong_length"}
    big = Decoder(3, 4, max_bytes=1 << 20)
    with pytest.raises(RecordError):
        big.decode(b"[" * 100_000 + b"]" * 100_000)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_ever_raise_record_error(raw):
    try:
        rec = D.decode(raw)
    except RecordError as exc:
        assert exc.reason in REASONS
    else:
        assert len(rec.x) == 3 and all(math.isfinite(v) for v in rec.x)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["x", "y", "task", "id", "other"]), json_values, max_size=5))
def test_arbitrary_json_objects_decode_or_raise_record_error(obj):
    raw = json.dumps(obj).encode()
    try:
        rec = D.decode(raw)
    except RecordError as exc:
        assert exc.reason in REASONS
    else:
        assert rec.y is None or 0 <= rec.y < 4
        assert isinstance(rec.task, str) and rec.task


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=3, max_size=3),
    st.none() | st.integers(0, 3),
    st.none() | st.text(min_size=1, max_size=20),
)
def test_valid_records_round_trip(x, y, task):
    rec = D.decode(encode(x, y, task))
    assert rec.x == tuple(float(v) for v in x)
    assert rec.y == y
    assert rec.task == (task if task is not None else DEFAULT_TASK)
