"""PII detectors: every kind found where it is, nothing found where it is not, and redaction."""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any

import pytest

from gateway.pii import PiiSpan, find_pii, iban_valid, luhn_valid, redact, redact_messages

POSITIVES = [
    # emails
    ("write to john.doe+tag@mail.example.co.uk today", "email", "john.doe+tag@mail.example.co.uk"),
    ("ayse@şirket.com.tr", "email", "ayse@şirket.com.tr"),
    # phones: international +CC / 00CC
    ("call +1 415 555 2671 now", "phone", "+1 415 555 2671"),
    ("+44 (0)20 7946 0958", "phone", "+44 (0)20 7946 0958"),
    ("tel: +90 532 123 45 67.", "phone", "+90 532 123 45 67"),
    ("+380 44 123 4567", "phone", "+380 44 123 4567"),
    ("+14155552671", "phone", "+14155552671"),
    ("0044 20 7946 0958", "phone", "0044 20 7946 0958"),
    # phones: national formats
    ("(415) 555-2671", "phone", "(415) 555-2671"),
    ("415-555-2671", "phone", "415-555-2671"),
    ("numaram 0532 123 45 67", "phone", "0532 123 45 67"),
    ("05321234567", "phone", "05321234567"),
    ("тел. (044) 123-45-67", "phone", "(044) 123-45-67"),
    ("030 12345678", "phone", "030 12345678"),
    ("06 12 34 56 78", "phone", "06 12 34 56 78"),
    # payment cards (Luhn-valid), with and without separators
    ("card 4111 1111 1111 1111 exp", "card", "4111 1111 1111 1111"),
    ("4111-1111-1111-1111", "card", "4111-1111-1111-1111"),
    ("5555555555554444", "card", "5555555555554444"),
    ("amex 3782 822463 10005", "card", "3782 822463 10005"),
    ("4222222222222", "card", "4222222222222"),
    ("4111 1111 1111 1111 2024", "card", "4111 1111 1111 1111"),  # a trailing year is not part of the number
    # IBANs (mod-97 valid)
    ("DE89 3704 0044 0532 0130 00", "iban", "DE89 3704 0044 0532 0130 00"),
    ("GB82WEST12345698765432", "iban", "GB82WEST12345698765432"),
    ("IBAN: TR33 0006 1005 1978 6457 8413 26 please", "iban", "TR33 0006 1005 1978 6457 8413 26"),
    ("UA21 3223 1300 0002 6007 2335 6600 1", "iban", "UA21 3223 1300 0002 6007 2335 6600 1"),
    ("lowercase de89370400440532013000.", "iban", "de89370400440532013000"),
    # IP addresses
    ("from 192.168.1.1 at noon", "ip", "192.168.1.1"),
    ("host 10.0.0.255.", "ip", "10.0.0.255"),
    ("2001:db8::1", "ip", "2001:db8::1"),
    ("fe80::1ff:fe23:4567:890a", "ip", "fe80::1ff:fe23:4567:890a"),
    ("loopback ::1", "ip", "::1"),
    ("2001:0db8:85a3:0000:0000:8a2e:0370:7334", "ip", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"),
    ("::ffff:192.0.2.1", "ip", "::ffff:192.0.2.1"),
    ("[2001:db8::2]:8080", "ip", "2001:db8::2"),
]

NEGATIVES = [
    "user@localhost", "a@b", "@handle on social", "x@y.z",
    "1999", "in 2024 we grew 12%", "2024-01-15", "15.01.2024", "05.03.2024 10:30", "version 1.2.3", "42",
    "order 12345", "+5 points", "pi is 3.14159265358979", "100 000 000 people", "1,234,567.89",
    "ISBN 978-3-16-148410-0",
    "4111 1111 1111 1112", "4111111111111112", "1234567890123", "sha d41d8cd98f00b204e9800998ecf8427e",
    "DE89 3704 0044 0532 0130 01", "code AB12",
    "999.1.1.1", "1.2.3", "256.1.1.1", "1.2.3.4.5", "12:30:45", "std::vector<int>", "00:1a:2b:3c:4d:5e", "deadbeef::",
]


@pytest.mark.parametrize(("text", "kind", "expected"), POSITIVES)
def test_each_kind_is_found(text: str, kind: str, expected: str) -> None:
    spans = find_pii(text)
    assert [(s.kind, text[s.start:s.end]) for s in spans] == [(kind, expected)]


@pytest.mark.parametrize("text", NEGATIVES)
def test_lookalikes_are_not_pii(text: str) -> None:
    assert find_pii(text) == []


def test_checksums() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("DE89 3704 0044 0532 0130 00") and not iban_valid("DE89 3704 0044 0532 0130 01")
    assert not iban_valid("DE89 3704 0044 0532 0130 0")  # Germany's IBANs have 22 characters


def test_spans_are_sorted_and_never_overlap() -> None:
    text = "IBAN GB82 WEST 1234 5698 7654 32, mail a@example.org, ip ::ffff:10.1.2.3, call +1 415 555 2671"
    spans = find_pii(text)
    assert [s.kind for s in spans] == ["iban", "email", "ip", "phone"]
    assert all(a.end <= b.start for a, b in itertools.pairwise(spans))
    assert spans[0] == PiiSpan("iban", 5, 32)


def test_redact_replaces_spans_with_typed_placeholders() -> None:
    text = ("Mail jane@example.com or call +90 532 123 45 67; card 4111 1111 1111 1111, "
            "IBAN DE89370400440532013000, from 192.168.0.7 and 2001:db8::7. Born 1999.")
    tally: dict[str, int] = {}
    assert redact(text, tally=tally) == ("Mail [EMAIL] or call [PHONE]; card [CARD], IBAN [IBAN], from [IP] and [IP]. "
                                         "Born 1999.")
    assert tally == {"email": 1, "phone": 1, "card": 1, "iban": 1, "ip": 2}
    assert redact("nothing to hide") == "nothing to hide"


def test_redact_messages_covers_strings_parts_and_tool_arguments_without_mutating() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Support line +1 415 555 2671."},
        {"role": "user", "content": [{"type": "text", "text": "I am bob@example.com"},
                                     {"type": "image_url", "image_url": {"url": "http://10.0.0.1/x.png"}}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "refund", "arguments": json.dumps({"card": "4111-1111-1111-1111", "ip": "10.0.0.1"})}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "refunded to DE89 3704 0044 0532 0130 00"},
    ]
    original = copy.deepcopy(messages)
    redacted = redact_messages(messages)
    assert messages == original
    assert redacted[0]["content"] == "Support line [PHONE]."
    assert redacted[1]["content"][0] == {"type": "text", "text": "I am [EMAIL]"}
    assert redacted[1]["content"][1] == messages[1]["content"][1]  # only text parts are text
    assert json.loads(redacted[2]["tool_calls"][0]["function"]["arguments"]) == {"card": "[CARD]", "ip": "[IP]"}
    assert redacted[2]["tool_calls"][0]["function"]["name"] == "refund"
    assert redacted[3]["content"] == "refunded to [IBAN]"


@pytest.mark.parametrize("text", ["0" * 5000, "01 " * 2000, "4111 " * 2000, "a1:" * 2000, "a." * 3000 + "@",
                                  "+1 " * 2000, "DE89 " * 1500, "1." * 3000])
def test_adversarial_inputs_finish(text: str) -> None:
    # a regex with catastrophic backtracking would hang here; these run in milliseconds
    find_pii(text)
