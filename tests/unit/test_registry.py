"""The chain registry's pure parts: validation by the environment variables' rules, the registry of
one from the single-chain settings, and the item encoding (a hypothesis round trip)."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ohip_relay.chains_cli import FLAGS
from ohip_relay.config import ConfigError, Need, Reader, Settings
from ohip_relay.registry import (
    ATTRIBUTES,
    Subscription,
    check_entry,
    decode_item,
    encode_item,
    read_subscription,
    subscription_from_settings,
)

ARN = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:ohip/prod-AbCdEf"
GATEWAY = "https://ohip.example.com"
ENV = {
    "OHIP_GATEWAY_URL": "https://ohip.example.com/",
    "OHIP_CLIENT_ID": "client",
    "OHIP_CLIENT_SECRET": "s3cr3t-value",
    "OHIP_APP_KEY": "app-key-value",
    "OHIP_ENTERPRISE_ID": "ENT",
    "OHIP_CHAIN_CODE": "CHAIN1",
    "OHIP_HOTEL_IDS": "HOTEL1, HOTEL2",
    "OHIP_EXTERNAL_SYSTEM": "RELAY",
}


def _flags(**values: str) -> Reader:
    base = {"--gateway-url": GATEWAY, "--chain-code": "CHAIN1", "--secret-arn": ARN}
    return Reader({**base, **{FLAGS[k]: v for k, v in values.items()}})


def _subscription(**changes: Any) -> Subscription:
    fields: dict[str, Any] = {"gateway_url": GATEWAY, "chain_code": "CHAIN1", "secret_arn": ARN}
    return Subscription(**{**fields, **changes})


# -- the two new variables ----------------------------------------------------------------------


def test_delta_and_hotel_code_default_to_off() -> None:
    settings = Settings.from_env(ENV, Need.OHIP, Need.STREAM)
    assert settings.stream_delta is False
    assert settings.hotel_code == ""


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("TRUE", True), ("false", False), ("", False)])
def test_stream_delta_reads_true_or_false(raw: str, expected: bool) -> None:
    assert Settings.from_env({**ENV, "OHIP_STREAM_DELTA": raw}, Need.STREAM).stream_delta is expected


def test_stream_delta_refuses_anything_else() -> None:
    with pytest.raises(ConfigError, match=r"^OHIP_STREAM_DELTA: expected true or false \(got 'yes'\)$"):
        Settings.from_env({**ENV, "OHIP_STREAM_DELTA": "yes"}, Need.STREAM)


def test_hotel_code_is_checked_by_the_protocol_rule() -> None:
    assert Settings.from_env({**ENV, "OHIP_HOTEL_CODE": " HOTEL1,HOTEL2 "}).hotel_code == "HOTEL1,HOTEL2"
    assert len(Settings.from_env({**ENV, "OHIP_HOTEL_CODE": "H" * 50}).hotel_code) == 50
    with pytest.raises(ConfigError, match=r"^OHIP_HOTEL_CODE: hotelCode must be at most 50 characters"):
        Settings.from_env({**ENV, "OHIP_HOTEL_CODE": "H" * 51})
    with pytest.raises(ConfigError, match=r"^OHIP_HOTEL_CODE: must be a single line"):
        Settings.from_env({**ENV, "OHIP_HOTEL_CODE": "H1\nH2"})


# -- validation ---------------------------------------------------------------------------------


def test_id_defaults_to_the_chain_code() -> None:
    assert _subscription().id == "CHAIN1"
    assert read_subscription(_flags(), FLAGS).id == "CHAIN1"
    assert read_subscription(_flags(id="CHAIN1-uat"), FLAGS).id == "CHAIN1-uat"


@pytest.mark.parametrize("chain", ["CHAIN1", "A", "MY CHAIN", "C_%#$&-9", "C" * 20])
def test_every_chain_code_is_an_id(chain: str) -> None:
    assert _subscription(chain_code=chain).id == chain
    assert _subscription(id=chain, chain_code="OTHER").id == chain


@pytest.mark.parametrize("bad", ["C" * 41, "a/b", "a.b", "ü"])
def test_bad_id_is_named(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"^--id: expected 1-40 letters, digits, spaces or _%#\$&- \(got "):
        read_subscription(_flags(id=bad), FLAGS)
    with pytest.raises(ConfigError, match=r"^id: expected 1-40 letters"):
        _subscription(id=bad)


@pytest.mark.parametrize(
    ("field", "variable", "bad"),
    [
        ("chain_code", "OHIP_CHAIN_CODE", "CHAIN*1"),
        ("chain_code", "OHIP_CHAIN_CODE", "C" * 21),
        ("gateway_url", "OHIP_GATEWAY_URL", "ftp://gateway.example.com"),
        ("gateway_url", "OHIP_GATEWAY_URL", "http://gateway.example.com"),
        ("gateway_url", "OHIP_GATEWAY_URL", "https://gateway.example.com/?q=1"),
        ("external_system", "OHIP_EXTERNAL_SYSTEM", "RELAY SYSTEM"),
        ("hotel_ids", "OHIP_HOTEL_IDS", "HOTEL1,,HOTEL2"),
        ("hotel_ids", "OHIP_HOTEL_IDS", "HOTEL1,HOTEL1"),
        ("hotel_code", "OHIP_HOTEL_CODE", "H" * 51),
        ("enterprise_id", "OHIP_ENTERPRISE_ID", "a\nb"),
    ],
)
def test_flags_follow_the_variables_rules_and_messages(field: str, variable: str, bad: str) -> None:
    """Same rule, same words: only the name in front differs."""
    with pytest.raises(ConfigError) as from_env:
        Settings.from_env({**ENV, variable: bad}, Need.OHIP, Need.STREAM, Need.POLL)
    with pytest.raises(ConfigError) as from_flags:
        read_subscription(_flags(**{field: bad}), FLAGS)
    assert str(from_env.value).startswith(f"{variable}: ")
    assert str(from_flags.value) == FLAGS[field] + str(from_env.value).removeprefix(variable)


def test_loopback_gateway_may_use_plain_http() -> None:
    assert read_subscription(_flags(gateway_url="http://127.0.0.1:8700/"), FLAGS).gateway_url == (
        "http://127.0.0.1:8700"
    )


def test_required_fields_are_named() -> None:
    for field in ("gateway_url", "chain_code"):
        with pytest.raises(ConfigError, match=rf"^{FLAGS[field]}: missing$"):
            read_subscription(_flags(**{field: ""}), FLAGS)


def test_a_registry_entry_needs_a_secret_arn() -> None:
    with pytest.raises(ConfigError, match=r"^--secret-arn: missing \(the ARN of the OPERA environment's"):
        read_subscription(_flags(secret_arn=""), FLAGS)
    with pytest.raises(ConfigError, match=r"^secretArn: missing"):
        check_entry(_subscription(secret_arn=""))
    check_entry(_subscription())


@pytest.mark.parametrize(
    "typed",
    ["my-client-s3cr3t", "s3cr3t\nsecond-line", "arn:aws:secretsmanager:eu-west-1:1:secret:x s3cr3t"],
)
def test_a_value_that_is_not_an_arn_is_never_echoed(typed: str) -> None:
    """Somebody may paste the client secret where the ARN goes."""
    with pytest.raises(ConfigError) as info:
        read_subscription(_flags(secret_arn=typed), FLAGS)
    assert str(info.value).startswith("--secret-arn: ")
    assert "s3cr3t" not in str(info.value)
    assert "\n" not in str(info.value)


def test_hotel_ids_and_flags() -> None:
    subscription = read_subscription(
        _flags(hotel_ids="HOTEL1, HOTEL2", hotel_code="HOTEL1,HOTEL2", external_system="RELAY"),
        FLAGS,
        enabled=False,
        delta=True,
    )
    assert subscription.hotel_ids == ("HOTEL1", "HOTEL2")
    assert subscription.hotel_code == "HOTEL1,HOTEL2"
    assert subscription.enabled is False
    assert subscription.delta is True
    assert read_subscription(_flags(), FLAGS).hotel_code is None


@pytest.mark.parametrize(
    "changes",
    [
        {"gateway_url": GATEWAY + "/"},
        {"chain_code": " CHAIN1"},
        {"hotel_code": ""},
        {"hotel_ids": (" HOTEL1",)},
        {"hotel_ids": ("HOTEL1,HOTEL2",)},
    ],
)
def test_direct_construction_wants_the_normal_form(changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="not in normal form"):
        _subscription(**changes)


@pytest.mark.parametrize(
    ("changes", "attribute"),
    [
        ({"enabled": "yes"}, "enabled"),
        ({"delta": 1}, "delta"),
        ({"version": -1}, "version"),
        ({"version": True}, "version"),
        ({"created_at": float("nan")}, "createdAt"),
        ({"hotel_ids": ["HOTEL1"]}, "hotelIds"),
        ({"chain_code": 7}, "chain"),
    ],
)
def test_wrong_kinds_are_named(changes: dict[str, Any], attribute: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{attribute}: "):
        _subscription(**changes)


def test_subscription_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        _subscription().enabled = False  # type: ignore[misc]


# -- the registry of one ------------------------------------------------------------------------


def test_subscription_from_settings_is_the_registry_of_one() -> None:
    env = {**ENV, "OHIP_STREAM_DELTA": "true", "OHIP_HOTEL_CODE": "HOTEL1", "OHIP_OAUTH_SCOPE": "urn:x"}
    settings = Settings.from_env(env, Need.OHIP, Need.STREAM, Need.POLL)
    assert subscription_from_settings(settings) == Subscription(
        id="CHAIN1",
        gateway_url="https://ohip.example.com",
        chain_code="CHAIN1",
        enterprise_id="ENT",
        oauth_scope="urn:x",
        external_system="RELAY",
        hotel_ids=("HOTEL1", "HOTEL2"),
        enabled=True,
        delta=True,
        hotel_code="HOTEL1",
        version=0,
    )


def test_registry_of_one_keeps_credentials_out_and_any_secret_id() -> None:
    """Credentials stay in the settings; OHIP_SECRET_ARN may also be a secret's name there."""
    env = {k: v for k, v in ENV.items() if k not in ("OHIP_CLIENT_SECRET", "OHIP_APP_KEY")}
    subscription = subscription_from_settings(Settings.from_env({**env, "OHIP_SECRET_ARN": "ohip/prod"}))
    assert subscription.secret_arn == "ohip/prod"
    assert "s3cr3t" not in repr(subscription_from_settings(Settings.from_env(ENV)))
    assert subscription.hotel_code is None
    assert subscription.delta is False


@pytest.mark.parametrize("missing", ["OHIP_GATEWAY_URL", "OHIP_CHAIN_CODE"])
def test_registry_of_one_names_a_missing_variable(missing: str) -> None:
    settings = Settings.from_env({k: v for k, v in ENV.items() if k != missing})
    with pytest.raises(ConfigError, match=rf"^{missing}: missing$"):
        subscription_from_settings(settings)


# -- item encoding ------------------------------------------------------------------------------


def test_item_layout() -> None:
    subscription = _subscription(
        id="CHAIN1-prod",
        hotel_ids=("HOTEL1", "HOTEL2"),
        external_system="RELAY",
        hotel_code="HOTEL1",
        created_at=1_764_000_000.5,
        updated_at=1_764_000_001.25,
        version=3,
    )
    assert encode_item(subscription) == {
        "pk": {"S": "registry#CHAIN1-prod"},
        "kind": {"S": "registry"},
        "id": {"S": "CHAIN1-prod"},
        "chain": {"S": "CHAIN1"},
        "gatewayUrl": {"S": GATEWAY},
        "secretArn": {"S": ARN},
        "externalSystem": {"S": "RELAY"},
        "hotelIds": {"L": [{"S": "HOTEL1"}, {"S": "HOTEL2"}]},
        "hotelCode": {"S": "HOTEL1"},
        "enabled": {"BOOL": True},
        "delta": {"BOOL": False},
        "createdAt": {"N": "1764000000.500"},
        "updatedAt": {"N": "1764000001.250"},
        "version": {"N": "3"},
    }


def test_every_text_field_has_its_attribute() -> None:
    assert set(ATTRIBUTES) == {
        f.name for f in dataclasses.fields(Subscription) if f.type in ("str", "str | None", "tuple[str, ...]")
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda item: item.pop("secretArn"), r"^secretArn: missing"),
        (lambda item: item.pop("chain"), r"^chain: missing$"),
        (lambda item: item.update(chain={"S": "BAD*"}), r"^chain: expected 1-20 letters"),
        (lambda item: item.update(enabled={"S": "true"}), r"^enabled: expected a boolean$"),
        (lambda item: item.update(version={"N": "0"}), r"^version: expected a whole number from 1$"),
        (lambda item: item.update(createdAt={"S": "x"}), r"^createdAt: expected epoch seconds$"),
        (lambda item: item.update(hotelIds={"SS": ["H1"]}), r"^hotelIds: expected a list of strings$"),
    ],
)
def test_malformed_items_are_named(change: Any, message: str) -> None:
    item: dict[str, Any] = dict(encode_item(_subscription(version=1)))
    change(item)
    with pytest.raises(ConfigError, match=message):
        decode_item(item)


_ID_CHARS = "ABCXYZabcxyz0189_%#$&-"
_ids = st.builds(
    lambda first, middle, last: (first + middle + last)[:40],
    st.sampled_from(_ID_CHARS),
    st.text(alphabet=_ID_CHARS + " ", max_size=38),
    st.sampled_from(_ID_CHARS),
)
_chains = st.builds(
    lambda first, middle: (first + middle)[:20].rstrip(),
    st.sampled_from(_ID_CHARS),
    st.text(alphabet=_ID_CHARS + " ", max_size=19),
)
_hotel = st.text(alphabet="ABCHOTEL0123_-", min_size=1, max_size=20)
_text = st.text(alphabet=st.characters(exclude_characters="\r\n\x00"), max_size=30).map(str.strip)
_times = st.integers(min_value=0, max_value=10**13).map(lambda ms: ms / 1000)
_subscriptions = st.builds(
    Subscription,
    id=_ids,
    gateway_url=st.sampled_from(
        ["https://ohip.example.com", "https://a.b.c:8443/ohip/base", "http://127.0.0.1:8700", "https://[::1]"]
    ),
    chain_code=_chains,
    secret_arn=st.from_regex(
        r"arn:aws(-cn)?:secretsmanager:[a-z]{2}-[a-z]+-[1-9]:[0-9]{12}:secret:[a-z/_+=.@-]{1,30}",
        fullmatch=True,
    ),
    enterprise_id=_text,
    oauth_scope=_text,
    external_system=st.text(alphabet="ABCabc012_.-", max_size=40),
    hotel_ids=st.lists(_hotel, unique=True, max_size=5).map(tuple),
    enabled=st.booleans(),
    delta=st.booleans(),
    hotel_code=st.none()
    | st.text(alphabet="ABCHOTEL0123,_- ", min_size=1, max_size=50).map(str.strip).filter(bool),
    created_at=_times,
    updated_at=_times,
    version=st.integers(min_value=1, max_value=2**53),
)


@settings(max_examples=300, deadline=None)
@given(_subscriptions)
def test_encode_decode_round_trip(subscription: Subscription) -> None:
    item = encode_item(subscription)
    assert decode_item(item) == subscription
    assert item["pk"] == {"S": f"registry#{subscription.id}"}
    assert all(value != {"S": ""} for value in item.values())  # DynamoDB keeps no empty optional
