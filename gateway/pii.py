"""Personal data in captured text: find it, or replace it with typed placeholders.

Standard library only, on purpose: the gateway may redact at capture time with a copy of this module
(the gateway never imports the distiller), and the distiller uses it when building datasets.

Detectors favour recall where a check keeps false positives rare (cards must pass Luhn, IBANs their
country length and mod-97, IP addresses the stdlib parser) and precision where nothing can be
checked (phone numbers need a `+`/`00` country prefix, a leading national `0`, or North-American
separators, so years, prices and ids are left alone). Overlapping hits resolve to the earliest,
then longest span: an IBAN's digits are not also reported as a card or a phone.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

PiiKind = Literal["email", "phone", "card", "iban", "ip"]
PII_KINDS: tuple[PiiKind, ...] = ("email", "phone", "card", "iban", "ip")
PLACEHOLDERS: dict[PiiKind, str] = {"email": "[EMAIL]", "phone": "[PHONE]", "card": "[CARD]", "iban": "[IBAN]",
                                    "ip": "[IP]"}


@dataclass(frozen=True, slots=True)
class PiiSpan:
    """`text[start:end]` is personal data of this kind."""

    kind: PiiKind
    start: int
    end: int


_EMAIL = re.compile(r"(?<![\w.%+-])[\w.%+-]+@(?:[^\W_](?:[\w-]*[^\W_])?\.)+[^\W\d_]{2,24}(?![\w-])")

# Phones. Separators are single spaces, dots or dashes; a number may not touch other digits.
_NOT_AFTER_DIGIT = r"(?<![\w+])(?<!\d[ .\-])"
_NOT_BEFORE_DIGIT = r"(?![ .\-]?\d)"
_PHONE_INTL = re.compile(  # +CC or 00CC, then groups that each start with a separator or a (trunk) parenthesis
    _NOT_AFTER_DIGIT + r"(?:\+|00)[1-9]\d{0,14}(?:[ .\-]?\(\d{1,4}\)[ ]?\d{1,14}|[ .\-]\d{1,14})*" + _NOT_BEFORE_DIGIT)
_PHONE_NATIONAL = re.compile(  # trunk prefix 0: 0532 123 45 67, (044) 123-45-67, 030 12345678, 05321234567
    _NOT_AFTER_DIGIT  # one separator throughout, so `05.03.2024 10:30` is a date and a time, not a number
    + r"(?:\(0\d{1,4}\)[ ]?\d{2,8}(?:([ .\-]?)\d{2,8}(?:\1\d{2,8}){0,2})?"
    r"|0[1-9]\d{0,3}([ .\-]?)\d{2,8}(?:\2\d{2,8}){0,3})"
    + _NOT_BEFORE_DIGIT)
_PHONE_NANP = re.compile(  # (415) 555-2671, 415-555-2671, 415.555.2671: separators required
    _NOT_AFTER_DIGIT + r"(?:\([2-9]\d{2}\)[ ]?|[2-9]\d{2}[ .\-])\d{3}[ .\-]\d{4}" + _NOT_BEFORE_DIGIT)

# Cards: runs of digit groups separated by one space or dash; windows of whole groups are Luhn-checked.
_DIGIT_RUN = re.compile(r"\d+(?:[ \-]\d+)*")
_DIGIT_GROUP = re.compile(r"\d+")

_IBAN_START = re.compile(r"\b[A-Z]{2}\d{2}", re.IGNORECASE)
_IBAN_BODY = re.compile(r"[A-Z]{2}\d{2}(?:[ \-]?[A-Z0-9]){11,30}", re.IGNORECASE)
# Registered IBAN lengths; other country codes are accepted at 15-34 characters when mod-97 holds.
_IBAN_TABLE = (
    "AD24 AE23 AL28 AT20 AZ28 BA20 BE16 BG22 BH22 BR29 BY28 CH21 CR22 CY28 CZ24 DE22 DK18 DO28 EE20 EG29 ES24 "
    "FI18 FO18 FR27 GB22 GE22 GI23 GL18 GR27 GT28 HR21 HU28 IE22 IL23 IQ23 IS26 IT27 JO30 KW30 KZ20 LB28 LC32 "
    "LI21 LT20 LU20 LV21 MC27 MD24 ME22 MK19 MR27 MT31 MU30 NL18 NO15 PK24 PL28 PS29 PT25 QA29 RO24 RS22 SA24 "
    "SC31 SE24 SI19 SK24 SM27 ST25 SV28 TL23 TN24 TR26 UA29 VA22 VG24 XK20")
_IBAN_LENGTHS: dict[str, int] = {entry[:2]: int(entry[2:]) for entry in _IBAN_TABLE.split()}

_IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
                   r"(?!\w|\.\d)")
_IPV6_CANDIDATE = re.compile(r"(?<![\w:.])[0-9A-Fa-f:.]{2,}(?:%[\w.]+)?")


def find_pii(text: str) -> list[PiiSpan]:
    """Every piece of personal data in `text`, sorted by position, never overlapping."""
    found = [*_emails(text), *_ibans(text), *_cards(text), *_ips(text), *_phones(text)]
    found.sort(key=lambda span: (span.start, span.start - span.end))
    kept: list[PiiSpan] = []
    for span in found:
        if not kept or span.start >= kept[-1].end:
            kept.append(span)
    return kept


def contains_pii(text: str) -> bool:
    return bool(find_pii(text))


def redact(text: str, spans: list[PiiSpan] | None = None, *, tally: dict[str, int] | None = None) -> str:
    """`text` with each span (by default `find_pii(text)`) replaced by its kind's placeholder, e.g. `[EMAIL]`.
    `tally`, when given, counts the replacements by kind (for reports)."""
    if spans is None:
        spans = find_pii(text)
    out, last = [], 0
    for span in spans:
        if tally is not None:
            tally[span.kind] = tally.get(span.kind, 0) + 1
        out.append(text[last:span.start])
        out.append(PLACEHOLDERS[span.kind])
        last = span.end
    out.append(text[last:])
    return "".join(out)


def message_strings(message: dict[str, Any]) -> Iterator[str]:
    """The free text of a chat message that may carry personal data: content (string or text parts) and
    tool-call arguments."""
    content = message.get("content")
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                yield part["text"]
    for call in message.get("tool_calls") or []:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict) and isinstance(function.get("arguments"), str):
            yield function["arguments"]


def redact_messages(messages: list[dict[str, Any]], *, tally: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Copies of chat messages with personal data redacted in content strings, text parts and tool-call
    arguments. The input is not modified. Placeholders contain no quotes or backslashes, so JSON
    arguments stay valid JSON. `tally` counts the replacements by kind."""
    return [_redact_message(message, tally) for message in messages]


def _redact_message(message: dict[str, Any], tally: dict[str, int] | None) -> dict[str, Any]:
    out = dict(message)
    content = message.get("content")
    if isinstance(content, str):
        out["content"] = redact(content, tally=tally)
    elif isinstance(content, list):
        out["content"] = [
            {**part, "text": redact(part["text"], tally=tally)}
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str) else part
            for part in content]
    if isinstance(message.get("tool_calls"), list):
        out["tool_calls"] = [_redact_call(call, tally) for call in message["tool_calls"]]
    return out


def _redact_call(call: Any, tally: dict[str, int] | None) -> Any:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        return call
    function = call["function"]
    if not isinstance(function.get("arguments"), str):
        return call
    return {**call, "function": {**function, "arguments": redact(function["arguments"], tally=tally)}}


# ---------------------------------------------------------------------------------------------- detectors


def _emails(text: str) -> Iterator[PiiSpan]:
    for m in _EMAIL.finditer(text):
        yield PiiSpan("email", m.start(), m.end())


def _phones(text: str) -> Iterator[PiiSpan]:
    for pattern, low, high in ((_PHONE_INTL, 8, 15), (_PHONE_NATIONAL, 9, 12), (_PHONE_NANP, 10, 10)):
        for m in pattern.finditer(text):
            digits = sum(ch.isdigit() for ch in m.group())
            if m.group().startswith("00"):
                digits -= 2  # international call prefix, not part of the number
            if low <= digits <= high:
                yield PiiSpan("phone", m.start(), m.end())


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number carries."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _cards(text: str) -> Iterator[PiiSpan]:
    for run in _DIGIT_RUN.finditer(text):
        start, end = run.span()
        before = text[start - 1] if start else ""
        if (before.isalnum() or before == "_" or (end < len(text) and (text[end].isalnum() or text[end] == "_"))
                or (before in ".," and start > 1 and text[start - 2].isdigit())):
            continue  # part of a word, hex id or decimal number
        groups = [(g.start() + start, g.end() + start) for g in _DIGIT_GROUP.finditer(run.group())]
        yield from _card_windows(text, groups)


def _card_windows(text: str, groups: list[tuple[int, int]]) -> Iterator[PiiSpan]:
    """Longest Luhn-valid windows of whole digit groups holding 13-19 digits, left to right."""
    i = 0
    while i < len(groups):
        last, count = i, 0  # the furthest group a window from i can reach without passing 19 digits
        while last < len(groups) and count + groups[last][1] - groups[last][0] <= 19:
            count += groups[last][1] - groups[last][0]
            last += 1
        for j in range(last - 1, i - 1, -1):
            window = groups[i:j + 1]
            digits = "".join(text[s:e] for s, e in window)
            if (len(digits) >= 13 and (len(window) == 1 or all(e - s >= 3 for s, e in window))
                    and luhn_valid(digits)):
                yield PiiSpan("card", window[0][0], window[-1][1])
                i = j + 1
                break
        else:
            i += 1


def iban_valid(iban: str) -> bool:
    """Country length (where registered) and the ISO 13616 mod-97 check; spaces and dashes ignored."""
    compact = re.sub(r"[ \-]", "", iban).upper()
    if not re.fullmatch(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}", compact):
        return False
    expected = _IBAN_LENGTHS.get(compact[:2])
    if expected is not None and len(compact) != expected:
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rearranged)) % 97 == 1


def _ibans(text: str) -> Iterator[PiiSpan]:
    covered = 0
    for start_match in _IBAN_START.finditer(text):
        start = start_match.start()
        body = _IBAN_BODY.match(text, start) if start >= covered else None
        if body is None:
            continue
        positions = [i for i in range(start, body.end()) if text[i].isalnum()]
        expected = _IBAN_LENGTHS.get(text[start:start + 2].upper())
        lengths = [expected] if expected else range(min(34, len(positions)), 14, -1)
        for n in lengths:
            if n > len(positions):
                continue
            end = positions[n - 1] + 1
            if end < len(text) and text[end].isalnum():
                continue  # the characters run on into a longer token
            if iban_valid(text[start:end]):
                yield PiiSpan("iban", start, end)
                covered = end
                break


def _ips(text: str) -> Iterator[PiiSpan]:
    for m in _IPV4.finditer(text):
        yield PiiSpan("ip", m.start(), m.end())
    for m in _IPV6_CANDIDATE.finditer(text):
        candidate = m.group().rstrip(".")
        if m.end() < len(text) and (text[m.end()].isalnum() or text[m.end()] in "_:"):
            continue  # part of a longer token
        if candidate.count(":") < 2 or not any(ch.isdigit() for ch in candidate):
            continue  # `ab::cd`, `::` : more likely code than an address
        try:
            ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        yield PiiSpan("ip", m.start(), m.start() + len(candidate))
