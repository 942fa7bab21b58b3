"""Every route has an access rule (services/web/access.py), and every rule a route: a new
route without one fails here. The worker-token routes refuse a request without a token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from litestar import Litestar
from litestar.routes import HTTPRoute, WebSocketRoute
from litestar.testing import TestClient

from libs.common import runtime, settings
from services.web import access
from services.web.app import create_app


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Litestar]:
    tmp: Path = tmp_path_factory.mktemp("access")
    config = settings.load(
        {"DATABASE_URL": f"sqlite:///{tmp}/c.db", "STORAGE_URL": str(tmp / "storage"),
         "WORKER_TOKEN_KEY": "k" * 32}
    )  # fmt: skip
    components = runtime.build(config)
    yield create_app(components, embedded=False)
    components.engine.dispose()


def routes(app: Litestar) -> set[tuple[str, str]]:
    found = set()
    for route in app.routes:
        if route.path.startswith(access.PUBLIC_PREFIXES):
            continue
        if isinstance(route, WebSocketRoute):
            found.add(("WS", route.path))
        elif isinstance(route, HTTPRoute):
            found |= {(m, route.path) for m in route.methods if m not in ("OPTIONS", "HEAD")}
    return found


def test_every_route_has_an_access_rule_and_every_rule_a_route(app: Litestar) -> None:
    served = routes(app)
    assert served - access.RULES.keys() == set(), "routes without an access rule"
    assert access.RULES.keys() - served == set(), "rules for routes that do not exist"


def test_worker_token_routes_refuse_a_request_without_a_token(app: Litestar) -> None:
    with TestClient(app) as client:
        for (method, path), rule in access.RULES.items():
            if rule != access.WORKER_TOKEN or method == "WS":
                continue
            url = path.replace("{task_id:str}", "job-00000000").replace("{track_id:int}", "1")
            answer = client.request(method, url, json={} if method != "GET" else None)
            assert answer.status_code == 401, (method, path, answer.text)
