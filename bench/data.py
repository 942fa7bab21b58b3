"""The benchmark's input: a deterministic, realistic-looking people CSV and its mapping spec.

The CSV has the columns ``id,name,email,age,signup,note``. The values are messy in the ways
real exports are: names in random case with stray and doubled spaces, some written
``"Last, First"`` (so the field is quoted), mixed-case email domains, padded ages, notes with
commas, doubled quotes and line breaks inside quoted fields. About 1% of the rows carry a data
problem (an invalid email, a non-numeric age, an impossible date) so that the mapper's error
path and the row-error bookkeeping are exercised too.

``SPEC`` maps it with trim, collapse_whitespace, case, int, email and date casts; rows with
problems are skipped (``on_error: skip``) and reported as row errors.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

HEADER = ["id", "name", "email", "age", "signup", "note"]

SPEC: dict[str, object] = {
    "columns": [
        {"name": "id", "required": True, "type": "int"},
        {"name": "name", "trim": True, "collapse_whitespace": True, "case": "title"},
        {"name": "email", "trim": True, "required": True, "type": "email"},
        {"name": "age", "trim": True, "type": "int"},
        {"name": "signup", "trim": True, "type": "date", "date_format": "%d/%m/%Y"},
        {"name": "note", "trim": True, "collapse_whitespace": True},
    ],
    "on_error": "skip",
}
SPEC_JSON = json.dumps(SPEC, indent=1)


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


_FIRST = _words(
    "ada grace alan edsger barbara donald margaret john ken dennis linus guido bjarne "
    "frances katherine hedy radia sophie niklaus tony leslie shafi"
)
_LAST = _words(
    "lovelace hopper turing dijkstra liskov knuth hamilton backus thompson ritchie torvalds "
    "rossum stroustrup allen johnson lamarr perlman wilson wirth hoare lamport goldwasser"
)
_DOMAINS = ("example.com", "Example.COM", "mail.example.org", "corp.example.net", "uni.example.edu")
_WORDS = _words(
    "called back about the invoice renewal pending prefers email asked for a discount "
    "moved to another team VIP customer since 2019 do not call before noon"
)


def _name(rng: random.Random, first: str, last: str) -> str:
    roll = rng.random()
    if roll < 0.05:
        name = f"{last}, {first}"  # has a comma: csv.writer quotes it
    elif roll < 0.15:
        name = f"  {first}   {last} "  # stray and doubled spaces
    else:
        name = f"{first} {last}"
    case = rng.random()
    if case < 0.3:
        return name.upper()
    if case < 0.6:
        return name.title()
    return name


def _note(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.25:
        return ""
    words = rng.choices(_WORDS, k=rng.randint(2, 9))
    text = " ".join(words)
    if roll < 0.28:
        return text.replace(" ", "\n", 1)  # a line break inside a quoted field
    if roll < 0.31:
        return text.replace(" ", ", ", 2)  # commas: quoted
    if roll < 0.32:
        return f'said "{words[0]}" twice'  # doubled quotes
    if roll < 0.33:
        return f" {text}\r\nsecond line, with comma "  # CRLF inside quotes
    return text


def _row(rng: random.Random, row_id: int) -> list[str]:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    email = f"{first}.{last}{rng.randint(1, 9999)}@{rng.choice(_DOMAINS)}"
    age = str(rng.randint(18, 90))
    day, month, year = rng.randint(1, 28), rng.randint(1, 12), rng.randint(2010, 2024)
    signup = f"{day:02d}/{month:02d}/{year}"
    roll = rng.random()
    if roll < 0.05:
        age = f" {age} "  # fine after trim
    elif roll < 0.07:
        age = ""  # empty is fine for a non-required int
    # About 1% of the rows have a data problem, spread over three columns.
    problem = rng.random()
    if problem < 0.004:
        email = rng.choice(("not-an-email", f"{first} {last}@example.com", f"{first}@localhost"))
    elif problem < 0.007:
        age = rng.choice(("n/a", "4 2", "1,000", "forty"))
    elif problem < 0.010:
        signup = rng.choice(("31/02/2023", "2023-05-01", "13/13/2020"))
    return [str(row_id), _name(rng, first, last), email, age, signup, _note(rng)]


def generate(path: Path, rows: int, seed: int = 20240531) -> int:
    """Write ``rows`` data rows (plus the header) to ``path``; return the file size in bytes."""
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)  # default dialect: "\r\n" line endings, QUOTE_MINIMAL
        writer.writerow(HEADER)
        batch: list[list[str]] = []
        for row_id in range(1, rows + 1):
            batch.append(_row(rng, row_id))
            if len(batch) >= 10_000:
                writer.writerows(batch)
                batch.clear()
        writer.writerows(batch)
    return path.stat().st_size
