import pytest

from stream_meta.daemon.labels import LABEL_REASONS, Label, LabelDecoder, encode_label
from stream_meta.errors import RecordError

D = LabelDecoder(num_classes=4)


def reason(value, headers=(), require=False) -> str:
    with pytest.raises(RecordError) as info:
        D.decode(value, headers, require=require)
    assert info.value.reason in LABEL_REASONS
    return info.value.reason


def test_v1_and_v2_label_messages_decode():
    assert D.decode(encode_label("r-1", 3)) == Label("r-1", 3)
    assert D.decode(b"", [("id", b"r-2"), ("y", b"0")]) == Label("r-2", 0)
    assert D.decode(None, [("content-type", b"application/vnd.stream-meta.f32"), ("ID", b"r-3"), ("Y", b"2")]) == Label("r-3", 2)


def test_records_are_not_labels():
    assert D.decode(b'{"x": [1, 2], "y": 1, "id": "r-1"}') is None
    assert D.decode(b"\x00\x00\x80?", [("id", b"r")]) is None  # a v2 record: non-empty value
    assert D.decode(None) is None  # a tombstone with no headers
    assert reason(b'{"x": [1]}', require=True) == "not_a_label"


@pytest.mark.parametrize("value, headers, expected", [
    (b'{"y": 1}', (), "label_id_missing"),
    (b'{"id": 7, "y": 1}', (), "label_id_missing"),
    (b'{"id": "r", "y": "one"}', (), "label_y_not_integer"),
    (b'{"id": "r", "y": true}', (), "label_y_not_integer"),
    (b'{"id": "r"}', (), "label_y_not_integer"),
    (b'{"id": "r", "y": 4}', (), "label_y_out_of_range"),
    (b'{"id": "r", "y": -1}', (), "label_y_out_of_range"),
    (b'{"id": "r", ', (), "label_not_json"),
    (b"", [("id", b"r"), ("y", b"x")], "label_y_not_integer"),
    (b"", [("y", b"1")], "label_id_missing"),
    (b"", [("id", b"r"), ("y", b"9")], "label_y_out_of_range"),
])
def test_bad_label_messages_are_rejected_with_a_reason(value, headers, expected):
    assert reason(value, headers) == expected
