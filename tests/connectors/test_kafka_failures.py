"""kafka-python's errors map onto the bounded failure reasons (a Prometheus label)."""

from __future__ import annotations

import pytest
from kafka import errors as kerr

from connectors.base import SEND_FAILURE_REASONS
from connectors.kafka import _failure_reason


@pytest.mark.parametrize("exc, reason", [
    (kerr.MessageSizeTooLargeError(), "too_large"),
    (kerr.RecordListTooLargeError(), "too_large"),
    (kerr.TopicAuthorizationFailedError(), "not_authorized"),
    (kerr.ClusterAuthorizationFailedError(), "not_authorized"),
    (kerr.UnknownTopicOrPartitionError(), "topic_missing"),
    (kerr.InvalidTopicError(), "topic_missing"),
    (kerr.KafkaTimeoutError(), "timeout"),
    (kerr.RequestTimedOutError(), "timeout"),
    (kerr.NotEnoughReplicasError(), "refused"),
    (kerr.KafkaError("anything else"), "refused"),
])
def test_every_kafka_error_has_a_bounded_reason(exc, reason):
    assert _failure_reason(exc) == reason and reason in SEND_FAILURE_REASONS
