"""Track keys: spellings of one song share a key, different recordings do not."""

from __future__ import annotations

import pytest

from libs.common.tracks import SEPARATOR, normalise_artist, normalise_title, track_key


def test_the_key_is_artist_and_title_joined_by_an_em_dash() -> None:
    assert SEPARATOR == "\u2014"
    assert track_key("Queen", "Bohemian Rhapsody") == "queen\u2014bohemian rhapsody"


@pytest.mark.parametrize(
    ("artist", "expected"),
    [
        ("The Beatles", "the beatles"),
        ("  The   Beatles ", "the beatles"),
        ("BJÖRK", "björk"),
        ("\uff2d\uff55\uff53\uff45", "muse"),  # fullwidth letters, NFKC
        ("Daft Punk feat. Pharrell Williams", "daft punk"),
        ("Daft Punk Feat Pharrell Williams", "daft punk"),
        ("Daft Punk ft. Pharrell Williams", "daft punk"),
        ("Daft Punk featuring Pharrell Williams", "daft punk"),
        ("Daft Punk (feat. Pharrell Williams)", "daft punk"),
        ('"Weird Al" Yankovic', '"weird al" yankovic'),
        ("'Til Tuesday", "'til tuesday"),
        ("Simon & Garfunkel", "simon & garfunkel"),
        ("!!!", "!!!"),
        ("Guns N\u2019 Roses", "guns n' roses"),
    ],
)
def test_artist_normalisation(artist: str, expected: str) -> None:
    assert normalise_artist(artist) == expected


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("Here Comes the Sun", "here comes the sun"),
        ("Here Comes the Sun - Remastered 2009", "here comes the sun"),
        ("Here Comes the Sun - 2009 Remaster", "here comes the sun"),
        ("Here Comes the Sun - Remastered", "here comes the sun"),
        ("Here Comes the Sun \u2013 Remastered 2009", "here comes the sun"),
        ("Here Comes the Sun (2009 Remaster)", "here comes the sun"),
        ("Here Comes the Sun (Remastered)", "here comes the sun"),
        ("Here Comes the Sun [Remastered Version]", "here comes the sun"),
        ("Here Comes the Sun - 2015 Digital Remaster", "here comes the sun"),
        ("Get Lucky (feat. Pharrell Williams)", "get lucky"),
        ("Get Lucky [ft. Pharrell Williams]", "get lucky"),
        ("Get Lucky feat. Pharrell Williams", "get lucky"),
        ("Get Lucky (with Pharrell Williams)", "get lucky"),
        ("Get Lucky (feat. Pharrell) - Remastered 2013", "get lucky"),
        ('"Heroes"', "heroes"),
        ('"Heroes"!', "heroes"),
        ("'Round Midnight", "'round midnight"),
        ("\u201cHeroes\u201d", "heroes"),
        ("Help!", "help"),
        ("Don\u2019t  Stop   Me Now", "don't stop me now"),
        # Different recordings keep their marker.
        ("Layla (Live)", "layla (live)"),
        ("Layla (Acoustic)", "layla (acoustic)"),
        ("Layla - Live", "layla - live"),
        ("Blue Monday - Radio Edit", "blue monday - radio edit"),
        ("Remastered Love", "remastered love"),
        ("Stand by Me with You", "stand by me with you"),
    ],
)
def test_title_normalisation(title: str, expected: str) -> None:
    assert normalise_title(title) == expected


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (("The Beatles", "Let It Be"), ("the beatles", "LET IT BE - Remastered 2009")),
        (("Daft Punk feat. Pharrell", "Get Lucky"), ("Daft Punk", "Get Lucky (feat. Pharrell)")),
        (("Sigur Rós", "Hoppípolla"), ("SIGUR RÓS", "Hoppípolla (2005 Remaster)")),
        (("Guns N' Roses", "Don\u2019t Cry"), ("Guns N\u2019 Roses", "Don't Cry")),
    ],
)
def test_spellings_of_one_song_share_a_key(one: tuple[str, str], other: tuple[str, str]) -> None:
    assert track_key(*one) == track_key(*other)


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (("Eric Clapton", "Layla"), ("Eric Clapton", "Layla (Live)")),
        (("Eric Clapton", "Layla"), ("Eric Clapton", "Layla (Acoustic)")),
        (("New Order", "Blue Monday"), ("New Order", "Blue Monday - Radio Edit")),
        (("Queen", "Heroes"), ("David Bowie", "Heroes")),
    ],
)
def test_different_recordings_or_artists_keep_distinct_keys(
    one: tuple[str, str], other: tuple[str, str]
) -> None:
    assert track_key(*one) != track_key(*other)
