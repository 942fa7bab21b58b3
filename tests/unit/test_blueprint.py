"""render.yaml and the systemd unit, checked against the code and Render's documented fields.

Each check is a function that returns a list of problems, so every one is shown to pass on
the real files and to fail on a broken copy (the ``test_*_catches_*`` tests).

Render's field names: https://render.com/docs/blueprint-spec (and its JSON Schema at
https://render.com/schema/render.yaml.json). Only the fields this project may plausibly use
are allowed below; a field Render documents but we do not list fails here, on purpose: add
it to the allow-list after checking the spec.
"""

from __future__ import annotations

import argparse
import ast
import base64
import contextlib
import copy
import hashlib
import importlib
import importlib.util
import io
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml
from kombu import Connection

from libs.common import settings
from libs.common.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
BLUEPRINT = ROOT / "render.yaml"
UNIT = ROOT / "infra" / "systemd" / "conveyor-worker.service"

# ------------------------------------------------------------------ Render's documented fields

ROOT_KEYS = {"services", "databases", "envVarGroups", "previews", "projects", "ungrouped"}
RUNTIMES = {"python", "node", "go", "ruby", "rust", "elixir", "docker", "image", "static"}
NATIVE_RUNTIMES = {"python", "node", "go", "ruby", "rust", "elixir"}
REGIONS = {"oregon", "ohio", "virginia", "frankfurt", "singapore"}
#: Paid compute plans (legacy names, still accepted): background workers, private services,
#: disks and preDeployCommand have no free plan.
SERVICE_PLANS = {"starter", "standard", "pro", "pro plus", "pro max", "pro ultra"}
DATABASE_PLAN = re.compile(r"(free|basic|pro|accelerated)-\d+(mb|gb)")
#: Fields of every compute service (web, worker, pserv); other types are not used here.
SERVICE_KEYS = {
    "type", "name", "runtime", "region", "plan", "branch", "repo", "rootDir", "envVars",
    "autoDeploy", "autoDeployTrigger", "buildFilter", "preDeployCommand", "numInstances",
    "scaling", "disk", "maxShutdownDelaySeconds", "previews",
}  # fmt: skip
SERVICE_KEYS_BY_TYPE = {
    "web": SERVICE_KEYS | {"healthCheckPath", "domains"},
    "worker": SERVICE_KEYS,
    "pserv": SERVICE_KEYS,
}
#: Fields only some runtimes take.
RUNTIME_KEYS = {
    "native": {"buildCommand", "startCommand"},
    "docker": {"dockerfilePath", "dockerContext", "dockerCommand", "registryCredential"},
    "image": {"image", "dockerCommand"},
}
IMAGE_KEYS = {"url", "creds"}
DISK_KEYS = {"name", "mountPath", "sizeGB"}
SCALING_KEYS = {"minInstances", "maxInstances", "targetMemoryPercent", "targetCPUPercent"}
DATABASE_KEYS = {
    "name", "region", "plan", "databaseName", "user", "postgresMajorVersion", "diskSizeGB",
    "ipAllowList", "highAvailability", "readReplicas", "previewPlan", "previewDiskSizeGB",
    "storageAutoscalingEnabled",
}  # fmt: skip
GROUP_KEYS = {"name", "envVars"}
#: An env var entry is {key + exactly one source}, or {fromGroup} alone.
ENV_SOURCES = {"value", "generateValue", "sync", "fromDatabase", "fromService"}
#: Environment groups take literal and generated values only (no sync: false, no references).
GROUP_ENV_SOURCES = {"value", "generateValue"}
FROM_DATABASE_KEYS = {"name", "property"}
DATABASE_PROPERTIES = {
    "connectionString", "connectionPoolString", "host", "port", "user", "password", "database",
}  # fmt: skip
FROM_SERVICE_KEYS = {"type", "name", "property", "envVarKey"}
SERVICE_PROPERTIES = {
    "web": {"host", "port", "hostport"},
    "pserv": {"host", "port", "hostport"},
    "keyvalue": {"connectionString", "host", "port"},
    "redis": {"connectionString", "host", "port"},
}

# ------------------------------------------------------------- what the processes really read

SETTING_NAMES = {f.metadata["env"]: f for f in fields(Settings)}
#: boto3's own configuration chain (S3 storage, SQS): libs/common/s3.py, broker_sqs.py.
BOTO3_VARS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
BOTO3_VARS |= {"AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_SQS"}
#: Read by Render's Python build, not by our code.
RENDER_BUILD_VARS = {"PYTHON_VERSION", "UV_VERSION"}
READ_BY_PYTHON = set(SETTING_NAMES) | BOTO3_VARS | RENDER_BUILD_VARS
#: The official RabbitMQ image (rabbitmq-server itself reads these).
READ_BY_RABBITMQ_IMAGE = {"RABBITMQ_DEFAULT_USER", "RABBITMQ_DEFAULT_PASS", "RABBITMQ_NODENAME"}

#: Settings that stay unset on Render, per service ("*": all), and why that is right.
UNSET_ON_RENDER: dict[str, tuple[str, str]] = {
    "BROKER_URL": ("*", "empty unless the operator moves to another broker; BROKER_HOST & co."),
    "LASTFM_API_URL": ("*", "the real Last.fm API"),
    "AUDIO_ROOTS": ("*", "any s3:// prefix; no file:// outside the all-in-one"),
    "FFMPEG_BINARY": ("*", "imageio-ffmpeg's bundled ffmpeg"),
    "WORK_DIR": ("*", "a folder in the temp folder"),
    "WORKER_TOKEN_KEY": ("conveyor-dispatcher conveyor-worker", "only the web service pairs"),
    "WORKER_BROKER_URL": ("conveyor-dispatcher conveyor-worker", "only the web service pairs"),
    "WORKER_STORAGE_URL": ("conveyor-dispatcher conveyor-worker", "only the web service pairs"),
    "LASTFM_API_KEY": ("conveyor-worker", "only web and dispatcher call Last.fm"),
    "SESSION_SECRET": ("conveyor-dispatcher conveyor-worker", "only the web has sessions"),
    "ACCOUNTS": ("*", "unset: required everywhere but the loopback all-in-one"),
    "TRUSTED_PROXIES": ("*", "no X-Forwarded-For believed until the deploy step names the proxy"),
}

#: What an operator types for each ``sync: false`` value (docs/deploy.md), by scenario.
OPERATOR_INPUT = {
    "private-rabbitmq": {
        "STORAGE_URL": "s3://conveyor-bucket/prod",
        "AWS_ACCESS_KEY_ID": "0123456789abcdef",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t/with+chars",
        "AWS_DEFAULT_REGION": "auto",
        "AWS_ENDPOINT_URL_S3": "https://0123abcd.r2.cloudflarestorage.com",
        "LASTFM_API_KEY": "0123456789abcdef0123456789abcdef",
        "BROKER_URL": "",
        "WORKER_BROKER_URL": "",
        "WORKER_STORAGE_URL": "",
    },
    "managed-amqp": {
        "STORAGE_URL": "s3://conveyor-bucket/prod",
        "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t",
        "AWS_DEFAULT_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL_S3": "",
        "LASTFM_API_KEY": "",
        "BROKER_URL": "amqps://svc:pw@broker.example.com/conveyor",
        "WORKER_BROKER_URL": "amqps://worker:pw2@broker.example.com/conveyor",
        "WORKER_STORAGE_URL": "s3://conveyor-bucket/prod",
    },
}
DATABASE_URL = "postgresql://conveyor:pw@dpg-0123-a/conveyor"  # Render's internal form


def load_blueprint() -> dict[str, Any]:
    with BLUEPRINT.open(encoding="utf-8") as file:
        doc = yaml.safe_load(file)
    assert isinstance(doc, dict)
    return doc


@pytest.fixture
def doc() -> dict[str, Any]:
    return load_blueprint()


# ---------------------------------------------------------------------- 1. documented fields


def spec_problems(doc: dict[str, Any]) -> list[str]:
    """Keys and values that Render's Blueprint spec does not document (as listed above)."""
    problems = [f"root: unknown key {k!r}" for k in sorted(set(doc) - ROOT_KEYS)]
    services = doc.get("services", [])
    names = [s.get("name") for s in services]
    problems += [
        f"services: duplicate name {n!r}" for n in sorted({n for n in names if names.count(n) > 1})
    ]
    for service in services:
        problems += _service_problems(service)
    for db in doc.get("databases", []):
        where = f"database {db.get('name')!r}"
        problems += [f"{where}: unknown key {k!r}" for k in sorted(set(db) - DATABASE_KEYS)]
        if not isinstance(db.get("postgresMajorVersion", ""), str):
            problems.append(f"{where}: postgresMajorVersion must be a string")
        if not DATABASE_PLAN.fullmatch(str(db.get("plan", "basic-256mb"))):
            problems.append(f"{where}: plan {db.get('plan')!r} is not a PostgreSQL plan")
    for group in doc.get("envVarGroups", []):
        where = f"envVarGroup {group.get('name')!r}"
        problems += [f"{where}: unknown key {k!r}" for k in sorted(set(group) - GROUP_KEYS)]
        for entry in group.get("envVars", []):
            problems += _env_entry_problems(where, entry, GROUP_ENV_SOURCES)
    problems += _reference_problems(doc)
    return problems


def _service_problems(service: dict[str, Any]) -> list[str]:
    where = f"service {service.get('name')!r}"
    kind, runtime = service.get("type"), service.get("runtime")
    if kind not in SERVICE_KEYS_BY_TYPE:
        return [f"{where}: type {kind!r} is not one of {sorted(SERVICE_KEYS_BY_TYPE)}"]
    if runtime not in RUNTIMES:
        return [f"{where}: runtime {runtime!r} is not one of {sorted(RUNTIMES)}"]
    family = "native" if runtime in NATIVE_RUNTIMES else runtime
    allowed = SERVICE_KEYS_BY_TYPE[kind] | RUNTIME_KEYS.get(family, set())
    problems = [f"{where}: unknown key {k!r}" for k in sorted(set(service) - allowed)]
    required = {"native": {"buildCommand", "startCommand"}, "image": {"image"}}.get(family, set())
    problems += [f"{where}: missing {k!r}" for k in sorted(required - set(service))]
    problems += _nested_problems(where, service)
    if service.get("plan", "starter") not in SERVICE_PLANS:
        problems.append(f"{where}: plan {service.get('plan')!r} is not a paid plan")
    if service.get("region", "oregon") not in REGIONS:
        problems.append(f"{where}: region {service.get('region')!r} unknown")
    count = service.get("numInstances", 1)
    if not isinstance(count, int) or count < 1:
        problems.append(f"{where}: numInstances must be 1 or more (Render's minimum)")
    delay = service.get("maxShutdownDelaySeconds", 30)
    if not isinstance(delay, int) or not 1 <= delay <= 300:
        problems.append(f"{where}: maxShutdownDelaySeconds must be 1 to 300")
    if "healthCheckPath" in service and not str(service["healthCheckPath"]).startswith("/"):
        problems.append(f"{where}: healthCheckPath must start with /")
    for entry in service.get("envVars", []):
        problems += _env_entry_problems(where, entry, ENV_SOURCES)
    return problems


def _nested_problems(where: str, service: dict[str, Any]) -> list[str]:
    """image, disk and scaling: their own documented keys."""
    problems = []
    if "image" in service:
        image = service["image"]
        problems += [f"{where}: image: unknown key {k!r}" for k in sorted(set(image) - IMAGE_KEYS)]
        if not str(image.get("url", "")).count(":"):
            problems.append(f"{where}: image.url needs a tag")
    if "disk" in service:
        disk = service["disk"]
        problems += [f"{where}: disk: unknown key {k!r}" for k in sorted(set(disk) - DISK_KEYS)]
        if not str(disk.get("mountPath", "")).startswith("/"):
            problems.append(f"{where}: disk.mountPath must be absolute")
        if not isinstance(disk.get("sizeGB", 1), int) or disk.get("sizeGB", 1) < 1:
            problems.append(f"{where}: disk.sizeGB must be a whole number of 1 or more")
    if "scaling" in service:
        extra = set(service["scaling"]) - SCALING_KEYS
        problems += [f"{where}: scaling: unknown key {k!r}" for k in sorted(extra)]
    return problems


def _env_entry_problems(where: str, entry: dict[str, Any], sources: set[str]) -> list[str]:
    if set(entry) == {"fromGroup"} and sources is ENV_SOURCES:
        return []
    key = entry.get("key")
    where = f"{where}: env {key!r}"
    given = set(entry) - {"key"}
    if not isinstance(key, str) or len(given) != 1 or not given <= sources:
        return [f"{where}: needs 'key' and exactly one of {sorted(sources)}, has {sorted(entry)}"]
    (source,) = given
    value = entry[source]
    problems = []
    if source == "value" and not isinstance(value, str):
        problems.append(f"{where}: value must be a string (quote it), got {value!r}")
    if source == "generateValue" and value is not True:
        problems.append(f"{where}: generateValue must be true")
    if source == "sync" and value is not False:
        problems.append(f"{where}: sync must be false")
    if source == "fromDatabase":
        problems += [
            f"{where}: fromDatabase: unknown key {k!r}"
            for k in sorted(set(value) - FROM_DATABASE_KEYS)
        ]
        if value.get("property") not in DATABASE_PROPERTIES:
            problems.append(f"{where}: fromDatabase.property {value.get('property')!r} unknown")
    if source == "fromService":
        problems += [
            f"{where}: fromService: unknown key {k!r}"
            for k in sorted(set(value) - FROM_SERVICE_KEYS)
        ]
        if ("property" in value) == ("envVarKey" in value):
            problems.append(f"{where}: fromService needs one of property or envVarKey")
        elif "property" in value:
            known = SERVICE_PROPERTIES.get(value.get("type"), set())
            if value["property"] not in known:
                problems.append(f"{where}: fromService.property {value['property']!r} unknown")
    return problems


def _reference_problems(doc: dict[str, Any]) -> list[str]:
    """Every fromDatabase/fromService/fromGroup names something defined here."""
    problems = []
    databases = {d.get("name") for d in doc.get("databases", [])}
    groups = {g.get("name") for g in doc.get("envVarGroups", [])}
    services = {(s.get("type"), s.get("name")): s for s in doc.get("services", [])}
    used_groups = set()
    for service in doc.get("services", []):
        where = f"service {service.get('name')!r}"
        keys = [e["key"] for e in env_entries(doc, service)]
        problems += [
            f"{where}: env {k!r} set twice" for k in sorted({k for k in keys if keys.count(k) > 1})
        ]
        for entry in service.get("envVars", []):
            if "fromGroup" in entry:
                used_groups.add(entry["fromGroup"])
                if entry["fromGroup"] not in groups:
                    problems.append(f"{where}: no envVarGroup {entry['fromGroup']!r}")
            if "fromDatabase" in entry and entry["fromDatabase"].get("name") not in databases:
                problems.append(f"{where}: no database {entry['fromDatabase'].get('name')!r}")
            ref = entry.get("fromService")
            if ref is None:
                continue
            target = services.get((ref.get("type"), ref.get("name")))
            if target is None:
                problems.append(f"{where}: no {ref.get('type')} service {ref.get('name')!r}")
            elif "envVarKey" in ref:
                source = {e["key"]: e for e in env_entries(doc, target)}.get(ref["envVarKey"])
                if source is None:
                    problems.append(f"{where}: {ref.get('name')} sets no {ref['envVarKey']!r}")
                elif "envVarKey" in source.get("fromService", {}):
                    problems.append(
                        f"{where}: {ref['envVarKey']!r} is itself a copy; copy its source"
                    )
    problems += [
        f"envVarGroup {g!r} is attached to no service" for g in sorted(groups - used_groups)
    ]
    return problems


def env_entries(doc: dict[str, Any], service: dict[str, Any]) -> list[dict[str, Any]]:
    """A service's env var entries with its groups' entries spliced in."""
    groups = {g.get("name"): g for g in doc.get("envVarGroups", [])}
    entries: list[dict[str, Any]] = []
    for entry in service.get("envVars", []):
        if "fromGroup" in entry:
            entries += groups.get(entry["fromGroup"], {}).get("envVars", [])
        else:
            entries.append(entry)
    return entries


def test_blueprint_uses_only_documented_fields(doc: dict[str, Any]) -> None:
    assert spec_problems(doc) == []


def test_blueprint_has_the_services_the_design_names(doc: dict[str, Any]) -> None:
    by_name = {s["name"]: s for s in doc["services"]}
    assert {n: (s["type"], s["runtime"]) for n, s in by_name.items()} == {
        "conveyor-web": ("web", "python"),
        "conveyor-dispatcher": ("worker", "python"),
        "conveyor-worker": ("worker", "python"),
        "conveyor-rabbitmq": ("pserv", "image"),
    }
    assert by_name["conveyor-web"]["healthCheckPath"] == "/healthz"
    rabbit = by_name["conveyor-rabbitmq"]
    assert re.fullmatch(
        r"docker\.io/library/rabbitmq:(3\.13|4(\.\d+)?)(-management)?", rabbit["image"]["url"]
    )
    assert rabbit["disk"]["mountPath"] == "/var/lib/rabbitmq"
    assert [d["name"] for d in doc["databases"]] == ["conveyor-db"]
    regions = {x.get("region") for x in [*doc["services"], *doc["databases"]]}
    assert len(regions) == 1, f"one region, for the private network: {regions}"


def _break(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation that sets ``value`` at a dotted path (list items by index or by name)."""

    def apply(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            if isinstance(node, list):
                node = node[int(part)] if part.isdigit() else _item(node, part)
            else:
                node = node[part]
        if value is _DELETE:
            del node[int(last) if isinstance(node, list) else last]
        elif isinstance(node, list) and last == "+":
            node.append(value)
        else:
            node[int(last) if isinstance(node, list) else last] = value

    return apply


_DELETE = object()


def _item(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The list item called ``name`` (a service, database or group) or keyed ``name`` (env)."""
    return next(x for x in items if name in (x.get("name"), x.get("key")))


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_break("servcies", []), "root: unknown key 'servcies'"),
        (_break("services.conveyor-web.healthCheckPth", "/"), "unknown key 'healthCheckPth'"),
        (_break("services.conveyor-web.type", "webservice"), "type 'webservice'"),
        (_break("services.conveyor-web.runtime", "python3"), "runtime 'python3'"),
        (_break("services.conveyor-web.image", {"url": "x:1"}), "unknown key 'image'"),
        (_break("services.conveyor-worker.healthCheckPath", "/"), "unknown key 'healthCheckPath'"),
        (_break("services.conveyor-rabbitmq.startCommand", "x"), "unknown key 'startCommand'"),
        (_break("services.conveyor-dispatcher.startCommand", _DELETE), "missing 'startCommand'"),
        (_break("services.conveyor-rabbitmq.disk.size", 5), "disk: unknown key 'size'"),
        (_break("services.conveyor-rabbitmq.disk.mountPath", "data"), "mountPath must be absolute"),
        (_break("services.conveyor-worker.numInstances", 0), "numInstances must be 1 or more"),
        (_break("services.conveyor-worker.maxShutdownDelaySeconds", 301), "1 to 300"),
        (_break("services.conveyor-web.envVars.+", {"key": "LOG_LEVEL"}), "exactly one of"),
        (
            _break("services.conveyor-web.envVars.+", {"key": "X", "value": "1", "sync": False}),
            "exactly one of",
        ),
        (_break("services.conveyor-web.envVars.+", {"key": "X", "fromEnv": "Y"}), "exactly one of"),
        (_break("services.conveyor-web.envVars.HOST.value", 0), "value must be a string"),
        (
            _break("services.conveyor-web.envVars.DATABASE_URL.fromDatabase.property", "url"),
            "fromDatabase.property 'url'",
        ),
        (
            _break("services.conveyor-web.envVars.DATABASE_URL.fromDatabase.name", "db"),
            "no database 'db'",
        ),
        (
            _break("services.conveyor-web.envVars.BROKER_HOST.fromService.property", "address"),
            "fromService.property 'address'",
        ),
        (
            _break("services.conveyor-web.envVars.BROKER_HOST.fromService.name", "rabbit"),
            "no pserv service 'rabbit'",
        ),
        (
            _break(
                "services.conveyor-web.envVars.BROKER_USER.fromService.envVarKey", "RABBITMQ_USER"
            ),
            "sets no 'RABBITMQ_USER'",
        ),
        (
            _break("services.conveyor-web.envVars.BROKER_USER.fromService.property", "host"),
            "one of property or envVarKey",
        ),
        (_break("services.conveyor-dispatcher.envVars.+", {"key": "HOST", "value": "x"}), None),
        (
            _break("services.conveyor-web.envVars.+", {"key": "HOST", "value": "x"}),
            "env 'HOST' set twice",
        ),
        (_break("services.conveyor-web.envVars.0.fromGroup", "shared"), "no envVarGroup 'shared'"),
        (
            _break(
                "services.conveyor-worker.envVars.STORAGE_URL.fromService.envVarKey", "BROKER_USER"
            ),
            "'BROKER_USER' is itself a copy",
        ),
        (
            _break("envVarGroups.conveyor-shared.envVars.+", {"key": "K", "sync": False}),
            "exactly one of",
        ),
        (
            _break("envVarGroups.+", {"name": "lonely", "envVars": []}),
            "'lonely' is attached to no service",
        ),
        (_break("databases.conveyor-db.version", "16"), "unknown key 'version'"),
        (_break("databases.conveyor-db.plan", "starter"), "not a PostgreSQL plan"),
        (_break("services.conveyor-worker.plan", "free"), "'free' is not a paid plan"),
        (_break("services.conveyor-worker.region", "eu-west-1"), "region 'eu-west-1' unknown"),
        (_break("databases.conveyor-db.postgresMajorVersion", 16), "must be a string"),
    ],
)
def test_spec_check_catches(
    doc: dict[str, Any], mutate: Callable[[dict[str, Any]], None], expected: str | None
) -> None:
    broken = copy.deepcopy(doc)
    mutate(broken)
    problems = spec_problems(broken)
    if expected is None:  # a control: a legal change stays legal
        assert problems == []
    else:
        assert any(expected in p for p in problems), problems


# --------------------------------------------------------------------- 2. real entry points


def commands(service: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for field in ("buildCommand", "preDeployCommand", "startCommand", "dockerCommand"):
        if field in service:
            yield field, service[field]


def python_invocations(command: str) -> Iterator[list[str]]:
    """The argv of each ``…/python …`` in a shell command (split on && || ; |)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    argv: list[str] = []
    for token in [*lexer, ";"]:
        if token in {"&&", "||", ";", "|", "&"}:
            if argv and Path(argv[0]).name.startswith("python"):
                yield argv
            argv = []
        else:
            argv.append(token)


class _Parsed(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def _capture_parser(main: Callable[[list[str]], Any]) -> argparse.ArgumentParser | None:
    """The argparse parser ``main`` builds: stopped at its parse_args, before any work."""

    def stop(self: argparse.ArgumentParser, *_: Any, **__: Any) -> None:
        raise _Parsed(self)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", stop):
        try:
            main([])
        except _Parsed as parsed:
            return parsed.parser
    return None


def entry_point_problems(argv: list[str], interpreter: str) -> list[str]:
    """``argv`` runs a module of this project with flags its parser takes (or real imports)."""
    shown = shlex.join(argv)
    if argv[0] != interpreter:
        return [f"{shown}: run {interpreter} (the environment uv sync fills)"]
    if len(argv) >= 3 and argv[1] == "-c":
        return _code_problems(shown, argv[2])
    if len(argv) < 3 or argv[1] != "-m":
        return [f"{shown}: expected {interpreter} -m MODULE"]
    module, args = argv[2], argv[3:]
    if module.split(".")[0] not in {"services", "infra", "libs"}:
        return [f"{shown}: {module} is not part of this project"]
    try:
        spec = importlib.util.find_spec(module)
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        return [f"{shown}: no module {module}"]
    runnable = f"{module}.__main__" if spec.submodule_search_locations is not None else module
    if importlib.util.find_spec(runnable) is None:
        return [f"{shown}: {module} is a package without __main__"]
    main = getattr(importlib.import_module(runnable), "main", None)
    if not callable(main):
        return [f"{shown}: {runnable} has no main()"]
    parser = _capture_parser(main)
    if parser is None:
        return [f"{shown}: {runnable}.main() builds no argparse parser"]
    known = set(parser._option_string_actions)
    problems = [
        f"{shown}: {module} has no flag {arg.split('=')[0]}"
        for arg in args
        if arg.startswith("-") and arg.split("=")[0] not in known  # no abbreviations either
    ]
    with contextlib.redirect_stderr(io.StringIO()) as err:
        try:
            parser.parse_args(args)
        except SystemExit:
            problems.append(f"{shown}: {err.getvalue().strip().splitlines()[-1]}")
    return problems


def _code_problems(shown: str, code: str) -> list[str]:
    """``python -c``: it parses, and every ``from X import Y`` names something real."""
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return [f"{shown}: {exc}"]
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            module = importlib.import_module(node.module)
            problems += [
                f"{shown}: {node.module} has no {a.name}"
                for a in node.names
                if not hasattr(module, a.name)
            ]
    return problems


def blueprint_entry_problems(doc: dict[str, Any]) -> list[str]:
    problems = []
    for service in doc.get("services", []):
        if service.get("runtime") != "python":
            continue
        for field, command in commands(service):
            invocations = list(python_invocations(command))
            if field in {"startCommand", "preDeployCommand"} and len(invocations) != 1:
                problems.append(f"{service['name']}.{field}: one python -m entry point expected")
            for argv in invocations:
                problems += [
                    f"{service['name']}.{field}: {p}"
                    for p in entry_point_problems(argv, ".venv/bin/python")
                ]
        if not re.fullmatch(
            r"uv sync --frozen --no-dev( &&.*)?", " ".join(service["buildCommand"].split())
        ):
            problems.append(
                f"{service['name']}.buildCommand: install with uv sync --frozen --no-dev"
            )
    return problems


def start_module(service: dict[str, Any]) -> str:
    argv = next(python_invocations(service["startCommand"]))
    return argv[2]


def test_commands_name_real_entry_points(doc: dict[str, Any]) -> None:
    assert blueprint_entry_problems(doc) == []
    by_name = {s["name"]: s for s in doc["services"]}
    assert start_module(by_name["conveyor-web"]) == "services.web"
    assert start_module(by_name["conveyor-dispatcher"]) == "services.dispatcher"
    assert start_module(by_name["conveyor-worker"]) == "services.worker"
    migrate = next(python_invocations(by_name["conveyor-web"]["preDeployCommand"]))
    assert migrate[1:3] == ["-m", "infra.migrate"]


@pytest.mark.parametrize(
    ("service", "field", "command", "expected"),
    [
        (
            "conveyor-web",
            "startCommand",
            ".venv/bin/python -m services.webb",
            "no module services.webb",
        ),
        (
            "conveyor-web",
            "startCommand",
            ".venv/bin/python -m services",
            "package without __main__",
        ),
        (
            "conveyor-web",
            "startCommand",
            ".venv/bin/python -m libs.common.settings",
            "has no main()",
        ),
        (
            "conveyor-web",
            "startCommand",
            ".venv/bin/python -m services.web --port 80",
            "no flag --port",
        ),
        (
            "conveyor-web",
            "preDeployCommand",
            ".venv/bin/python -m infra.migrate --dry-run",
            "no flag --dry-run",
        ),
        (
            "conveyor-worker",
            "startCommand",
            ".venv/bin/python -m services.worker --pla",
            "no flag --pla",
        ),
        (
            "conveyor-worker",
            "startCommand",
            ".venv/bin/python -m services.worker --max-idle soon",
            "invalid float",
        ),
        ("conveyor-worker", "startCommand", "python -m services.worker", "run .venv/bin/python"),
        (
            "conveyor-worker",
            "startCommand",
            ".venv/bin/python -m uvicorn app",
            "not part of this project",
        ),
        (
            "conveyor-worker",
            "buildCommand",
            "uv sync --frozen --no-dev && "
            ".venv/bin/python -c 'from libs.common.audio.features import warmup'",
            "has no warmup",
        ),
        ("conveyor-worker", "buildCommand", "pip install .", "uv sync --frozen --no-dev"),
        (
            "conveyor-dispatcher",
            "startCommand",
            ".venv/bin/python -m services.dispatcher && .venv/bin/python -m services.worker",
            "one python -m entry point",
        ),
    ],
)
def test_entry_point_check_catches(
    doc: dict[str, Any], service: str, field: str, command: str, expected: str
) -> None:
    broken = copy.deepcopy(doc)
    next(s for s in broken["services"] if s["name"] == service)[field] = command
    problems = blueprint_entry_problems(broken)
    assert any(expected in p for p in problems), problems


def test_the_worker_flags_used_exist() -> None:
    """The flags the Blueprint and the docs rely on, by name."""
    from services.worker.__main__ import main

    parser = _capture_parser(main)
    assert parser is not None
    assert {"--pool", "--concurrency", "--max-idle", "--drain", "--plain"} <= set(
        parser._option_string_actions
    )


# ------------------------------------------------------------------------- 3. the environment


def _generated(owner: str, key: str) -> str:
    """A stand-in for generateValue: base64 of 256 bits, like Render's (/, + and = likely)."""
    return base64.b64encode(hashlib.sha256(f"{owner}/{key}/+/".encode()).digest()).decode()


def resolve_env(
    doc: dict[str, Any], service: dict[str, Any], operator: dict[str, str]
) -> dict[str, str]:
    """The environment Render would give ``service``, with stand-ins for generated values."""
    groups = {g["name"] for g in doc.get("envVarGroups", [])}
    services = {(s["type"], s["name"]): s for s in doc["services"]}
    env: dict[str, str] = {}
    for entry in env_entries(doc, service):
        key = entry["key"]
        if "value" in entry:
            env[key] = entry["value"]
        elif "generateValue" in entry:
            owner = next((g for g in groups if entry in _group_entries(doc, g)), service["name"])
            env[key] = _generated(owner, key)
        elif "sync" in entry:
            if key not in operator:
                raise KeyError(f"{service['name']}: {key} is sync: false; say what operators type")
            env[key] = operator[key]
        elif "fromDatabase" in entry:
            prop = entry["fromDatabase"]["property"]
            env[key] = DATABASE_URL if prop == "connectionString" else f"<{prop}>"
        else:
            ref = entry["fromService"]
            if "envVarKey" in ref:
                target = services[(ref["type"], ref["name"])]
                copied = resolve_env(doc, target, operator).get(ref["envVarKey"])
                if copied is not None:
                    env[key] = copied
            else:
                host = f"{ref['name']}-x7q2"
                env[key] = {"host": host, "port": "5672", "hostport": f"{host}:5672"}[
                    ref["property"]
                ]
    return env


def _group_entries(doc: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return next(g for g in doc["envVarGroups"] if g["name"] == name)["envVars"]


def python_services(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in doc["services"] if s.get("runtime") == "python"]


def read_problems(doc: dict[str, Any]) -> list[str]:
    """Every variable set is read by the process it is given to."""
    problems = []
    for service in doc["services"]:
        image = _image(service)
        if service.get("runtime") == "python":
            readers, who = READ_BY_PYTHON, "Conveyor"
        elif "/rabbitmq:" in image:
            readers, who = READ_BY_RABBITMQ_IMAGE, "the RabbitMQ image"
        else:
            readers, who = set(), "nothing known"
        for entry in env_entries(doc, service):
            if entry["key"] not in readers:
                problems.append(f"{service['name']}: {entry['key']} is read by no one ({who})")
    return problems


def coverage_problems(doc: dict[str, Any]) -> list[str]:
    """Every setting a service reads is provided, has a default, or is fine unset there."""
    problems = []
    for name in sorted(set(UNSET_ON_RENDER) - set(SETTING_NAMES)):
        problems.append(f"UNSET_ON_RENDER names {name}, which is no setting")
    for service in python_services(doc):
        provided = {e["key"] for e in env_entries(doc, service)}
        for name, f in SETTING_NAMES.items():
            where, _why = UNSET_ON_RENDER.get(name, ("", ""))
            fine_unset = where == "*" or service["name"] in where.split()
            if f.default is None and name not in provided and not fine_unset:
                problems.append(f"{service['name']}: {name} is neither set nor defaulted")
    return problems


def behaviour_problems(doc: dict[str, Any], operator: dict[str, str]) -> list[str]:
    """What each service makes of its environment, through the real settings loader."""
    problems = []
    loaded: dict[str, Settings] = {}
    rabbit = next((s for s in doc["services"] if "/rabbitmq:" in _image(s)), None)
    rabbit_env = resolve_env(doc, rabbit, operator) if rabbit else {}
    login = (rabbit_env.get("RABBITMQ_DEFAULT_USER"), rabbit_env.get("RABBITMQ_DEFAULT_PASS"))
    for service in python_services(doc):
        env = resolve_env(doc, service, operator)
        try:
            loaded[service["name"]] = settings.load(env)
        except settings.SettingsError as exc:
            problems.append(f"{service['name']}: {exc}")
            continue
        problems += [
            f"{service['name']}: {p}"
            for p in _started_problems(service, env, loaded[service["name"]], operator, login)
        ]
    shared = {n: (s.queue_prefix, s.delivery_limit, s.heartbeat_seconds) for n, s in loaded.items()}
    if len(set(shared.values())) > 1:
        problems.append(
            f"services disagree on QUEUE_PREFIX/DELIVERY_LIMIT/HEARTBEAT_SECONDS: {shared}"
        )
    return problems


def _image(service: dict[str, Any]) -> str:
    return str(service.get("image", {}).get("url", ""))


def _started_problems(
    service: dict[str, Any],
    env: dict[str, str],
    s: Settings,
    operator: dict[str, str],
    login: tuple[str | None, str | None],
) -> list[str]:
    """One service's settings: a broker, shared storage, the database it needs, and so on."""
    problems = []
    module = start_module(service)
    if s.embedded:
        problems.append("no broker: it would start as the embedded all-in-one")
    elif not operator.get("BROKER_URL"):
        url = Connection(s.broker_url)
        if (url.userid, url.password) != login or not url.hostname.startswith("conveyor-rabbitmq"):
            problems.append("its broker URL does not log in to the private RabbitMQ")
    if not s.storage_url.startswith("s3://"):
        problems.append(f"STORAGE_URL {s.storage_url} is not shared by the services")
    elif not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"} <= set(env):
        problems.append("S3 storage without AWS credentials and region")
    needs_db = module != "services.worker"
    if needs_db and not s.database_url.startswith("postgresql+psycopg://"):
        problems.append(f"DATABASE_URL is {s.database_url}, not the PostgreSQL")
    if not needs_db and "DATABASE_URL" in env:
        problems.append("a worker needs no database credentials")
    if module == "services.web":
        problems += _web_problems(env, s)
    grace = s.shutdown_grace_seconds + (5 if module == "services.web" else 0)
    if service.get("maxShutdownDelaySeconds", 30) <= grace:
        problems.append(f"maxShutdownDelaySeconds is not above the {grace:g} s it may take")
    return problems


def _web_problems(env: dict[str, str], s: Settings) -> list[str]:
    problems = []
    if s.host != "0.0.0.0":
        problems.append(f"HOST {s.host} is not reachable by Render's proxy")
    if s.worker_token_key is None:
        problems.append("no WORKER_TOKEN_KEY: pairing would answer 503")
    if "PORT" in env:
        problems.append("PORT is Render's to set")
    return problems


def test_every_variable_set_is_read(doc: dict[str, Any]) -> None:
    assert read_problems(doc) == []


def test_every_setting_is_provided_or_defaulted(doc: dict[str, Any]) -> None:
    assert coverage_problems(doc) == []


@pytest.mark.parametrize("scenario", sorted(OPERATOR_INPUT))
def test_services_start_configured(doc: dict[str, Any], scenario: str) -> None:
    assert behaviour_problems(doc, OPERATOR_INPUT[scenario]) == []


def sync_false_problems(doc: dict[str, Any], guide: str) -> list[str]:
    """Each value the operator is asked for appears in the guide and in every scenario here."""
    asked = {
        e["key"] for s in doc["services"] for e in s.get("envVars", []) if e.get("sync") is False
    }
    problems = [
        f"docs/deploy.md does not mention `{k}`" for k in sorted(asked) if f"`{k}`" not in guide
    ]
    for name, scenario in OPERATOR_INPUT.items():
        if asked != set(scenario):
            problems.append(
                f"scenario {name} answers {sorted(scenario)}, the Blueprint asks {sorted(asked)}"
            )
    return problems


def test_every_sync_false_value_is_documented(doc: dict[str, Any]) -> None:
    guide = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    assert any(e.get("sync") is False for e in _env_of(doc, "conveyor-web"))
    assert sync_false_problems(doc, guide) == []
    _add("conveyor-web", {"key": "AUDIO_ROOTS", "sync": False})(doc)
    assert "docs/deploy.md does not mention `AUDIO_ROOTS`" in sync_false_problems(doc, guide)
    assert any("the Blueprint asks" in p for p in sync_false_problems(doc, guide))


def _env_of(doc: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return next(s for s in doc["services"] if s["name"] == name)["envVars"]


def _drop(name: str, key: str) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        entries = _env_of(doc, name)
        entries[:] = [e for e in entries if e.get("key") != key]

    return apply


def _add(name: str, entry: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    return lambda doc: _env_of(doc, name).append(entry)


def _group(key: str, value: str) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        next(e for e in _group_entries(doc, "conveyor-shared") if e["key"] == key)["value"] = value

    return apply


def _move_group_value(name: str, key: str, value: str) -> Callable[[dict[str, Any]], None]:
    """One service overrides a shared value (so the services disagree)."""

    def apply(doc: dict[str, Any]) -> None:
        _env_of(doc, name).append({"key": key, "value": value})
        entries = _group_entries(doc, "conveyor-shared")
        entries[:] = [e for e in entries if e["key"] != key]
        for other in python_services(doc):
            if other["name"] != name:
                other["envVars"].append({"key": key, "value": "5"})

    return apply


def _replace(name: str, entry: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        _drop(name, entry["key"])(doc)
        _add(name, entry)(doc)

    return apply


def _set_attr(name: str, key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        next(s for s in doc["services"] if s["name"] == name)[key] = value

    return apply


@pytest.mark.parametrize(
    ("mutate", "check", "expected"),
    [
        (
            _add("conveyor-web", {"key": "WEB_PORT", "value": "80"}),
            "read",
            "WEB_PORT is read by no one",
        ),
        (
            _add("conveyor-rabbitmq", {"key": "RABBITMQ_VM_MEMORY", "value": "1"}),
            "read",
            "RABBITMQ_VM_MEMORY is read by no one",
        ),
        (
            _add("conveyor-worker", {"key": "OPENAI_API_KEY", "sync": False}),
            "read",
            "OPENAI_API_KEY is read by no one",
        ),
        (_drop("conveyor-dispatcher", "BROKER_HOST"), "behaviour", "needs BROKER_HOST"),
        (_drop("conveyor-worker", "BROKER_USER"), "behaviour", "BROKER_USER: not set"),
        (
            _drop("conveyor-web", "BROKER_PASSWORD"),
            "coverage",
            "conveyor-web: BROKER_PASSWORD is neither set",
        ),
        (_drop("conveyor-dispatcher", "DATABASE_URL"), "behaviour", "not the PostgreSQL"),
        (
            _add(
                "conveyor-worker",
                {
                    "key": "DATABASE_URL",
                    "fromDatabase": {"name": "conveyor-db", "property": "connectionString"},
                },
            ),
            "behaviour",
            "needs no database credentials",
        ),
        (_drop("conveyor-worker", "STORAGE_URL"), "behaviour", "is not shared by the services"),
        (
            _drop("conveyor-dispatcher", "AWS_DEFAULT_REGION"),
            "behaviour",
            "without AWS credentials and region",
        ),
        (_drop("conveyor-web", "HOST"), "behaviour", "HOST 127.0.0.1"),
        (_drop("conveyor-web", "WORKER_TOKEN_KEY"), "behaviour", "pairing would answer 503"),
        (
            _drop("conveyor-web", "WORKER_TOKEN_KEY"),
            "coverage",
            "conveyor-web: WORKER_TOKEN_KEY is neither set",
        ),
        (
            _add("conveyor-web", {"key": "PORT", "value": "8000"}),
            "behaviour",
            "PORT is Render's to set",
        ),
        (
            _set_attr("conveyor-worker", "maxShutdownDelaySeconds", 30),
            "behaviour",
            "conveyor-worker: maxShutdownDelaySeconds",
        ),
        (
            _set_attr("conveyor-web", "maxShutdownDelaySeconds", 34),
            "behaviour",
            "conveyor-web: maxShutdownDelaySeconds",
        ),
        (
            _group("SHUTDOWN_GRACE_SECONDS", "90"),
            "behaviour",
            "maxShutdownDelaySeconds is not above",
        ),
        (_group("DELIVERY_LIMIT", "0"), "behaviour", "DELIVERY_LIMIT: must be a positive integer"),
        (
            _move_group_value("conveyor-worker", "DELIVERY_LIMIT", "7"),
            "behaviour",
            "services disagree",
        ),
        (_drop("conveyor-web", "BROKER_USER"), "behaviour", "BROKER_USER: not set"),
        (
            _add("conveyor-rabbitmq", {"key": "RABBITMQ_DEFAULT_VHOST", "value": "x"}),
            "read",
            "RABBITMQ_DEFAULT_VHOST is read by no one",
        ),
        (
            _replace("conveyor-dispatcher", {"key": "BROKER_USER", "value": "guest"}),
            "behaviour",
            "does not log in to the private RabbitMQ",
        ),
    ],
)
def test_environment_checks_catch(
    doc: dict[str, Any], mutate: Callable[[dict[str, Any]], None], check: str, expected: str
) -> None:
    broken = copy.deepcopy(doc)
    mutate(broken)
    operator = OPERATOR_INPUT["private-rabbitmq"]
    try:
        problems = {
            "read": lambda: read_problems(broken),
            "coverage": lambda: coverage_problems(broken),
            "behaviour": lambda: behaviour_problems(broken, operator),
        }[check]()
    except KeyError as exc:  # a reference to a variable that is gone
        problems = [str(exc)]
    assert any(expected in p for p in problems), problems


def test_coverage_check_rejects_stale_allow_list_entries(
    doc: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(UNSET_ON_RENDER, "LASTFM_URL", ("*", "renamed long ago"))
    assert "UNSET_ON_RENDER names LASTFM_URL, which is no setting" in coverage_problems(doc)


# --------------------------------------------------------------------------- 4. systemd unit


def _seconds(span: str) -> float:
    """A systemd time span ("45", "45s", "1min 30s", "2m") in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span.strip()):
        total += float(number) * units[unit]
    return total


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values, in order]}} (keys like Environment= repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        elif "=" in line:
            key, value = line.split("=", 1)
            current.setdefault(key.strip(), []).append(value.strip())
    return sections


def unit_problems(text: str) -> list[str]:
    sections = parse_unit(text)
    if "Service" not in sections:
        return ["no [Service] section"]
    service = {k: v[-1] for k, v in sections["Service"].items()}  # the last one wins
    problems = []
    exec_start = shlex.split(service.get("ExecStart", ""))
    if (
        not exec_start
        or not exec_start[0].startswith("/")
        or not exec_start[0].endswith("/.venv/bin/python")
    ):
        problems.append("ExecStart: run the checkout's .venv/bin/python by its absolute path")
    if exec_start[1:3] != ["-m", "services.worker"]:
        problems.append("ExecStart: expected python -m services.worker")
    elif exec_start:
        problems += [f"ExecStart: {p}" for p in entry_point_problems(exec_start, exec_start[0])]
    assignments = sections["Service"].get("Environment", [])
    env = dict(kv.split("=", 1) for line in assignments for kv in shlex.split(line))
    grace = float(
        env.get("SHUTDOWN_GRACE_SECONDS", SETTING_NAMES["SHUTDOWN_GRACE_SECONDS"].default)
    )
    stop = _seconds(service.get("TimeoutStopSec", "90"))
    if stop < grace + 10:
        problems.append(f"TimeoutStopSec {stop:g} s: at least the {grace:g} s grace + 10 s margin")
    expected = {"KillSignal": "SIGTERM", "KillMode": "mixed", "Restart": "on-failure"}
    problems += [f"{k}: expected {v}" for k, v in expected.items() if service.get(k) != v]
    if service.get("User", "root") in {"root", "0"}:
        problems.append("User: a dedicated user, not root")
    if not service.get("EnvironmentFile", "").lstrip("-").startswith("/"):
        problems.append("EnvironmentFile: the settings file, by absolute path")
    if not service.get("WorkingDirectory", "").startswith("/"):
        problems.append("WorkingDirectory: the checkout, by absolute path")
    prevented = set(service.get("RestartPreventExitStatus", "").split())
    from services.worker import __main__ as worker_main

    for status in ("2", str(getattr(worker_main, "EXIT_REVOKED", 2))):
        if status not in prevented:
            problems.append(f"RestartPreventExitStatus: include {status} (restarting cannot help)")
    return problems


def test_systemd_unit() -> None:
    assert unit_problems(UNIT.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("TimeoutStopSec=45", "TimeoutStopSec=30", "TimeoutStopSec 30 s"),
        ("TimeoutStopSec=45", "TimeoutStopSec=1min", None),
        (
            "Environment=CONVEYOR_CONFIG_DIR",
            "Environment=SHUTDOWN_GRACE_SECONDS=60\nEnvironment=CONVEYOR_CONFIG_DIR",
            "60 s grace",
        ),
        ("-m services.worker --plain", "-m services.workers", "expected python -m services.worker"),
        ("-m services.worker --plain", "-m services.worker --verbose", "no flag --verbose"),
        ("/opt/conveyor/.venv/bin/python", "python3", "absolute path"),
        ("KillSignal=SIGTERM", "KillSignal=SIGINT", "KillSignal: expected SIGTERM"),
        ("KillMode=mixed", "KillMode=control-group", "KillMode: expected mixed"),
        ("Restart=on-failure", "Restart=always", "Restart: expected on-failure"),
        ("User=conveyor", "User=root", "a dedicated user"),
        ("EnvironmentFile=/etc/conveyor/worker.env", "", "EnvironmentFile"),
        ("WorkingDirectory=/opt/conveyor", "", "WorkingDirectory"),
        ("RestartPreventExitStatus=2 3", "RestartPreventExitStatus=2", "include 3"),
    ],
)
def test_systemd_check_catches(old: str, new: str, expected: str | None) -> None:
    from services.worker import __main__ as worker_main

    if new.endswith("RestartPreventExitStatus=2") and not hasattr(worker_main, "EXIT_REVOKED"):
        pytest.skip("the worker has no distinct exit status for revocation")
    text = UNIT.read_text(encoding="utf-8")
    assert old in text
    problems = unit_problems(text.replace(old, new))
    if expected is None:
        assert problems == []
    else:
        assert any(expected in p for p in problems), problems
