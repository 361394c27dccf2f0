"""Unit tests of the API's parts that need no running node."""

import asyncio

import pytest

from p2pgate.api.errors import NotFound, from_domain
from p2pgate.api.events import ChangeRecord, EventHub, Reset
from p2pgate.api.tokens import Scope, TokenError, TokenStore, parse_scope
from p2pgate.config import ConfigError, load_config, parse_host_port
from p2pgate.documents import DocumentNotFound, FieldTypeConflict, InvalidDocument, VersionMismatch
from p2pgate.errors import P2PGateError
from p2pgate.ratelimit import RateLimiter
from p2pgate.storage.database import Database

# -- config ------------------------------------------------------------------------


def test_config_defaults_and_flags_override_file(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text('api = "127.0.0.1:9000"\nrate_limit = 5\n')
    cfg = load_config(path, {"api": "127.0.0.1:9100", "mdns": None})
    assert cfg.api == ("127.0.0.1", 9100)
    assert cfg.rate_limit == 5
    assert cfg.mdns is True
    assert cfg.listen == ("0.0.0.0", 7771)
    assert cfg.api_url == "http://127.0.0.1:9100"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('api = "nope"\n', "config.toml: api: expected HOST:PORT, got 'nope'"),
        ("apx = 1\n", "config.toml: apx: unknown key"),
        ("rate_limit = -1\n", "config.toml: rate_limit: Input should be greater than 0"),
        ('log_format = "xml"\n', "config.toml: log_format: Input should be 'human' or 'json'"),
        ("api = [\n", "config.toml: not valid TOML"),
    ],
)
def test_bad_config_is_one_line_naming_the_key(tmp_path, content, message):
    path = tmp_path / "config.toml"
    path.write_text(content)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_flag_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match="^flags: listen: expected HOST:PORT"):
        load_config(None, {"listen": "7771"})


def test_host_port_forms():
    assert parse_host_port("[::1]:8771") == ("::1", 8771)
    assert parse_host_port(":7771") == ("0.0.0.0", 7771)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_host_port("host:99999")


# -- rate limit --------------------------------------------------------------------


def test_rate_limiter_allows_burst_then_paces():
    limiter = RateLimiter(rate=10, burst=3)
    assert [limiter.acquire("a", 0.0) for _ in range(3)] == [0, 0, 0]
    assert limiter.acquire("a", 0.0) == pytest.approx(0.1)
    assert limiter.acquire("b", 0.0) == 0  # per key
    assert limiter.acquire("a", 0.1) == 0
    assert limiter.acquire("a", 0.1) > 0


# -- tokens ------------------------------------------------------------------------


@pytest.fixture
async def tokens(tmp_path):
    db = await Database.open(tmp_path / "t.db", "k" * 32)
    now = [1000.0]
    store = TokenStore(db, "the-admin-token", clock=lambda: now[0])
    await store.load()
    yield store, db, now
    await db.close()


def test_scopes_parse_strictly():
    assert parse_scope("notes:rw") == Scope("notes", True)
    assert parse_scope("*:r") == Scope("*", False)
    for bad in ("notes", "notes:w", ":r", "no/slash:r", "notes\n:rw"):
        with pytest.raises(TokenError):
            parse_scope(bad)


async def test_admin_and_app_tokens(tokens):
    store, db, now = tokens
    admin = store.authenticate("the-admin-token")
    assert admin is not None and admin.admin
    app, token = await store.add("notes-app", ["notes:rw", "photos:r"], ttl=60)
    principal = store.authenticate(token)
    assert principal is not None and not principal.admin
    assert principal.can_write("notes") and principal.can_read("photos")
    assert not principal.can_write("photos") and not principal.can_read("other")
    assert store.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert store.authenticate("garbage") is None
    # stored hashed: the secret part never reaches the database
    secret = token.split("_", 2)[2]  # p2pg_ID_SECRET; the secret itself may hold "_"
    rows = await db.run(lambda c: c.execute("SELECT * FROM app_tokens").fetchall())
    assert secret not in repr(rows)
    # survives a reload
    again = TokenStore(db, "the-admin-token", clock=lambda: now[0])
    await again.load()
    assert again.authenticate(token) == principal
    now[0] += 61
    assert store.authenticate(token) is None  # expired
    await store.revoke("notes-app")
    with pytest.raises(TokenError):
        await store.revoke("notes-app")


async def test_duplicate_and_scopeless_apps_refused(tokens):
    store, _, _ = tokens
    await store.add("a", ["x:r"])
    with pytest.raises(TokenError, match="exists"):
        await store.add("a", ["x:r"])
    with pytest.raises(TokenError, match="at least one scope"):
        await store.add("b", [])


async def test_an_app_cannot_pass_for_the_admin_or_spend_its_rate(tokens):
    store, _, _ = tokens
    for name in ("admin", "Admin", " admin "):
        with pytest.raises(TokenError, match="reserved"):
            await store.add(name, ["x:r"])
    _, token = await store.add("admin2", ["x:r"])
    app, admin = store.authenticate(token), store.authenticate("the-admin-token")
    assert app.token_id != admin.token_id  # the rate limit keys on these, not on names
    limiter = RateLimiter(1.0, 2)
    assert [limiter.acquire(app.token_id, 0.0) for _ in range(3)][-1] > 0  # the app spent it
    assert limiter.acquire(admin.token_id, 0.0) == 0  # the admin still gets through


# -- event hub ---------------------------------------------------------------------


class ListFeed:
    """A change feed over a list (the node's feed is the libSQL store's)."""

    def __init__(self):
        self.records: list[ChangeRecord] = []
        self.horizon = 0

    @property
    def cursor(self):
        return self.records[-1].cursor if self.records else 0

    def add(self, collection, doc_id):
        rec = ChangeRecord(self.cursor + 1, collection, doc_id, False, "me")
        self.records = [r for r in self.records if r.doc_id != doc_id] + [rec]
        return rec

    async def changes_after(self, cursor, limit):
        return [r for r in self.records if r.cursor > cursor][:limit]


async def _take(stream, n):
    return [await asyncio.wait_for(anext(stream), 5) for _ in range(n)]


async def test_hub_replays_history_then_live_without_gap_or_duplicate():
    feed = ListFeed()
    hub = EventHub(feed)
    for i in range(5):
        feed.add("notes", f"d{i}")
    stream = hub.stream(2, lambda c: c == "notes")
    got = await _take(stream, 3)
    assert [r.cursor for r in got] == [3, 4, 5]
    hub.publish(feed.add("hidden", "h"))
    hub.publish(feed.add("notes", "d9"))
    assert [r.doc_id for r in await _take(stream, 1)] == ["d9"]
    await stream.aclose()


async def test_hub_resets_expired_and_unknown_cursors():
    feed = ListFeed()
    for i in range(3):
        feed.add("notes", f"d{i}")
    hub = EventHub(feed)  # it is published every change made after this
    feed.horizon = 2
    stream = hub.stream(1, lambda c: True)
    first = await _take(stream, 1)
    assert first == [Reset(3, "cursor expired")]
    await stream.aclose()
    stream = hub.stream(99, lambda c: True)
    assert await _take(stream, 1) == [Reset(3, "unknown cursor")]
    await stream.aclose()


@pytest.mark.parametrize(("domain", "status", "code"), [
    (DocumentNotFound("no document 'a' in 'c'"), 404, "not_found"),
    (FieldTypeConflict("field types are fixed"), 409, "conflict"),
    (VersionMismatch("the document changed"), 412, "precondition_failed"),
    (InvalidDocument("n: not a number"), 422, "invalid"),
])
def test_domain_errors_map_to_one_http_status_each(domain, status, code):
    mapped = from_domain(domain)
    assert mapped is not None
    assert (mapped.status, mapped.code, str(mapped)) == (status, code, str(domain))


def test_an_error_without_a_mapping_is_not_guessed():
    assert from_domain(P2PGateError("something else")) is None
    already = NotFound("x")
    assert from_domain(already) is already


async def test_a_scoped_stream_learns_nothing_from_other_collections():
    """Hardening #20: a `notes` reader's reset names the latest `notes` change, not the
    node's cursor, and a cursor past the horizon is no reset if no `notes` change was lost."""
    feed = ListFeed()
    hub = EventHub(feed)
    hub.publish(feed.add("notes", "n"))
    for i in range(5):
        hub.publish(feed.add("other", f"o{i}"))
    feed.horizon = 4
    notes = lambda c: c == "notes"  # noqa: E731
    assert hub.latest(notes) == 1
    stream = hub.stream(99, notes)
    assert await _take(stream, 1) == [Reset(1, "unknown cursor")]
    await stream.aclose()
    stream = hub.stream(1, notes)  # older than the horizon, but only `other` changes went
    taking = asyncio.ensure_future(_take(stream, 1))
    while not hub._subscribers:  # noqa: ASYNC110 (the generator registers on its first step)
        await asyncio.sleep(0)
    hub.publish(feed.add("notes", "m"))
    assert [(r.doc_id, r.cursor) for r in await taking] == [("m", 7)]
    await stream.aclose()
    stream = hub.stream(0, notes)  # the first `notes` change is gone with the horizon
    assert await _take(stream, 1) == [Reset(7, "cursor expired")]
    await stream.aclose()


def test_cursor_views_round_trip_and_hide_the_node_cursor():
    from p2pgate.api.cursors import PLAIN, CursorView

    one, two = CursorView(b"1" * 32), CursorView(b"2" * 32)
    for cursor in (0, 1, 2, 3, 1000, 2**52):
        assert one.read(one.show(cursor)) == cursor
        assert PLAIN.show(cursor) == PLAIN.read(cursor) == cursor
    shown = [one.show(c) for c in range(1, 50)]
    assert len(set(shown)) == 49 and all(0 < s <= 2**52 for s in shown)
    assert shown != sorted(shown)  # no order, so no gaps to count
    assert [two.show(c) for c in range(1, 50)] != shown  # each token its own
    assert one.read(2**52 + 1) is None
    assert one.show(0) == 0  # "from the start" stays
    version = one.show_version("17")
    assert version != "17" and one.read_version(version) == "17"
    assert one.read_version("*") == "*"
    for forged in ("abc", "\u00b2", "9" * 30, str(2**53)):
        assert one.read_version(forged) == "-"
