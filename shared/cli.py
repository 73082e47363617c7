"""``latentd``: the operator's command line. ``latentd keys create --name app1`` prints a
new API key once; ``latentd keys list``; ``latentd keys revoke <id>``.

Talks to the Redis of ``LATENTD_REDIS_URL`` (the same settings as the service).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import redis

from shared.api_keys import ApiKeyStore
from shared.settings import get_settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="latentd", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    keys = commands.add_parser("keys", help="API keys").add_subparsers(dest="action",
                                                                       required=True)
    create = keys.add_parser("create", help="make a key and print its secret (once)")
    create.add_argument("--name", required=True, help="who the key is for, e.g. app1")
    create.add_argument("--admin", action="store_true", help="may see every key's jobs")
    keys.add_parser("list", help="the keys (never their secrets)")
    revoke = keys.add_parser("revoke", help="stop a key from working")
    revoke.add_argument("key_id")
    args = parser.parse_args(argv)

    settings = get_settings()
    store = ApiKeyStore(redis.Redis.from_url(settings.redis_url, decode_responses=True))
    try:
        return _keys(store, args)
    except redis.RedisError as exc:
        print(f"latentd: Redis at {settings.redis_url} is unreachable: {exc}", file=sys.stderr)
        return 1


def _keys(store: ApiKeyStore, args: argparse.Namespace) -> int:
    if args.action == "create":
        key, secret = store.create(args.name, admin=args.admin)
        print(secret)
        print(f"created {key.id} ({key.name}{', admin' if key.admin else ''}); the secret "
              "above is shown only now", file=sys.stderr)
        return 0
    if args.action == "list":
        for key in store.all():
            print(f"{key.id}\t{key.name}\t{'admin' if key.admin else '-'}\t{key.created_at}")
        return 0
    if store.revoke(args.key_id):
        print(f"revoked {args.key_id}", file=sys.stderr)
        return 0
    print(f"latentd: no key {args.key_id}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
