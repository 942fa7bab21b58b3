"""Last.fm: a user's top, loved or recent tracks, paged by pylast, errors made user-facing.

``fetch_tracks(api_key=..., username=..., source="top", limit=200)`` returns at most
``limit`` :class:`LastfmTrack`, deduplicated by :func:`libs.common.tracks.track_key`
(so it may return fewer). pylast walks the pages itself; ``limit`` is both the page size
it asks for and the total it stops at (Last.fm caps a page at 1000 items or fewer and
pylast then fetches further pages). Each page request is retried 3 times by pylast on
rate limiting (error 29), Last.fm's temporary errors (8, 11, 16), HTTP 5xx and network
errors, one second apart; what still fails becomes a :class:`LastfmError`.

``api_url`` points pylast at another endpoint than ``https://ws.audioscrobbler.com/2.0/``
(a stub in tests, a relay in production): pylast builds a new ``httpx2.Client`` per
request with ``mounts=network.proxy``, so the ``proxy=`` dict given to
``LastFMNetwork`` mounts :class:`_ApiTransport` for ``https://ws.audioscrobbler.com``.
The transport rewrites each request's scheme, host, port and path to ``api_url``'s
(keeping the query and the form body) and applies ``timeout`` to it; everything else
(request building, XML parsing, paging, retries) is pylast's own code.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass

import httpx2
import pylast

from libs.common.tracks import track_key

SOURCES = ("top", "loved", "recent")
PERIODS = (
    pylast.PERIOD_OVERALL,
    pylast.PERIOD_7DAYS,
    pylast.PERIOD_1MONTH,
    pylast.PERIOD_3MONTHS,
    pylast.PERIOD_6MONTHS,
    pylast.PERIOD_12MONTHS,
)
#: Last.fm error codes a later retry may resolve: operation failed, offline,
#: temporarily unavailable, rate limit exceeded.
_TRANSIENT_CODES = frozenset({"8", "11", "16", "29"})
#: Where pylast sends every request (``LastFMNetwork.ws_server``).
_LASTFM_ORIGIN = "https://ws.audioscrobbler.com"


@dataclass(frozen=True)
class LastfmTrack:
    artist: str
    title: str
    key: str
    url: str  # the track's Last.fm page, built locally by pylast
    playcount: int | None = None  # the user's play count, for "top" only


class LastfmError(Exception):
    """A Last.fm failure with a one-line, user-facing ``str()``.

    ``transient``: worth retrying later (rate limit, 5xx, unreachable); ``status`` is
    Last.fm's error code or the HTTP status, when there was one.
    """

    def __init__(self, message: str, *, transient: bool, status: str | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.status = status


class _ApiTransport(httpx2.BaseTransport):
    """Sends pylast's requests to ``api_url`` (when given) with our ``timeout``."""

    def __init__(self, api_url: str | None, timeout: float) -> None:
        self._target = httpx2.URL(api_url) if api_url else None
        if self._target is not None and (
            self._target.scheme not in ("http", "https") or not self._target.host
        ):
            raise ValueError(
                f"the Last.fm API URL must be http(s)://host[:port]/path, not {api_url!r}"
            )
        self._timeout = httpx2.Timeout(timeout).as_dict()
        proxy = _environment_proxy(api_url or _LASTFM_ORIGIN)
        self._inner = httpx2.HTTPTransport(verify=pylast.SSL_CONTEXT, proxy=proxy)

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if self._target is not None:
            target = self._target
            request.url = request.url.copy_with(
                scheme=target.scheme, host=target.host, port=target.port, path=target.path
            )
            request.headers["Host"] = target.netloc.decode("ascii")
        request.extensions = {**request.extensions, "timeout": self._timeout}
        return self._inner.handle_request(request)

    def __exit__(self, *exc: object) -> None:
        """pylast opens and closes a client per request: stay open until :meth:`close`."""

    def close(self) -> None:
        self._inner.close()


def _environment_proxy(url: str) -> str | None:
    """The proxy ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` name for ``url``; none for loopback."""
    parts = httpx2.URL(url)
    if parts.host in ("localhost", "127.0.0.1", "::1") or urllib.request.proxy_bypass(parts.host):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get(parts.scheme) or proxies.get("all")


def fetch_tracks(
    *,
    api_key: str,
    username: str,
    source: str,
    limit: int,
    period: str = pylast.PERIOD_OVERALL,
    api_url: str | None = None,
    rate_limit: bool = True,
    timeout: float = 20,
) -> list[LastfmTrack]:
    """Up to ``limit`` distinct tracks of ``username``'s ``source`` (one of :data:`SOURCES`).

    ``period`` (one of :data:`PERIODS`) applies to "top". "recent" leaves out the track
    the user is playing right now: it is not a finished play yet.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown Last.fm source {source!r}: expected one of {SOURCES}")
    if period not in PERIODS:
        raise ValueError(f"unknown Last.fm period {period!r}: expected one of {PERIODS}")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    transport = _ApiTransport(api_url, timeout)
    try:
        network = pylast.LastFMNetwork(api_key=api_key, proxy={_LASTFM_ORIGIN: transport})
        if rate_limit:
            network.enable_rate_limit()
        tracks = _fetch(network.get_user(username), source, limit, period)
    except (pylast.PyLastError, httpx2.HTTPError) as exc:
        raise _translate(exc, username, timeout) from exc
    finally:
        transport.close()
    unique: dict[str, LastfmTrack] = {}
    for track in tracks:
        unique.setdefault(track.key, track)
    return list(unique.values())


def _fetch(user: pylast.User, source: str, limit: int, period: str) -> list[LastfmTrack]:
    if source == "top":
        top = user.get_top_tracks(period=period, limit=limit, cacheable=False)
        return [t for item in top if (t := _track(item.item, item.weight)) is not None]
    if source == "loved":
        items = user.get_loved_tracks(limit=limit, cacheable=False)
    else:
        items = user.get_recent_tracks(limit=limit, cacheable=False, now_playing=False)
    return [t for item in items if (t := _track(item.track)) is not None]


def _track(track: pylast.Track, playcount: float | None = None) -> LastfmTrack | None:
    who, title = track.get_artist(), track.get_title()
    artist = who.get_name() if who is not None else None
    if not artist or not title:  # an entry without a name cannot be looked up anywhere
        return None
    return LastfmTrack(
        artist=artist,
        title=title,
        key=track_key(artist, title),
        url=track.get_url(),
        playcount=None if playcount is None else int(playcount),
    )


def _translate(exc: Exception, username: str, timeout: float) -> LastfmError:
    if isinstance(exc, pylast.WSError):
        return _translate_status(str(exc.status), str(exc.details), username)
    cause = exc.underlying_error if isinstance(exc, pylast.NetworkError) else exc.__cause__
    if isinstance(exc, httpx2.HTTPError):
        cause = exc
    if isinstance(cause, httpx2.TimeoutException):
        return LastfmError(
            f"Last.fm is unreachable: no answer within {timeout:g} s", transient=True
        )
    if isinstance(cause, (httpx2.HTTPError, OSError)):
        return LastfmError(
            f"Last.fm is unreachable: {cause or type(cause).__name__}", transient=True
        )
    reason = exc.underlying_error if isinstance(exc, pylast.MalformedResponseError) else exc
    detail = str(reason) or repr(cause or reason)
    return LastfmError(f"Last.fm sent an unreadable response: {detail}", transient=True)


def _translate_status(status: str, details: str, username: str) -> LastfmError:
    if status == "6":
        return LastfmError(
            f"Last.fm user {username!r} does not exist", transient=False, status=status
        )
    if status == "10":
        message = "the Last.fm API key was rejected (error 10): check LASTFM_API_KEY"
        return LastfmError(message, transient=False, status=status)
    if status == "29":
        message = "Last.fm rate limit exceeded (error 29): try again later"
        return LastfmError(message, transient=True, status=status)
    if status.isdigit() and int(status) >= 500:
        return LastfmError(f"Last.fm is unavailable (HTTP {status})", transient=True, status=status)
    transient = status in _TRANSIENT_CODES
    kind = "is temporarily unavailable" if transient else "refused the request"
    return LastfmError(
        f"Last.fm {kind} (error {status}): {details}", transient=transient, status=status
    )
