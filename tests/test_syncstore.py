"""The sync engine on the real encrypted libSQL store."""

import pytest

from p2pgate.storage.database import connect, migrate
from p2pgate.storage.syncstore import LibsqlStorage, decode_state, encode_state
from sync.errors import LocalProtocolError
from sync.model import Change
from sync.replica import Replica
from sync.storage import Batch

KEY = "s" * 32


@pytest.fixture
def conn(tmp_path):
    c = connect(tmp_path / "s.db", KEY)
    migrate(c)
    yield c
    c.close()


def make_replica(conn, name="dev-a"):
    replica = Replica(name, LibsqlStorage(conn))
    replica.declare("posts", {"likes": "counter", "tags": "set", "body": "text"})
    return replica


def test_replica_state_survives_a_reopen(conn, tmp_path):
    r = make_replica(conn)
    r.put("posts", "p1", {"title": "t", "likes": 2, "tags": ["a", "b"], "body": "hi"}, 1000.0)
    r.patch("posts", "p1", {"tags": {"$remove": ["a"]}, "body": {"$splice": [2, 0, "!"]}},
            1001.0)
    r.put("posts", "p2", {"title": "x"}, 1002.0)
    r.delete("posts", "p2", 1003.0)
    before = (r.get("posts", "p1"), r.version_vector(), r.clock.last)
    again = make_replica(conn)
    assert (again.get("posts", "p1"), again.version_vector(), again.clock.last) == before
    assert again.get("posts", "p2") is None
    assert before[0] == {"title": "t", "likes": 2, "tags": ["b"], "body": "hi!"}


def test_state_encoding_round_trips_every_field_type(conn):
    r = make_replica(conn)
    r.put("posts", "p", {"title": {"deep": [1, 2.5, None, True]}, "likes": 5,
                         "tags": ["a", {"k": 1}], "body": "text"}, 1000.0)
    r.patch("posts", "p", {"tags": {"$remove": ["a"]}, "likes": {"$inc": -1}}, 1001.0)
    state = r.storage.get_doc("posts", "p")
    assert decode_state(encode_state(state)) == state


def test_events_and_cursor_are_written_with_the_batch(conn):
    storage = LibsqlStorage(conn, event_retention=3)
    r = Replica("dev-a", storage)
    for i in range(5):
        r.put("notes", f"n{i}", {"i": i}, 1000.0 + i)
    assert storage.cursor == 5
    assert [e.doc_id for e in storage.events_after(0, 10)] == ["n2", "n3", "n4"]
    assert storage.horizon == 2
    assert [d for d, _, _ in storage.visible_docs("notes", None, 3, 10)] == ["n3", "n4"]


def test_a_bad_batch_writes_nothing(conn):
    storage = LibsqlStorage(conn)
    r = Replica("dev-a", storage)
    r.put("notes", "n1", {"a": 1}, 1000.0)
    good = storage.changes_since("dev-a", 0, 10)[0]
    gap = Change("dev-a", 5, good.hlc + 10, good.edits)
    with pytest.raises(LocalProtocolError, match="does not continue"):
        storage.apply_batch(Batch([gap], {("notes", "zzz"): storage.get_doc("notes", "n1")},
                                  good.hlc + 10))
    assert storage.get_doc("notes", "zzz") is None
    assert storage.load().version_vector == {"dev-a": 1}
    assert storage.cursor == 1


def test_group_commit_keeps_each_batch_atomic(conn):
    storage = LibsqlStorage(conn)
    r = Replica("dev-a", storage)
    with storage.group():
        r.put("notes", "a", {"v": 1}, 1000.0)
        with pytest.raises(LocalProtocolError):
            r.patch("notes", "b", {"v": {"$inc": "not a number"}}, 1001.0)
        r.put("notes", "c", {"v": 3}, 1002.0)
    assert [e.doc_id for e in storage.events_after(0, 10)] == ["a", "c"]
    again = Replica("dev-a", LibsqlStorage(conn))
    assert again.get("notes", "a") == {"v": 1}
    assert again.get("notes", "c") == {"v": 3}
    assert again.version_vector() == {"dev-a": 2}


def test_failed_group_commit_leaves_nothing(conn):
    storage = LibsqlStorage(conn)
    r = Replica("dev-a", storage)

    def write_then_crash():
        with storage.group():
            r.put("notes", "a", {"v": 1}, 1000.0)
            raise RuntimeError("crash before commit")

    with pytest.raises(RuntimeError):
        write_then_crash()
    assert storage.cursor == 0
    assert storage.new_events == []
    assert Replica("dev-a", LibsqlStorage(conn)).get("notes", "a") is None
