"""The `transformers.js_config` keys the bot writes into a repo's config.json, and nothing else of that file.

Why: transformers.js downloads an ONNX file's external data only when config.json declares it
(`"transformers.js_config": {"use_external_data_format": {"model.onnx": 2}}`: two chunks, bot.export.external), and
in a browser it asks for the 8-bit `model_quantized.onnx` unless config.json names another default `dtype`.

config.json is the maintainer's file and one of the sources whose hashes decide whether an export is up to date. So
the edit is textual: the bot's keys are inserted (or replaced) as members of the JSON object, and every other byte
stays as it was; and `without_bot_keys` is its exact inverse, which the source hash is taken of. Merging the bot's PR
therefore changes no source hash and triggers no new export.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

SECTION = "transformers.js_config"
EXTERNAL_DATA = "use_external_data_format"
DTYPE = "dtype"
OWNED = (EXTERNAL_DATA, DTYPE)  # keys of SECTION the bot sets; a maintainer's own `dtype` is kept, never replaced

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


@dataclass(frozen=True)
class Member:
    key: str
    key_start: int
    value_start: int
    value_end: int


def _members(text: str, start: int) -> tuple[list[Member], int]:
    """The members of the JSON object whose `{` is at `start`, and the index of its `}`."""
    members, i = [], _WHITESPACE.match(text, start + 1).end()
    if text[i] == "}":
        return members, i
    while True:
        key_start = i
        key, i = _DECODER.raw_decode(text, i)
        i = _WHITESPACE.match(text, i).end()
        if text[i] != ":":
            raise ValueError(f"expected ':' at {i}")
        value_start = _WHITESPACE.match(text, i + 1).end()
        _, value_end = _DECODER.raw_decode(text, value_start)
        members.append(Member(key, key_start, value_start, value_end))
        i = _WHITESPACE.match(text, value_end).end()
        if text[i] == "}":
            return members, i
        if text[i] != ",":
            raise ValueError(f"expected ',' or '}}' at {i}")
        i = _WHITESPACE.match(text, i + 1).end()


def _top(text: str) -> int:
    start = _WHITESPACE.match(text).end()
    if not text.startswith("{", start):
        raise ValueError("config.json is not a JSON object")
    return start


def _find(members: list[Member], key: str) -> Member | None:
    return next((m for m in members if m.key == key), None)


def _remove(text: str, members: list[Member], member: Member) -> str:
    index = members.index(member)
    if index:  # from the end of the previous value: its comma, the whitespace, the member
        return text[:members[index - 1].value_end] + text[member.value_end:]
    if len(members) > 1:  # the first of several: up to the next key
        return text[:member.key_start] + text[members[1].key_start:]
    return text[:member.key_start] + text[member.value_end:]


def _insert(text: str, members: list[Member], open_at: int, key: str, value, depth: int) -> str:
    """Add `"key": value` as the object's last member, laid out like its other members."""
    if members:
        previous_end = members[-2].value_end if len(members) > 1 else open_at + 1
        gap = text[previous_end:members[-1].key_start]
        separator = gap if gap.startswith(",") else "," + (gap or " ")
        indent = gap.rsplit("\n", 1)[1] if "\n" in gap else ""
    else:
        separator, indent = "", ""
    unit = indent[:len(indent) // depth] if indent and depth else ""
    rendered = json.dumps(value, indent=unit or None, ensure_ascii=False)
    if unit:
        rendered = rendered.replace("\n", "\n" + indent)
    at = members[-1].value_end if members else open_at + 1
    return text[:at] + separator + json.dumps(key) + ": " + rendered + text[at:]


def without_bot_keys(text: str) -> str:
    """config.json as it would be without the bot's keys (an empty `transformers.js_config` goes too)."""
    try:
        top = _top(text)
        members, _ = _members(text, top)
        section = _find(members, SECTION)
        if section is None or not text.startswith("{", section.value_start):
            return text
        inner, _ = _members(text, section.value_start)
        for key in OWNED:
            if (member := _find(inner, key)) is not None:
                text = _remove(text, inner, member)
                inner, _ = _members(text, section.value_start)
        if not inner:
            members, _ = _members(text, top)
            text = _remove(text, members, _find(members, SECTION))
        return text
    except (ValueError, IndexError):
        return text  # not a JSON object we can read: hashed as it is


def with_bot_keys(text: str, wanted: dict) -> str:
    """config.json with the bot's `wanted` keys of `transformers.js_config`, every other byte as it was.

    The external-data declaration is the bot's and is replaced; a `dtype` already there is kept (the maintainer's
    choice, or an earlier PR's default that still loads); an empty section left behind goes.
    """
    top = _top(text)
    members, _ = _members(text, top)
    section = _find(members, SECTION)
    if section is None:
        return _insert(text, members, top, SECTION, wanted, 1) if wanted else text
    if not text.startswith("{", section.value_start):
        raise ValueError(f"{SECTION} in config.json is not a JSON object")
    inner, _ = _members(text, section.value_start)
    if (declared := _find(inner, EXTERNAL_DATA)) is not None:
        text = _remove(text, inner, declared)
        inner, _ = _members(text, section.value_start)
    for key, value in wanted.items():
        if key == DTYPE and _find(inner, DTYPE) is not None:
            continue
        text = _insert(text, inner, section.value_start, key, value, 2)
        inner, _ = _members(text, section.value_start)
    if not inner:
        text = _remove(text, members, section)
    return text


def wanted_keys(artifacts, primary_feature: str | None) -> dict:
    """The keys transformers.js needs for these ONNX artifacts: the chunk count of every graph with external data,
    and `dtype: fp32` when the primary feature's graphs have no 8-bit variant for the browser default to find."""
    wanted: dict = {}
    chunks = {}
    for artifact in artifacts:
        if artifact.format != "onnx":
            continue
        name = artifact.path.rsplit("/", 1)[-1]
        count = sum(1 for path in artifact.files if path != artifact.path)
        if count:
            chunks[name] = count
    if chunks:
        wanted[EXTERNAL_DATA] = dict(sorted(chunks.items()))
    onnx_primary = [a for a in artifacts if a.format == "onnx" and a.feature == primary_feature]
    if onnx_primary and not any(a.dtype == "q8" for a in onnx_primary):
        wanted[DTYPE] = "fp32"
    return wanted


def diff(before: str, after: str) -> str:
    """The change as a unified diff, for the PR description."""
    import difflib

    lines = difflib.unified_diff(before.splitlines(), after.splitlines(), "a/config.json", "b/config.json",
                                 n=1, lineterm="")
    return "\n".join(lines)
