"""Unit tests for the rules mapper (libs/common/mapping.py, spec in docs/mapping.md)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from libs.common import mapping_rules
from libs.common.mapping import Mapper, RowError, Spec, SpecError, parse_spec


def make_mapper(spec: dict[str, Any], header: list[str]) -> Mapper:
    return Mapper(parse_spec(json.dumps(spec)), header)


def map_cell(column: dict[str, Any], value: str) -> tuple[list[str] | None, list[RowError]]:
    """Map one value through one output column read from input column 'in'."""
    mapper = make_mapper({"columns": [{"name": "out", "source": "in", **column}]}, ["in"])
    return mapper.map_row(1, [value])


def spec_error(raw: str | bytes) -> str:
    with pytest.raises(SpecError) as caught:
        parse_spec(raw)
    return str(caught.value)


# ---------------------------------------------------------------------------------------------
# Passthrough


@pytest.mark.parametrize("raw", [None, "", "   \n\t", b"", b"  \n"])
def test_blank_spec_is_passthrough(raw: str | bytes | None) -> None:
    spec = parse_spec(raw)
    assert spec == Spec()
    assert spec.columns is None
    mapper = Mapper(spec, ["a", "b"])
    assert mapper.output_header == ["a", "b"]
    assert mapper.map_row(1, [" x ", ""]) == ([" x ", ""], [])


def test_passthrough_returns_a_new_list() -> None:
    mapper = Mapper(parse_spec(None), ["a"])
    values = ["x"]
    output, _ = mapper.map_row(1, values)
    assert output == values
    assert output is not values


def test_passthrough_still_applies_filter() -> None:
    mapper = make_mapper({"filter": [{"column": "a", "op": "eq", "value": "keep"}]}, ["a", "b"])
    assert mapper.output_header == ["a", "b"]
    assert mapper.map_row(1, ["keep", "1"]) == (["keep", "1"], [])
    assert mapper.map_row(2, ["drop", "1"]) == (None, [])


# ---------------------------------------------------------------------------------------------
# Column selection, renaming, templates


def test_columns_select_rename_and_reorder() -> None:
    spec = {"columns": [{"name": "c"}, {"name": "first", "source": "a"}]}
    mapper = make_mapper(spec, ["a", "b", "c"])
    assert mapper.output_header == ["c", "first"]
    assert mapper.map_row(1, ["1", "2", "3"]) == (["3", "1"], [])


def test_repeated_header_name_uses_first_occurrence() -> None:
    mapper = make_mapper({"columns": [{"name": "a"}]}, ["a", "a"])
    assert mapper.map_row(1, ["first", "second"]) == (["first"], [])


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{first} {last}", "Ada Lovelace"),
        ("{last}, {first}", "Lovelace, Ada"),
        ("{{{first}}}", "{Ada}"),
        ("literal {{braces}}", "literal {braces}"),
        ("100% {first}", "100% Ada"),
        ("constant", "constant"),
        ("{Full Name:x}", "  raw  "),
    ],
)
def test_template(template: str, expected: str) -> None:
    header = ["first", "last", "Full Name:x"]
    mapper = make_mapper({"columns": [{"name": "out", "template": template}]}, header)
    assert mapper.map_row(1, ["Ada", "Lovelace", "  raw  "]) == ([expected], [])


def test_template_uses_raw_values_then_applies_column_steps() -> None:
    spec = {"columns": [{"name": "out", "template": "{a}-{b}", "trim": True, "case": "upper"}]}
    mapper = make_mapper(spec, ["a", "b"])
    assert mapper.map_row(1, [" x ", " y "]) == (["X - Y"], [])


# ---------------------------------------------------------------------------------------------
# Text operations and their order


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ({}, "  as is  ", "  as is  "),
        ({"trim": True}, " \t a  b \n", "a  b"),
        ({"collapse_whitespace": True}, "a  \t\n b", "a b"),
        ({"collapse_whitespace": True}, "  a  b  ", " a b "),
        ({"trim": True, "collapse_whitespace": True}, "  a  b  ", "a b"),
        ({"case": "lower"}, "MiXeD", "mixed"),
        ({"case": "upper"}, "MiXeD", "MIXED"),
        ({"case": "title"}, "ada lovelace", "Ada Lovelace"),
        ({"extract": r"(\d+)"}, "order 1234 done", "1234"),
        ({"extract": r"\d+"}, "x42y", "42"),
        ({"extract": r"a(b)?"}, "a", ""),
        ({"extract": r"(\d+)"}, "", ""),
        ({"default": "n/a"}, "", "n/a"),
        ({"default": "n/a"}, "value", "value"),
        ({"trim": True, "default": "n/a"}, "   ", "n/a"),
        ({"required": True}, "x", "x"),
        ({"required": True, "default": "d"}, "", "d"),
        ({"trim": True, "case": "upper", "extract": r"^(\w+)"}, "  bob smith", "BOB"),
        ({"collapse_whitespace": True, "extract": "^(a b)$"}, "a   b", "a b"),
        ({"extract": "(x)", "default": "none"}, "", "none"),
        ({"default": "7", "type": "int"}, "", "7"),
        ({"trim": True, "type": "int"}, " 12 ", "12"),
    ],
)
def test_text_operations(column: dict[str, Any], value: str, expected: str) -> None:
    assert map_cell(column, value) == ([expected], [])


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ({"required": True}, "", "required value is empty"),
        ({"trim": True, "required": True}, "   ", "required value is empty"),
        (
            {"extract": r"(\d+)"},
            "no digits",
            r"value 'no digits' does not match extract pattern '(\\d+)'",
        ),
    ],
)
def test_text_operation_failures(column: dict[str, Any], value: str, reason: str) -> None:
    assert map_cell(column, value) == (None, [RowError(1, "out", reason)])


def test_long_values_are_shortened_in_reasons() -> None:
    _, errors = map_cell({"type": "int"}, "x" * 100)
    assert errors[0].reason == "'" + "x" * 37 + "...' is not a valid int"


# ---------------------------------------------------------------------------------------------
# Types


DATE = {"type": "date", "date_format": "%d/%m/%Y"}


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ({"type": "string"}, " any ", " any "),
        ({"type": "int"}, "42", "42"),
        ({"type": "int"}, "-7", "-7"),
        ({"type": "int"}, "+5", "5"),
        ({"type": "int"}, "007", "7"),
        ({"type": "int"}, "-0", "0"),
        ({"type": "float"}, "1.5", "1.5"),
        ({"type": "float"}, "3", "3.0"),
        ({"type": "float"}, ".5", "0.5"),
        ({"type": "float"}, "1e3", "1000.0"),
        ({"type": "float"}, "-2.50", "-2.5"),
        ({"type": "float"}, "0.1000000000000000055511151231257827", "0.1"),
        ({"type": "bool"}, "TRUE", "true"),
        ({"type": "bool"}, "Yes", "true"),
        ({"type": "bool"}, "y", "true"),
        ({"type": "bool"}, "on", "true"),
        ({"type": "bool"}, "1", "true"),
        ({"type": "bool"}, "False", "false"),
        ({"type": "bool"}, "NO", "false"),
        ({"type": "bool"}, "n", "false"),
        ({"type": "bool"}, "off", "false"),
        ({"type": "bool"}, "0", "false"),
        (DATE, "05/01/2024", "2024-01-05"),
        (DATE, "5/1/2024", "2024-01-05"),
        ({**DATE, "output_format": "%Y%m%d"}, "31/12/1999", "19991231"),
        (
            {"type": "date", "date_format": "%Y-%m-%d %H:%M", "output_format": "%H.%M"},
            "2024-02-29 13:45",
            "13.45",
        ),
        ({"type": "email"}, "Ada.L@Example.COM", "Ada.L@example.com"),
        ({"type": "email"}, "x+tag@sub.domain.org", "x+tag@sub.domain.org"),
    ],
)
def test_type_cast_valid(column: dict[str, Any], value: str, expected: str) -> None:
    assert map_cell(column, value) == ([expected], [])


@pytest.mark.parametrize("type_name", ["string", "int", "float", "bool", "date", "email"])
def test_empty_value_with_type_stays_empty(type_name: str) -> None:
    column: dict[str, Any] = {"type": type_name}
    if type_name == "date":
        column["date_format"] = "%Y"
    assert map_cell(column, "") == ([""], [])


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ({"type": "int"}, "1.5", "'1.5' is not a valid int"),
        ({"type": "int"}, "1.0", "'1.0' is not a valid int"),
        ({"type": "int"}, "abc", "'abc' is not a valid int"),
        ({"type": "int"}, " 5", "' 5' is not a valid int"),
        ({"type": "int"}, "1e3", "'1e3' is not a valid int"),
        ({"type": "int"}, "1,234", "'1,234' is not a valid int (digit grouping is not accepted)"),
        ({"type": "int"}, "1_234", "'1_234' is not a valid int (digit grouping is not accepted)"),
        ({"type": "int"}, "٣", "'٣' is not a valid int"),
        ({"type": "int"}, "9" * 5000, "'" + "9" * 37 + "...' is too long for an int"),
        ({"type": "float"}, "abc", "'abc' is not a valid float"),
        ({"type": "float"}, "1,5", "'1,5' is not a valid float"),
        ({"type": "float"}, "nan", "'nan' is not a valid float"),
        ({"type": "float"}, "inf", "'inf' is not a valid float"),
        ({"type": "float"}, "1e999", "'1e999' is not a valid float"),
        ({"type": "float"}, ".", "'.' is not a valid float"),
        (
            {"type": "bool"},
            "maybe",
            "'maybe' is not a valid bool "
            "(expected one of: true, false, yes, no, 1, 0, y, n, on, off)",
        ),
        (DATE, "2024-01-05", "'2024-01-05' does not match date format '%d/%m/%Y'"),
        (DATE, "31/02/2024", "'31/02/2024' does not match date format '%d/%m/%Y'"),
        ({"type": "email"}, "ada", "'ada' is not a valid email (missing '@')"),
        ({"type": "email"}, "a@b@c.com", "'a@b@c.com' is not a valid email (more than one '@')"),
        ({"type": "email"}, "@x.com", "'@x.com' is not a valid email (nothing before '@')"),
        (
            {"type": "email"},
            "a@localhost",
            "'a@localhost' is not a valid email (domain has no dot)",
        ),
        (
            {"type": "email"},
            "a@x..com",
            "'a@x..com' is not a valid email (domain has an empty part)",
        ),
        ({"type": "email"}, "a@.com", "'a@.com' is not a valid email (domain has an empty part)"),
        ({"type": "email"}, "a b@x.com", "'a b@x.com' is not a valid email (contains whitespace)"),
    ],
)
def test_type_cast_invalid(column: dict[str, Any], value: str, reason: str) -> None:
    assert map_cell(column, value) == (None, [RowError(1, "out", reason)])


# ---------------------------------------------------------------------------------------------
# on_error: skip vs keep


SKIP_KEEP_SPEC: dict[str, Any] = {
    "columns": [
        {"name": "id", "trim": True, "type": "int"},
        {"name": "name", "trim": True, "case": "upper"},
        {"name": "when", "type": "date", "date_format": "%Y-%m-%d", "output_format": "%d.%m.%Y"},
    ]
}


def test_skip_drops_failed_row_and_reports_every_error() -> None:
    mapper = make_mapper(SKIP_KEEP_SPEC, ["id", "name", "when"])
    output, errors = mapper.map_row(7, [" x1 ", " ada ", "yesterday"])
    assert output is None
    assert errors == [
        RowError(7, "id", "'x1' is not a valid int"),
        RowError(7, "when", "'yesterday' does not match date format '%Y-%m-%d'"),
    ]


def test_skip_is_the_default_and_good_rows_pass() -> None:
    mapper = make_mapper(SKIP_KEEP_SPEC, ["id", "name", "when"])
    assert mapper.map_row(1, [" 01 ", " ada ", "2024-03-09"]) == (["1", "ADA", "09.03.2024"], [])


def test_keep_keeps_failing_cells_as_before_the_failing_step() -> None:
    mapper = make_mapper({**SKIP_KEEP_SPEC, "on_error": "keep"}, ["id", "name", "when"])
    output, errors = mapper.map_row(3, [" x1 ", " ada ", "2024-03-09"])
    assert output == ["x1", "ADA", "09.03.2024"]  # trimmed, but not cast
    assert errors == [RowError(3, "id", "'x1' is not a valid int")]


def test_keep_with_required_keeps_the_empty_value() -> None:
    spec = {"on_error": "keep", "columns": [{"name": "a", "required": True}, {"name": "b"}]}
    mapper = make_mapper(spec, ["a", "b"])
    assert mapper.map_row(2, ["", "x"]) == (
        ["", "x"],
        [RowError(2, "a", "required value is empty")],
    )


# ---------------------------------------------------------------------------------------------
# Ragged rows


@pytest.mark.parametrize(
    ("values", "reason"),
    [
        (["1", "2"], "expected 3 fields, found 2"),
        (["1", "2", "3", "4"], "expected 3 fields, found 4"),
        ([], "expected 3 fields, found 0"),
    ],
)
def test_ragged_row_is_skipped(values: list[str], reason: str) -> None:
    mapper = make_mapper({}, ["a", "b", "c"])
    assert mapper.map_row(4, values) == (None, [RowError(4, None, reason)])


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["1", "2"], ["1", "2", ""]),
        (["1", "2", "3", "4"], ["1", "2", "3"]),
    ],
)
def test_ragged_row_is_padded_or_cut_with_keep(values: list[str], expected: list[str]) -> None:
    mapper = make_mapper({"on_error": "keep"}, ["a", "b", "c"])
    output, errors = mapper.map_row(4, values)
    assert output == expected
    assert errors == [RowError(4, None, f"expected 3 fields, found {len(values)}")]


def test_ragged_row_with_keep_also_reports_cell_errors() -> None:
    spec = {"on_error": "keep", "columns": [{"name": "a"}, {"name": "b", "required": True}]}
    mapper = make_mapper(spec, ["a", "b"])
    assert mapper.map_row(9, ["x"]) == (
        ["x", ""],
        [
            RowError(9, None, "expected 2 fields, found 1"),
            RowError(9, "b", "required value is empty"),
        ],
    )


# ---------------------------------------------------------------------------------------------
# Filter


@pytest.mark.parametrize(
    ("op", "value", "cell", "kept"),
    [
        ("eq", "a", "a", True),
        ("eq", "a", "A", False),
        ("eq", 5, "5", True),
        ("eq", 1.5, "1.5", True),
        ("eq", True, "true", True),
        ("ne", "a", "b", True),
        ("ne", "a", "a", False),
        ("in", ["a", "b"], "b", True),
        ("in", ["a", "b"], "c", False),
        ("in", [1, 2], "2", True),
        ("not_in", ["a", "b"], "c", True),
        ("not_in", ["a", "b"], "a", False),
        ("contains", "ell", "hello", True),
        ("contains", "xyz", "hello", False),
        ("matches", r"^\d{3}$", "123", True),
        ("matches", r"\d", "ab1", True),
        ("matches", r"^\d{3}$", "1234", False),
        ("empty", None, "", True),
        ("empty", None, " ", False),
        ("not_empty", None, "x", True),
        ("not_empty", None, "", False),
        ("gt", 9, "10", True),
        ("gt", "9", "10", True),
        ("gt", 10, "10", False),
        ("ge", 10, "10.0", True),
        ("lt", 2.5, "-3", True),
        ("lt", 2.5, "1e3", False),
        ("le", 10, " 10 ", True),
        ("gt", "b", "c", True),
        ("gt", "b", "a", False),
        ("gt", 5, "abc", True),
        ("lt", 5, "", True),
        ("lt", "m", "apple", True),
    ],
)
def test_filter_ops(op: str, value: Any, cell: str, kept: bool) -> None:
    condition: dict[str, Any] = {"column": "a", "op": op}
    if value is not None:
        condition["value"] = value
    mapper = make_mapper({"filter": [condition]}, ["a"])
    output, errors = mapper.map_row(1, [cell])
    assert errors == []
    assert output == ([cell] if kept else None)


def test_filter_conditions_are_anded() -> None:
    spec = {
        "filter": [
            {"column": "a", "op": "not_empty"},
            {"column": "b", "op": "ge", "value": 18},
        ]
    }
    mapper = make_mapper(spec, ["a", "b"])
    assert mapper.map_row(1, ["x", "20"]) == (["x", "20"], [])
    assert mapper.map_row(2, ["", "20"]) == (None, [])
    assert mapper.map_row(3, ["x", "17"]) == (None, [])


def test_filter_prefers_output_column_over_input_column() -> None:
    spec = {
        "columns": [{"name": "a", "source": "b", "trim": True}],
        "filter": [{"column": "a", "op": "eq", "value": "yes"}],
    }
    mapper = make_mapper(spec, ["a", "b"])
    assert mapper.map_row(1, ["no", " yes "]) == (["yes"], [])
    assert mapper.map_row(2, ["yes", " no "]) == (None, [])


def test_filter_can_use_raw_input_column_not_in_output() -> None:
    spec = {
        "columns": [{"name": "id"}],
        "filter": [{"column": "status", "op": "eq", "value": "active"}],
    }
    mapper = make_mapper(spec, ["id", "status"])
    assert mapper.map_row(1, ["1", "active"]) == (["1"], [])
    assert mapper.map_row(2, ["2", "inactive"]) == (None, [])


def test_filter_sees_mapped_values() -> None:
    spec = {
        "columns": [{"name": "n", "type": "float"}],
        "filter": [{"column": "n", "op": "eq", "value": "2.0"}],
    }
    mapper = make_mapper(spec, ["n"])
    assert mapper.map_row(1, ["2"]) == (["2.0"], [])


@pytest.mark.parametrize(("on_error", "kept"), [("skip", None), ("keep", ["x"])])
def test_failed_row_is_an_error_not_filtered(on_error: str, kept: list[str] | None) -> None:
    spec = {
        "on_error": on_error,
        "columns": [{"name": "n", "type": "int"}],
        "filter": [{"column": "n", "op": "eq", "value": "never"}],
    }
    mapper = make_mapper(spec, ["n"])
    assert mapper.map_row(1, ["x"]) == (kept, [RowError(1, "n", "'x' is not a valid int")])


# ---------------------------------------------------------------------------------------------
# Spec validation


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("{", "invalid JSON: the text ends too early (unclosed bracket, brace or string?)"),
        ('{\n  "columns" []\n}', "invalid JSON: expected ':' near line 2, column 13"),
        ("{} x", "invalid JSON: trailing characters near line 1, column 5"),
        ("[]", "spec: expected an object, got a list"),
        ("null", "spec: expected an object, got null"),
        ('{"colums": []}', "spec: unknown field 'colums' (allowed: columns, filter, on_error)"),
        ('{"columns": {}}', "columns: expected a list or null, got an object"),
        ('{"columns": []}', "columns: must list at least one column (leave it out to keep all)"),
        ('{"columns": [{}]}', "columns[0]: missing required field 'name'"),
        ('{"columns": [{"name": 1}]}', "columns[0].name: expected a string, got an integer"),
        ('{"columns": [{"name": ""}]}', "columns[0].name: must not be empty"),
        (
            '{"columns": [{"name": "a", "trim": "yes"}]}',
            "columns[0].trim: expected true/false, got a string",
        ),
        (
            '{"columns": [{"name": "a", "tirm": true}]}',
            "columns[0]: unknown field 'tirm' (allowed: name, source, template, trim, "
            "collapse_whitespace, case, extract, default, required, type, date_format, "
            "output_format)",
        ),
        (
            '{"columns": [{"name": "a"}, {"name": "b"}, {"name": "c", "type": "integr"}]}',
            "columns[2].type: unknown type 'integr' "
            "(expected one of: string, int, float, bool, date, email)",
        ),
        (
            '{"columns": [{"name": "a", "case": "Lower"}]}',
            "columns[0].case: unknown case 'Lower' (expected one of: lower, upper, title)",
        ),
        (
            '{"on_error": "ignore"}',
            "on_error: unknown value 'ignore' (expected one of: skip, keep)",
        ),
        (
            '{"columns": [{"name": "a"}, {"name": "a"}]}',
            "columns[1].name: duplicate output column name 'a' (already used by columns[0])",
        ),
        (
            '{"columns": [{"name": "a", "source": "x", "template": "{x}"}]}',
            "columns[0]: use either 'source' or 'template', not both",
        ),
        ('{"columns": [{"name": "a", "source": ""}]}', "columns[0].source: must not be empty"),
        (
            '{"columns": [{"name": "a", "template": "{x"}]}',
            "columns[0].template: unclosed '{' at position 0 (write '{{' for a literal brace)",
        ),
        (
            '{"columns": [{"name": "a", "template": "x}"}]}',
            "columns[0].template: unmatched '}' at position 1 (write '}}' for a literal brace)",
        ),
        (
            '{"columns": [{"name": "a", "template": "a {} b"}]}',
            "columns[0].template: empty placeholder '{}' at position 2",
        ),
        (
            '{"columns": [{"name": "a", "template": "{a{b}"}]}',
            "columns[0].template: '{' inside a placeholder at position 2",
        ),
        (
            '{"columns": [{"name": "a", "extract": "(a"}]}',
            "columns[0].extract: invalid regex '(a': missing ), unterminated subpattern "
            "at position 0",
        ),
        (
            '{"columns": [{"name": "a", "type": "date"}]}',
            "columns[0].date_format: required for type 'date' "
            "(a strptime format such as '%d/%m/%Y')",
        ),
        (
            '{"columns": [{"name": "a", "type": "int", "date_format": "%Y"}]}',
            "columns[0].date_format: only allowed with type 'date' (type is 'int')",
        ),
        (
            '{"columns": [{"name": "a", "output_format": "%Y"}]}',
            "columns[0].output_format: only allowed with type 'date' (type is 'string')",
        ),
        (
            '{"columns": [{"name": "a", "type": "date", "date_format": "%Q"}]}',
            "columns[0].date_format: invalid format: 'Q' is a bad directive in format '%Q'",
        ),
        (
            '{"columns": [{"name": "a", "type": "date", "date_format": "%Y %Y"}]}',
            "columns[0].date_format: invalid format '%Y %Y': a directive is used more than once",
        ),
        (
            '{"columns": [{"name": "a", "type": "date", "date_format": "%Y", '
            '"output_format": ""}]}',
            "columns[0].output_format: must produce some text",
        ),
        (
            '{"columns": [{"name": "a", "type": "int", "default": "none"}]}',
            "columns[0].default: 'none' is not a valid int",
        ),
        (
            '{"filter": [{"column": "a", "op": "equals", "value": "x"}]}',
            "filter[0].op: unknown operator 'equals' (expected one of: eq, ne, in, not_in, "
            "contains, matches, empty, not_empty, gt, ge, lt, le)",
        ),
        ('{"filter": [{"op": "eq"}]}', "filter[0]: missing required field 'column'"),
        ('{"filter": [{"column": "", "op": "empty"}]}', "filter[0].column: must not be empty"),
        (
            '{"filter": [{"column": "a", "op": "eq"}]}',
            "filter[0].value: required for operator 'eq'",
        ),
        (
            '{"filter": [{"column": "a", "op": "empty", "value": "x"}]}',
            "filter[0].value: operator 'empty' takes no value",
        ),
        (
            '{"filter": [{"column": "a", "op": "in", "value": "x"}]}',
            'filter[0].value: operator \'in\' needs a non-empty list of values, e.g. ["a", "b"]',
        ),
        (
            '{"filter": [{"column": "a", "op": "not_in", "value": []}]}',
            "filter[0].value: operator 'not_in' needs a non-empty list of values, "
            'e.g. ["a", "b"]',
        ),
        (
            '{"filter": [{"column": "a", "op": "eq", "value": ["x"]}]}',
            "filter[0].value: operator 'eq' needs a single value, not a list",
        ),
        (
            '{"filter": [{"column": "a", "op": "contains", "value": 1}]}',
            "filter[0].value: operator 'contains' needs a string",
        ),
        (
            '{"filter": [{"column": "a", "op": "gt", "value": true}]}',
            "filter[0].value: operator 'gt' needs a number or a string",
        ),
        (
            '{"filter": [{"column": "a", "op": "matches", "value": "["}]}',
            "filter[0].value: invalid regex '[': unterminated character set at position 0",
        ),
        (
            '{"filter": [{"column": "a", "op": "eq", "value": {}}]}',
            "filter[0].value: expected true/false, a number, a string, a list or null, "
            "got an object",
        ),
        (
            '{"filter": [{"column": "a", "op": "in", "value": [[1]]}]}',
            "filter[0].value[0]: expected true/false, a number or a string, got a list",
        ),
    ],
)
def test_spec_validation_errors(raw: str, message: str) -> None:
    assert spec_error(raw) == message


def test_spec_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="invalid JSON"):
        parse_spec("{")


def test_spec_accepts_bytes_and_byte_order_mark() -> None:
    spec = parse_spec(b'\xef\xbb\xbf{"columns": [{"name": "a"}]}')
    assert [column.name for column in spec.columns or ()] == ["a"]


def test_mapper_validates_a_spec_built_in_python() -> None:
    with pytest.raises(SpecError, match=r"^on_error: unknown value 'never'"):
        Mapper(Spec(on_error="never"), ["a"])


# ---------------------------------------------------------------------------------------------
# Header checks


def test_check_header_accepts_complete_header() -> None:
    spec = parse_spec(
        json.dumps(
            {
                "columns": [
                    {"name": "a"},
                    {"name": "b", "source": "x"},
                    {"name": "c", "template": "{y}-{z}"},
                ],
                "filter": [{"column": "b", "op": "empty"}, {"column": "w", "op": "empty"}],
            }
        )
    )
    header = ["a", "x", "y", "z", "w"]
    spec.check_header(header)  # does not raise
    mapper = Mapper(spec, header)
    assert mapper.output_header == ["a", "b", "c"]
    assert mapper.map_row(1, ["1", "", "3", "4", ""]) == (["1", "", "3-4"], [])


@pytest.mark.parametrize(
    ("spec", "header", "message"),
    [
        (
            {"columns": [{"name": "email"}]},
            ["id", "mail"],
            "header is missing column 'email' (used by columns[0].name); "
            "the header has: 'id', 'mail'",
        ),
        (
            {"columns": [{"name": "out", "source": "emial"}]},
            ["email"],
            "header is missing column 'emial' (used by columns[0].source); the header has: 'email'",
        ),
        (
            {"columns": [{"name": "full", "template": "{first} {last}"}, {"name": "last"}]},
            ["first"],
            "header is missing column 'last' (used by columns[0].template, columns[1].name); "
            "the header has: 'first'",
        ),
        (
            {"columns": [{"name": "a"}], "filter": [{"column": "b", "op": "empty"}]},
            ["a"],
            "header is missing column 'b' (used by filter[0].column); the header has: 'a'",
        ),
        (
            {"filter": [{"column": "x", "op": "empty"}, {"column": "y", "op": "empty"}]},
            [],
            "header is missing columns 'x' (used by filter[0].column), "
            "'y' (used by filter[1].column); the header is empty",
        ),
    ],
)
def test_check_header_reports_missing_columns(
    spec: dict[str, Any], header: list[str], message: str
) -> None:
    with pytest.raises(SpecError) as caught:
        parse_spec(json.dumps(spec)).check_header(header)
    assert str(caught.value) == message


def test_check_header_truncates_long_headers() -> None:
    header = [f"c{i}" for i in range(50)]
    with pytest.raises(SpecError) as caught:
        parse_spec('{"columns": [{"name": "missing"}]}').check_header(header)
    message = str(caught.value)
    assert "'c19', ... (30 more)" in message
    assert "'c20'" not in message


def test_mapper_checks_header() -> None:
    with pytest.raises(SpecError, match=r"^header is missing column 'b'"):
        make_mapper({"columns": [{"name": "b"}]}, ["a"])


# ---------------------------------------------------------------------------------------------
# to_json


ROUND_TRIP_SPECS = [
    {},
    {"on_error": "keep"},
    {"columns": [{"name": "a"}]},
    {
        "columns": [
            {"name": "id", "source": "ID", "trim": True, "required": True, "type": "int"},
            {"name": "full", "template": "{{{first}}} {last}", "collapse_whitespace": True},
            {"name": "code", "case": "upper", "extract": r"^(\w+)", "default": "NONE"},
            {
                "name": "day",
                "type": "date",
                "date_format": "%d/%m/%Y",
                "output_format": "%Y%m%d",
            },
        ],
        "filter": [
            {"column": "id", "op": "gt", "value": 10},
            {"column": "code", "op": "in", "value": ["A", 1, 2.5, True]},
            {"column": "full", "op": "not_empty"},
        ],
        "on_error": "keep",
    },
]


@pytest.mark.parametrize("raw", ROUND_TRIP_SPECS)
def test_to_json_round_trips(raw: dict[str, Any]) -> None:
    spec = parse_spec(json.dumps(raw))
    text = spec.to_json()
    assert parse_spec(text) == spec
    assert json.loads(text) == raw  # canonical form leaves out defaults only


def test_to_json_is_canonical() -> None:
    explicit = parse_spec(
        '{"on_error": "skip", "filter": null, '
        '"columns": [{"type": "string", "trim": false, "name": "a"}]}'
    )
    assert explicit.to_json() == '{"columns":[{"name":"a"}]}'
    assert parse_spec(None).to_json() == "{}"


# ---------------------------------------------------------------------------------------------
# Robustness


def test_unexpected_exception_in_a_rule_becomes_a_row_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken_cast(value: str) -> str:
        raise RuntimeError("boom")

    monkeypatch.setitem(mapping_rules.CASTS, "int", broken_cast)
    spec = {"columns": [{"name": "n", "trim": True, "type": "int"}, {"name": "s", "trim": True}]}
    header = ["n", "s"]
    skip = make_mapper(spec, header)
    keep = make_mapper({**spec, "on_error": "keep"}, header)
    error = RowError(5, "n", "internal error: RuntimeError: boom")
    assert skip.map_row(5, [" 1 ", " x "]) == (None, [error])
    assert keep.map_row(5, [" 1 ", " x "]) == (["1", "x"], [error])


def test_row_error_is_immutable() -> None:
    error = RowError(1, None, "x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        error.row = 2  # type: ignore[misc]
