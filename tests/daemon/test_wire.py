"""The batch decoder (v1 fast path, v2 binary) against the reference decoder."""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_meta.daemon.records import Decoder, encode
from stream_meta.daemon.wire import CONTENT_TYPE, F32_CONTENT_TYPE, UNLABELLED, BatchDecoder, encode_f32
from stream_meta.errors import RecordError

DIM, CLASSES = 3, 4
REF = Decoder(DIM, CLASSES, max_bytes=512)
FAST = BatchDecoder(DIM, CLASSES, max_bytes=512)


def reference(value):
    try:
        rec = REF.decode(value)
    except RecordError as exc:
        return exc.reason
    return (tuple(np.float32(v) for v in rec.x), UNLABELLED if rec.y is None else rec.y, rec.task, rec.id)


def fast(value, headers=()):
    batch = FAST.decode([value], [headers])
    if batch.rejected:
        assert len(batch) == 0 and batch.rejected[0][0] == 0
        return batch.rejected[0][1].reason
    return (tuple(batch.x[0]), int(batch.y[0]), batch.tasks[0], batch.ids[0])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10, 10) | st.integers() | st.floats(allow_nan=True) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8,
)
records = st.fixed_dictionaries(
    {},
    optional={
        "x": st.one_of(st.lists(st.floats(width=32) | st.integers(-5, 5), min_size=DIM, max_size=DIM), json_values),
        "y": st.one_of(st.integers(-2, 6), st.floats(0, 5), json_values),
        "task": st.one_of(st.text(max_size=4), json_values),
        "id": st.one_of(st.text(max_size=4), json_values),
        "other": json_values,
    },
)


@settings(max_examples=400, deadline=None)
@given(records)
def test_fast_v1_equals_the_reference_on_arbitrary_objects(obj):
    raw = json.dumps(obj).encode()
    assert fast(raw) == reference(raw)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=80))
def test_fast_v1_equals_the_reference_on_arbitrary_bytes(raw):
    assert fast(raw) == reference(raw)


@pytest.mark.parametrize("raw", [
    b'{"x": [1, 2, 3], "z": "\xff\xfe"}',  # bad UTF-8 in a field nobody reads
    b'{"x": [1, 2, 1e39]}',  # finite as a double, infinity as float32
    b'{"x": [1, 2, 3], "y": -1}',  # -1 must not read as "unlabelled"
    b'{"x": [1, 2, 3], "y": 3.0}',
    b'{"x": [1, 2, 3], "task": "\\ud800"}',
    b'{"x": [1, NaN, 3]}',
    b"",
    None,
])
def test_fast_v1_equals_the_reference_on_edge_cases(raw):
    assert fast(raw) == reference(raw)


def test_a_batch_keeps_order_and_reports_each_rejection_at_its_position():
    values = [encode([1, 2, 3], 1, "a", "r0"), b"nope", encode([4, 5, 6]), b'{"x": [1, 2]}', encode([7, 8, 9], 3)]
    batch = FAST.decode(values)
    assert batch.index == [0, 2, 4]
    assert batch.x.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    assert batch.y.tolist() == [1, UNLABELLED, 3]
    assert batch.tasks == ["a", "default", "default"] and batch.ids == ["r0", None, None]
    assert [(i, e.reason) for i, e in batch.rejected] == [(1, "not_json"), (3, "x_wrong_length")]


def test_v2_binary_records_decode_beside_json_ones():
    v2, headers = encode_f32(np.array([0.25, -1, 2]), y=2, task="rot-1", id="r-9")
    batch = FAST.decode([encode([1, 2, 3], 0), v2], [(), headers])
    assert batch.x.tolist() == [[1, 2, 3], [0.25, -1, 2]]
    assert batch.y.tolist() == [0, 2] and batch.tasks == ["default", "rot-1"] and batch.ids == [None, "r-9"]


@pytest.mark.parametrize("value, headers, reason", [
    (b"\0" * 8, [], "x_wrong_length"),
    (b"\0" * 16, [], "x_wrong_length"),
    (np.array([1, np.nan, 2], "<f4").tobytes(), [], "x_not_finite"),
    (np.array([1, np.inf, 2], "<f4").tobytes(), [], "x_not_finite"),
    (b"\0" * 12, [("y", b"1.5")], "y_not_integer"),
    (b"\0" * 12, [("y", b"two")], "y_not_integer"),
    (b"\0" * 12, [("y", b"4")], "y_out_of_range"),
    (b"\0" * 12, [("y", b"-1")], "y_out_of_range"),
    (b"\0" * 12, [("task", b"")], "task_not_string"),
    (b"\0" * 12, [("task", b"\xff")], "task_not_string"),
    (b"\0" * 12, [("id", b"\xff")], "id_not_string"),
    (b"\0" * 1024, [], "too_large"),
])
def test_v2_rejections_carry_the_v1_reasons(value, headers, reason):
    assert fast(value, [(CONTENT_TYPE, F32_CONTENT_TYPE), *headers]) == reason


def test_v2_without_label_is_predict_only_and_header_names_ignore_case():
    value = np.array([1, 2, 3], "<f4").tobytes()
    assert fast(value, [("Content-Type", F32_CONTENT_TYPE)]) == ((1.0, 2.0, 3.0), UNLABELLED, "default", None)


def test_an_empty_batch_has_the_right_shape():
    batch = FAST.decode([])
    assert batch.x.shape == (0, DIM) and len(batch) == 0
