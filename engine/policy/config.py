"""Engine configuration: plans, models and session rules, from TOML over built-in defaults.

The built-in defaults come from the product seeds: plan limits from seed 000,
WebSocket message and audio-byte rates from seed 002 (Basic = "Starter"),
monthly hours and the session rules (48 h hard cap, 1 h without audio, 3 min
without audio or ping) from seed 003, the 60-credit minimum, 30 s balance
check and 60 s idle timeout from seed 000.

Built-in plans (``None``/"unlimited" = no limit)::

    plan        session  streams  hourly  daily  monthly  msgs/s  audio B/s  req/min
    free        5 min    1        10 min  30 min 4 h      100     32768      60
    basic       10 min   2        30 min  2 h    50 h     500     65536      120
    pro         30 min   5        60 min  8 h    200 h    1000    131072     600
    enterprise  2 h      20       -       -      -        -       -          -

Monthly hours: seed 003 gives 4 h for its free tier and 6,000 h for paid
accounts; Basic and Pro get 50 h and 200 h, between the two and just below
what their daily limits allow in a month (31 x 2 h = 62 h, 31 x 8 h = 248 h),
so that the monthly limit is a real cap rather than a number never reached.
The audio rates leave real-time 16 kHz mono PCM S16 (32,000 B/s, e.g. ten
100 ms frames a second) within every plan's limits, and real-time 16 kHz
PCM F32 (64,000 B/s) within Basic and above.

Built-in models: ``standard`` at 2 credits/s and ``enhanced`` at 3 credits/s
(seed 000: "2-3 credits/second"), both billed on seconds of audio received;
the default model is ``standard`` and the default plan ``free``.

TOML format
-----------
Every key is optional; a file overrides only what it names, merged over the
built-in defaults (a plan or model table may override a single field of a
built-in one, or define a new one, which must then give every required key).
Durations are integer seconds; money is in credits, as a decimal string
(``"2.5"``, exact) or an integer; ``"unlimited"`` stands for no limit::

    default_plan = "free"            # plan of accounts that name none
    default_model = "standard"       # model of sessions that name none

    [rules]                          # common to all plans
    min_balance = "60"               # credits needed to start a session
    balance_check_s = 30             # balance re-checked this often while streaming
    status_interval_s = 10           # session_status every N seconds
    idle_timeout_s = 60              # no speech (VAD) for this long
    no_audio_timeout_s = 3600        # no audio at all
    keepalive_timeout_s = 180        # neither audio nor ping
    hard_cap_s = 172800              # absolute maximum session length (48 h)
    warn_before_s = [30, 10]         # warnings this long before each timeout / limit
    resume_window_s = 300            # a dropped session can be resumed this long
    rate_abuse_s = 5                 # seconds' worth over the rate limit before RATE_LIMITED

    [plans.free]                     # override one field of a built-in plan
    hourly_s = 900

    [plans.team]                     # a new plan: the first five keys are required
    max_session_s = 3600             # session wall time
    concurrent_streams = 10          # or "unlimited"
    hourly_s = 7200                  # billed-basis usage per calendar UTC hour, or "unlimited"
    daily_s = 28800                  # ... per UTC day
    monthly_s = "unlimited"          # ... per UTC month
    ws_messages_per_s = 500          # optional, default unlimited
    audio_bytes_per_s = 65536        # optional, default unlimited
    requests_per_minute = 120        # optional, default unlimited
    billing_basis = "wall"           # optional: "audio" or "wall", overrides the model's

    [models.premium]                 # a new model (or override a built-in one)
    rate = "2.5"                     # credits per second of billed basis (required)
    billing_basis = "audio"          # optional, default "audio"

Errors (unknown keys, wrong types, non-positive numbers, a default plan or
model that does not exist, malformed TOML) raise :class:`ConfigError` naming
the offending key, e.g. ``plans.free.hourly_s: expected a positive integer or
"unlimited", got 0``.
"""

from __future__ import annotations

import enum
import tomllib
import types
from decimal import Decimal
from typing import Any, TypeVar, Union, get_args, get_origin

import msgspec

from engine.policy.money import format_credits, parse_credits
from engine.policy.types import MICRO, BillingBasis, Model, Plan, SessionRules

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_PLANS",
    "ConfigError",
    "EngineConfig",
    "config_from_dict",
    "config_from_toml_str",
    "default_config",
    "load_config",
    "validate_config",
]

KB = 1024
HOUR = 3600
UNLIMITED = "unlimited"


class ConfigError(ValueError):
    """A configuration is invalid; ``key`` is the dotted path of the bad key."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"{key}: {problem}" if key else problem)


class EngineConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Plans, models and rules. Treat it as immutable once loaded."""

    plans: dict[str, Plan]
    models: dict[str, Model]
    default_model: str
    rules: SessionRules
    default_plan: str

    def plan(self, name: str | None = None) -> Plan:
        """The named plan (the default plan for ``None``); ``KeyError`` if unknown."""
        return self.plans[self.default_plan if name is None else name]

    def model(self, name: str | None = None) -> Model:
        """The named model (the default model for ``None``); ``KeyError`` if unknown."""
        return self.models[self.default_model if name is None else name]

    @staticmethod
    def billing_basis(plan: Plan, model: Model) -> BillingBasis:
        """The plan's billing basis if it sets one, else the model's."""
        return plan.billing_basis if plan.billing_basis is not None else model.billing_basis

    def max_session_s(self, plan: Plan) -> int:
        """Session length cap: the plan's maximum, bounded by the hard cap."""
        return min(plan.max_session_s, self.rules.hard_cap_s)


DEFAULT_PLANS: dict[str, Plan] = {
    "free": Plan(
        name="free",
        max_session_s=5 * 60,
        concurrent_streams=1,
        hourly_s=10 * 60,
        daily_s=30 * 60,
        monthly_s=4 * HOUR,
        ws_messages_per_s=100,
        audio_bytes_per_s=32 * KB,
        requests_per_minute=60,
    ),
    "basic": Plan(
        name="basic",
        max_session_s=10 * 60,
        concurrent_streams=2,
        hourly_s=30 * 60,
        daily_s=2 * HOUR,
        monthly_s=50 * HOUR,
        ws_messages_per_s=500,
        audio_bytes_per_s=64 * KB,
        requests_per_minute=120,
    ),
    "pro": Plan(
        name="pro",
        max_session_s=30 * 60,
        concurrent_streams=5,
        hourly_s=60 * 60,
        daily_s=8 * HOUR,
        monthly_s=200 * HOUR,
        ws_messages_per_s=1000,
        audio_bytes_per_s=128 * KB,
        requests_per_minute=600,
    ),
    "enterprise": Plan(
        name="enterprise",
        max_session_s=2 * HOUR,
        concurrent_streams=20,
        hourly_s=None,
        daily_s=None,
        monthly_s=None,
        ws_messages_per_s=None,
        audio_bytes_per_s=None,
        requests_per_minute=None,
    ),
}

DEFAULT_MODELS: dict[str, Model] = {
    "standard": Model(name="standard", rate_micro_per_s=2 * MICRO),
    "enhanced": Model(name="enhanced", rate_micro_per_s=3 * MICRO),
}


def default_config() -> EngineConfig:
    """The built-in configuration (see the module docstring)."""
    return EngineConfig(
        plans=dict(DEFAULT_PLANS),
        models=dict(DEFAULT_MODELS),
        default_model="standard",
        rules=SessionRules(),
        default_plan="free",
    )


# ---------------------------------------------------------------- validation

_PLAN_OPTIONAL_LIMITS = (
    "concurrent_streams",
    "hourly_s",
    "daily_s",
    "monthly_s",
    "ws_messages_per_s",
    "audio_bytes_per_s",
    "requests_per_minute",
)
_RULES_POSITIVE = (
    "balance_check_s",
    "status_interval_s",
    "idle_timeout_s",
    "no_audio_timeout_s",
    "keepalive_timeout_s",
    "hard_cap_s",
    "rate_abuse_s",
)


def _positive(key: str, value: int | None, *, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        what = 'a positive integer or "unlimited"' if optional else "a positive integer"
        raise ConfigError(key, f"expected {what}, got {value!r}")


def validate_config(cfg: EngineConfig) -> EngineConfig:
    """Check every number and cross-reference; return ``cfg`` or raise :class:`ConfigError`."""
    if not cfg.plans:
        raise ConfigError("plans", "at least one plan is required")
    if not cfg.models:
        raise ConfigError("models", "at least one model is required")
    for key, plan in cfg.plans.items():
        if plan.name != key:
            raise ConfigError(f"plans.{key}.name", f"must be {key!r}, got {plan.name!r}")
        _positive(f"plans.{key}.max_session_s", plan.max_session_s, optional=False)
        for field in _PLAN_OPTIONAL_LIMITS:
            _positive(f"plans.{key}.{field}", getattr(plan, field), optional=True)
    for key, model in cfg.models.items():
        if model.name != key:
            raise ConfigError(f"models.{key}.name", f"must be {key!r}, got {model.name!r}")
        if model.rate_micro_per_s <= 0:
            raise ConfigError(
                f"models.{key}.rate",
                f"must be positive, got {format_credits(model.rate_micro_per_s)}",
            )
    rules = cfg.rules
    for field in _RULES_POSITIVE:
        _positive(f"rules.{field}", getattr(rules, field), optional=False)
    if rules.min_balance_micro < 0:
        raise ConfigError(
            "rules.min_balance", f"must not be negative, got {format_credits(rules.min_balance_micro)}"
        )
    if rules.resume_window_s < 0:
        raise ConfigError("rules.resume_window_s", f"must not be negative, got {rules.resume_window_s}")
    for i, w in enumerate(rules.warn_before_s):
        _positive(f"rules.warn_before_s[{i}]", w, optional=False)
    if len(set(rules.warn_before_s)) != len(rules.warn_before_s):
        raise ConfigError("rules.warn_before_s", f"duplicate values in {list(rules.warn_before_s)}")
    if cfg.default_model not in cfg.models:
        raise ConfigError(
            "default_model", f"no model named {cfg.default_model!r} (models: {', '.join(sorted(cfg.models))})"
        )
    if cfg.default_plan not in cfg.plans:
        raise ConfigError(
            "default_plan", f"no plan named {cfg.default_plan!r} (plans: {', '.join(sorted(cfg.plans))})"
        )
    return cfg


# ---------------------------------------------------------------- TOML loading

_TOP_KEYS = {"default_plan", "default_model", "rules", "plans", "models"}


def _describe(value: object) -> str:
    return f"{type(value).__name__} {value!r}"


def _optional(typ: Any) -> bool:
    return get_origin(typ) in (Union, types.UnionType) and type(None) in get_args(typ)


def _expected(typ: Any) -> str:
    """What a TOML user should write for a field of type ``typ``."""
    union = get_origin(typ) in (Union, types.UnionType)
    args = [a for a in get_args(typ) if a is not type(None)] if union else [typ]
    parts: list[str] = []
    for a in args:
        if a is int:
            parts.append("an integer")
        elif a is str:
            parts.append("a string")
        elif isinstance(a, type) and issubclass(a, enum.Enum):
            parts.append(" or ".join(f'"{m.value}"' for m in a))
        elif get_origin(a) is tuple:
            parts.append("a list of integers")
        else:  # pragma: no cover - no other field types today
            parts.append(str(a))
    return " or ".join(parts)


def _convert(key: str, value: object, typ: Any, *, unlimited: bool) -> Any:
    if unlimited and value == UNLIMITED:
        return None
    try:
        if value is None:
            raise msgspec.ValidationError("null")
        return msgspec.convert(value, typ)
    except msgspec.ValidationError:
        hint = ' or "unlimited"' if unlimited else ""
        raise ConfigError(key, f"expected {_expected(typ)}{hint}, got {_describe(value)}") from None


def _table(key: str, value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(key, f"expected a table, got {_describe(value)}")
    return value


def _credits(key: str, value: object) -> int:
    if not isinstance(value, (str, int, Decimal)) or isinstance(value, bool):
        raise ConfigError(
            key, f'expected credits as a decimal string (e.g. "2.5") or an integer, got {_describe(value)}'
        )
    try:
        return parse_credits(value)
    except ValueError as e:
        raise ConfigError(key, str(e)) from None


_S = TypeVar("_S", bound=msgspec.Struct)


def _merge_struct(
    key: str,
    struct_type: type[_S],
    base: _S | None,
    table: dict[str, Any],
    *,
    credits: dict[str, str] | None = None,
    name: str | None = None,
) -> _S:
    """Merge a TOML ``table`` over ``base`` and build a ``struct_type``.

    ``credits`` maps TOML keys given in credits to the micro-credit fields they
    set; ``name`` is the table's name, stored in the struct's ``name`` field.
    """
    credits = credits or {}
    fields = {f.name: f for f in msgspec.structs.fields(struct_type)}
    toml_keys = {credits_key: field for credits_key, field in credits.items()}
    toml_keys.update({f: f for f in fields if f not in credits.values() and f != "name"})
    values: dict[str, Any] = msgspec.structs.asdict(base) if base is not None else {}
    if name is not None:
        if "name" in table and table["name"] != name:
            raise ConfigError(f"{key}.name", f"must be {name!r} (the table's name), got {table['name']!r}")
        values["name"] = name
    for tkey, tval in table.items():
        fkey = f"{key}.{tkey}"
        if tkey == "name" and name is not None:
            continue
        if tkey not in toml_keys:
            raise ConfigError(fkey, f"unknown key (known keys: {', '.join(sorted(toml_keys))})")
        if tkey in credits:
            values[credits[tkey]] = _credits(fkey, tval)
            continue
        typ = fields[tkey].type
        values[tkey] = _convert(fkey, tval, typ, unlimited=_optional(typ) and tkey != "billing_basis")
    missing = [t for t, f in toml_keys.items() if fields[f].required and f not in values]
    if missing:
        raise ConfigError(key, f"missing required key(s): {', '.join(missing)}")
    return struct_type(**values)


def config_from_toml_str(
    text: str, *, base: EngineConfig | None = None, source: str = "<config>"
) -> EngineConfig:
    """Parse TOML ``text`` and merge it over ``base`` (the built-in defaults)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("", f"{source}: invalid TOML: {e}") from None
    return config_from_dict(data, base=base)


def config_from_dict(data: dict[str, Any], *, base: EngineConfig | None = None) -> EngineConfig:
    """Merge an already-parsed TOML document over ``base`` (the built-in defaults)."""
    cfg = base if base is not None else default_config()
    for k in data:
        if k not in _TOP_KEYS:
            raise ConfigError(k, f"unknown key (known keys: {', '.join(sorted(_TOP_KEYS))})")

    plans = dict(cfg.plans)
    for pname, ptable in _table("plans", data.get("plans", {})).items():
        key = f"plans.{pname}"
        old = plans.get(pname)
        plans[pname] = _merge_struct(key, Plan, old, _table(key, ptable), name=pname)

    models = dict(cfg.models)
    for mname, mtable in _table("models", data.get("models", {})).items():
        key = f"models.{mname}"
        old_m = models.get(mname)
        models[mname] = _merge_struct(
            key, Model, old_m, _table(key, mtable), credits={"rate": "rate_micro_per_s"}, name=mname
        )

    rules = cfg.rules
    if "rules" in data:
        rules = _merge_struct(
            "rules",
            SessionRules,
            rules,
            _table("rules", data["rules"]),
            credits={"min_balance": "min_balance_micro"},
        )

    default_model = _convert(
        "default_model", data.get("default_model", cfg.default_model), str, unlimited=False
    )
    default_plan = _convert("default_plan", data.get("default_plan", cfg.default_plan), str, unlimited=False)
    return validate_config(
        EngineConfig(
            plans=plans, models=models, default_model=default_model, rules=rules, default_plan=default_plan
        )
    )


def load_config(path: str | None = None) -> EngineConfig:
    """The built-in defaults, overridden by the TOML file at ``path`` if given."""
    if path is None:
        return validate_config(default_config())
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError("", f"cannot read config file {path!r}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError("", f"{path}: not UTF-8: {e}") from None
    return config_from_toml_str(text, source=path)
