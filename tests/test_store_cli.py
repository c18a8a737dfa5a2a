"""Store CLI: accounts create/topup/show/list/autotopup, sessions list, ledger export."""

from __future__ import annotations

import argparse
import csv
import io
import json
import time
from pathlib import Path

import pytest
import trio

from engine.policy.types import MICRO
from engine.store.base import Admitted
from engine.store.cli import add_store_commands, format_credits, main, parse_credits, run_store_command
from engine.store.sqlite import open_sqlite_store
from engine.store.testing import allow, cp, start


def run(capsys: pytest.CaptureFixture[str], db: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["--db", str(db), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_parse_and_format_credits() -> None:
    assert parse_credits("120") == 120 * MICRO
    assert parse_credits("12.5") == 12_500_000
    assert parse_credits("0.000001") == 1
    assert parse_credits(" 3.10 ") == 3_100_000
    assert parse_credits("1e3") == 1000 * MICRO
    assert parse_credits("0") == 0
    # more precision than a micro-credit, floats' rounding traps, junk, negatives
    for bad in ("0.0000001", "abc", "NaN", "Infinity", "-1", ""):
        with pytest.raises(ValueError):
            parse_credits(bad)
    with pytest.raises(ValueError):
        parse_credits("0", allow_zero=False)
    assert parse_credits("0.1") + parse_credits("0.2") == parse_credits("0.3")  # exact
    assert format_credits(12_500_000) == "12.5"
    assert format_credits(120 * MICRO) == "120"
    assert format_credits(1) == "0.000001"
    assert format_credits(-1_500_000) == "-1.5"
    assert format_credits(0) == "0"


def test_accounts_create_topup_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "engine.db"
    code, out, err = run(
        capsys, db, "accounts", "create", "--plan", "free", "--credits", "120.5", "--name", "Ann"
    )
    assert code == 0
    lines = dict(line.split(":", 1) for line in out.strip().splitlines())
    account, key = lines["account_id"].strip(), lines["api_key"].strip()
    assert account.startswith("acct_") and key.startswith("sk_")
    assert "shown only once" in err
    assert key.encode() not in db.read_bytes()

    code, out, _ = run(capsys, db, "accounts", "topup", account, "10.25", "--idempotency-key", "inv-1")
    assert code == 0 and "130.75" in out
    code, out, _ = run(capsys, db, "accounts", "topup", account, "10.25", "--idempotency-key", "inv-1")
    assert code == 0 and "130.75" in out  # same key: applied once

    code, out, _ = run(capsys, db, "accounts", "show", account)
    assert code == 0
    assert "free" in out and "130.75 credits" in out and "this hour" in out and "active sessions: 0" in out

    code, out, _ = run(capsys, db, "accounts", "show", account, "--json")
    shown = json.loads(out)
    assert shown["balance_micro"] == 130_750_000 and shown["plan"] == "free"
    assert shown["usage"]["hour_ms"] == 0 and shown["active_sessions"] == []

    code, out, _ = run(capsys, db, "accounts", "list", "--json")
    assert [a["account_id"] for a in json.loads(out)] == [account]

    code, out, _ = run(capsys, db, "accounts", "autotopup", account, "--below", "10", "--add", "50")
    assert code == 0 and "add 50 when below 10" in out
    code, out, _ = run(capsys, db, "accounts", "autotopup", account, "--off")
    assert code == 0 and "off" in out


def test_errors_exit_non_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "engine.db"
    code, _, err = run(capsys, db, "accounts", "show", "acct_nope")
    assert code == 1 and "no account" in err
    code, _, err = run(capsys, db, "accounts", "topup", "acct_nope", "1")
    assert code == 1 and "acct_nope" in err
    with pytest.raises(SystemExit):
        main(["--db", str(db), "accounts", "topup", "acct_x", "0.0000001"])
    with pytest.raises(SystemExit):
        main(["--db", str(db), "accounts", "create", "--plan", "free", "--credits", "-5"])


def test_plan_choices_and_hooking_into_another_parser(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="engine")
    parser.add_argument("--db", default=str(tmp_path / "engine.db"))
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve")
    add_store_commands(sub, plans=["free", "pro"])
    with pytest.raises(SystemExit):
        parser.parse_args(["accounts", "create", "--plan", "gold"])
    capsys.readouterr()
    args = parser.parse_args(["accounts", "create", "--plan", "pro", "--json"])
    assert run_store_command(args) == 0
    assert json.loads(capsys.readouterr().out)["plan"] == "pro"
    assert not hasattr(parser.parse_args(["serve"]), "store_command")


def test_sessions_list_and_ledger_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "engine.db"

    async def setup() -> tuple[str, str]:
        async with open_sqlite_store(db) as store:
            a, _ = await store.create_account(plan="pro", credits_micro=100 * MICRO)
            b, _ = await store.create_account(plan="free", credits_micro=5 * MICRO)
            now = time.time()
            r = await store.begin_session(start(a.account_id, "sess-a", now=now, lease_s=600), allow)
            assert isinstance(r, Admitted)
            await store.begin_session(start(b.account_id, "sess-b", now=now, lease_s=600), allow)
            await store.checkpoint(cp("sess-a", 1, now=now, billed=2_500_000, usage_ms=1000))
            return a.account_id, b.account_id

    a, b = trio.run(setup)

    code, out, _ = run(capsys, db, "sessions", "list")
    assert code == 0 and "sess-a" in out and "sess-b" in out and "active" in out
    code, out, _ = run(capsys, db, "sessions", "list", "--account", a, "--json")
    rows = json.loads(out)
    assert [r["session_id"] for r in rows] == ["sess-a"]
    assert rows[0]["billed_micro"] == 2_500_000 and rows[0]["status"] == "active"
    code, out, _ = run(capsys, db, "accounts", "show", a)
    assert "active sessions: 1" in out and "sess-a" in out

    code, out, _ = run(capsys, db, "ledger", "export", "--format", "csv")
    assert code == 0
    entries = list(csv.DictReader(io.StringIO(out)))
    assert [(e["account_id"], e["kind"], e["amount_micro"]) for e in entries] == [
        (a, "topup", "100000000"),
        (b, "topup", "5000000"),
        (a, "charge", "-2500000"),
    ]
    assert entries[2]["idempotency_key"] == "sess-a:1" and entries[2]["balance_after"] == "97.5"

    code, out, _ = run(capsys, db, "ledger", "export", "--account", b, "--format", "json")
    assert [(e["kind"], e["amount"]) for e in json.loads(out)] == [("topup", "5")]

    target = tmp_path / "ledger.json"
    code, out, _ = run(capsys, db, "ledger", "export", "--format", "json", "-o", str(target))
    assert code == 0 and out == "" and len(json.loads(target.read_text())) == 3
