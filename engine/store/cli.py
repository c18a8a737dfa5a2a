"""Store subcommands of the ``engine`` command line.

Hook them into the main parser (which owns ``--db FILE``)::

    sub = parser.add_subparsers(dest="command")
    add_store_commands(sub)
    ...
    args = parser.parse_args(argv)
    if hasattr(args, "store_command"):
        return run_store_command(args)

Commands: ``accounts create|topup|show|list|autotopup``, ``sessions list``,
``ledger export``. Credits on the command line are decimal strings parsed
exactly into micro-credits (``Decimal``, never floats). Every command is an
``async def cmd_...(args) -> int`` runnable with ``trio.run(cmd, args)``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import io
import json
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, TextIO

import trio

from engine.policy.types import MICRO
from engine.store.base import LedgerEntry, SessionRow
from engine.store.errors import StoreError
from engine.store.sqlite import open_sqlite_store
from engine.store.windows import calendar_windows

__all__ = [
    "add_store_commands",
    "format_credits",
    "main",
    "parse_credits",
    "run_store_command",
    "session_status",
]

DEFAULT_DB = "engine.db"

Command = Callable[[argparse.Namespace], Awaitable[int]]


# ---------------------------------------------------------------------------- money


def parse_credits(text: str, *, allow_zero: bool = True) -> int:
    """``"12.5"`` -> 12_500_000 micro-credits, exactly; more than 6 decimals is an error."""
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise ValueError(f"not a number of credits: {text!r}") from None
    if not value.is_finite():
        raise ValueError(f"not a number of credits: {text!r}")
    micro = value * MICRO
    if micro != micro.to_integral_value():
        raise ValueError(f"{text!r}: at most 6 decimal places (1 micro-credit)")
    if micro < 0 or (micro == 0 and not allow_zero):
        raise ValueError(f"{text!r}: must be {'at least' if allow_zero else 'more than'} 0")
    return int(micro)


def format_credits(micro: int) -> str:
    """12_500_000 -> ``"12.5"``; exact, no float."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    if not frac:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:06d}".rstrip("0")


def _credits_arg(text: str) -> int:
    try:
        return parse_credits(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _positive_credits_arg(text: str) -> int:
    try:
        return parse_credits(text, allow_zero=False)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


# ---------------------------------------------------------------------------- helpers


def _iso(t: float | None) -> str:
    if t is None:
        return ""
    return _dt.datetime.fromtimestamp(t, tz=_dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def session_status(row: SessionRow, now_utc: float) -> str:
    """``active`` | ``lease-expired`` (its process died; recovery settles it) |
    ``resumable`` (dropped, within its resume window) | ``ended``."""
    if row.ended_utc is None:
        if row.lease_until_utc is not None and row.lease_until_utc > now_utc:
            return "active"
        return "lease-expired"
    if row.resume_until_utc is not None and row.end_reason != "expired":
        return "resumable" if row.resume_until_utc > now_utc else "ended"
    return "ended"


def _db(args: argparse.Namespace) -> str:
    return str(getattr(args, "db", None) or DEFAULT_DB)


def _out(args: argparse.Namespace) -> TextIO:
    out: TextIO | None = getattr(args, "stdout", None)
    return out if out is not None else sys.stdout


def _print_json(args: argparse.Namespace, obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=False), file=_out(args))


def _session_dict(row: SessionRow, now_utc: float) -> dict[str, Any]:
    return {
        "session_id": row.session_id,
        "account_id": row.account_id,
        "status": session_status(row, now_utc),
        "model": row.model,
        "encoding": row.encoding,
        "sample_rate": row.sample_rate,
        "channels": row.channels,
        "started_utc": row.started_utc,
        "ended_utc": row.ended_utc,
        "end_reason": row.end_reason,
        "end_code": row.end_code,
        "duration_ms": row.duration_ms,
        "audio_ms": row.audio_ms,
        "speech_ms": row.speech_ms,
        "billed_micro": row.billed_micro,
        "billed": format_credits(row.billed_micro),
        "owner": row.owner,
        "lease_until_utc": row.lease_until_utc,
        "resume_until_utc": row.resume_until_utc,
    }


_LEDGER_FIELDS = (
    "entry_id",
    "created",
    "created_utc",
    "account_id",
    "kind",
    "amount",
    "amount_micro",
    "balance_after",
    "balance_after_micro",
    "idempotency_key",
    "session_id",
)


def _ledger_dict(e: LedgerEntry) -> dict[str, Any]:
    return {
        "entry_id": e.entry_id,
        "created": _iso(e.created_utc),
        "created_utc": e.created_utc,
        "account_id": e.account_id,
        "kind": e.kind,
        "amount": format_credits(e.amount_micro),
        "amount_micro": e.amount_micro,
        "balance_after": format_credits(e.balance_after_micro),
        "balance_after_micro": e.balance_after_micro,
        "idempotency_key": e.idempotency_key,
        "session_id": e.session_id,
    }


def _table(rows: Sequence[Sequence[str]], out: TextIO) -> None:
    if not rows:
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)


# ---------------------------------------------------------------------------- commands


async def cmd_accounts_create(args: argparse.Namespace) -> int:
    async with open_sqlite_store(_db(args)) as store:
        acct, key = await store.create_account(plan=args.plan, credits_micro=args.credits, name=args.name)
    if args.json:
        _print_json(
            args,
            {
                "account_id": acct.account_id,
                "api_key": key,
                "plan": acct.plan,
                "name": acct.name,
                "balance": format_credits(acct.balance_micro),
                "balance_micro": acct.balance_micro,
            },
        )
    else:
        out = _out(args)
        print(f"account_id: {acct.account_id}", file=out)
        print(f"api_key:    {key}", file=out)
        print(f"plan:       {acct.plan}", file=out)
        print(f"balance:    {format_credits(acct.balance_micro)} credits", file=out)
        print("The API key is shown only once: only its hash is stored.", file=sys.stderr)
    return 0


async def cmd_accounts_topup(args: argparse.Namespace) -> int:
    key = args.idempotency_key or f"cli-topup:{uuid.uuid4().hex}"
    async with open_sqlite_store(_db(args)) as store:
        balance = await store.topup(args.account, args.amount, key)
    print(f"balance: {format_credits(balance)} credits  (key {key})", file=_out(args))
    return 0


async def cmd_accounts_autotopup(args: argparse.Namespace) -> int:
    async with open_sqlite_store(_db(args)) as store:
        if args.off:
            acct = await store.set_auto_topup(args.account, None, None)
        else:
            if args.below is None or args.add is None:
                print("error: give --below N and --add N, or --off", file=sys.stderr)
                return 2
            acct = await store.set_auto_topup(args.account, args.below, args.add)
    print(
        f"auto top-up: {_auto_topup_text(acct.auto_topup_threshold_micro, acct.auto_topup_amount_micro)}",
        file=_out(args),
    )
    return 0


def _auto_topup_text(threshold: int | None, amount: int | None) -> str:
    if threshold is None or amount is None:
        return "off"
    return f"add {format_credits(amount)} when below {format_credits(threshold)} (needs a payment hook)"


async def cmd_accounts_list(args: argparse.Namespace) -> int:
    async with open_sqlite_store(_db(args)) as store:
        accounts = await store.list_accounts()
    if args.json:
        _print_json(
            args,
            [
                {
                    "account_id": a.account_id,
                    "name": a.name,
                    "plan": a.plan,
                    "balance": format_credits(a.balance_micro),
                    "balance_micro": a.balance_micro,
                }
                for a in accounts
            ],
        )
        return 0
    rows = [["ACCOUNT", "NAME", "PLAN", "BALANCE"]]
    rows += [[a.account_id, a.name, a.plan, format_credits(a.balance_micro)] for a in accounts]
    _table(rows, _out(args))
    return 0


async def cmd_accounts_show(args: argparse.Namespace) -> int:
    now = time.time()
    async with open_sqlite_store(_db(args)) as store:
        acct = await store.get_account(args.account)
        if acct is None:
            print(f"error: no account {args.account}", file=sys.stderr)
            return 1
        usage = await store.usage(acct.account_id, now)
        active = await store.list_sessions(acct.account_id, active_at=now)
    w = calendar_windows(now)
    if args.json:
        _print_json(
            args,
            {
                "account_id": acct.account_id,
                "name": acct.name,
                "plan": acct.plan,
                "balance": format_credits(acct.balance_micro),
                "balance_micro": acct.balance_micro,
                "auto_topup_threshold_micro": acct.auto_topup_threshold_micro,
                "auto_topup_amount_micro": acct.auto_topup_amount_micro,
                "usage": {
                    "hour_ms": usage.hour_ms,
                    "day_ms": usage.day_ms,
                    "month_ms": usage.month_ms,
                    "hour_resets_utc": w.hour_end,
                    "day_resets_utc": w.day_end,
                    "month_resets_utc": w.month_end,
                },
                "active_sessions": [_session_dict(s, now) for s in active],
            },
        )
        return 0
    out = _out(args)
    print(f"account:     {acct.account_id}" + (f"  ({acct.name})" if acct.name else ""), file=out)
    print(f"plan:        {acct.plan}", file=out)
    print(f"balance:     {format_credits(acct.balance_micro)} credits", file=out)
    print(
        "auto top-up: " + _auto_topup_text(acct.auto_topup_threshold_micro, acct.auto_topup_amount_micro),
        file=out,
    )
    print("usage (calendar UTC windows):", file=out)
    for label, ms, reset in (
        ("this hour ", usage.hour_ms, w.hour_end),
        ("today     ", usage.day_ms, w.day_end),
        ("this month", usage.month_ms, w.month_end),
    ):
        print(f"  {label}  {ms / 1000:10.1f} s   (resets {_iso(reset)})", file=out)
    print(f"active sessions: {len(active)}", file=out)
    if active:
        rows = [["  SESSION", "MODEL", "STARTED", "DURATION_S", "BILLED"]]
        rows += [
            [
                "  " + s.session_id,
                s.model,
                _iso(s.started_utc),
                f"{s.duration_ms / 1000:.1f}",
                format_credits(s.billed_micro),
            ]
            for s in active
        ]
        _table(rows, out)
    return 0


async def cmd_sessions_list(args: argparse.Namespace) -> int:
    now = time.time()
    async with open_sqlite_store(_db(args)) as store:
        rows = await store.list_sessions(
            args.account, active_at=now if args.active else None, limit=args.limit
        )
    if args.json:
        _print_json(args, [_session_dict(s, now) for s in rows])
        return 0
    table = [["SESSION", "ACCOUNT", "STATUS", "MODEL", "STARTED", "DURATION_S", "AUDIO_S", "BILLED", "END"]]
    for s in rows:
        table.append(
            [
                s.session_id,
                s.account_id,
                session_status(s, now),
                s.model,
                _iso(s.started_utc),
                f"{s.duration_ms / 1000:.1f}",
                f"{s.audio_ms / 1000:.1f}",
                format_credits(s.billed_micro),
                " ".join(x for x in (s.end_reason, s.end_code) if x),
            ]
        )
    _table(table, _out(args))
    return 0


async def cmd_ledger_export(args: argparse.Namespace) -> int:
    async with open_sqlite_store(_db(args)) as store:
        entries = await store.ledger(args.account)
    rows = [_ledger_dict(e) for e in entries]
    buf = io.StringIO()
    if args.format == "json":
        json.dump(rows, buf, indent=2)
        buf.write("\n")
    else:
        w = csv.DictWriter(buf, fieldnames=_LEDGER_FIELDS, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: "" if v is None else v for k, v in r.items()})
    if args.output and args.output != "-":
        with open(args.output, "w", encoding="utf-8", newline="") as f:
            f.write(buf.getvalue())
    else:
        _out(args).write(buf.getvalue())
    return 0


# ---------------------------------------------------------------------------- wiring


def add_store_commands(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    plans: Collection[str] | None = None,
) -> None:
    """Register ``accounts``, ``sessions`` and ``ledger`` on the main parser's subparsers.

    ``plans``: the plan names the configuration knows (validates ``--plan``).
    Each leaf sets ``args.store_command``; run it with :func:`run_store_command`.
    """
    accounts = subparsers.add_parser("accounts", help="create, top up and inspect accounts")
    asub = accounts.add_subparsers(dest="accounts_command", metavar="COMMAND", required=True)

    p = asub.add_parser("create", help="create an account; prints its id and API key (once)")
    p.add_argument("--plan", required=True, choices=sorted(plans) if plans else None)
    p.add_argument(
        "--credits",
        type=_credits_arg,
        default=0,
        metavar="N",
        help="initial credits (decimal, e.g. 120 or 12.5)",
    )
    p.add_argument("--name", default="")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(store_command=cmd_accounts_create)

    p = asub.add_parser("topup", help="add credits to an account")
    p.add_argument("account")
    p.add_argument("amount", type=_positive_credits_arg, metavar="N", help="credits (decimal)")
    p.add_argument(
        "--idempotency-key", default=None, help="apply at most once per key (default: a fresh key)"
    )
    p.set_defaults(store_command=cmd_accounts_topup)

    p = asub.add_parser("show", help="balance, plan, usage per window, active sessions")
    p.add_argument("account")
    p.add_argument("--json", action="store_true")
    p.set_defaults(store_command=cmd_accounts_show)

    p = asub.add_parser("list", help="list accounts")
    p.add_argument("--json", action="store_true")
    p.set_defaults(store_command=cmd_accounts_list)

    p = asub.add_parser("autotopup", help="configure auto top-up (charged through the host's hook)")
    p.add_argument("account")
    p.add_argument("--below", type=_credits_arg, metavar="N", help="threshold (credits)")
    p.add_argument("--add", type=_positive_credits_arg, metavar="N", help="amount (credits)")
    p.add_argument("--off", action="store_true")
    p.set_defaults(store_command=cmd_accounts_autotopup)

    sessions = subparsers.add_parser("sessions", help="inspect sessions")
    ssub = sessions.add_subparsers(dest="sessions_command", metavar="COMMAND", required=True)
    p = ssub.add_parser("list", help="list sessions, newest first")
    p.add_argument("--account", default=None)
    p.add_argument("--active", action="store_true", help="only sessions with a live lease")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true")
    p.set_defaults(store_command=cmd_sessions_list)

    ledger = subparsers.add_parser("ledger", help="the append-only ledger")
    lsub = ledger.add_subparsers(dest="ledger_command", metavar="COMMAND", required=True)
    p = lsub.add_parser("export", help="export ledger entries as CSV or JSON")
    p.add_argument("--account", default=None)
    p.add_argument("--format", choices=("csv", "json"), default="csv")
    p.add_argument("--output", "-o", default=None, help="file (default: stdout)")
    p.set_defaults(store_command=cmd_ledger_export)


def run_store_command(args: argparse.Namespace) -> int:
    """Run the store command selected in ``args``; returns the exit code."""
    cmd: Command | None = getattr(args, "store_command", None)
    if cmd is None:
        print("error: no store command", file=sys.stderr)
        return 2
    try:
        return trio.run(cmd, args)
    except (StoreError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Standalone: ``python -m engine.store.cli [--db FILE] accounts create --plan free``."""
    parser = argparse.ArgumentParser(prog="engine", description="engine store commands")
    parser.add_argument(
        "--db", default=DEFAULT_DB, metavar="FILE", help=f"SQLite database file (default ./{DEFAULT_DB})"
    )
    add_store_commands(parser.add_subparsers(dest="command", metavar="COMMAND", required=True))
    args = parser.parse_args(argv)
    return run_store_command(args)


if __name__ == "__main__":
    raise SystemExit(main())
