"""`python -m service apikey create|revoke|rotate|list|ensure-local`.

Keys are printed once, on stdout alone (so `KEY=$(python -m service apikey create ...)` works);
only their sha256 is stored. `ensure-local` is for `make run`: it keeps the local demo key in a file
readable by its owner only and prints it, creating (or re-keying) the client `local` when needed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from service.commands._database import add_database_option, open_engine
from service.db.api_clients import SCOPES, create_client, hash_key, list_clients, revoke_client, rotate_key
from service.db.session import make_sessionmaker
from service.private_files import private_directory

LOCAL_CLIENT = "local"
DEFAULT_LOCAL_KEY_FILE = Path("var/local-api-key")


def register(subparsers) -> None:
    parser = subparsers.add_parser("apikey", help="manage API keys")
    commands = parser.add_subparsers(dest="apikey_command", required=True)

    create = commands.add_parser("create", help="create a client; prints its key once")
    create.add_argument("name")
    create.add_argument(
        "--scopes",
        nargs="+",
        required=True,
        choices=SCOPES,
        metavar="SCOPE",
        help=f"some of: {' '.join(SCOPES)} (admin implies every scope)",
    )
    create.set_defaults(handler=_create)

    revoke = commands.add_parser("revoke", help="revoke a client's key (the name stays reserved)")
    revoke.add_argument("name")
    revoke.set_defaults(handler=_revoke)

    rotate = commands.add_parser("rotate", help="give a client a new key; prints it once")
    rotate.add_argument("name")
    rotate.set_defaults(handler=_rotate)

    listing = commands.add_parser("list", help="list clients (never their keys)")
    listing.set_defaults(handler=_list)

    local = commands.add_parser("ensure-local", help="print the local demo key, creating it if needed")
    local.add_argument("--key-file", type=Path, default=DEFAULT_LOCAL_KEY_FILE)
    local.set_defaults(handler=_ensure_local)

    for sub in (create, revoke, rotate, listing, local):
        add_database_option(sub)


def _create(args: argparse.Namespace) -> int:
    with open_engine(args) as engine, make_sessionmaker(engine)() as session:
        try:
            _, key = create_client(session, args.name, args.scopes)
        except ValueError as exc:
            sys.exit(f"error: {exc}")
    print(key)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    with open_engine(args) as engine, make_sessionmaker(engine)() as session:
        try:
            revoke_client(session, args.name)
        except LookupError as exc:
            sys.exit(f"error: {exc}")
    print(f"revoked {args.name}", file=sys.stderr)
    return 0


def _rotate(args: argparse.Namespace) -> int:
    with open_engine(args) as engine, make_sessionmaker(engine)() as session:
        try:
            _, key = rotate_key(session, args.name)
        except (LookupError, ValueError) as exc:
            sys.exit(f"error: {exc}")
    print(key)
    return 0


def _list(args: argparse.Namespace) -> int:
    with open_engine(args) as engine, make_sessionmaker(engine)() as session:
        clients = list_clients(session)
    for client in clients:
        state = f"revoked {client.revoked_at:%Y-%m-%d %H:%M}" if client.revoked_at else "active"
        print(f"{client.name}\t{client.key_prefix}...\t{','.join(client.scopes)}\t{state}")
    return 0


def _ensure_local(args: argparse.Namespace) -> int:
    key_file: Path = args.key_file
    with open_engine(args) as engine, make_sessionmaker(engine)() as session:
        clients = {client.name: client for client in list_clients(session)}
        local = clients.get(LOCAL_CLIENT)
        saved = key_file.read_text().strip() if key_file.is_file() else None
        if local is not None and local.revoked_at is None and saved and hash_key(saved) == local.key_hash:
            print(saved)
            return 0
        if local is None:
            _, key = create_client(session, LOCAL_CLIENT, SCOPES)
        else:
            try:
                _, key = rotate_key(session, LOCAL_CLIENT)
            except ValueError as exc:
                sys.exit(f"error: {exc}")
    _write_private(key_file, key)
    print(key)
    return 0


def _write_private(path: Path, content: str) -> None:
    private_directory(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(content + "\n")
    os.chmod(path, 0o600)  # O_CREAT's mode does not apply to a file that already existed
