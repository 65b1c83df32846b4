"""Kafka topic ids, so offsets are never compared across two lives of one topic name.

A topic deleted and re-created (Kafka rebuilt, ClickHouse and the state topic kept) starts again at
offset 0 under the same name. Offsets the processors remember (the state's applied offsets, the
ClickHouse watermark in `ingest_offsets`, the `src_topic` of raw rows) are therefore keyed by
`name#id`, and the new topic's events are new whatever their offsets.
"""

from __future__ import annotations

import logging
from typing import Iterable

from trainmon import kafka_client
from trainmon.settings import Settings

log = logging.getLogger("trainmon.processors")


def topic_keys(settings: Settings, names: Iterable[str], timeout_s: float = 10.0) -> dict[str, str]:
    """name -> "name#id" for the topics that exist; {} (and a warning) when Kafka cannot say."""
    from confluent_kafka import KafkaException, TopicCollection
    from confluent_kafka.admin import AdminClient

    names = sorted(set(names))
    admin = AdminClient(kafka_client.config(settings, log_level=0))
    keys = {}
    for name, future in admin.describe_topics(TopicCollection(names), request_timeout=timeout_s).items():
        try:
            keys[name] = f"{name}#{future.result(timeout_s).topic_id}"
        except KafkaException as exc:
            log.warning("topic %s: id not known (%s); its offsets stay keyed by name until the next assignment",
                        name, exc.args[0].str() if exc.args else exc)
    return keys
