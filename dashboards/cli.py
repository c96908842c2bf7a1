"""``cellwatch grafana generate|sync``: write the provisioning files, or push everything to a running Grafana."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cellwatch.dashboards import alerting, generate, sync

_DB_ENV = {"host": "CELLWATCH_GRAFANA_DB_HOST", "name": "CELLWATCH_GRAFANA_DB_NAME",
           "user": "CELLWATCH_GRAFANA_DB_USER", "password": "CELLWATCH_GRAFANA_DB_PASSWORD"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("grafana", help="Grafana dashboards, alert rules and provisioning",
                                   description="Generate Grafana provisioning files, or sync them to a Grafana.")
    sub = parser.add_subparsers(dest="grafana_command", metavar="ACTION", required=True)

    gen = sub.add_parser("generate", help="write dashboards/generated/*.json and dashboards/provisioning/*.yaml")
    gen.add_argument("--out", type=Path, default=generate.PACKAGE_DIR,
                     help="directory to write into (default: the installed dashboards/ folder)")
    gen.add_argument("--check", action="store_true", help="only report files that differ; exit 1 if any")
    gen.set_defaults(func=_generate)

    sy = sub.add_parser(
        "sync", help="create or update datasource, folder, dashboards, alert rules, contact point, policy",
        description="Idempotent: reads each resource first and writes only what differs. The token comes from "
                    f"--token-file or ${sync.TOKEN_ENV} (a service-account token with Editor/Admin rights). "
                    "Datasource settings come from the flags or the CELLWATCH_GRAFANA_DB_* variables that the "
                    "provisioning files read too; the webhook URL from --webhook-url or "
                    f"${alerting.WEBHOOK_URL_ENV} (without one, contact point and policy are left alone).")
    sy.add_argument("--url", default=os.environ.get("CELLWATCH_GRAFANA_URL", "http://127.0.0.1:3000"),
                    help="Grafana base URL (default: $CELLWATCH_GRAFANA_URL or http://127.0.0.1:3000)")
    sy.add_argument("--token-file", type=Path, help=f"file holding the service-account token (else ${sync.TOKEN_ENV})")
    sy.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    sy.add_argument("--db-host", default=os.environ.get(_DB_ENV["host"], "postgres:5432"),
                    help="PostgreSQL host:port as Grafana reaches it")
    sy.add_argument("--db-name", default=os.environ.get(_DB_ENV["name"], "cellwatch"))
    sy.add_argument("--db-user", default=os.environ.get(_DB_ENV["user"], "grafana_reader"),
                    help=f"read-only database user (password from ${_DB_ENV['password']})")
    sy.add_argument("--webhook-url", default=os.environ.get(alerting.WEBHOOK_URL_ENV),
                    help="alert webhook URL for the contact point")
    sy.add_argument("--retries", type=int, default=4, help="attempts per call before giving up (default 4)")
    sy.add_argument("--timeout", type=float, default=10.0, help="seconds per HTTP call (default 10)")
    sy.set_defaults(func=_sync)


def _generate(args: argparse.Namespace) -> int:
    if args.check:
        stale = generate.stale(args.out)
        for rel in stale:
            print(f"stale: {rel}")
        return 1 if stale else 0
    changed = generate.write(args.out)
    print(f"{len(changed)} file(s) written under {args.out}" if changed else "all generated files up to date")
    return 0


def _sync(args: argparse.Namespace) -> int:
    token = sync.read_token(args.token_file)
    ds = generate.datasource(args.db_host, args.db_name, args.db_user, os.environ.get(_DB_ENV["password"]))
    syncer = sync.GrafanaSync(sync.connect(args.url, token, args.timeout), datasource=ds,
                              webhook_url=args.webhook_url, retries=max(1, args.retries), url=args.url)
    changes = syncer.apply(dry_run=args.dry_run)
    for change in changes:
        print(("would " if args.dry_run and change.action != "unchanged" else "") + str(change))
    n = sum(c.action != "unchanged" for c in changes)
    verb = "would change" if args.dry_run else "changed"
    print(f"{verb} {n} of {len(changes)} resources in Grafana at {args.url}")
    return 0
