"""Building blocks of the rules mapper (see ``libs.common.mapping`` and docs/mapping.md).

Everything here is used in two phases:

* spec validation calls the ``check_*`` helpers, which return a human problem description
  (or ``None``) without knowing where in the spec the value sits;
* ``Mapper`` construction calls the ``make_*`` / ``build_*`` helpers once, and the small
  functions they return are the per-cell hot path: ``str -> str`` steps that raise
  ``RuleFailure`` for bad data, and ``str -> bool`` filter tests.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

Step = Callable[[str], str]
Test = Callable[[str], bool]
Reader = Callable[[Sequence[str]], str]
FilterValue = str | int | float | bool | tuple[str | int | float | bool, ...] | None

TYPE_NAMES = ("string", "int", "float", "bool", "date", "email")
CASE_NAMES = ("lower", "upper", "title")
_TEXT_OPS = ("eq", "ne", "in", "not_in", "contains", "matches", "empty", "not_empty")
FILTER_OPS: tuple[str, ...] = (*_TEXT_OPS, "gt", "ge", "lt", "le")


class RuleFailure(Exception):
    """Bad data in one cell. ``str(exc)`` is the reason shown to users."""


def show(value: str, limit: int = 40) -> str:
    """Quote a cell value for an error message, shortened if long."""
    if len(value) > limit:
        value = value[: limit - 3] + "..."
    return repr(value)


# ---------------------------------------------------------------------------------------------
# Text steps (trim, collapse_whitespace, case, extract, default, required)

_WHITESPACE_RUN = re.compile(r"\s+")

CASE_STEPS: dict[str, Step] = {"lower": str.lower, "upper": str.upper, "title": str.title}


def collapse_whitespace(value: str) -> str:
    return _WHITESPACE_RUN.sub(" ", value)


def make_extract(pattern: re.Pattern[str]) -> Step:
    group = 1 if pattern.groups else 0
    search = pattern.search

    def extract(value: str) -> str:
        if not value:
            return value
        match = search(value)
        if match is None:
            raise RuleFailure(
                f"value {show(value)} does not match extract pattern {pattern.pattern!r}"
            )
        return match.group(group) or ""

    return extract


def make_default(default: str) -> Step:
    def apply_default(value: str) -> str:
        return value or default

    return apply_default


def require_value(value: str) -> str:
    if not value:
        raise RuleFailure("required value is empty")
    return value


# ---------------------------------------------------------------------------------------------
# Type casts: empty stays empty; otherwise canonical text or RuleFailure.

_INT = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_BOOLS = {
    "true": "true",
    "yes": "true",
    "y": "true",
    "on": "true",
    "1": "true",
    "false": "false",
    "no": "false",
    "n": "false",
    "off": "false",
    "0": "false",
}
_BOOL_WORDS = "true, false, yes, no, 1, 0, y, n, on, off"
_HAS_SPACE = re.compile(r"\s")


def cast_int(value: str) -> str:
    if not value:
        return value
    if _INT.fullmatch(value) is None:
        hint = " (digit grouping is not accepted)" if "," in value or "_" in value else ""
        raise RuleFailure(f"{show(value)} is not a valid int{hint}")
    try:
        return str(int(value))
    except ValueError:  # more digits than Python will convert
        raise RuleFailure(f"{show(value)} is too long for an int") from None


def parse_number(text: str) -> float | None:
    """A finite float for plain decimal/scientific notation, else None (no nan, inf, 1_000)."""
    if _NUMBER.fullmatch(text) is None:
        return None
    number = float(text)
    return None if number in (float("inf"), float("-inf")) else number


def cast_float(value: str) -> str:
    if not value:
        return value
    number = parse_number(value)
    if number is None:
        raise RuleFailure(f"{show(value)} is not a valid float")
    return repr(number)


def cast_bool(value: str) -> str:
    if not value:
        return value
    result = _BOOLS.get(value.lower())
    if result is None:
        raise RuleFailure(f"{show(value)} is not a valid bool (expected one of: {_BOOL_WORDS})")
    return result


def _email_problem(value: str) -> str | None:
    if _HAS_SPACE.search(value):
        return "contains whitespace"
    at_signs = value.count("@")
    if at_signs != 1:
        return "missing '@'" if at_signs == 0 else "more than one '@'"
    local, _, domain = value.partition("@")
    if not local:
        return "nothing before '@'"
    if "." not in domain:
        return "domain has no dot"
    if "" in domain.split("."):
        return "domain has an empty part"
    return None


def cast_email(value: str) -> str:
    if not value:
        return value
    problem = _email_problem(value)
    if problem is not None:
        raise RuleFailure(f"{show(value)} is not a valid email ({problem})")
    local, _, domain = value.partition("@")
    return f"{local}@{domain.lower()}"


def make_date_cast(date_format: str, output_format: str | None) -> Step:
    parse = datetime.strptime

    @functools.lru_cache(maxsize=4096)  # dates repeat; strptime is the costliest rule
    def convert(value: str) -> str:
        parsed = parse(value, date_format)  # a ValueError is not cached
        if output_format is None:
            return parsed.date().isoformat()
        return parsed.strftime(output_format)

    def cast_date(value: str) -> str:
        if not value:
            return value
        try:
            return convert(value)
        except ValueError:
            raise RuleFailure(f"{show(value)} does not match date format {date_format!r}") from None

    return cast_date


# Looked up when a Mapper is built (tests may replace entries).
CASTS: dict[str, Step] = {
    "int": cast_int,
    "float": cast_float,
    "bool": cast_bool,
    "email": cast_email,
}


def build_cast(type_name: str, date_format: str | None, output_format: str | None) -> Step | None:
    if type_name == "string":
        return None
    if type_name == "date":
        return make_date_cast(date_format or "", output_format)
    return CASTS[type_name]


def check_date_format(date_format: str) -> str | None:
    """Problem with a strptime format (bad or repeated directive), else None."""
    try:
        datetime.strptime("", date_format)
    except ValueError as exc:
        if str(exc).startswith("time data"):
            return None  # the format is fine, "" just does not match it
        return f"invalid format: {exc}"
    except re.error:
        return f"invalid format {date_format!r}: a directive is used more than once"
    return None


def check_output_format(output_format: str) -> str | None:
    try:
        sample = datetime(2001, 2, 3, 4, 5, 6).strftime(output_format)
    except ValueError as exc:
        return f"invalid format: {exc}"
    return None if sample else "must produce some text"


# ---------------------------------------------------------------------------------------------
# Templates: "{first} {last}"; "{{" and "}}" are literal braces.


@functools.lru_cache(maxsize=256)
def parse_template(text: str) -> tuple[tuple[bool, str], ...]:
    """Split a template into (is_placeholder, text) parts. Raises ValueError if malformed."""
    parts: list[tuple[bool, str]] = []
    literal: list[str] = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        if text.startswith(("{{", "}}"), pos):
            literal.append(char)
            pos += 2
        elif char == "}":
            raise ValueError(f"unmatched '}}' at position {pos} (write '}}}}' for a literal brace)")
        elif char == "{":
            name, pos = _read_placeholder(text, pos)
            if literal:
                parts.append((False, "".join(literal)))
                literal = []
            parts.append((True, name))
        else:
            literal.append(char)
            pos += 1
    if literal:
        parts.append((False, "".join(literal)))
    return tuple(parts)


def _read_placeholder(text: str, start: int) -> tuple[str, int]:
    """Read '{name}' starting at ``start``; return the name and the position after '}'."""
    end = text.find("}", start + 1)
    nested = text.find("{", start + 1)
    if end == -1:
        raise ValueError(f"unclosed '{{' at position {start} (write '{{{{' for a literal brace)")
    if nested != -1 and nested < end:
        raise ValueError(f"'{{' inside a placeholder at position {nested}")
    name = text[start + 1 : end]
    if not name:
        raise ValueError(f"empty placeholder '{{}}' at position {start}")
    return name, end + 1


def template_fields(text: str) -> list[str]:
    return [value for is_field, value in parse_template(text) if is_field]


def build_template_reader(text: str, index: dict[str, int]) -> Reader:
    parts = parse_template(text)
    pattern = "".join("%s" if is_field else value.replace("%", "%%") for is_field, value in parts)
    positions = [index[value] for is_field, value in parts if is_field]
    if not positions:
        constant = pattern % ()
        return lambda values: constant
    getter = operator.itemgetter(*positions)
    if len(positions) == 1:
        return lambda values: pattern % (getter(values),)
    return lambda values: pattern % getter(values)


# ---------------------------------------------------------------------------------------------
# Filter tests


def value_text(value: str | int | float | bool) -> str:
    """The text a spec value is compared with: the same canonical form the casts produce."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


_ORDERINGS = {"gt": operator.gt, "ge": operator.ge, "lt": operator.lt, "le": operator.le}


def check_filter_value(op: str, value: FilterValue) -> str | None:
    """Problem with a condition's value for its operator, else None."""
    if op in ("empty", "not_empty"):
        return None if value is None else f"operator {op!r} takes no value"
    if value is None:
        return f"required for operator {op!r}"
    if op in ("in", "not_in"):
        if not isinstance(value, tuple) or not value:
            return f'operator {op!r} needs a non-empty list of values, e.g. ["a", "b"]'
        return None
    if isinstance(value, tuple):
        return f"operator {op!r} needs a single value, not a list"
    if op in ("contains", "matches") and not isinstance(value, str):
        return f"operator {op!r} needs a string"
    if op in _ORDERINGS and isinstance(value, bool):
        return f"operator {op!r} needs a number or a string"
    if op == "matches":
        return check_regex(str(value))
    return None


def check_regex(pattern: str) -> str | None:
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"invalid regex {pattern!r}: {exc}"
    return None


def build_test(op: str, value: FilterValue) -> Test:
    """A predicate on one cell's text; assumes ``check_filter_value`` found no problem."""
    if op == "empty":
        return operator.not_
    if op == "not_empty":
        return bool
    if isinstance(value, tuple):
        choices = frozenset(value_text(item) for item in value)
        return choices.__contains__ if op == "in" else lambda cell: cell not in choices
    assert value is not None
    text = value_text(value)
    if op in _ORDERINGS:
        return _make_ordering(_ORDERINGS[op], text)
    if op == "matches":
        search = re.compile(text).search
        return lambda cell: search(cell) is not None
    if op == "contains":
        return lambda cell: text in cell
    return text.__eq__ if op == "eq" else text.__ne__


def _make_ordering(compare: Callable[[Any, Any], bool], text: str) -> Test:
    """Numeric comparison when both sides are numbers, else plain string comparison."""
    number = parse_number(text.strip())

    def test(cell: str) -> bool:
        if number is not None:
            cell_number = parse_number(cell.strip())
            if cell_number is not None:
                return compare(cell_number, number)
        return compare(cell, text)

    return test
