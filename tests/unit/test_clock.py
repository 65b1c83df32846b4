"""The partition clock: the time up to which a partition's topics have been read (clock.py)."""

from __future__ import annotations

import pickle

from trainmon.stream_processors.clock import PartitionClock

W = 1_764_230_400.0


def test_a_pipeline_three_seconds_behind_keeps_its_clock_three_seconds_behind() -> None:
    clock = PartitionClock()
    for i in range(20):  # 10 events a second; read every 0.5 s, 3 s behind
        wall = W + i * 0.5
        clock.observe("metrics", wall - 3.0, wall)
        clock.fetched("metrics", wall, highwater=int(10 * (wall - W)), applied=int(10 * (wall - 3.0 - W)))
        assert clock.advance(wall + 0.2) <= wall - 3.0 + 1e-9
    assert clock.live


def test_once_kafka_confirms_nothing_is_left_the_clock_follows_the_fetches() -> None:
    clock = PartitionClock()
    clock.observe("system", W, W)
    for i in range(1, 11):
        clock.fetched("system", W + i, highwater=1, applied=0)  # fetches find nothing new
    assert clock.advance(W + 10.5) == W + 10 - clock.delivery_s


def test_no_fetch_means_no_time_passes() -> None:
    """A broker failover or a stalled consumer: nothing is known past the last fetch."""
    clock = PartitionClock()
    clock.observe("system", W, W)
    clock.fetched("system", W + 1, highwater=1, applied=0)
    assert clock.advance(W + 20) == W
    assert clock.advance(W + 40) == W and not clock.live  # held: 40 s behind the wall clock


def test_the_slowest_topic_sets_the_time() -> None:
    clock = PartitionClock()
    clock.observe("metrics", W + 9, W + 10)
    clock.fetched("metrics", W + 10, highwater=1, applied=0)
    clock.observe("runs", W + 2, W + 10)  # the runs topic is still on its backlog
    assert clock.advance(W + 10) == W + 2


def test_without_word_from_the_consumer_an_idle_topic_is_caught_up() -> None:
    clock = PartitionClock()
    clock.observe("system", W, W)
    assert clock.advance(W + 1) == W
    assert clock.advance(W + 2) == W + 2 and clock.live


def test_a_restored_partition_forgets_what_the_old_owner_had_read_through() -> None:
    clock = PartitionClock()
    clock.observe("metrics", W, W)
    clock.fetched("metrics", W + 5, highwater=1, applied=0)
    assert clock.advance(W + 5.5) == W + 4
    clock.resumed(W + 100)
    assert clock.read_through == {} and clock.advance(W + 100.5) == W + 4  # held, and never goes back
    assert not clock.live


def test_a_clock_pickled_before_read_through_existed_restores() -> None:
    old = PartitionClock()
    old.observe("metrics", W, W)
    state = dict(vars(old))
    del state["read_through"], state["delivery_s"]
    clock = PartitionClock.__new__(PartitionClock)
    clock.__setstate__(state)
    assert clock.read_through == {} and clock.advance(W + 3) == W + 3
    assert pickle.loads(pickle.dumps(clock)).topics == clock.topics


def test_a_topic_kafka_says_is_behind_is_not_taken_for_idle() -> None:
    clock = PartitionClock()
    clock.observe("system", W, W)
    clock.fetched("system", W + 1, highwater=100, applied=0)
    assert clock.advance(W + 10) == W  # without the consumer's word it would be idle: W + 10


def test_a_steady_flow_from_a_clock_90_s_behind_follows_the_fetches() -> None:
    """Events stamped 90 s in the past, read as they come: each tick the latest fetch is not processed
    yet, the one before it is. The clock must follow those fetches, not the events' times (it did, and
    jumped each time Kafka was caught up, and every rank of the run looked silent for the jump)."""
    clock = PartitionClock()
    for i in range(60):
        wall = W + i
        clock.observe("metrics", wall - 90, wall)
        clock.fetched("metrics", wall, highwater=10 * i + 10, applied=10 * i - 1)  # the previous fetch's, done
        now = clock.advance(wall + 0.5)
        if i:
            assert now == wall - 1 - clock.delivery_s and clock.live
