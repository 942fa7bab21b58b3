"""Who may call each route: every route of the app has an owner and an access rule here.

A route missing from ``RULES`` fails ``tests/unit/test_route_access.py``, so a new route
cannot ship without saying who may call it. Until accounts are enforced on them (issue
12), the app's own routes are open to whoever reaches the address: ``docs/deploy.md``
says not to publish it. The account routes already check who calls (``auth.py``). What
a paired worker calls takes its worker token and is limited to its own pool's tasks; the
worker token never travels in a URL.
"""

from __future__ import annotations

#: Anyone: the process's health, the API's description, and the invitation page and the
#: page's script (static: what they show comes from the API, by its own rules).
PUBLIC = "public"
#: Whoever reaches the app, until accounts land (issue 12): jobs, tracks, workers, pairings.
OPERATOR = "operator (anyone who reaches the app until accounts exist)"
#: Anyone: log in or out, sign up, redeem an invitation (throttled per account and address).
ANONYMOUS = "anyone (logins and invitations throttled per account and address)"
#: A logged-in user, by session cookie or API token; their own tokens only.
USER = "a logged-in user (session or API token)"
#: An admin, by session cookie or API token.
ADMIN = "an admin (session or API token)"
#: A pairing code, throttled per address and globally.
PAIRING_CODE = "a one-time pairing code (throttled)"
#: A paired worker's token in ``Authorization: Bearer``; only its own pool's tasks.
WORKER_TOKEN = "worker token (Bearer), own pool only"

_JOB = "/api/jobs/{job_id:str}"
_TASK = "/api/workers/tasks/{task_id:str}"

#: (method, path) -> rule. ``WS`` stands for a WebSocket route.
RULES: dict[tuple[str, str], str] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/"): OPERATOR,
    ("GET", "/invite"): PUBLIC,
    ("GET", "/ui/account.js"): PUBLIC,
    ("GET", "/api/jobs"): OPERATOR,
    ("GET", _JOB): OPERATOR,
    ("GET", f"{_JOB}/errors"): OPERATOR,
    ("GET", f"{_JOB}/output"): OPERATOR,
    ("POST", f"{_JOB}/cancel"): OPERATOR,
    ("POST", f"{_JOB}/retry"): OPERATOR,
    ("POST", "/api/jobs/csv"): OPERATOR,
    ("POST", "/api/jobs/audio"): OPERATOR,
    ("POST", "/api/jobs/canary"): OPERATOR,
    ("POST", "/api/jobs/lastfm"): OPERATOR,
    ("GET", "/api/tracks"): OPERATOR,
    ("GET", "/api/tracks/export"): OPERATOR,
    ("GET", "/api/tracks/{track_id:int}"): OPERATOR,
    ("GET", "/api/tracks/{track_id:int}/similar"): OPERATOR,
    ("GET", "/api/workers"): OPERATOR,
    ("GET", "/api/workers/{worker_id:str}"): OPERATOR,
    ("DELETE", "/api/workers/{worker_id:str}"): OPERATOR,
    ("POST", "/api/pairings"): OPERATOR,
    ("GET", "/api/pairings/{pairing_id:str}"): OPERATOR,
    ("POST", "/api/auth/login"): ANONYMOUS,
    ("POST", "/api/auth/logout"): ANONYMOUS,
    ("POST", "/api/auth/signup"): ANONYMOUS,
    ("POST", "/api/auth/invites/redeem"): ANONYMOUS,
    ("POST", "/api/auth/logout-all"): USER,
    ("GET", "/api/auth/me"): USER,
    ("GET", "/api/auth/tokens"): USER,
    ("POST", "/api/auth/tokens"): USER,
    ("DELETE", "/api/auth/tokens/{token_id:str}"): USER,
    ("GET", "/api/users"): ADMIN,
    ("POST", "/api/users/invites"): ADMIN,
    ("DELETE", "/api/users/{user_id:str}"): ADMIN,
    ("POST", "/api/workers/pair"): PAIRING_CODE,
    ("POST", "/api/workers/refresh"): WORKER_TOKEN,
    ("WS", "/api/workers/connect"): WORKER_TOKEN,
    ("POST", f"{_TASK}/urls"): WORKER_TOKEN,
    ("GET", f"{_TASK}/input"): WORKER_TOKEN,
    ("PUT", f"{_TASK}/output"): WORKER_TOKEN,
    ("GET", f"{_TASK}/tracks/{{track_id:int}}"): WORKER_TOKEN,
}

#: The OpenAPI document and its viewers (Litestar's own routes): public.
PUBLIC_PREFIXES = ("/schema",)
