"""`trainmon topics create` reads a topic made moments before by another process (a worker starting beside
it, a test) only once Kafka lists its partitions: listed before them, it read as a topic of 0 partitions
and was reported as differing from the settings (seen in CI with the integration tests in two lanes)."""

from __future__ import annotations

from types import SimpleNamespace

from trainmon.deploy import topics as topics_module


class Admin:
    """AdminClient.list_topics at its narrow boundary: the answers for one topic, in turn."""

    def __init__(self, answers: list) -> None:
        self.answers, self.asked = answers, 0

    def list_topics(self, topic: str, timeout: float) -> SimpleNamespace:
        self.asked += 1
        return SimpleNamespace(topics={topic: self.answers.pop(0)})


def listed(partitions: int, error: object = None) -> SimpleNamespace:
    return SimpleNamespace(partitions={p: object() for p in range(partitions)}, error=error)


def test_a_topic_listed_before_its_partitions_is_read_again_until_they_are(monkeypatch) -> None:
    monkeypatch.setattr(topics_module.time, "sleep", lambda seconds: None)
    admin = Admin([listed(0), listed(4)])
    first = {"t.metrics": listed(0, error="LEADER_NOT_AVAILABLE"), "t.runs": listed(4)}
    settled = topics_module._settled(admin, first, ["t.metrics", "t.runs"], timeout_s=5.0)
    assert len(settled["t.metrics"].partitions) == 4 and settled["t.runs"] is first["t.runs"]
    assert admin.asked == 2  # only the topic without partitions was asked about again


def test_a_topic_that_never_lists_partitions_is_given_up_on_after_the_timeout(monkeypatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(topics_module.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(topics_module.time, "sleep", lambda seconds: clock.__setitem__(0, clock[0] + seconds))
    admin = Admin([listed(0)] * 100)
    settled = topics_module._settled(admin, {"t.metrics": listed(0)}, ["t.metrics"], timeout_s=2.0)
    assert len(settled["t.metrics"].partitions) == 0 and 9 <= admin.asked <= 11  # 2 s of 0.2 s polls
