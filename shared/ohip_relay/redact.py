"""Personal data masking for logs.

OHIP event payloads carry guests' names, e-mail addresses, phone numbers and addresses; none of it
may reach a log. Two rules, applied to any JSON-like structure and to every log record:

* by name: the value of a key, or of an OHIP detail element (`elementName`/`dataElement`), that
  denotes personal data (names, e-mail, phone, address lines, city, postcode, birth date,
  passport/ID and card numbers) is replaced by `***`, whatever it looks like;
* by shape: in every other string, e-mail addresses, card numbers (13-19 digits passing the Luhn
  check) and phone numbers (written with `+`, with separators or brackets, or as a 10-11 digit
  national number starting with 0) are replaced by `***`.

Operational identifiers stay readable: offsets, event keys and names, hotel ids, primary keys and
the other keys in `VISIBLE_KEYS` are never touched, and a bare run of digits (an OPERA id, an
offset) is not mistaken for a phone number. Names written into free text cannot be recognised:
log structures as extra fields or arguments, not pre-formatted into the message.

`get_logger(service)` returns a Powertools `Logger` whose every line is masked: message,
arguments, extra and appended keys, exception text and stack trace.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import IO, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter

MASK = "***"


def _normal(key: str) -> str:
    return re.sub(r"[^a-z0-9]", "", key.lower())


# Keys whose values are operational identifiers, never personal data (compared in `_normal` form).
VISIBLE_KEYS = frozenset(
    _normal(k)
    for k in (
        "offset",
        "uniqueEventId",
        "eventKey",
        "eventName",
        "moduleName",
        "actionType",
        "hotelId",
        "hotelCode",
        "chainCode",
        "primaryKey",
        "publisherId",
        "actionInstanceId",
        "actionId",
        "parentActionId",
        "businessEventId",
        "schemaVersion",
        "source",
        "occurredAt",
        "relayedAt",
        "timestamp",
        "createdDateTime",
        "elementName",
        "dataElement",
        "elementType",
        "elementRole",
        "elementSequence",
        "scopeFrom",
        "scopeTo",
        "messageGroupId",
        "deduplicationId",
        "messageId",
        "level",
        "location",
        "service",
        "xray_trace_id",
        "sampling_rate",
    )
)

# Keys and element names that denote personal data, matched against the `_normal` form
# ("FIRST NAME", "firstName" and "first_name" are all "firstname").
_PERSONAL_KEY = re.compile(
    r"^(name|middle|dob|ssn|pan|cvv|cvc|zip|town|city|nationalid)$"
    r"|(first|last|middle|given|family|sur|full|guest|maiden|nick|display|contact|holder|person"
    r"|legal|fore|alternate|alt|birth|passenger|traveller|traveler)name$"
    r"|mail|phone|mobile|fax|address|street|postcode|postalcode|zipcode|[^aio]city$"
    r"|birth|passport|(id|identity|identification|document|licen[cs]e|tax|socialsecurity)(number|no|num)$"
    r"|driverslicen|driverlicen|card(number|no|num|holder)|creditcard|ccnumber|securitycode|iban"
    r"|accountnumber|comment|remark"
)

_EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
# A whole run of 13-19 digits, optionally grouped by single spaces or dashes.
_CARD = re.compile(r"(?<![A-Za-z0-9])(?<!\d[ -])\d(?:[ -]?\d){12,18}(?![ -]?\d)(?![A-Za-z])")
_PHONE = re.compile(
    r"(?<![A-Za-z0-9+.-])(?<!\d[ .-])(?:"
    r"\+\d[\d ().-]{5,22}\d"  # international: +44 20 7946 0123, +447700900123
    r"|\(\d{2,5}\)[ .-]?\d{3,4}[ .-]?\d{3,5}"  # (555) 010-0199
    r"|\d{2,5}[ .-]\d{3,4}[ .-]\d{3,5}"  # 020 7946 0123, 555-010-0199
    r"|\d{3}[ .-]\d{4}"  # 555-0199
    r"|0\d{9,10}"  # 07700900123
    r")(?![A-Za-z0-9]|[ .-]\d)"  # the whole run of digit groups, not a part of a longer one
)


def _luhn(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        n = int(char) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group())
    return MASK if _luhn(digits) else match.group()


def _phone(match: re.Match[str]) -> str:
    return MASK if 7 <= sum(c.isdigit() for c in match.group()) <= 15 else match.group()


def is_personal_key(key: str) -> bool:
    """Whether a key or an OHIP element name denotes personal data."""
    normal = _normal(key)
    return normal not in VISIBLE_KEYS and _PERSONAL_KEY.search(normal) is not None


def redact_text(text: str) -> str:
    """Mask e-mail addresses, card numbers and phone numbers anywhere in `text`. A string holding
    a JSON object or array is masked as a structure (so names inside it are caught too)."""
    stripped = text.strip()
    if stripped[:1] in ("{", "[") and stripped[-1:] in ("}", "]"):
        try:
            parsed = json.loads(stripped)
        except ValueError:
            pass
        else:
            return json.dumps(redact(parsed), ensure_ascii=False, separators=(",", ":"))
    text = _EMAIL.sub(MASK, text)
    text = _CARD.sub(_card, text)
    return _PHONE.sub(_phone, text)


def redact(value: Any) -> Any:
    """A masked copy of a JSON-like value (dicts, lists, tuples, strings, numbers). Other objects
    (exceptions, datetimes...) come back as their masked `str()`. The input is never changed."""
    return _redact(value, personal=False)


def _redact(value: Any, *, personal: bool) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        if personal:
            return MASK if value else value
        return redact_text(value)
    if isinstance(value, int | float):
        if personal:
            return MASK
        return value if abs(value) < 10**12 else _numeric(value)
    if isinstance(value, Mapping):
        return _redact_mapping(value, personal=personal)
    if isinstance(value, list | tuple | set | frozenset):
        items = [_redact(item, personal=personal) for item in value]
        return tuple(items) if isinstance(value, tuple) else items
    return _redact(str(value), personal=personal)


def _numeric(value: int | float) -> int | float | str:
    # Card numbers sometimes travel as JSON numbers.
    return MASK if isinstance(value, int) and _CARD.fullmatch(str(value)) and _luhn(str(value)) else value


def _redact_mapping(value: Mapping[Any, Any], *, personal: bool) -> dict[Any, Any]:
    # An OHIP detail element: its values are personal when its element name is.
    element = value.get("elementName", value.get("dataElement"))
    element_personal = personal or (isinstance(element, str) and is_personal_key(element))
    out: dict[Any, Any] = {}
    for key, item in value.items():
        name = str(key)
        normal = _normal(name)
        if not personal and normal in VISIBLE_KEYS:
            out[key] = item
        elif element_personal and normal in ("oldvalue", "newvalue", "value"):
            out[key] = _redact(item, personal=True)
        else:
            out[key] = _redact(item, personal=personal or is_personal_key(name))
    return out


# ---------------------------------------------------------------------------------------------
# logging

_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """A masked copy of a log record: message and arguments, extra fields, exception and stack text.

    Arguments are masked as structures before the message is formatted, so a dict passed as an
    argument keeps its personal values hidden; the formatted message is then masked as text.
    """
    masked = logging.makeLogRecord(dict(vars(record)))
    if isinstance(record.msg, Mapping | list):
        masked.msg = redact(record.msg)
    else:
        if record.args:
            args = redact(record.args)
            masked.args = args if isinstance(args, tuple | Mapping) else (args,)
        try:
            text = masked.getMessage()
        except (TypeError, ValueError, KeyError):  # a bad format string: keep both parts, masked
            text = f"{masked.msg} {masked.args}"
        masked.msg = redact_text(text)
        masked.args = None
    extra = {key: item for key, item in vars(record).items() if key not in _RECORD_ATTRIBUTES}
    vars(masked).update(_redact_mapping(extra, personal=False))
    if record.exc_info and not record.exc_text:
        masked.exc_text = logging.Formatter().formatException(record.exc_info)
    if masked.exc_text:
        masked.exc_text = redact_text(masked.exc_text)
    if record.stack_info:
        masked.stack_info = redact_text(record.stack_info)
    return masked


class RedactingFilter(logging.Filter):
    """A `logging.Filter` for plain `logging` handlers: masks each record in place.

    With Powertools, use `get_logger` instead: its formatter reads the exception itself, which a
    filter cannot reach.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        vars(record).update(vars(redact_record(record)))
        return True


class RedactingFormatter(LambdaPowertoolsFormatter):
    """Powertools' JSON formatter with masking: the record's message and arguments are masked
    before formatting, and the whole structured line (appended keys, extra fields, exception,
    stack trace) just before it is serialised."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(redact_record(record))

    def serialize(self, log: Any) -> str:
        return super().serialize(redact(log))


def get_logger(service: str, *, level: str | int | None = None, stream: IO[str] | None = None) -> Logger:
    """A Powertools `Logger` whose output is always masked.

    If a Powertools logger for `service` was already set up without masking, its handler gets the
    masking formatter too (keeping the keys appended so far).
    """
    logger = Logger(service=service, level=level, stream=stream, logger_formatter=RedactingFormatter())
    handler = logger.registered_handler
    current = handler.formatter
    if not isinstance(current, RedactingFormatter):
        formatter = RedactingFormatter()
        if isinstance(current, LambdaPowertoolsFormatter):
            formatter.append_keys(**{k: v for k, v in current.log_format.items() if v is not None})
        else:
            formatter.append_keys(service=logger.service)
        handler.setFormatter(formatter)
    return logger
