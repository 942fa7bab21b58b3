"""`python -m services.web users ...`: accounts from a shell, such as the first admin.

``users create [--admin] EMAIL [--name NAME]`` asks for the password twice on a terminal,
else reads the first line of stdin (``printf '%s\\n' "$PASSWORD" | ...``), so it never
appears in argv or the shell history. ``users list`` shows who has an account.
``users token EMAIL [--name NAME]`` makes an API token for that user, for scripts, and
prints it on stdout, alone, once (it is stored only as a hash). All use DATABASE_URL and
migrate it as the web does (AUTO_MIGRATE); they need no broker.
Exit 2, with one line on stderr, for a bad email, a weak password, a taken email, or (for
a token) an unknown or disabled account.
"""

from __future__ import annotations

import argparse
import getpass
import sys
import time
from typing import TextIO

from sqlalchemy import select

from libs.common import accounts, db, runtime, users
from libs.common.models import User

PROG = "python -m services.web users"
TOKEN_NAME = "command line"


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog=PROG,
        description="Manage Conveyor's accounts (login is not enforced yet).",
        epilog="Settings: DATABASE_URL, AUTO_MIGRATE and LOG_LEVEL, as for the web service.",
    )
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    create = commands.add_parser(
        "create",
        help="make an account",
        description="Make an account. The password is asked twice on a terminal, else read "
        f"from the first line of stdin ({accounts.PASSWORD_MIN} characters or more).",
    )
    create.add_argument("email", metavar="EMAIL")
    create.add_argument("--admin", action="store_true", help="an admin (default: a member)")
    create.add_argument("--name", default="", help="display name (default: from the email)")
    commands.add_parser("list", help="list the accounts", description="List the accounts.")
    token = commands.add_parser(
        "token",
        help="make an API token for a user",
        description="Make an API token (Authorization: Bearer) for the account EMAIL and print "
        "it on stdout, once: only its hash is stored. It carries that user's rights.",
    )
    token.add_argument("email", metavar="EMAIL")
    token.add_argument(
        "--name", default=TOKEN_NAME, help=f"what will use it (default: {TOKEN_NAME!r})"
    )
    return root


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.command == "create":
        return create(args.email, args.name, accounts.ADMIN if args.admin else accounts.MEMBER)
    if args.command == "token":
        return make_token(args.email, args.name)
    return list_users()


def create(email: str, name: str, role: str) -> int:
    try:
        email = accounts.normalise_email(email)  # before asking for a password in vain
        password = read_password(sys.stdin)
        accounts.check_password(password)
    except accounts.AccountError as exc:
        return refuse(exc)
    engine = runtime.database(runtime.load_settings())
    try:
        with db.sessions(engine)() as session, session.begin():
            user = users.create_user(session, email, name, password, role)
    except accounts.AccountError as exc:
        return refuse(exc)
    finally:
        engine.dispose()
    print(f"created {user.role} {user.email} ({user.name})")
    return 0


def read_password(stdin: TextIO) -> str:
    if not stdin.isatty():
        return stdin.readline().removesuffix("\n").removesuffix("\r")
    try:
        first = getpass.getpass("Password: ")
        again = getpass.getpass("Password again: ")
    except EOFError:
        raise accounts.AccountError("no password given") from None
    if first != again:
        raise accounts.AccountError("the two passwords differ")
    return first


def list_users() -> int:
    engine = runtime.database(runtime.load_settings())
    try:
        with db.sessions(engine)() as session:
            rows = users.list_users(session)
    finally:
        engine.dispose()
    if not rows:
        print("no accounts yet: python -m services.web users create --admin EMAIL")
    for user in rows:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(user.created_at))
        state = "disabled" if user.disabled_at is not None else "active"
        print(f"{user.email}\t{user.role}\t{state}\t{created}\t{user.name}")
    return 0


def make_token(email: str, name: str) -> int:
    try:
        email = accounts.normalise_email(email)
    except accounts.AccountError as exc:
        return refuse(exc)
    engine = runtime.database(runtime.load_settings())
    try:
        with db.sessions(engine)() as session, session.begin():
            user = session.scalar(select(User).where(User.email == email))
            if user is None:
                raise accounts.AccountError(f"no account with the email address {email}")
            row, token = users.create_api_token(session, user, name)
    except accounts.AccountError as exc:
        return refuse(exc)
    finally:
        engine.dispose()
    print(
        f"conveyor: users: API token {row.prefix}… ({row.name}) for {email}: shown once, "
        "here; only its hash is kept",
        file=sys.stderr,
    )
    print(token, flush=True)
    return 0


def refuse(exc: accounts.AccountError) -> int:
    print(f"conveyor: users: {exc}", file=sys.stderr)
    return 2
