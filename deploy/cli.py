"""`e2c`: run the local stack and talk to it."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, time
from typing import TYPE_CHECKING, Any

from shared.kafka_access import KafkaAccess
from shared.private_files import restrict_umask
from shared.settings import Settings

if TYPE_CHECKING:
    from deploy.stack import LocalStack


def main(argv: list[str] | None = None) -> int:
    restrict_umask()  # var/, the stores, the broker's log, tokens: the owner's only
    parser = _parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 2
    return int(args.run(args) or 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="e2c", description=__doc__)
    commands = parser.add_subparsers(title="commands")

    stack = commands.add_parser("stack", help="start, stop or inspect the local stack")
    stack_commands = stack.add_subparsers(title="stack commands")
    up = stack_commands.add_parser("up", help="start Kafka, Redis and the three services")
    up.add_argument(
        "--postgres",
        action="store_true",
        help="keep the services' stores in a local PostgreSQL (port 5433 or E2C_POSTGRES_PORT) "
        "instead of SQLite; *_DATABASE_URL variables already set are kept",
    )
    up.add_argument(
        "--brokers", type=_positive, metavar="N",
        help="Kafka as N KRaft nodes on loopback (3: topics with 3 replicas, 2 in sync); "
        "default: what the running stack has, else 1",
    )
    up.add_argument(
        "--instances", type=_positive, metavar="N",
        help="N instances of each service sharing its store (N > 1 needs --postgres); "
        "default: what the running stack has, else 1",
    )
    up.set_defaults(run=_stack_up)
    down = stack_commands.add_parser("down", help="stop everything")
    down.add_argument(
        "--purge",
        action="store_true",
        help="also delete the broker log, the stores and the PostgreSQL cluster",
    )
    down.set_defaults(run=_stack_down)
    status = stack_commands.add_parser("status", help="each part with pid, port and health")
    status.add_argument("--json", action="store_true")
    status.set_defaults(run=_stack_status)
    console = stack_commands.add_parser(
        "console", help="the console's address and how to sign in (no token is printed)")
    console.set_defaults(run=_stack_console)
    client_config = stack_commands.add_parser(
        "client-config",
        help="what a client of ROLE needs to connect to the running stack's broker "
        "(bootstrap servers, security protocol, mechanism, username, password)",
    )
    client_config.add_argument(
        "--role", required=True,
        help="admin, referrals, aids, outcomes, staff, finance, ops, or partner-AGENCY",
    )
    client_config.add_argument("--json", action="store_true", help="print it as JSON")
    client_config.set_defaults(run=_stack_client_config)

    demo = commands.add_parser("demo", help="send a small batch of referrals, show decisions")
    demo.set_defaults(run=_demo)

    referrals = commands.add_parser("referrals", help="personal data held by referrals")
    referral_commands = referrals.add_subparsers(title="referrals commands")
    erase = referral_commands.add_parser(
        "erase", help="delete one person's data; the pseudonymous decisions stay"
    )
    erase.add_argument("referral_id")
    erase.set_defaults(run=_referrals_erase)
    retention = referral_commands.add_parser(
        "retention",
        help="erase personal data of referrals rejected, duplicate, expired or exited longer "
        "ago than the retention period, or enrolled longer ago than "
        "E2C_ENROLLED_RETENTION_MONTHS (run it from cron; the service also runs it daily)",
    )
    retention.add_argument("--months", type=int, help="default: E2C_RETENTION_MONTHS (24)")
    retention.add_argument(
        "--as-of", type=_date, help="reference date (YYYY-MM-DD), default: now"
    )
    retention.set_defaults(run=_referrals_retention)
    audit = referral_commands.add_parser(
        "audit",
        help="the access trail: every read of personal data and every erasure, oldest first "
        "(from the running referrals service, as admin: E2C_TOKEN or the stack's admin token)",
    )
    audit.add_argument("--referral-id", metavar="ID", help="only this referral's rows")
    audit.add_argument("--since", metavar="ISO",
                       help="only the rows at or after then (YYYY-MM-DD or an RFC 3339 "
                       "date-time with an offset)")
    audit.add_argument("--json", action="store_true", help="print the rows as JSON")
    audit.set_defaults(run=_referrals_audit)

    partners = commands.add_parser("partners", help="what partner agencies receive")
    partner_commands = partners.add_subparsers(title="partners commands")
    partner_add = partner_commands.add_parser(
        "add", help="give an agency an HTTP token and Kafka credentials (printed once; new "
        "ones replace the old); the running services and broker accept them at once")
    partner_add.add_argument("agency_id")
    partner_add.set_defaults(run=_partner_add)
    partner_remove = partner_commands.add_parser(
        "remove", help="revoke an agency's HTTP tokens and Kafka credentials (at once)")
    partner_remove.add_argument("agency_id")
    partner_remove.set_defaults(run=_partner_remove)
    partner_list = partner_commands.add_parser(
        "list", help="the agencies holding an HTTP token (never the tokens)")
    partner_list.set_defaults(run=_partner_list)
    webhook = partner_commands.add_parser(
        "webhook", help="agencies' callback URLs: every decision about their referrals is "
        "POSTed there, signed (see the README)"
    )
    webhook_commands = webhook.add_subparsers(title="webhook commands")
    hook_set = webhook_commands.add_parser(
        "set", help="register (or change) an agency's URL; a new webhook's signing secret "
        "is printed once"
    )
    hook_set.add_argument("agency_id")
    hook_set.add_argument("url", help="http:// or https://")
    hook_set.add_argument("--rotate-secret", action="store_true",
                          help="make (and print once) a new secret for an existing webhook")
    hook_set.set_defaults(run=_webhook_set)
    hook_list = webhook_commands.add_parser(
        "list", help="the webhooks with their pending and parked deliveries (no secrets)")
    hook_list.add_argument("--json", action="store_true", help="print them as JSON")
    hook_list.set_defaults(run=_webhook_list)
    hook_remove = webhook_commands.add_parser(
        "remove", help="remove an agency's webhook and drop its queued deliveries")
    hook_remove.add_argument("agency_id")
    hook_remove.set_defaults(run=_webhook_remove)
    hook_replay = webhook_commands.add_parser(
        "replay", help="send parked deliveries again (those of --agency, or these ids, "
        "else all of them)")
    hook_replay.add_argument("--agency", metavar="AGENCY_ID")
    hook_replay.add_argument("delivery_ids", nargs="*", type=int, metavar="DELIVERY_ID")
    hook_replay.set_defaults(run=_webhook_replay)

    report = commands.add_parser("report", help="reports read from the services' stores")
    report_commands = report.add_subparsers(title="report commands")
    finance = report_commands.add_parser(
        "finance",
        help="aid granted and refused, budgets with their run-out month, by school and by "
        "month (the same figures as GET :8002/reports/finance)",
    )
    finance.add_argument("--year", required=True, type=_year, help="2000 to 2100")
    finance.add_argument(
        "--csv",
        metavar="FILE",
        help="also write the year's ledger to FILE (';'-separated, UTF-8 with BOM, "
        "decimal comma: the same file as GET :8002/reports/finance.csv)",
    )
    finance.add_argument("--json", action="store_true", help="print the report as JSON")
    finance.set_defaults(run=_report_finance)
    outcomes_report = report_commands.add_parser(
        "outcomes",
        help="accompanied, entries, exits by outcome and category, satisfaction, profile, "
        "agencies and schools, with their rates (the counts of GET :8003/reports/outcomes)",
    )
    outcomes_report.add_argument("--year", required=True, type=_year, help="2000 to 2100")
    outcomes_report.add_argument(
        "--json", action="store_true", help="print the report's JSON (the HTTP body, byte for byte)"
    )
    outcomes_report.set_defaults(run=_report_outcomes)
    funnel = report_commands.add_parser(
        "funnel",
        help="the year's referrals received, accepted, enrolled, exited and with a solution, "
        "per agency and per school, with the median days between steps",
    )
    funnel.add_argument("--year", required=True, type=_year, help="2000 to 2100")
    funnel.add_argument("--agency", metavar="ID", help="only this agency's referrals")
    funnel.add_argument("--json", action="store_true", help="print the funnel as JSON")
    funnel.set_defaults(run=_report_funnel)
    aids_outcomes = report_commands.add_parser(
        "aids-outcomes",
        help="for the year's exits, the solution rate with and without each aid kind",
    )
    aids_outcomes.add_argument("--year", required=True, type=_year, help="2000 to 2100")
    aids_outcomes.add_argument("--json", action="store_true", help="print it as JSON")
    aids_outcomes.set_defaults(run=_report_aids_outcomes)

    outcomes = commands.add_parser("outcomes", help="the outcomes service's store")
    outcomes_commands = outcomes.add_subparsers(title="outcomes commands")
    rebuild = outcomes_commands.add_parser(
        "rebuild",
        help="drop the outcomes store and rebuild it from its input topics (the stack's "
        "outcomes service is stopped meanwhile and started again)",
    )
    rebuild.add_argument(
        "--force",
        action="store_true",
        help="rebuild even though an outcomes service this stack did not start answers on "
        "its port (stop it yourself first)",
    )
    rebuild.set_defaults(run=_outcomes_rebuild)

    db = commands.add_parser("db", help="the services' store schemas (Alembic migrations)")
    db_commands = db.add_subparsers(title="db commands")
    for name, run, text in (
        ("upgrade", _db_upgrade, "bring the stores to this code's newest revision"),
        ("current", _db_current, "each store's revision and this code's newest"),
        ("history", _db_history, "the revisions of each service, oldest first"),
    ):
        db_command = db_commands.add_parser(name, help=text)
        db_command.add_argument("service", nargs="?", help="one service (default: all)")
        db_command.set_defaults(run=run)
    db_revision = db_commands.add_parser(
        "revision", help="(developers) autogenerate a service's next revision from its models"
    )
    db_revision.add_argument("service")
    db_revision.add_argument("-m", "--message", required=True)
    db_revision.set_defaults(run=_db_revision)
    backup = commands.add_parser(
        "backup", help="copy services' stores while they run (SQLite's online backup, "
        "pg_dump), each with a manifest; the files hold personal data (0600)")
    backup.add_argument("services", nargs="*", metavar="SERVICE",
                        help="referrals, aids, outcomes (default: all three)")
    backup.add_argument("--to", metavar="DIR",
                        help="default: var/backups/<UTC timestamp>/")
    backup.set_defaults(run=_backup)
    restore = commands.add_parser(
        "restore", help="put a service's store back from a backup (the service stopped); "
        "referrals gets every erasure made since the backup applied again")
    restore.add_argument("service", metavar="SERVICE")
    restore.add_argument("source", metavar="FROM", help="the backup folder, or its file")
    restore.set_defaults(run=_restore)

    ops = commands.add_parser("ops", help="pipeline health (role ops)")
    ops_commands = ops.add_subparsers(title="ops commands")
    ops_status = ops_commands.add_parser(
        "status",
        help="per service: consumer lag, outbox backlog, held requests, age of the last "
        "event, dead letters and heartbeat (exit code 1 when something is down)",
    )
    ops_status.add_argument("--json", action="store_true", help="print it as JSON")
    ops_status.add_argument(
        "--watch", nargs="?", type=float, const=2.0, metavar="SECONDS",
        help="refresh every SECONDS (default 2) until Ctrl-C",
    )
    ops_status.add_argument("--limit", type=int, default=5, help="dead letters shown (5)")
    ops_status.set_defaults(run=_ops_status)

    deadletters = commands.add_parser("deadletters", help="inspect and replay dead letters")
    deadletter_commands = deadletters.add_subparsers(title="deadletters commands")
    dl_list = deadletter_commands.add_parser(
        "list", help="the number of dead letters and the last ones, with reason and source"
    )
    dl_list.add_argument("--limit", type=int, default=20, help="letters shown (20)")
    dl_list.add_argument("--service", help="only the letters of this service")
    dl_list.add_argument(
        "--show-original", action="store_true",
        help="also print each original message and key (may hold personal data): recorded "
        "first in the referrals service's access trail, not shown if it cannot be",
    )
    dl_list.add_argument("--json", action="store_true", help="print them as JSON")
    dl_list.set_defaults(run=_deadletters_list)
    dl_replay = deadletter_commands.add_parser(
        "replay",
        help="publish a letter's original again to its source topic, once its cause is "
        "fixed (an event_id already processed has no effect)",
    )
    dl_replay.add_argument("--id", required=True, dest="event_id",
                           help="the dead letter's event_id (see `deadletters list`)")
    dl_replay.set_defaults(run=_deadletters_replay)
    simulate = commands.add_parser(
        "simulate",
        help="publish a realistic network year through the running stack and check the "
        "services' reports against the simulation's own ground truth",
    )
    simulate.add_argument(
        "--year", type=_year, default=date.today().year - 1,
        help="a year at least one school of the registry (E2C_SCHOOLS_FILE) was open; meals "
        "are priced from the rate table (E2C_AID_RULES_FILE), none before its first rate")
    simulate.add_argument("--trainees", type=int, default=1750)
    simulate.add_argument("--seed", type=int, default=2024)
    simulate.add_argument("--rate", type=float, default=0,
                          help="events per second to publish at (0: as fast as possible)")
    simulate.add_argument("--timeout", type=float, default=900,
                          help="seconds to wait for the answers of one phase")
    simulate.set_defaults(run=_simulate)
    return parser


def _date(text: str) -> date:
    return date.fromisoformat(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError("a whole number, 1 or more")
    return int(text)


def _year(text: str) -> int:
    from shared.reports import parse_year

    try:
        return parse_year(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _command_settings() -> Settings:
    from deploy.stack import LocalStack

    return LocalStack().command_settings()


def _db_services(args: argparse.Namespace) -> list[str]:
    from deploy.system import TOPOLOGIES

    if args.service is None:
        return list(TOPOLOGIES)
    if args.service not in TOPOLOGIES:
        raise SystemExit(f"no service {args.service!r}: one of {', '.join(TOPOLOGIES)}")
    return [args.service]


def _db_each(args: argparse.Namespace, work: Callable[[str, Any, str], bool]) -> int:
    """Runs `work(service, engine, shown url)` on each chosen store; 1 if one failed."""
    from sqlalchemy import make_url

    from shared.db import make_engine

    settings = _command_settings()
    failed = False
    for service in _db_services(args):
        url = settings.database_url(service)
        engine = make_engine(url)
        try:
            failed |= not work(service, engine, make_url(url).render_as_string())
        finally:
            engine.dispose()
    return 1 if failed else 0


def _db_current(args: argparse.Namespace) -> int:
    from shared.migrations import store_revision

    def show(service: str, engine: Any, url: str) -> bool:
        found = store_revision(engine, service)
        state = ("up to date" if found.up_to_date else
                 "empty" if found.current is None else
                 "newer than this code" if found.current not in _revisions(service) else
                 "upgrade needed")
        print(f"{service:<10} revision {found.current or '-':<6} head {found.head:<6} "
              f"{state:<20} {url}")
        return found.current is None or found.current in _revisions(service)

    return _db_each(args, show)


def _revisions(service: str) -> set[str]:
    from shared.migrations import history

    return {script.revision for script in history(service)}


def _db_upgrade(args: argparse.Namespace) -> int:
    from shared.migrations import StoreTooNew, migrate_store, store_revision

    def upgrade(service: str, engine: Any, url: str) -> bool:
        before = store_revision(engine, service).current
        try:
            after = migrate_store(engine, service)
        except StoreTooNew as error:
            print(f"{service}: {error}", file=sys.stderr)
            return False
        done = f"already at {after}" if before == after else f"{before or 'empty'} -> {after}"
        print(f"{service:<10} {done:<20} {url}")
        return True

    return _db_each(args, upgrade)


def _db_history(args: argparse.Namespace) -> int:
    from shared.migrations import history

    for service in _db_services(args):
        print(f"{service}:")
        for script in history(service):
            title = (script.doc or "").strip().splitlines()[0] if script.doc else ""
            head = " (head)" if script.is_head else ""
            print(f"  {script.revision}{head:<8} {title}")
    return 0


def _db_revision(args: argparse.Namespace) -> int:
    import tempfile
    from pathlib import Path

    from shared.migrations import new_revision

    _db_services(args)
    with tempfile.TemporaryDirectory() as scratch:
        made = new_revision(args.service, args.message, Path(scratch) / "scratch.db")
    if made is None:
        print("no revision written", file=sys.stderr)
        return 1
    print(f"{made.path}: read it, tidy it, add a test for the stores it changes")
    return 0


def _referrals_erase(args: argparse.Namespace) -> int:
    from services.referrals.app import erase_referral

    erased = erase_referral(_command_settings(), args.referral_id)
    if erased is None:
        print(f"no referral {args.referral_id}", file=sys.stderr)
        return 1
    print(f"{args.referral_id}: personal data {'erased' if erased else 'already erased'}")
    return 0


def _referrals_retention(args: argparse.Namespace) -> int:
    from services.referrals.app import run_retention

    settings = _command_settings()
    months = args.months or settings.retention_months
    as_of = (
        datetime.combine(args.as_of, time(), tzinfo=UTC) if args.as_of else datetime.now(UTC)
    )
    erased = run_retention(settings, months, as_of)
    if erased is None:
        print("retention is running in a service right now: nothing done", file=sys.stderr)
        return 1
    print(f"retention {months} months as of {as_of:%Y-%m-%d}: {erased} referrals erased")
    return 0


def _referrals_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.port('referrals')}"


def _admin_token(settings: Settings) -> str | None:
    """E2C_TOKEN, else an admin token of the stack's tokens file."""
    import os

    from shared.http import Role

    if os.environ.get("E2C_TOKEN"):
        return os.environ["E2C_TOKEN"]
    tokens = stack_tokens(settings)
    return next((token for token, role in tokens.items() if role == Role.ADMIN), None)


def _referrals_audit(args: argparse.Namespace) -> int:
    from deploy.audit import AuditUnavailable, audit_rows, render_row

    settings = Settings()
    try:
        rows = list(audit_rows(_referrals_url(settings), _admin_token(settings),
                               args.referral_id, args.since))
    except AuditUnavailable as error:
        print(f"e2c: {error}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        print(render_row(row))
    print(f"{len(rows)} rows")
    return 0


def _webhook_set(args: argparse.Namespace) -> int:
    from services.referrals.webhooks import WebhookError, command_store, register

    try:
        with command_store(_command_settings()) as store:
            done = register(store, args.agency_id, args.url, args.rotate_secret)
    except WebhookError as error:
        print(f"e2c: {error}", file=sys.stderr)
        return 2
    print(f"{done.agency_id}: webhook {'created' if done.created else 'changed'}")
    if done.secret is not None:
        print(f"signing secret (shown this once, give it to the agency): {done.secret}")
    return 0


def _webhook_list(args: argparse.Namespace) -> int:
    from services.referrals.webhooks import command_store, listing

    with command_store(_command_settings()) as store:
        found = listing(store)
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    if not found:
        print("no webhook")
    for hook in found:
        print(f"{hook['agency_id']:<24} {hook['url']}  pending {hook['pending']}  "
              f"parked {hook['parked']}  since {hook['created_at'][:19]}")
    return 0


def _webhook_remove(args: argparse.Namespace) -> int:
    from services.referrals.webhooks import command_store, remove

    with command_store(_command_settings()) as store:
        dropped = remove(store, args.agency_id)
    if dropped is None:
        print(f"{args.agency_id} has no webhook", file=sys.stderr)
        return 1
    print(f"{args.agency_id}: webhook removed, {dropped} queued deliveries dropped")
    return 0


def _webhook_replay(args: argparse.Namespace) -> int:
    from services.referrals.webhooks import command_store, replay

    with command_store(_command_settings()) as store:
        replayed = replay(store, args.agency, args.delivery_ids)
    print(f"{replayed} parked deliveries will be sent again")
    return 0


def _report_finance(args: argparse.Namespace) -> int:
    from services.aids import reports
    from shared.db import make_engine
    from shared.migrations import migrate_store
    from shared.schools import load_schools

    settings = _command_settings()
    engine = make_engine(settings.database_url("aids"))
    try:
        migrate_store(engine, "aids")
        schools = list(load_schools(settings.schools_file))
        report = reports.load_report(engine, args.year, schools)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(reports.render_text(report), end="")
        if args.csv:
            export = reports.LedgerCsv(engine, args.year)
            with open(args.csv, "wb") as file:
                for chunk in export.chunks():
                    file.write(chunk)
            print(f"{export.lines} ledger lines of {args.year} written to {args.csv}",
                  file=sys.stderr if args.json else sys.stdout)
    finally:
        engine.dispose()
    return 0


def _outcomes_engine(settings: Settings):  # a sqlalchemy Engine (imported lazily)
    """The outcomes store the stack's service uses (migrated to the code's revision)."""
    from shared.db import make_engine
    from shared.migrations import migrate_store

    engine = make_engine(settings.database_url("outcomes"))
    migrate_store(engine, "outcomes")
    return engine


def _print_outcomes_report(
    args: argparse.Namespace,
    as_json: Callable[[Any], bytes],
    as_text: Callable[[Any], str],
) -> int:
    """Prints a report of the outcomes store: its JSON body (the bytes the service serves)
    with `--json`, else its text table."""
    engine = _outcomes_engine(_command_settings())
    try:
        if args.json:
            print(as_json(engine).decode("utf-8"))
        else:
            print(as_text(engine), end="")
    finally:
        engine.dispose()
    return 0


def _report_outcomes(args: argparse.Namespace) -> int:
    from services.outcomes import reports
    from shared.schools import load_schools

    schools = list(load_schools(_command_settings().schools_file))
    return _print_outcomes_report(
        args,
        lambda engine: reports.outcomes_report_body(engine, args.year, schools),
        lambda engine: reports.render_outcomes_text(
            reports.load_outcomes_report(engine, args.year, schools)),
    )


def _report_funnel(args: argparse.Namespace) -> int:
    from services.outcomes import reports

    return _print_outcomes_report(
        args,
        lambda engine: reports.funnel_body(engine, args.year, args.agency),
        lambda engine: reports.render_funnel_text(
            reports.load_funnel(engine, args.year, args.agency)),
    )


def _report_aids_outcomes(args: argparse.Namespace) -> int:
    from services.outcomes import reports

    return _print_outcomes_report(
        args,
        lambda engine: reports.aids_outcomes_body(engine, args.year),
        lambda engine: reports.render_aids_outcomes_text(
            reports.load_aids_outcomes(engine, args.year)),
    )


def _outcomes_rebuild(args: argparse.Namespace) -> int:
    from deploy.local_kafka import broker_answers
    from deploy.stack import LocalStack
    from services.outcomes.app import TOPOLOGY, rebuild

    name = TOPOLOGY.name
    stack = LocalStack()
    access = stack.access(name)
    if not broker_answers(access):
        print(f"no broker answers on {access.bootstrap}: `e2c stack up` first", file=sys.stderr)
        return 1
    settings = stack.command_settings().with_kafka(access)
    running = stack.service_running(name)
    if not running and not args.force and stack.service_health(name) != "down":
        print(f"an outcomes service this stack did not start answers on port "
              f"{settings.port(name)}: stop it first (then --force)", file=sys.stderr)
        return 1
    if running:
        stack.stop_service(name)
        print(f"{name:<10} stopped")
    try:
        result = rebuild(settings)
    except BaseException:
        if running:
            print(f"{name:<10} left stopped: its store is incomplete; run "
                  "`e2c outcomes rebuild` again", file=sys.stderr)
        raise
    print(f"store      rebuilt from the topics: {result.records} records replayed, "
          f"{result.held_again} exits held again (no decision yet)")
    if running:
        stack.start_service(name)
        print(f"{name:<10} ready again on http://127.0.0.1:{settings.port(name)}")
    return 0


def _backup(args: argparse.Namespace) -> int:
    import time as clock
    from pathlib import Path

    from deploy.backup import backup, default_folder
    from deploy.system import TOPOLOGIES

    unknown = [name for name in args.services if name not in TOPOLOGIES]
    if unknown:
        print(f"e2c: no service {', '.join(unknown)} (services: {', '.join(TOPOLOGIES)})",
              file=sys.stderr)
        return 2
    settings = _command_settings()
    folder = Path(args.to) if args.to else default_folder(settings)
    started = clock.monotonic()
    for manifest in backup(settings, args.services or list(TOPOLOGIES), folder):
        print(f"{manifest.service:<10} {manifest.dialect:<10} {manifest.size:>12} bytes "
              f"in {manifest.seconds:.2f}s  revision {manifest.revision or '-'}")
    print(f"backup in {folder} ({clock.monotonic() - started:.2f}s); it holds personal "
          "data: keep it private and no longer than needed")
    return 0


def _restore(args: argparse.Namespace) -> int:
    """Like the rebuild: the stack's service is stopped for the restore and started again;
    the broker must answer (the erasure journal and the backlog are read from it)."""
    from pathlib import Path

    from deploy.backup import RestoreRefused, read_erasure_journal, restore
    from deploy.local_kafka import broker_answers
    from deploy.stack import LocalStack
    from deploy.system import TOPOLOGIES
    from shared.rebuild import catch_up

    name = args.service
    if name not in TOPOLOGIES:
        print(f"e2c: no service {name} (services: {', '.join(TOPOLOGIES)})", file=sys.stderr)
        return 2
    stack = LocalStack()
    settings = stack.command_settings()
    reader, group = _catch_up_access(stack, name)
    if not broker_answers(reader):
        print(f"e2c: no broker answers on {reader.bootstrap}: a restore reads the erasure "
              "journal and the backlog from it: `e2c stack up` first (the restore stops and "
              "starts the service itself)", file=sys.stderr)
        return 1
    running = stack.service_running(name)
    if not running and stack.service_health(name) != "down":
        print(f"e2c: a {name} service this stack did not start answers on port "
              f"{settings.port(name)}: stop it first", file=sys.stderr)
        return 1
    if running:
        stack.stop_service(name)
        print(f"{name:<10} stopped")
    try:
        done = restore(settings, name, Path(args.source), stack.service_running,
                       lambda: read_erasure_journal(_ops_access()),
                       lambda: catch_up(TOPOLOGIES[name], settings.with_kafka(reader),
                                        commit_group=group))
    except RestoreRefused as error:
        print(f"e2c: restore refused: {error}", file=sys.stderr)
        if running:  # refused before the store was touched
            stack.start_service(name)
            print(f"{name:<10} ready again, its store unchanged")
        return 1
    except BaseException:
        if running:
            print(f"{name:<10} left stopped: run `e2c restore {name} {args.source}` again",
                  file=sys.stderr)
        raise
    print(f"{name}: store restored from the backup taken {done.manifest.taken_at} "
          f"({done.manifest.size} bytes) in {done.seconds:.2f}s")
    if name == "referrals":
        print(f"erasure journal: {done.journaled} erasures, {done.erased_again} referrals "
              "erased again")
    print(f"backlog since the backup: {done.caught_up} records decided again in the order "
          "they were published (their answers keep the ids of the first time)")
    if running:
        stack.start_service(name)
        print(f"{name:<10} ready again on http://127.0.0.1:{settings.port(name)}: it sends "
              "those answers and goes on from there")
    else:
        print(f"start {name}: it sends those answers and goes on from there")
    return 0


def _catch_up_access(stack: LocalStack, service: str) -> tuple[KafkaAccess, bool]:
    """Who reads a restored store's backlog: the stack's service principal, which also moves
    its group's offsets (lag reporting); else the operator's (ops) credentials, which may
    not: the group's offsets then follow at the service's first batch."""
    import os

    if not os.environ.get("E2C_KAFKA_USERNAME"):
        try:
            return stack.access(service), True
        except (KeyError, OSError):
            pass
    return _ops_access(), False


def _stack_up(args: argparse.Namespace) -> int:
    from deploy.stack import LocalStack, StackError
    from shared.http import TokensFileError

    try:
        LocalStack().up(postgres=args.postgres, brokers=args.brokers, instances=args.instances)
    except (TokensFileError, StackError) as error:
        raise SystemExit(f"e2c: {error}") from None
    return 0


def _stack_down(args: argparse.Namespace) -> int:
    from deploy.stack import LocalStack

    LocalStack().down(purge=args.purge)
    return 0


def _stack_status(args: argparse.Namespace) -> int:
    from deploy.stack import LocalStack

    parts = LocalStack().status_dicts()
    if args.json:
        print(json.dumps(parts, indent=2))
    else:
        for part in parts:
            print(f"{part['name']:<10} pid={part['pid'] or '-':<8} port={part['port']:<6} "
                  f"{part['health']}")
    healthy = all(part["health"] in ("up", "ready") for part in parts)
    return 0 if healthy else 1


def _stack_console(_args: argparse.Namespace) -> int:
    from deploy.stack import LocalStack

    stack = LocalStack()
    print(f"Console: {stack.console_url()}")
    print(f"  sign in with a token of {stack.tokens_path()}, e.g. its admin token")
    roles = sorted(set(stack_tokens(stack.settings).values()))
    print(f"  (roles in that file: {', '.join(roles) or 'none'}; each sees the pages its role"
          " may read)")
    print("  the token is exchanged once for a session cookie; `make down` stops it all")
    simulated = date.today().year - 1  # `e2c simulate`'s default year, as `make run` runs it
    print(f"  the year `make run` simulates: {stack.console_url()}/finance?year={simulated}")
    return 0


def _demo(_args: argparse.Namespace) -> int:
    from deploy.demo import DEMO_AGENCY, print_rows, run_demo, run_http_demo
    from deploy.kafka_security import OPS, ensure_partner
    from deploy.stack import LocalStack
    from deploy.writers import TOOLS_AGENCY

    stack = LocalStack()
    partner = ensure_partner(stack.kafka, TOOLS_AGENCY)
    rows = asyncio.run(run_demo(partner, stack.access(OPS)))
    print_rows(rows)
    answered = sum(row["status"] != "(no answer)" for row in rows)
    print(f"\n{answered}/{len(rows)} referrals answered; one malformed message sent to "
          "e2c.deadletter.v1")
    settings = stack.command_settings()
    token = _partner_tokens(DEMO_AGENCY["id"], add=True)
    assert token is not None
    print(f"\nOver HTTP, as a partner without Kafka (`e2c partners add {DEMO_AGENCY['id']}` "
          "gave it a token): POST :8001/referrals?wait=10")
    http_rows = run_http_demo(f"http://127.0.0.1:{settings.port('referrals')}", token)
    print_rows(http_rows)
    decided = sum(row["status"] != "(no answer)" for row in http_rows)
    print(f"\n{decided}/{len(http_rows)} referrals sent over HTTP decided by the same pipeline")
    return 0 if answered == len(rows) and decided == len(http_rows) else 1


def _ops_access() -> KafkaAccess:
    """E2C_KAFKA_USERNAME's credentials when set (an operator's own), else the stack's ops
    principal on the stack's broker."""
    import os

    from deploy.kafka_security import OPS
    from deploy.stack import LocalStack

    if os.environ.get("E2C_KAFKA_USERNAME"):
        return Settings().kafka_access()
    try:
        return LocalStack().access(OPS)
    except (KeyError, OSError):
        raise SystemExit("e2c: no credentials for the broker: `e2c stack up` makes the "
                         "stack's, or set E2C_KAFKA_USERNAME and E2C_KAFKA_PASSWORD") from None


def _ops_redis_url() -> str:
    """REDIS_URL when set, else the stack's own Redis (its URL carries its password)."""
    import os

    from deploy.stack import LocalStack

    return os.environ.get("REDIS_URL") or LocalStack().cache_url()


def _tokens_path(settings: Settings):  # a Path (imported lazily)
    return settings.tokens_file or settings.data_dir / "tokens.json"


def _partner_tokens(agency_id: str, add: bool) -> str | None:
    from shared.http import TokensFileError, partner_tokens_changed
    from shared.private_files import restrict_umask

    restrict_umask()
    settings = _command_settings()
    try:
        return partner_tokens_changed(_tokens_path(settings), agency_id, add)
    except TokensFileError as error:
        raise SystemExit(f"e2c: {error}") from None


def _partner_add(args: argparse.Namespace) -> int:
    from deploy.kafka_security import add_partner

    kafka = _running_kafka()
    access = add_partner(kafka, args.agency_id)  # first: an agency id the broker refuses stops
    token = _partner_tokens(args.agency_id, add=True)
    print(f"agency {args.agency_id}: shown this once, keep them secret")
    print(f"HTTP token: {token}")
    print("Kafka (writes e2c.referrals.submitted.v1 only):")
    print(_render_client_config(_client_config(access)))
    return 0


def _partner_remove(args: argparse.Namespace) -> int:
    from deploy.kafka_security import remove_partner
    from shared.http import partner_role

    kafka = _running_kafka()
    before = stack_tokens(_command_settings())
    held = sum(role == partner_role(args.agency_id) for role in before.values())
    _partner_tokens(args.agency_id, add=False)
    on_kafka = remove_partner(kafka, args.agency_id)
    print(f"agency {args.agency_id}: {held} HTTP token(s) revoked; Kafka credentials "
          f"{'revoked' if on_kafka else 'none'}")
    return 0 if held or on_kafka else 1


def _running_kafka() -> Any:
    """The stack's broker, refusing to go on when it does not answer (users and ACLs are
    kept by the broker itself)."""
    from deploy.stack import LocalStack

    stack = LocalStack()
    if not stack.kafka.answers():
        raise SystemExit("e2c: the stack's broker does not answer: `e2c stack up` first")
    return stack.kafka


def _stack_client_config(args: argparse.Namespace) -> int:
    from deploy.stack import LocalStack

    try:
        access = LocalStack().access(args.role)
    except (KeyError, OSError) as error:
        print(f"e2c: {error.args[0] if error.args else error}: `e2c stack up` makes the "
              "roles' credentials, `e2c partners add` a partner's", file=sys.stderr)
        return 1
    config = _client_config(access)
    print(json.dumps(config, indent=2) if args.json else _render_client_config(config))
    return 0


def _client_config(access: KafkaAccess) -> dict[str, str]:
    """What `e2c stack client-config` prints: librdkafka's settings under our names."""
    names = {"bootstrap.servers": "bootstrap_servers", "security.protocol": "security_protocol",
             "sasl.mechanism": "sasl_mechanism", "sasl.username": "username",
             "sasl.password": "password", "ssl.ca.location": "ssl_cafile"}
    return {names[key]: value for key, value in access.librdkafka_config().items()}


def _render_client_config(config: dict[str, str]) -> str:
    width = max(len(key) for key in config)
    return "\n".join(f"  {key:<{width}}  {value}" for key, value in config.items())


def _partner_list(args: argparse.Namespace) -> int:
    from shared.http import partner_agency

    tokens = stack_tokens(_command_settings())
    agencies = sorted({agency for role in tokens.values()
                       if (agency := partner_agency(role)) is not None})
    for agency in agencies:
        print(agency)
    return 0


def stack_tokens(settings: Settings) -> dict[str, str]:
    """The stack's tokens file (E2C_TOKENS_FILE, else var/tokens.json), checked as the
    services check it; a file they would refuse stops the command with the same message."""
    from shared.http import TokensFileError, load_tokens

    try:
        return load_tokens(_tokens_path(settings))
    except TokensFileError as error:
        raise SystemExit(f"e2c: {error}") from None


def _ops_token(settings: Settings) -> str | None:
    """E2C_TOKEN, else an ops (or else admin) token of the stack's tokens file."""
    import os

    from shared.http import Role

    if os.environ.get("E2C_TOKEN"):
        return os.environ["E2C_TOKEN"]
    tokens = stack_tokens(settings)
    for wanted in (Role.OPS, Role.ADMIN):
        for token, role in tokens.items():
            if role == wanted:
                return token
    return None


def _ops_status(args: argparse.Namespace) -> int:
    import time as clock

    from deploy.ops import SERVICES, collect_status, render_status

    settings = Settings()
    token = _ops_token(settings)  # first: a tokens file the services would refuse stops here
    access = _ops_access()
    redis_url = _ops_redis_url()
    urls = {name: f"http://127.0.0.1:{settings.port(name)}" for name in SERVICES}
    code = 1
    try:
        while True:
            status = asyncio.run(
                collect_status(access, redis_url, urls, token, args.limit)
            )
            code = 0 if status.healthy else 1
            if args.json:
                print(json.dumps(status.as_dict(), indent=2), flush=True)
            else:
                if args.watch is not None:
                    print("\033[2J\033[H", end="")
                print(render_status(status), end="", flush=True)
            if args.watch is None:
                return code
            clock.sleep(max(args.watch, 0.5))
    except KeyboardInterrupt:
        return code


def _deadletters_list(args: argparse.Namespace) -> int:
    from deploy.ops import format_letter, read_dead_letters

    count, last = asyncio.run(read_dead_letters(
        _ops_access(), max(args.limit, 0), args.service, args.show_original
    ))
    if args.show_original and not _originals_recorded(last):
        return 1
    if args.json:
        print(json.dumps({"count": count, "last": last}, indent=2))
        return 0
    scope = f" of {args.service}" if args.service else ""
    print(f"{count} dead letters{scope} in e2c.deadletter.v1"
          + (f", the last {len(last)}:" if last else ""))
    for letter in last:
        print("  " + format_letter(letter))
        if args.show_original:
            print(f"    key: {letter.get('key')}\n    original: {letter.get('original')}")
    return 0


def _originals_recorded(letters: list[dict[str, Any]]) -> bool:
    """Records the originals about to be shown in the referrals service's access trail;
    False (and why, on stderr) when it cannot: then none is shown."""
    from deploy.audit import AuditUnavailable, record_shown_originals

    settings = Settings()
    try:
        record_shown_originals(_referrals_url(settings), _ops_token(settings), letters)
    except AuditUnavailable as error:
        print(f"e2c: originals not shown: their reading could not be recorded in the access "
              f"trail ({error})", file=sys.stderr)
        return False
    return True


def _deadletters_replay(args: argparse.Namespace) -> int:
    from deploy.ops import ReplayError, replay_dead_letter

    try:
        sent = asyncio.run(replay_dead_letter(_ops_access(), args.event_id))
    except ReplayError as error:
        print(error, file=sys.stderr)
        return 1
    print(f"dead letter {sent['event_id']} replayed to {sent['source_topic']}"
          f"[{sent['partition']}]@{sent['offset']}; its answer (or a new dead letter if "
          "the cause is not fixed) follows as for any message")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from deploy.simulation.command import simulate
    from deploy.stack import LocalStack

    stack = LocalStack()
    return simulate(args.year, args.trainees, args.seed, args.rate, args.timeout,
                    settings=stack.settings)


if __name__ == "__main__":
    sys.exit(main())
