"""fetch_tracks with the real pylast against the Last.fm stub server (tests/stubs/lastfm.py).

pylast waits one real second between its retries, so the retry tests take a few seconds.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from libs.common.lastfm import LastfmError, LastfmTrack, fetch_tracks
from tests.stubs.lastfm import LastfmStub

pytestmark = pytest.mark.integration

SONGS = [(f"Artist {i}", f"Song {i}") for i in range(10)]
METHODS = {
    "top": "user.getTopTracks",
    "loved": "user.getLovedTracks",
    "recent": "user.getRecentTracks",
}


@pytest.fixture
def stub() -> Iterator[LastfmStub]:
    users = {"alice": {"top": SONGS, "loved": SONGS, "recent": SONGS}, "empty": {}}
    with LastfmStub(users=users, now_playing={"alice": ("Now", "Playing")}, max_page_size=4) as s:
        yield s


def fetch(stub: LastfmStub, **overrides: object) -> list[LastfmTrack]:
    arguments: dict[str, object] = {
        "api_key": stub.api_key,
        "username": "alice",
        "source": "top",
        "limit": 10,
        "api_url": stub.url,
        "rate_limit": False,
    }
    arguments.update(overrides)
    return fetch_tracks(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize("source", ["top", "loved", "recent"])
def test_each_source_is_paged_through_to_the_limit(stub: LastfmStub, source: str) -> None:
    tracks = fetch(stub, source=source, rate_limit=True)
    assert [(t.artist, t.title) for t in tracks] == SONGS
    assert tracks[0].key == "artist 0\u2014song 0"
    assert tracks[0].url.startswith("https://www.last.fm/music/")
    calls = stub.calls(METHODS[source])
    assert [c.params["page"] for c in calls] == ["1", "2", "3"]
    assert all(c.params["limit"].isdigit() for c in calls), calls
    assert all(c.params["user"] == "alice" for c in calls)


def test_top_tracks_carry_the_period_and_the_playcount(stub: LastfmStub) -> None:
    tracks = fetch(stub, period="7day", limit=3)
    assert [t.playcount for t in tracks] == [999, 998, 997]
    assert {c.params["period"] for c in stub.calls("user.getTopTracks")} == {"7day"}


def test_recent_tracks_leave_out_the_track_playing_now(stub: LastfmStub) -> None:
    tracks = fetch(stub, source="recent", limit=3)
    assert [(t.artist, t.title) for t in tracks] == SONGS[:3]


def test_the_limit_caps_the_total_and_the_pages_fetched(stub: LastfmStub) -> None:
    tracks = fetch(stub, limit=5)
    assert [(t.artist, t.title) for t in tracks] == SONGS[:5]
    assert [c.params["page"] for c in stub.calls("user.getTopTracks")] == ["1", "2"]
    assert {c.params["limit"] for c in stub.calls()} == {"5"}


def test_a_user_without_tracks_gets_an_empty_list(stub: LastfmStub) -> None:
    assert fetch(stub, username="empty") == []


def test_spellings_of_one_song_are_deduplicated_keeping_the_first() -> None:
    songs = [
        ("The Beatles", "Let It Be"),
        ("Queen", "Bohemian Rhapsody"),
        ("the beatles", "Let It Be - Remastered 2009"),
        ("Queen", "Bohemian Rhapsody (2011 Remaster)"),
        ("Queen", "Bohemian Rhapsody (Live)"),
    ]
    with LastfmStub(users={"bob": {"loved": songs}}) as stub:
        tracks = fetch(stub, username="bob", source="loved")
    assert [(t.artist, t.title) for t in tracks] == [songs[0], songs[1], songs[4]]


def test_an_unknown_user_is_a_permanent_error_naming_the_user(stub: LastfmStub) -> None:
    with pytest.raises(LastfmError) as caught:
        fetch(stub, username="nobody-here")
    assert str(caught.value) == "Last.fm user 'nobody-here' does not exist"
    assert caught.value.transient is False
    assert caught.value.status == "6"
    assert len(stub.calls()) == 1  # not retried


def test_a_rejected_api_key_is_a_permanent_error_about_the_key(stub: LastfmStub) -> None:
    with pytest.raises(LastfmError) as caught:
        fetch(stub, api_key="not-the-key")
    assert "API key" in str(caught.value)
    assert "LASTFM_API_KEY" in str(caught.value)
    assert caught.value.transient is False
    assert len(stub.calls()) == 1


def test_pylast_retries_a_page_through_two_rate_limit_errors(stub: LastfmStub) -> None:
    stub.inject_error(29, times=2)
    tracks = fetch(stub, limit=3)
    assert len(tracks) == 3
    assert [c.params["page"] for c in stub.calls()] == ["1", "1", "1"]


def test_a_rate_limit_outlasting_the_retries_is_transient(stub: LastfmStub) -> None:
    stub.inject_error(29, times=3)
    with pytest.raises(LastfmError) as caught:
        fetch(stub, limit=3)
    assert caught.value.transient is True
    assert caught.value.status == "29"
    assert "rate limit" in str(caught.value)
    assert len(stub.calls()) == 3


def test_server_errors_are_retried_then_transient(stub: LastfmStub) -> None:
    stub.inject_http_status(503, times=2)
    assert len(fetch(stub, limit=3)) == 3
    stub.inject_http_status(502, times=3)
    with pytest.raises(LastfmError) as caught:
        fetch(stub, limit=3)
    assert caught.value.transient is True
    assert str(caught.value) == "Last.fm is unavailable (HTTP 502)"


def test_a_closed_port_is_transient_and_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(LastfmError) as caught:
        fetch_tracks(
            api_key="k",
            username="alice",
            source="top",
            limit=3,
            api_url=f"http://127.0.0.1:{port}/2.0/",
            rate_limit=False,
        )
    assert caught.value.transient is True
    assert str(caught.value).startswith("Last.fm is unreachable: ")


def test_the_timeout_applies_to_each_request(stub: LastfmStub) -> None:
    stub.inject_stall(30, times=3)
    with pytest.raises(LastfmError) as caught:
        fetch(stub, limit=3, timeout=0.3)
    assert caught.value.transient is True
    assert str(caught.value) == "Last.fm is unreachable: no answer within 0.3 s"
    assert len(stub.calls()) == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"source": "friends"}, "unknown Last.fm source"),
        ({"period": "1day"}, "unknown Last.fm period"),
        ({"limit": 0}, "limit must be at least 1"),
        ({"api_url": "127.0.0.1:80/2.0/"}, "must be http"),
    ],
)
def test_bad_arguments_are_refused_before_any_request(
    stub: LastfmStub, overrides: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        fetch(stub, **overrides)
    assert stub.calls() == []
