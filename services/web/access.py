"""Who may call each route: every route of the app has an owner and an access rule here.

A route missing from ``RULES`` fails ``tests/unit/test_route_access.py``, and its row in
the access matrix (``tests/integration/test_access_matrix.py``: every route by anonymous,
another member, the owner, an admin) fails there, so a new route cannot ship without
saying who may call it. The app's own routes take a logged-in user (``require_user``)
and answer a member about their own objects only: another user's job, pairing or paired
worker answers 404, as one that does not exist (``ownership.py`` has the rules). With
ACCOUNTS=off everyone is the local admin, as before accounts. What a paired worker
calls takes its worker token and is limited to its own pool's tasks; the worker token
never travels in a URL.
"""

from __future__ import annotations

#: Anyone: the process's health, the API's description, and the invitation page and the
#: page's script (static: what they show comes from the API, by its own rules).
PUBLIC = "public"
#: Anyone: the page's HTML; everything it shows comes from the guarded API.
PAGE = "anyone (the static page; its data comes from the guarded API)"
#: A logged-in user; a member acts on their own objects only (another's: 404), an admin
#: on all. Rows from before accounts (no owner) are the admins'.
OWNER = "a logged-in user: a member their own objects only (another's: 404), an admin all"
#: A logged-in user: the track library (public songs' vectors) is shared by all users.
SHARED = "a logged-in user (the shared track library)"
#: As OWNER; the pool named must be ``shared``, one of the caller's pairings' pools
#: (another's: 422, as an unknown pool), or, for an admin only, an operator's pool (403).
SUBMIT = "a logged-in user: pool shared or their own pairing's; operator pools admin only"
#: As OWNER; pairing into the ``shared`` pool is for admins (403), into an earlier
#: pairing's pool for its owner (another's: 422, as an unknown pool).
PAIRING = "a logged-in user: a new or their own pool; the shared pool admin only"
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
    ("GET", "/"): PAGE,
    ("GET", "/invite"): PUBLIC,
    ("GET", "/ui/account.js"): PUBLIC,
    ("GET", "/api/jobs"): OWNER,
    ("GET", _JOB): OWNER,
    ("GET", f"{_JOB}/errors"): OWNER,
    ("GET", f"{_JOB}/output"): OWNER,
    ("POST", f"{_JOB}/cancel"): OWNER,
    ("POST", f"{_JOB}/retry"): OWNER,
    ("POST", "/api/jobs/csv"): SUBMIT,
    ("POST", "/api/jobs/audio"): SUBMIT,
    ("POST", "/api/jobs/canary"): SUBMIT,
    ("POST", "/api/jobs/lastfm"): SUBMIT,
    ("GET", "/api/tracks"): SHARED,
    ("GET", "/api/tracks/export"): SHARED,
    ("GET", "/api/tracks/{track_id:int}"): SHARED,
    ("GET", "/api/tracks/{track_id:int}/similar"): SHARED,
    ("GET", "/api/workers"): OWNER,
    ("GET", "/api/workers/{worker_id:str}"): OWNER,
    ("DELETE", "/api/workers/{worker_id:str}"): OWNER,
    ("POST", "/api/pairings"): PAIRING,
    ("GET", "/api/pairings/{pairing_id:str}"): OWNER,
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
