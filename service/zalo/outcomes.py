"""What an answer of Zalo's business API means for the caller: one table from Zalo's error
code (and the HTTP and transport cases) to a class that says what to do next, shared by
the poller and the send proxy. It only classifies; it calls nothing and keeps no state
but the count of codes it did not know.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from service.metrics import ZALO_UNKNOWN_CODES


class OutcomeClass(StrEnum):
    """What the caller does about an answer."""

    OK = "ok"
    """`error: 0`."""
    AUTH = "auth"
    """The access token was refused (-124): refresh once and retry once."""
    NEEDS_HUMAN = "needs_human"
    """A person must act (app not approved, OA not linked, no permission, no balance,
    suspended): retrying changes nothing until they do."""
    TRANSIENT = "transient"
    """Zalo is busy or failing, or the request never left: the same call may work later."""
    RESCHEDULE = "reschedule"
    """Not now, but later: out of sending hours, a quota used up until the next day or month."""
    PERMANENT_PAYLOAD = "permanent_payload"
    """The request itself is wrong (template, params, sending mode): fix it, do not retry."""
    PERMANENT_RECIPIENT = "permanent_recipient"
    """This recipient cannot get this message (bad phone, blocked, opted out, at a limit)."""
    UNKNOWN = "unknown"
    """The request may have reached Zalo but no answer came: never retried blindly."""

    @property
    def retriable(self) -> bool:
        """Whether the same call may simply be made again (later)."""
        return self in (OutcomeClass.TRANSIENT, OutcomeClass.RESCHEDULE)


@dataclass(frozen=True, slots=True)
class ZaloError:
    """One known code of Zalo's: its class and a short name for logs and docs."""

    outcome: OutcomeClass
    name: str


_C = OutcomeClass

ZALO_ERRORS: dict[int, ZaloError] = {
    # The token
    -124: ZaloError(_C.AUTH, "access_token_invalid"),
    # A person must act: the OA's or the app's standing with Zalo
    -115: ZaloError(_C.NEEDS_HUMAN, "balance_insufficient"),
    -117: ZaloError(_C.NEEDS_HUMAN, "no_permission_on_template"),
    -126: ZaloError(_C.NEEDS_HUMAN, "development_mode_recipient_not_admin"),
    -127: ZaloError(_C.NEEDS_HUMAN, "development_wallet"),
    -135: ZaloError(_C.NEEDS_HUMAN, "oa_not_allowed_zns"),
    -136: ZaloError(_C.NEEDS_HUMAN, "zca_not_linked"),
    -137: ZaloError(_C.NEEDS_HUMAN, "zca_charge_failed"),
    -145: ZaloError(_C.NEEDS_HUMAN, "tag_not_allowed"),
    -1351: ZaloError(_C.NEEDS_HUMAN, "oa_blocked_for_violations"),
    # Zalo busy or failing
    -32: ZaloError(_C.TRANSIENT, "rate_limited"),
    # Later
    -133: ZaloError(_C.RESCHEDULE, "night_restricted"),
    -144: ZaloError(_C.RESCHEDULE, "daily_quota_exceeded"),
    -147: ZaloError(_C.RESCHEDULE, "template_daily_quota_exceeded"),
    -1441: ZaloError(_C.RESCHEDULE, "monthly_promotion_quota_exceeded"),
    # The request is wrong
    -100: ZaloError(_C.PERMANENT_PAYLOAD, "invalid_params"),
    -131: ZaloError(_C.PERMANENT_PAYLOAD, "template_not_approved"),
    -146: ZaloError(_C.PERMANENT_PAYLOAD, "template_disabled_low_quality"),
    -148: ZaloError(_C.PERMANENT_PAYLOAD, "journey_token_missing"),
    -149: ZaloError(_C.PERMANENT_PAYLOAD, "journey_token_invalid"),
    -150: ZaloError(_C.PERMANENT_PAYLOAD, "journey_token_expired"),
    -161: ZaloError(_C.PERMANENT_PAYLOAD, "sending_mode_not_allowed"),
    -162: ZaloError(_C.PERMANENT_PAYLOAD, "sending_mode_3_not_for_tag"),
    -1121: ZaloError(_C.PERMANENT_PAYLOAD, "param_missing"),
    -1122: ZaloError(_C.PERMANENT_PAYLOAD, "param_length"),
    # This recipient
    -108: ZaloError(_C.PERMANENT_RECIPIENT, "phone_invalid"),
    -114: ZaloError(_C.PERMANENT_RECIPIENT, "user_inactive_or_declined"),
    -118: ZaloError(_C.PERMANENT_RECIPIENT, "account_not_found"),
    -119: ZaloError(_C.PERMANENT_RECIPIENT, "account_cannot_receive"),
    -139: ZaloError(_C.PERMANENT_RECIPIENT, "user_refused_type"),
    -140: ZaloError(_C.PERMANENT_RECIPIENT, "not_eligible_for_promotion"),
    -141: ZaloError(_C.PERMANENT_RECIPIENT, "user_opted_out"),
    -1471: ZaloError(_C.PERMANENT_RECIPIENT, "recipient_monthly_promotion_limit"),
    -1472: ZaloError(_C.PERMANENT_RECIPIENT, "recipient_daily_promotion_limit"),
}
"""Zalo's codes (its ZNS error table; -1121/-1122 and -32 as the fake draws them) -> what
they mean for a caller."""

UNKNOWN_CODE = ZaloError(_C.TRANSIENT, "unknown_code")
"""A code not in the table: taken as Zalo's own trouble, so it is retried with back-off and
counted (`zns_gate_zalo_unknown_codes`) rather than dropping a message for good."""


class Transport(StrEnum):
    """What went wrong when no answer of Zalo's could be read."""

    CONNECT = "connect"
    """The connection could not be made: the request was never sent."""
    TIMEOUT_BEFORE_SENT = "timeout_before_sent"
    """The time ran out before the request was written."""
    NO_ANSWER = "no_answer"
    """The request was written (or may have been) but no answer came: a timeout or a
    connection lost after sending."""
    HTTP_5XX = "http_5xx"
    HTTP_429 = "http_429"
    HTTP_4XX = "http_4xx"
    NOT_JSON = "not_json"
    """HTTP 200 whose body is not Zalo's JSON envelope."""
    MALFORMED = "malformed"
    """`error: 0` with a `data` not of the documented shape."""


TRANSPORT_OUTCOMES: dict[Transport, OutcomeClass] = {
    Transport.CONNECT: _C.TRANSIENT,
    Transport.TIMEOUT_BEFORE_SENT: _C.TRANSIENT,
    Transport.NO_ANSWER: _C.UNKNOWN,
    Transport.HTTP_5XX: _C.TRANSIENT,
    Transport.HTTP_429: _C.TRANSIENT,
    Transport.HTTP_4XX: _C.NEEDS_HUMAN,
    Transport.NOT_JSON: _C.TRANSIENT,
    Transport.MALFORMED: _C.TRANSIENT,
}
"""The cases without a code of Zalo's. A 4xx means the gate calls Zalo wrongly (a wrong
`api_url`, say): a person must look. A body that is not JSON is taken as a proxy's or
Zalo's error page. For a read, `unknown` is as good as `transient` (the caller may ask
again); only a send must not be repeated."""


def classify(code: int) -> ZaloError:
    """The meaning of Zalo's `error` code; 0 is OK. An unknown code is counted."""
    if code == 0:
        return ZaloError(_C.OK, "ok")
    known = ZALO_ERRORS.get(code)
    if known is None:
        ZALO_UNKNOWN_CODES.inc()
        return UNKNOWN_CODE
    return known
