"""The history checker on hand-made histories (no broker needed)."""
import threading

import pytest

from history import History


def clean():
    """Two processes, two partitions, every write acknowledged and read where it was acked."""
    h = History()
    for i in range(5):
        h.send(f"a{i}", process="A")
        h.send(f"b{i}", partition=1, process="B")
    for i in range(5):
        h.ack(f"a{i}", 0, 10 + 2 * i)
        h.ack(f"b{i}", 1, i)
    for i in range(5):
        h.read(0, 10 + 2 * i, f"a{i}")
        h.read(1, i, f"b{i}".encode())  # bytes and str are one value
    return h


def kinds(violations):
    return sorted({v.split(":")[0] for v in violations})


def test_a_clean_history_has_no_violation():
    h = clean()
    assert h.check() == []
    assert h.acked_count() == 10 and h.acked_count(partition=1) == 5
    assert h.max_acked_offset(0) == 18
    assert h.acked_ends() == {0: 19, 1: 5}
    assert "acked=10" in h.summary()


def test_rereading_a_position_is_not_a_duplicate():
    h = clean()
    h.read(0, 10, "a0")
    h.read_many([(1, 0, b"b0"), (1, 1, "b1")])
    assert h.check() == []


def test_lost_acknowledged_write():
    h = clean()
    h.send("x")
    h.ack("x", 0, 20)
    v = h.check()
    assert kinds(v) == ["lost"] and "'x'" in v[0] and "0/20" in v[0]


def test_unknown_and_failed_writes_need_not_be_read():
    h = clean()
    h.send("timed-out")
    h.info("timed-out")
    h.send("never-answered")
    h.send("refused")
    h.fail("refused")
    assert h.check() == []
    assert sorted(h.unknown()) == ["never-answered", "timed-out"]
    assert h.failed() == ["refused"]


def test_unknown_write_may_be_read():
    h = clean()
    h.send("timed-out", process="A")
    h.info("timed-out")
    h.read(0, 30, "timed-out")
    assert h.check() == []


def test_phantom_read():
    h = clean()
    h.read(0, 40, "ghost")
    v = h.check()
    assert kinds(v) == ["phantom"] and "'ghost'" in v[0]


def test_phantom_ack():
    h = clean()
    h.ack("ghost", 0, 41)
    assert kinds(h.check()) == ["phantom"]


def test_failed_write_read():
    h = clean()
    h.send("refused", process="A")
    h.fail("refused")
    h.read(0, 50, "refused")
    assert kinds(h.check()) == ["failed"]


def test_acked_and_failed_is_a_contradiction():
    h = clean()
    h.fail("a1")
    assert kinds(h.check()) == ["failed"]


def test_duplicate_only_with_exactly_once():
    h = clean()
    h.read(0, 60, "a3")  # a3 also at offset 16
    v = h.check(exactly_once=True)
    assert kinds(v) == ["duplicate"] and "0/16" in v[0] and "0/60" in v[0]
    # at-least-once: the copy is allowed; its first position (16) still keeps the order
    assert h.check(exactly_once=False) == []


def test_duplicate_in_two_partitions():
    h = clean()
    h.read(1, 70, "a0")
    v = h.check(exactly_once=True)
    assert "duplicate" in kinds(v)


def test_divergent_read():
    h = clean()
    h.read(0, 12, "b4")  # offset 12 of partition 0 holds a1
    v = h.check(exactly_once=False, ordered=False)
    assert "divergent" in kinds(v)
    assert any("partition 0 offset 12" in x for x in v)


def test_ack_offset_must_match_read_offset():
    h = History()
    h.send("m")
    h.ack("m", 0, 5)
    h.read(0, 6, "m")
    v = h.check()
    assert kinds(v) == ["moved"] and "0/5" in v[0] and "0/6" in v[0]


def test_ack_without_offset_needs_the_partition_only():
    h = History()
    h.send("m")
    h.ack("m", 0)
    h.read(0, 6, "m")
    assert h.check() == []
    h.send("n")
    h.ack("n", 0)
    h.read(1, 0, "n")
    assert kinds(h.check()) == ["moved"]


def test_acked_at_two_positions():
    h = History()
    h.send("m")
    h.ack("m", 0, 5)
    h.ack("m", 0, 7)
    h.read(0, 5, "m")
    assert "moved" in kinds(h.check())


def test_read_in_another_partition_than_sent_to():
    h = History()
    h.send("m", partition=2)
    h.read(1, 0, "m")
    assert kinds(h.check()) == ["moved"]


def test_order_violation_within_a_process_and_partition():
    h = History()
    for i in range(4):
        h.send(f"v{i}", process="P")
    for i, off in enumerate([0, 1, 3, 2]):  # v3 read before v2
        h.ack(f"v{i}", 0, off)
        h.read(0, off, f"v{i}")
    v = h.check()
    assert kinds(v) == ["order"]
    assert "'v3'" in v[0] and "'v2'" in v[0]
    assert h.check(ordered=False) == []


def test_order_is_per_process_and_per_partition():
    h = History()
    # P1 and P2 interleave on partition 0; P1 also writes partition 1: all fine
    h.send("p1-0", process=1)
    h.send("p2-0", process=2)
    h.send("p1-1", process=1)
    h.send("p1-2", process=1)
    h.send("p2-1", process=2)
    h.read(0, 0, "p2-0")
    h.read(0, 1, "p1-0")
    h.read(1, 0, "p1-1")   # another partition: no order relation to p1-0
    h.read(0, 2, "p2-1")
    h.read(0, 3, "p1-2")
    assert h.check() == []


def test_send_twice_is_a_harness_bug():
    h = History()
    h.send("x")
    with pytest.raises(ValueError):
        h.send(b"x")


def test_limit_caps_each_kind():
    h = History()
    for i in range(50):
        h.send(str(i))
        h.ack(str(i), 0, i)
    v = h.check(limit=5)
    assert len(v) == 6 and v[-1] == "lost: ... and 45 more"


def test_queries_by_time_and_prefix():
    h = History()
    h.send("old")
    h.ack("old", 0, 0)
    import time
    t = time.monotonic()
    h.send("min-1")
    h.ack("min-1", 0, 1)
    h.send("maj-1")
    h.ack("maj-1", 1, 0)
    assert h.acked(since=t) == ["min-1", "maj-1"]
    assert h.acked(since=t, prefix="min-") == ["min-1"]
    assert h.acked(partition=1) == ["maj-1"]


def test_recording_from_many_threads():
    h = History()

    def work(k):
        for i in range(500):
            v = f"{k}-{i}"
            h.send(v, process=k)
            h.ack(v, k, i)
            h.read(k, i, v)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert h.acked_count() == 4000
    assert h.check() == []
