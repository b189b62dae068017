"""Personal data masking: structures, free text, log records, and the Powertools logger's output."""

from __future__ import annotations

import copy
import io
import json
import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools import Logger

from ohip_relay.events import from_stream
from ohip_relay.redact import (
    MASK,
    RedactingFilter,
    get_logger,
    is_personal_key,
    redact,
    redact_text,
)

SAMPLES = Path(__file__).resolve().parents[2] / "events"

# Personal values of every kind, and how they appear in the checks below.
EMAIL = "jane.testperson@example.com"
PHONE = "+44 20 7946 0123"
CARD = "4111 1111 1111 1111"
SECRETS = (
    "Testperson",
    "jane.testperson",
    "7946",
    "4111",
    "Sampleton",
    "Example Street",
    "1990-02-03",
    "X1234567",
)
# Operational values that must stay readable.
VISIBLE = ("48219", "1280999", "DEMO01", "UPDATE PROFILE", "v1-", "9c4e2a71-58b3-4f0d-a6e2-31b7d5c8e042")


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, secret


# --- which keys are personal -------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "NAME",
        "FIRST NAME",
        "firstName",
        "last_name",
        "MIDDLE",
        "surname",
        "guestName",
        "ALTERNATE NAME",
        "EMAIL",
        "email_address",
        "PHONE NUMBER",
        "mobile",
        "fax",
        "ADDRESS1",
        "ADDRESS LINE 2",
        "street",
        "CITY",
        "homeCity",
        "ZIP CODE",
        "POSTAL CODE",
        "postcode",
        "BIRTH DATE",
        "dateOfBirth",
        "dob",
        "PASSPORT",
        "passportNumber",
        "ID NUMBER",
        "documentNo",
        "CREDIT CARD NUMBER",
        "cardNumber",
        "cardHolder",
        "iban",
        "COMMENTS",
    ],
)
def test_personal_keys(key: str) -> None:
    assert is_personal_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "offset",
        "uniqueEventId",
        "eventKey",
        "eventName",
        "moduleName",
        "elementName",
        "hotelId",
        "hotelName",
        "primaryKey",
        "publisherId",
        "GUEST NAME ID",
        "CONFIRMATION NO",
        "ROOM",
        "capacity",
        "exception_name",
        "message",
        "location",
        "service",
        "level",
        "timestamp",
    ],
)
def test_operational_keys(key: str) -> None:
    assert not is_personal_key(key)


# --- structures --------------------------------------------------------------------------------


def test_masks_by_key_at_any_depth_and_keeps_ids() -> None:
    value = {
        "offset": "48213",
        "primaryKey": "2241871",
        "hotelId": "DEMO01",
        "guest": {
            "profile": [
                {"firstName": "Jane", "lastName": "Testperson", "addresses": [{"city": "Sampleton"}]}
            ],
            "birthDate": "1990-02-03",
            "passport": "X1234567",
            "phones": ["0123", 441234],
        },
        "rooms": 2,
        "vip": True,
        "note": None,
    }
    masked = redact(value)
    assert masked["guest"]["profile"][0] == {
        "firstName": MASK,
        "lastName": MASK,
        "addresses": [{"city": MASK}],
    }
    assert masked["guest"]["birthDate"] == MASK
    assert masked["guest"]["passport"] == MASK
    assert masked["guest"]["phones"] == [MASK, MASK]
    assert (masked["offset"], masked["primaryKey"], masked["hotelId"]) == ("48213", "2241871", "DEMO01")
    assert (masked["rooms"], masked["vip"], masked["note"]) == (2, True, None)


def test_masks_ohip_elements_by_element_name() -> None:
    detail = [
        {"elementName": "NAME", "oldValue": "Testperson", "newValue": "Testperson-Smith"},
        {"dataElement": "EMAIL", "newValue": "jt@example.org"},
        {"elementName": "PHONE NUMBER", "oldValue": "", "newValue": "123456789"},
        {"elementName": "ROOM", "oldValue": "1203", "newValue": "1204"},
        {"elementName": "COMMENTS", "newValue": "call jane.testperson@example.com first"},
        {"elementName": "CONFIRMATION NO", "newValue": "880231"},
    ]
    masked = redact(detail)
    assert masked[0] == {"elementName": "NAME", "oldValue": MASK, "newValue": MASK}
    assert masked[1] == {"dataElement": "EMAIL", "newValue": MASK}
    assert masked[2] == {"elementName": "PHONE NUMBER", "oldValue": "", "newValue": MASK}  # empty stays empty
    assert masked[3] == detail[3]
    assert masked[4]["newValue"] == MASK
    assert masked[5] == detail[5]


def test_canonical_event_is_masked_but_keeps_its_identifiers() -> None:
    frame = json.loads((SAMPLES / "stream/next-update-profile.json").read_text())
    event = from_stream(frame, "CHAIN1", datetime(2026, 11, 25, tzinfo=UTC)).to_dict()
    text = json.dumps(redact(event))
    assert_clean(text)
    for visible in (
        *VISIBLE,
        event["eventKey"],
        "3310502",
        "57489",
        "2026-11-25T14:41:07.654Z",
        "PHONE NUMBER",
    ):
        assert visible in text


def test_raw_frame_is_masked() -> None:
    frame = json.loads((SAMPLES / "stream/next-update-profile.json").read_text())
    before = copy.deepcopy(frame)
    text = json.dumps(redact(frame))
    assert_clean(text)
    for visible in VISIBLE[:-2]:
        assert visible in text
    assert frame == before  # the input is not changed


# --- free text ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "personal",
    [
        EMAIL,
        "J.T+relay@mail.example.co.uk",
        PHONE,
        "+447700900123",
        "+1 (555) 010-0199",
        "(555) 010-0199",
        "555-010-0199",
        "555-0199",
        "020 7946 0123",
        "0161.496.0000",
        "07700900123",
        CARD,
        "4111111111111111",
        "4111-1111-1111-1111",
        "5500 0000 0000 0004",
        "378282246310005",
    ],
)
def test_masks_personal_values_in_text(personal: str) -> None:
    masked = redact_text(f"guest said: {personal}, see offset 48213")
    assert personal not in masked
    assert MASK in masked
    assert masked.endswith("see offset 48213")


@pytest.mark.parametrize(
    "operational",
    [
        "offset 48213",
        "offset 1234567890",
        "primaryKey 2241871",
        "hotel DEMO01 event UPDATE PROFILE",
        "uniqueEventId 9c4e2a71-58b3-4f0d-a6e2-31b7d5c8e042",
        "key v1-53e6cb10b585a308a29157be25a7300550efcc1463f55ea408e311e656284645",
        "at 2026-11-25T10:15:38.123Z",
        "on 2026-11-25 10:15:38.0",
        "dated 25.11.2026",
        "rate 189.00 EUR",
        "4111 1111 1111 1112 is not a card (Luhn)",
        "4111111111111112",
        "close code 4409 after 180 s",
        "from 10.0.12.255 and 192.168.100.200",
        "version 3.37.0",
        "xray 1-5759e988-bd862e3fe1be46a994272793",
    ],
)
def test_leaves_operational_text_alone(operational: str) -> None:
    assert redact_text(operational) == operational


def test_json_text_is_masked_as_a_structure() -> None:
    text = json.dumps({"elementName": "FIRST NAME", "newValue": "Jane", "offset": "48213"})
    masked = json.loads(redact_text(text))
    assert masked == {"elementName": "FIRST NAME", "newValue": MASK, "offset": "48213"}


def test_card_numbers_sent_as_numbers_are_masked() -> None:
    assert redact({"total": 4111111111111111}) == {"total": MASK}
    assert redact({"total": 4111111111111112}) == {"total": 4111111111111112}


def test_other_objects_become_masked_text() -> None:
    masked = redact({"error": ValueError(f"no guest {EMAIL}")})
    assert masked == {"error": f"no guest {MASK}"}


# --- logging -----------------------------------------------------------------------------------

FRAME_DETAIL = {
    "elementName": "NAME",
    "oldValue": "Testperson",
    "newValue": "Testperson-Smith",
    "offset": "48213",
}


def _raise_with_personal_data() -> None:
    raise ValueError(f"cannot match guest {EMAIL} / {PHONE} / card {CARD}")


def test_filter_masks_plain_logging_records() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s|%(guest)s|%(offset)s"))
    handler.addFilter(RedactingFilter())
    log = logging.getLogger(f"test-filter-{uuid.uuid4()}")
    log.propagate = False
    log.addHandler(handler)
    log.warning(
        "element %s from %s", FRAME_DETAIL, EMAIL, extra={"guest": {"email": EMAIL}, "offset": "48213"}
    )
    try:
        _raise_with_personal_data()
    except ValueError:
        log.exception("failed at %s", "48213", extra={"guest": "x", "offset": "48213"})
    output = stream.getvalue()
    assert_clean(output)
    assert "'newValue': '***'" in output
    assert output.count("48213") >= 3
    assert "ValueError: cannot match guest ***" in output
    assert "_raise_with_personal_data" in output  # the traceback is kept, only masked


def _powertools(service_prefix: str) -> tuple[Logger, io.StringIO]:
    stream = io.StringIO()
    logger = get_logger(f"{service_prefix}-{uuid.uuid4()}", level="DEBUG", stream=stream)
    return logger, stream


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_powertools_logger_masks_message_args_and_extra() -> None:
    logger, stream = _powertools("masked")
    logger.info(
        "element %s changed by %s",
        FRAME_DETAIL,
        PHONE,
        extra={
            "offset": "48213",
            "primaryKey": "2241871",
            "guest": {"lastName": "Testperson"},
            "note": EMAIL,
        },
    )
    (line,) = _lines(stream)
    assert_clean(json.dumps(line))
    assert "'newValue': '***'" in line["message"]
    assert line["message"].endswith(f"changed by {MASK}")
    assert line["guest"] == {"lastName": MASK}
    assert line["note"] == MASK
    assert (line["offset"], line["primaryKey"]) == ("48213", "2241871")
    assert line["level"] == "INFO"


def test_powertools_logger_masks_appended_keys_and_dict_messages() -> None:
    logger, stream = _powertools("appended")
    logger.append_keys(hotelId="DEMO01", guest_email=EMAIL)
    logger.debug({"event": "UPDATE PROFILE", "detail": [FRAME_DETAIL], "postcode": "SW1A 1AA"})
    logger.info(json.dumps({"firstName": "Jane", "eventName": "UPDATE PROFILE"}))
    first, second = _lines(stream)
    assert_clean(stream.getvalue())
    assert first["guest_email"] == MASK
    assert first["hotelId"] == "DEMO01"
    assert first["message"]["detail"][0]["newValue"] == MASK
    assert first["message"]["postcode"] == MASK
    assert second["message"] == {"firstName": MASK, "eventName": "UPDATE PROFILE"}


def test_powertools_logger_masks_exception_text_and_stack_trace() -> None:
    logger, stream = _powertools("exception")
    try:
        _raise_with_personal_data()
    except ValueError:
        logger.exception("could not relay offset %s", "48213")
    (line,) = _lines(stream)
    assert_clean(json.dumps(line))
    assert line["message"] == "could not relay offset 48213"
    assert line["exception_name"] == "ValueError"
    assert f"ValueError: cannot match guest {MASK}" in line["exception"]
    assert line["stack_trace"]["value"].startswith(f"cannot match guest {MASK}")
    assert line["stack_trace"]["frames"][-1]["function"] == "_raise_with_personal_data"


def test_a_service_first_set_up_without_masking_is_masked_too() -> None:
    service = f"preconfigured-{uuid.uuid4()}"
    stream = io.StringIO()
    Logger(service=service, stream=stream)  # someone else got there first, unmasked
    logger = get_logger(service)
    logger.info("guest %s", EMAIL)
    (line,) = _lines(stream)
    assert line["message"] == f"guest {MASK}"
    assert line["service"] == service


def test_child_loggers_share_the_masked_output() -> None:
    logger, stream = _powertools("parent")
    child = Logger(service=logger.service, child=True)
    child.info("guest %s", EMAIL, extra={"offset": "48213"})
    (line,) = _lines(stream)
    assert line["message"] == f"guest {MASK}"
    assert line["offset"] == "48213"
