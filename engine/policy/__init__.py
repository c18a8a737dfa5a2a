"""Sans-IO policy core: plans, money, admission and the per-session state machine.

No trio, no I/O, no clock reads: time is always passed in. The actors are a
thin shell around :class:`SessionPolicy`; the store persists its
:class:`Checkpoint` totals.

Modules: :mod:`~engine.policy.types` (shared data), :mod:`~engine.policy.money`
(integer micro-credits), :mod:`~engine.policy.config` (plans and models from
TOML), :mod:`~engine.policy.windows` (calendar UTC usage windows),
:mod:`~engine.policy.admission` (may a session start?),
:mod:`~engine.policy.session` (metering, billing, limits, timeouts).
"""

from engine.policy.admission import check_admission, format_duration
from engine.policy.config import (
    DEFAULT_MODELS,
    DEFAULT_PLANS,
    ConfigError,
    EngineConfig,
    config_from_dict,
    config_from_toml_str,
    default_config,
    load_config,
    validate_config,
)
from engine.policy.money import (
    cost_micro,
    credits_decimal,
    format_credits,
    max_units_within,
    parse_credits,
)
from engine.policy.session import SessionPolicy
from engine.policy.types import (
    MICRO,
    AccountSnapshot,
    BalanceCheckDue,
    BillingBasis,
    Checkpoint,
    Code,
    End,
    EndReason,
    Event,
    Model,
    Plan,
    Receipt,
    Refusal,
    ResumeState,
    SessionRules,
    SessionWarning,
    Status,
    Throttle,
    Usage,
    Warning,
)
from engine.policy.windows import WindowStarts, month_end, next_boundaries, next_boundary, window_starts

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_PLANS",
    "MICRO",
    "AccountSnapshot",
    "BalanceCheckDue",
    "BillingBasis",
    "Checkpoint",
    "Code",
    "ConfigError",
    "End",
    "EndReason",
    "EngineConfig",
    "Event",
    "Model",
    "Plan",
    "Receipt",
    "Refusal",
    "ResumeState",
    "SessionPolicy",
    "SessionRules",
    "SessionWarning",
    "Status",
    "Throttle",
    "Usage",
    "Warning",
    "WindowStarts",
    "check_admission",
    "config_from_dict",
    "config_from_toml_str",
    "cost_micro",
    "credits_decimal",
    "default_config",
    "format_credits",
    "format_duration",
    "load_config",
    "max_units_within",
    "month_end",
    "next_boundaries",
    "next_boundary",
    "parse_credits",
    "validate_config",
    "window_starts",
]
