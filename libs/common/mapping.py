"""The rules mapper: a declarative JSON spec that maps CSV rows (lists of str) offline.

Public API: ``parse_spec`` -> ``Spec``; ``Mapper(spec, header).map_row(n, values)``;
``SpecError`` for bad specs (its text is shown to users); ``RowError`` for bad data.
The spec format is documented in docs/mapping.md. Cell-level rules live in ``mapping_rules``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from libs.common import mapping_rules as rules

__all__ = [
    "ColumnSpec",
    "FilterSpec",
    "Mapper",
    "RowError",
    "Spec",
    "SpecError",
    "parse_spec",
]

ON_ERROR_CHOICES = ("skip", "keep")
_MAX_HEADER_NAMES_SHOWN = 20


class SpecError(ValueError):
    """The mapping spec is invalid; ``str(exc)`` is a human reason naming the place."""


_STRUCT_OPTIONS = {
    "forbid_unknown_fields": True,
    "omit_defaults": True,
    "kw_only": True,
    "frozen": True,
}


def _use_shared_defaults(struct: msgspec.Struct) -> None:
    """Swap text values equal to a field default for the default object itself.

    msgspec's ``omit_defaults`` recognises a default string by identity, so without this
    a decoded ``"type": "string"`` would survive into ``to_json`` and break canonical output.
    """
    for field in msgspec.structs.fields(struct):
        value = getattr(struct, field.name)
        if isinstance(value, str) and value == field.default and value is not field.default:
            msgspec.structs.force_setattr(struct, field.name, field.default)


class ColumnSpec(msgspec.Struct, **_STRUCT_OPTIONS):
    name: str
    source: str | None = None
    template: str | None = None
    trim: bool = False
    collapse_whitespace: bool = False
    case: str | None = None
    extract: str | None = None
    default: str | None = None
    required: bool = False
    type: str = "string"
    date_format: str | None = None
    output_format: str | None = None

    def __post_init__(self) -> None:
        _use_shared_defaults(self)


class FilterSpec(msgspec.Struct, **_STRUCT_OPTIONS):
    column: str
    op: str
    value: rules.FilterValue = None


class Spec(msgspec.Struct, **_STRUCT_OPTIONS):
    columns: tuple[ColumnSpec, ...] | None = None
    filter: tuple[FilterSpec, ...] | None = None
    on_error: str = "skip"

    def __post_init__(self) -> None:
        _use_shared_defaults(self)

    def check_header(self, header: Sequence[str]) -> None:
        """Raise SpecError if the spec uses columns that ``header`` lacks."""
        available = set(header)
        missing: dict[str, list[str]] = {}
        for name, place in _columns_used(self, header):
            if name not in available:
                missing.setdefault(name, []).append(place)
        if missing:
            raise SpecError(_missing_columns_message(missing, header))

    def to_json(self) -> str:
        """Canonical JSON (defaults left out); ``parse_spec(spec.to_json()) == spec``."""
        return msgspec.json.encode(self).decode()


@dataclass(frozen=True, slots=True)
class RowError:
    row: int
    column: str | None  # output column name, or None for a problem with the whole row
    reason: str


# ---------------------------------------------------------------------------------------------
# Parsing and validation

_STRUCT_FIELDS = {
    "spec": Spec.__struct_fields__,
    "columns": ColumnSpec.__struct_fields__,
    "filter": FilterSpec.__struct_fields__,
}
_JSON_TYPES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true/false",
    "array": "a list",
    "object": "an object",
    "null": "null",
}
_MSGSPEC_ERROR = re.compile(r"(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?", re.DOTALL)
_BYTE_OFFSET = re.compile(r"\s*\(byte (\d+)\)$")


def parse_spec(raw: str | bytes | None) -> Spec:
    """Parse and validate a JSON spec. None/blank -> passthrough. Raises SpecError."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    if data is None or not data.strip():
        return Spec()
    data = data.removeprefix(b"\xef\xbb\xbf")  # tolerate a UTF-8 byte order mark
    try:
        spec = msgspec.json.decode(data, type=Spec)
    except msgspec.ValidationError as exc:
        raise SpecError(_describe_validation_error(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise SpecError(_describe_decode_error(str(exc), data)) from None
    _validate_spec(spec)
    return spec


def _describe_validation_error(text: str) -> str:
    match = _MSGSPEC_ERROR.fullmatch(text)
    assert match is not None  # the pattern matches any text
    place = (match["path"] or "").lstrip(".") or "spec"
    message = match["message"]
    if found := re.fullmatch(r"Object contains unknown field `(.*)`", message):
        kind = re.sub(r"\[\d+\]$", "", place.rsplit(".", 1)[-1])
        allowed = ", ".join(_STRUCT_FIELDS.get(kind, ()))
        return f"{place}: unknown field {found[1]!r} (allowed: {allowed})"
    if found := re.fullmatch(r"Object missing required field `(.*)`", message):
        return f"{place}: missing required field {found[1]!r}"
    if found := re.fullmatch(r"Expected `(.*)`, got `(.*)`", message):
        return f"{place}: expected {_json_types(found[1])}, got {_json_types(found[2])}"
    return f"{place}: {message[:1].lower()}{message[1:]}"


def _json_types(msgspec_types: str) -> str:
    """'int | float | null' -> 'a number or null'."""
    names = msgspec_types.split(" | ")
    if "int" in names and "float" in names:
        names.remove("int")
    words = [_JSON_TYPES.get(name, name) for name in names]
    return " or ".join(words) if len(words) < 3 else ", ".join(words[:-1]) + " or " + words[-1]


def _describe_decode_error(text: str, data: bytes) -> str:
    if text.startswith("Input data was truncated"):
        return "invalid JSON: the text ends too early (unclosed bracket, brace or string?)"
    message = text.removeprefix("JSON is malformed: ")
    found = _BYTE_OFFSET.search(message)
    if found is None:
        return f"invalid JSON: {message}"
    offset = int(found[1])
    line = data.count(b"\n", 0, offset) + 1
    column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    return f"invalid JSON: {message[: found.start()]} near line {line}, column {column}"


def _validate_spec(spec: Spec) -> None:
    _check_choice(spec.on_error, ON_ERROR_CHOICES, "value", "on_error")
    if spec.columns is not None:
        if not spec.columns:
            raise SpecError("columns: must list at least one column (leave it out to keep all)")
        first_use: dict[str, int] = {}
        for i, column in enumerate(spec.columns):
            _validate_column(column, f"columns[{i}]")
            if column.name in first_use:
                raise SpecError(
                    f"columns[{i}].name: duplicate output column name {column.name!r} "
                    f"(already used by columns[{first_use[column.name]}])"
                )
            first_use[column.name] = i
    for i, condition in enumerate(spec.filter or ()):
        _validate_condition(condition, f"filter[{i}]")


def _check_choice(value: str, choices: tuple[str, ...], noun: str, place: str) -> None:
    if value not in choices:
        raise SpecError(
            f"{place}: unknown {noun} {value!r} (expected one of: {', '.join(choices)})"
        )


def _check(problem: str | None, place: str) -> None:
    if problem is not None:
        raise SpecError(f"{place}: {problem}")


def _validate_column(column: ColumnSpec, path: str) -> None:
    _check("must not be empty" if not column.name else None, f"{path}.name")
    if column.source is not None and column.template is not None:
        raise SpecError(f"{path}: use either 'source' or 'template', not both")
    _check("must not be empty" if column.source == "" else None, f"{path}.source")
    if column.template is not None:
        try:
            rules.parse_template(column.template)
        except ValueError as exc:
            raise SpecError(f"{path}.template: {exc}") from None
    if column.case is not None:
        _check_choice(column.case, rules.CASE_NAMES, "case", f"{path}.case")
    if column.extract is not None:
        _check(rules.check_regex(column.extract), f"{path}.extract")
    _check_choice(column.type, rules.TYPE_NAMES, "type", f"{path}.type")
    _validate_date_formats(column, path)
    if column.default:
        cast = rules.build_cast(column.type, column.date_format, column.output_format)
        try:
            if cast is not None:
                cast(column.default)
        except rules.RuleFailure as exc:
            raise SpecError(f"{path}.default: {exc}") from None


def _validate_date_formats(column: ColumnSpec, path: str) -> None:
    if column.type != "date":
        for field in ("date_format", "output_format"):
            if getattr(column, field) is not None:
                raise SpecError(
                    f"{path}.{field}: only allowed with type 'date' (type is {column.type!r})"
                )
        return
    if column.date_format is None:
        raise SpecError(
            f"{path}.date_format: required for type 'date' (a strptime format such as '%d/%m/%Y')"
        )
    _check(rules.check_date_format(column.date_format), f"{path}.date_format")
    if column.output_format is not None:
        _check(rules.check_output_format(column.output_format), f"{path}.output_format")


def _validate_condition(condition: FilterSpec, path: str) -> None:
    _check("must not be empty" if not condition.column else None, f"{path}.column")
    _check_choice(condition.op, rules.FILTER_OPS, "operator", f"{path}.op")
    _check(rules.check_filter_value(condition.op, condition.value), f"{path}.value")


# ---------------------------------------------------------------------------------------------
# Header checks


def _columns_used(spec: Spec, header: Sequence[str]) -> list[tuple[str, str]]:
    """(input column name, place in the spec) for every input column the spec reads."""
    used: list[tuple[str, str]] = []
    for i, column in enumerate(spec.columns or ()):
        if column.template is not None:
            place = f"columns[{i}].template"
            used.extend((name, place) for name in rules.template_fields(column.template))
        elif column.source is not None:
            used.append((column.source, f"columns[{i}].source"))
        else:
            used.append((column.name, f"columns[{i}].name"))
    outputs = _output_names(spec, header)
    for i, condition in enumerate(spec.filter or ()):
        if condition.column not in outputs:
            used.append((condition.column, f"filter[{i}].column"))
    return used


def _output_names(spec: Spec, header: Sequence[str]) -> list[str]:
    return list(header) if spec.columns is None else [column.name for column in spec.columns]


def _missing_columns_message(missing: dict[str, list[str]], header: Sequence[str]) -> str:
    listed = ", ".join(
        f"{name!r} (used by {', '.join(places)})" for name, places in missing.items()
    )
    noun = "column" if len(missing) == 1 else "columns"
    shown = ", ".join(repr(name) for name in header[:_MAX_HEADER_NAMES_SHOWN])
    if len(header) > _MAX_HEADER_NAMES_SHOWN:
        shown += f", ... ({len(header) - _MAX_HEADER_NAMES_SHOWN} more)"
    available = f"the header has: {shown}" if header else "the header is empty"
    return f"header is missing {noun} {listed}; {available}"


# ---------------------------------------------------------------------------------------------
# Mapping

_Plan = tuple[str, rules.Reader, tuple[rules.Step, ...]]
_Condition = tuple[bool, int, rules.Test]


class Mapper:
    """Maps rows of one CSV file (with the given header) according to a spec."""

    def __init__(self, spec: Spec, header: Sequence[str]) -> None:
        _validate_spec(spec)
        spec.check_header(header)
        self.spec = spec
        self.header = list(header)
        self.output_header = _output_names(spec, header)
        self._width = len(header)
        self._keep = spec.on_error == "keep"
        index = _first_positions(header)
        self._plan: tuple[_Plan, ...] | None = None
        if spec.columns is not None:
            self._plan = tuple(_compile_column(column, index) for column in spec.columns)
        outputs = _first_positions(self.output_header)
        self._conditions = tuple(
            _compile_condition(condition, outputs, index) for condition in spec.filter or ()
        )

    def map_row(
        self, row_number: int, values: list[str]
    ) -> tuple[list[str] | None, list[RowError]]:
        """(output values, []) | (None, []) when filtered out | (None or kept values, errors)."""
        errors: list[RowError] = []
        if len(values) != self._width:
            errors.append(
                RowError(row_number, None, f"expected {self._width} fields, found {len(values)}")
            )
            if not self._keep:
                return None, errors
            values = _fit(values, self._width)
        output = self._map_cells(row_number, values, errors)
        if errors:
            return (output if self._keep else None), errors
        if self._conditions and not self._passes_filter(row_number, output, values, errors):
            return None, errors
        return output, errors

    def _map_cells(self, row_number: int, values: list[str], errors: list[RowError]) -> list[str]:
        if self._plan is None:
            return list(values)
        output: list[str] = []
        append = output.append
        for name, read, steps in self._plan:
            value = ""
            try:
                value = read(values)
                for step in steps:
                    value = step(value)
            except rules.RuleFailure as exc:
                errors.append(RowError(row_number, name, str(exc)))
            except Exception as exc:
                errors.append(RowError(row_number, name, _internal_error(exc)))
            append(value)
        return output

    def _passes_filter(
        self, row_number: int, output: list[str], values: list[str], errors: list[RowError]
    ) -> bool:
        try:
            for from_output, position, test in self._conditions:
                if not test((output if from_output else values)[position]):
                    return False
        except Exception as exc:
            errors.append(RowError(row_number, None, "filter " + _internal_error(exc)))
            return False
        return True


def _internal_error(exc: Exception) -> str:
    return f"internal error: {type(exc).__name__}: {exc}"


def _fit(values: list[str], width: int) -> list[str]:
    """Pad with "" or cut to ``width`` cells."""
    return values[:width] if len(values) > width else values + [""] * (width - len(values))


def _first_positions(names: Sequence[str]) -> dict[str, int]:
    """Name -> position of its first occurrence (a repeated header name means the first one)."""
    positions: dict[str, int] = {}
    for position, name in enumerate(names):
        positions.setdefault(name, position)
    return positions


def _compile_column(column: ColumnSpec, index: dict[str, int]) -> _Plan:
    read: rules.Reader
    if column.template is not None:
        read = rules.build_template_reader(column.template, index)
    else:
        read = operator.itemgetter(index[column.source or column.name])
    steps: list[rules.Step] = []
    if column.trim:
        steps.append(str.strip)
    if column.collapse_whitespace:
        steps.append(rules.collapse_whitespace)
    if column.case is not None:
        steps.append(rules.CASE_STEPS[column.case])
    if column.extract is not None:
        steps.append(rules.make_extract(re.compile(column.extract)))
    if column.default:
        steps.append(rules.make_default(column.default))
    if column.required:
        steps.append(rules.require_value)
    cast = rules.build_cast(column.type, column.date_format, column.output_format)
    if cast is not None:
        steps.append(cast)
    return column.name, read, tuple(steps)


def _compile_condition(
    condition: FilterSpec, outputs: dict[str, int], index: dict[str, int]
) -> _Condition:
    test = rules.build_test(condition.op, condition.value)
    if condition.column in outputs:
        return True, outputs[condition.column], test
    return False, index[condition.column], test
