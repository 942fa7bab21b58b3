"""Track keys: one normalised string per song, so the same song from two sources dedupes.

``track_key("The Beatles", "Here Comes the Sun - Remastered 2009")`` and
``track_key("the beatles", "Here Comes The Sun")`` are both ``"the beatles—here comes the sun"``:
the artist and the title, each normalised, joined by an em dash (U+2014, which cannot
occur inside a normalised part because all dashes become ``-``).

Normalising: Unicode NFKC, casefold, curly quotes and dashes made plain, whitespace
collapsed; featured-artist credits dropped ("feat." / "ft." / "featuring", in the artist
and in the title, bracketed or not); remaster suffixes dropped ("- Remastered 2011",
"(2011 Remaster)", "[Remastered Version]"...); surrounding quotes and punctuation stripped.
Anything that names a different recording stays: "(Live)", "(Acoustic)", "- Radio Edit".
"""

from __future__ import annotations

import re
import unicodedata

SEPARATOR = "\u2014"

_PLAIN = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201b": "'",
        "\u2032": "'",
        "`": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u00ab": '"',
        "\u00bb": '"',
        "\u2010": "-",
        "\u2011": "-",
        "\u2012": "-",
        "\u2013": "-",
        "\u2014": "-",
        "\u2015": "-",
        "\u2212": "-",
    }
)

_FEAT = r"(?:feat\.?|ft\.|featuring|with)"
# "(feat. X)" / "[ft. X]" anywhere; "with" only in brackets, where it is a credit.
_BRACKETED_FEAT = re.compile(rf"\s*[(\[]\s*{_FEAT}\s[^)\]]*[)\]]")
# " feat. X" up to the end (artist and title); no "with": "Stand by Me with You" is a title.
_TRAILING_FEAT = re.compile(r"\s+(?:feat\.?|ft\.|featuring)\s.*$")

_REMASTER = (
    r"(?:\d{4}\s+)?(?:digital(?:ly)?\s+)?remaster(?:ed)?(?:\s+(?:version|edition))?(?:\s+\d{4})?"
)
_DASHED_REMASTER = re.compile(rf"\s+-\s+{_REMASTER}\s*$")
_BRACKETED_REMASTER = re.compile(rf"\s*[(\[]\s*{_REMASTER}\s*[)\]]")

_QUOTES = "\"'"
_PUNCTUATION = " .,;:!?-"


def _clean(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold().translate(_PLAIN)
    return " ".join(text.split())


def _strip_surrounding(text: str) -> str:
    """Drop a pair of enclosing quotes and any leading/trailing punctuation.

    Only paired quotes go: '"Weird Al" Yankovic' and "'Round Midnight" keep theirs.
    "!!!" is a band: a name is never stripped down to nothing.
    """
    stripped = text.strip(_PUNCTUATION)
    for _ in range(3):
        if len(stripped) < 2 or stripped[0] != stripped[-1] or stripped[0] not in _QUOTES:
            break
        stripped = stripped[1:-1].strip(_PUNCTUATION)
    return stripped or text


def normalise_artist(artist: str) -> str:
    text = _clean(artist)
    text = _BRACKETED_FEAT.sub("", text)
    text = _TRAILING_FEAT.sub("", text)
    return _strip_surrounding(text)


def normalise_title(title: str) -> str:
    text = _clean(title)
    for _ in range(4):  # "Song (feat. X) - Remastered 2011": peel suffixes until stable
        before = text
        text = _DASHED_REMASTER.sub("", text)
        text = _BRACKETED_REMASTER.sub("", text)
        text = _BRACKETED_FEAT.sub("", text)
        text = _TRAILING_FEAT.sub("", text)
        if text == before:
            break
    return _strip_surrounding(" ".join(text.split()))


def track_key(artist: str, title: str) -> str:
    """The dedupe key of a song: ``f"{normalise_artist(artist)}\u2014{normalise_title(title)}"``."""
    return f"{normalise_artist(artist)}{SEPARATOR}{normalise_title(title)}"
