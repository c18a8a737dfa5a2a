"""Engine configuration: seed defaults, TOML overrides and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.policy.config import (
    ConfigError,
    EngineConfig,
    config_from_toml_str,
    default_config,
    load_config,
    validate_config,
)
from engine.policy.types import MICRO, BillingBasis, SessionRules

H = 3600


@pytest.mark.parametrize(
    ("name", "session", "streams", "hourly", "daily", "monthly", "msgs", "audio", "rpm"),
    [
        ("free", 300, 1, 600, 1800, 4 * H, 100, 32 * 1024, 60),
        ("basic", 600, 2, 1800, 2 * H, 50 * H, 500, 64 * 1024, 120),
        ("pro", 1800, 5, 3600, 8 * H, 200 * H, 1000, 128 * 1024, 600),
        ("enterprise", 2 * H, 20, None, None, None, None, None, None),
    ],
)
def test_default_plans_follow_the_seeds(
    name: str,
    session: int,
    streams: int,
    hourly: int | None,
    daily: int | None,
    monthly: int | None,
    msgs: int | None,
    audio: int | None,
    rpm: int | None,
) -> None:
    p = load_config(None).plan(name)
    assert (p.name, p.max_session_s, p.concurrent_streams) == (name, session, streams)
    assert (p.hourly_s, p.daily_s, p.monthly_s) == (hourly, daily, monthly)
    assert (p.ws_messages_per_s, p.audio_bytes_per_s, p.requests_per_minute) == (msgs, audio, rpm)
    assert p.billing_basis is None


def test_default_models_and_rules() -> None:
    cfg = load_config(None)
    assert cfg.default_plan == "free" and cfg.default_model == "standard"
    assert cfg.model().rate_micro_per_s == 2 * MICRO
    assert cfg.model("enhanced").rate_micro_per_s == 3 * MICRO
    assert all(m.billing_basis is BillingBasis.AUDIO for m in cfg.models.values())
    r = cfg.rules
    assert r.min_balance_micro == 60 * MICRO
    assert (r.balance_check_s, r.idle_timeout_s, r.status_interval_s) == (30, 60, 10)
    assert (r.no_audio_timeout_s, r.keepalive_timeout_s, r.hard_cap_s) == (3600, 180, 48 * H)
    assert r.warn_before_s == (30, 10)


@pytest.mark.parametrize("plan", ["free", "basic", "pro", "enterprise"])
def test_realtime_16k_s16_fits_every_plan(plan: str) -> None:
    """16 kHz mono S16 in real time (32,000 B/s) in 100 ms frames (10 msg/s)."""
    p = load_config(None).plan(plan)
    assert p.audio_bytes_per_s is None or p.audio_bytes_per_s >= 32_000
    assert p.ws_messages_per_s is None or p.ws_messages_per_s >= 10 * 5  # room for pings and bursts


@pytest.mark.parametrize(
    ("plan", "fits"), [("free", False), ("basic", True), ("pro", True), ("enterprise", True)]
)
def test_realtime_16k_f32_fits_basic_and_above(plan: str, fits: bool) -> None:
    p = load_config(None).plan(plan)
    assert (p.audio_bytes_per_s is None or p.audio_bytes_per_s >= 64_000) is fits


def test_cap_and_basis_helpers() -> None:
    cfg = config_from_toml_str("[rules]\nhard_cap_s = 100\n[plans.pro]\nbilling_basis = 'wall'\n")
    assert cfg.max_session_s(cfg.plan("free")) == 100
    assert cfg.billing_basis(cfg.plan("pro"), cfg.model()) is BillingBasis.WALL
    assert cfg.billing_basis(cfg.plan("free"), cfg.model()) is BillingBasis.AUDIO
    assert load_config(None).max_session_s(load_config(None).plan("free")) == 300


def test_toml_overrides_one_field_of_a_plan() -> None:
    cfg = config_from_toml_str("[plans.free]\nhourly_s = 900\n")
    free = cfg.plan("free")
    assert free.hourly_s == 900
    assert free.daily_s == 1800 and free.max_session_s == 300  # the rest untouched
    assert cfg.plan("pro") == default_config().plan("pro")


def test_toml_full_example() -> None:
    cfg = config_from_toml_str(
        """
        default_plan = "team"
        default_model = "premium"

        [rules]
        min_balance = "12.5"
        balance_check_s = 15
        warn_before_s = [60, 30, 5]
        idle_timeout_s = 90

        [plans.team]
        max_session_s = 3600
        concurrent_streams = "unlimited"
        hourly_s = 7200
        daily_s = 28800
        monthly_s = "unlimited"
        audio_bytes_per_s = 65536
        billing_basis = "wall"

        [plans.enterprise]
        hourly_s = 36000

        [models.premium]
        rate = "2.5"

        [models.standard]
        rate = 1
        billing_basis = "wall"
        """
    )
    assert cfg.default_plan == "team" and cfg.default_model == "premium"
    team = cfg.plan()
    assert team.name == "team" and team.concurrent_streams is None and team.monthly_s is None
    assert team.audio_bytes_per_s == 65536 and team.ws_messages_per_s is None
    assert team.billing_basis is BillingBasis.WALL
    assert cfg.plan("enterprise").hourly_s == 36000 and cfg.plan("enterprise").daily_s is None
    assert cfg.model().rate_micro_per_s == 2_500_000
    assert cfg.model().billing_basis is BillingBasis.AUDIO
    assert cfg.model("standard").rate_micro_per_s == MICRO
    assert cfg.model("standard").billing_basis is BillingBasis.WALL
    assert cfg.models["enhanced"].rate_micro_per_s == 3 * MICRO
    assert cfg.rules.min_balance_micro == 12_500_000
    assert cfg.rules.warn_before_s == (60, 30, 5)
    assert (cfg.rules.balance_check_s, cfg.rules.idle_timeout_s, cfg.rules.status_interval_s) == (15, 90, 10)
    assert set(cfg.plans) == {"free", "basic", "pro", "enterprise", "team"}


def test_empty_toml_is_the_defaults() -> None:
    assert config_from_toml_str("") == default_config()


def test_load_config_from_file(tmp_path: Path) -> None:
    f = tmp_path / "engine.toml"
    f.write_text('[models.standard]\nrate = "2.25"\n')
    assert load_config(str(f)).model().rate_micro_per_s == 2_250_000
    assert load_config(None) == default_config()


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(str(tmp_path / "nope.toml"))


def test_load_config_bad_toml_names_the_file(tmp_path: Path) -> None:
    f = tmp_path / "bad.toml"
    f.write_text("[plans.free\nhourly_s = 1\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML"):
        load_config(str(f))


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ("[plans.free]\nhourly_s = 0", "plans.free.hourly_s", "positive"),
        ("[plans.free]\nhourly_s = -5", "plans.free.hourly_s", "positive"),
        ('[plans.free]\nhourly_s = "abc"', "plans.free.hourly_s", '"unlimited"'),
        ("[plans.free]\nhourly_s = 1.5", "plans.free.hourly_s", "integer"),
        ("[plans.free]\nmax_session_s = 0", "plans.free.max_session_s", "positive"),
        ('[plans.free]\nmax_session_s = "unlimited"', "plans.free.max_session_s", "integer"),
        ("[plans.free]\nconcurrent_streams = 0", "plans.free.concurrent_streams", "positive"),
        ("[plans.free]\naudio_bytes_per_s = 0", "plans.free.audio_bytes_per_s", "positive"),
        ("[plans.free]\nhourly = 3", "plans.free.hourly", "unknown key"),
        ('[plans.free]\nbilling_basis = "tokens"', "plans.free.billing_basis", '"audio" or "wall"'),
        ('[plans.free]\nname = "gratis"', "plans.free.name", "must be 'free'"),
        ("[plans.team]\nhourly_s = 3", "plans.team", "missing required key(s): max_session_s"),
        ("[plans.free]\nidle_timeout_s = 3", "plans.free.idle_timeout_s", "unknown key"),
        ("plans = 3", "plans", "expected a table"),
        ("[plans]\nfree = 3", "plans.free", "expected a table"),
        ("[models.standard]\nrate = 2.5", "models.standard.rate", "decimal string"),
        ('[models.standard]\nrate = "0"', "models.standard.rate", "positive"),
        ('[models.standard]\nrate = "-1"', "models.standard.rate", "positive"),
        ('[models.standard]\nrate = "0.0000001"', "models.standard.rate", "micro-credit"),
        ('[models.standard]\nrate = "two"', "models.standard.rate", "not a decimal"),
        ("[models.fast]\nbilling_basis = 'audio'", "models.fast", "missing required key(s): rate"),
        ("[models.standard]\nrate_micro_per_s = 5", "models.standard.rate_micro_per_s", "unknown key"),
        ("[rules]\nidle_timeout_s = 0", "rules.idle_timeout_s", "positive"),
        ("[rules]\nidle_timeout_s = true", "rules.idle_timeout_s", "integer"),
        ("[rules]\nbalance_check_s = -1", "rules.balance_check_s", "positive"),
        ("[rules]\nhard_cap_s = 0", "rules.hard_cap_s", "positive"),
        ('[rules]\nmin_balance = "-1"', "rules.min_balance", "negative"),
        ("[rules]\nmin_balance = 1.5", "rules.min_balance", "decimal string"),
        ("[rules]\nwarn_before_s = [30, 0]", "rules.warn_before_s[1]", "positive"),
        ("[rules]\nwarn_before_s = [10, 10]", "rules.warn_before_s", "duplicate"),
        ('[rules]\nwarn_before_s = [1, "a"]', "rules.warn_before_s", "list of integers"),
        ("[rules]\nresume_window_s = -1", "rules.resume_window_s", "negative"),
        ("[rules]\nidle = 1", "rules.idle", "unknown key"),
        ('default_model = "nope"', "default_model", "no model named 'nope'"),
        ('default_plan = "gold"', "default_plan", "no plan named 'gold'"),
        ("default_plan = 3", "default_plan", "string"),
        ("colour = 'blue'", "colour", "unknown key"),
    ],
)
def test_bad_config_names_the_key(text: str, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_toml_str(text)
    assert info.value.key == key
    assert str(info.value).startswith(key + ":")
    assert fragment in str(info.value)


def test_invalid_toml_syntax() -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        config_from_toml_str("[plans.free\n")


def test_validate_config_rejects_bad_structs() -> None:
    cfg = default_config()
    bad = EngineConfig(
        plans=cfg.plans,
        models=cfg.models,
        default_model="standard",
        default_plan="free",
        rules=SessionRules(status_interval_s=0),
    )
    with pytest.raises(ConfigError, match=r"rules\.status_interval_s"):
        validate_config(bad)
    with pytest.raises(ConfigError, match="at least one plan"):
        validate_config(
            EngineConfig(
                plans={}, models=cfg.models, default_model="standard", default_plan="free", rules=cfg.rules
            )
        )
    assert validate_config(cfg) is cfg


def test_overrides_merge_over_a_given_base() -> None:
    base = config_from_toml_str("[plans.free]\nhourly_s = 900\n")
    cfg = config_from_toml_str("[plans.free]\ndaily_s = 3600\n", base=base)
    assert (cfg.plan("free").hourly_s, cfg.plan("free").daily_s) == (900, 3600)
