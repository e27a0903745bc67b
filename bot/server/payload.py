"""The Hub webhook payload: what we read from a delivery and whether it is ours to handle.

Pure functions over bytes and data, no I/O, so every filtering path is testable with a hand-built dict. A delivery we do
not handle is not an error: the Hub gets a 2xx with the reason (a non-2xx would make it retry and mark the webhook as
failing). Only bodies that are not a Hub payload at all are refused (400 not JSON, 422 missing or malformed fields).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

HANDLED_SCOPE = "repo.content"
HANDLED_REPO_TYPE = "model"
DEFAULT_BRANCH = "main"
DELETED_SHA = "0" * 40

_HEX = frozenset("0123456789abcdef")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


class PayloadError(Exception):
    """The body is not a Hub webhook payload; `status_code` is what the sender gets back."""

    status_code = 400

    def __init__(self, detail: str, errors: list[dict] | None = None):
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []


class MalformedJSON(PayloadError):
    """Not JSON at all (or not UTF-8, or nested beyond reason)."""

    status_code = 400


class InvalidPayload(PayloadError):
    """JSON, but a field we need is missing or malformed."""

    status_code = 422


def _check_repo_id(value: str) -> str:
    """Repo ids come from the network and end up in URLs, logs and an HTML page: accept only what the Hub allows."""
    parts = value.split("/")
    if len(parts) != 2 or any(not p or len(p) > 96 or not set(p) <= _NAME_CHARS or p.startswith(".")
                                       or ".." in p for p in parts):
        raise ValueError("must be a Hub repo id such as 'owner/name'")
    return value


def _check_sha(value: str) -> str:
    value = value.lower()
    if len(value) != 40 or not set(value) <= _HEX:
        raise ValueError("must be a 40-character hex commit sha")
    return value


class _Lenient(BaseModel):
    """Unknown fields are ignored: the Hub adds fields over time and that must not break deliveries."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class Event(_Lenient):
    action: str
    scope: str


class Repo(_Lenient):
    type: str
    name: str
    private: bool = False
    default_branch: str = Field(DEFAULT_BRANCH, alias="defaultBranch")  # not sent by the Hub today; honoured if it is

    @field_validator("name")
    @classmethod
    def _repo_id(cls, value: str) -> str:
        return _check_repo_id(value)


class UpdatedRef(_Lenient):
    ref: str
    new_sha: str = Field(alias="newSha")
    old_sha: str | None = Field(None, alias="oldSha")

    @field_validator("new_sha", "old_sha")
    @classmethod
    def _sha(cls, value: str | None) -> str | None:
        return value if value is None else _check_sha(value)


class Webhook(_Lenient):
    id: str | None = None
    version: int | None = None


class HubDelivery(_Lenient):
    """The fields of a Hub webhook payload the bot reads; `updatedRefs` is absent for events other than pushes."""

    event: Event
    repo: Repo
    updated_refs: list[UpdatedRef] | None = Field(None, alias="updatedRefs")
    webhook: Webhook | None = None


@dataclass(frozen=True)
class Accepted:
    """A push to the default branch of an allowed model repo: export `sha`.

    `oldSha` is not kept: a newer push supersedes every queued export of its repo whether or not the payload says what
    the branch held before (see JobQueue.enqueue).
    """

    repo_id: str
    sha: str
    private: bool


@dataclass(frozen=True)
class Ignored:
    """Acknowledged and dropped; `reason` goes into the response and the log."""

    reason: str


def parse_delivery(body: bytes) -> HubDelivery:
    """Bytes of a POST body -> HubDelivery; raises MalformedJSON (400) or InvalidPayload (422)."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise MalformedJSON(f"body is not valid JSON: {type(exc).__name__}") from None
    try:
        return HubDelivery.model_validate(data)
    except ValidationError as exc:
        errors = [{"loc": ".".join(str(p) for p in e["loc"]) or "(body)", "msg": e["msg"]} for e in exc.errors()]
        summary = "; ".join(f"{e['loc']}: {e['msg']}" for e in errors[:5])
        raise InvalidPayload(f"not a Hub webhook payload: {summary}", errors) from None


_GLOB_CHARS = frozenset("*?[]")


def parse_allow(pattern: str) -> tuple[str, str]:
    """`OWNER` or `OWNER/NAME-GLOB` -> (owner, name glob); ValueError saying what to write instead.

    The owner is a whole owner name, never a glob: `acme*` would also serve `acme-evil`, an owner anyone can create.
    The name part may be a glob (`*`, `?`, `[...]`) and is matched against the whole repo name, never across a `/`.
    """
    owner, slash, name = pattern.partition("/")
    if not slash:
        name = "*"
    if not owner or set(owner) & _GLOB_CHARS or not set(owner) <= _NAME_CHARS:
        raise ValueError(f"{pattern!r}: the owner must be a whole owner name, such as 'acme' or 'acme/*' "
                         "(no wildcards before the '/')")
    if not name or "/" in name:
        raise ValueError(f"{pattern!r}: write OWNER or OWNER/NAME, e.g. 'acme' or 'acme/bert-*'")
    return owner.lower(), name.lower()


def repo_allowed(repo_id: str, patterns: Sequence[str]) -> bool:
    """Whether an --allow pattern (see parse_allow) covers repo_id, case-insensitively like Hub repo ids.

    No patterns: every repo. A pattern that does not parse matches nothing (the CLI refuses it before this runs).
    """
    if not patterns:
        return True
    owner, _, name = repo_id.lower().partition("/")
    for pattern in patterns:
        try:
            allowed_owner, name_glob = parse_allow(pattern)
        except ValueError:
            continue
        if owner == allowed_owner and fnmatchcase(name, name_glob):
            return True
    return False


def decide(delivery: HubDelivery, allow: Sequence[str] = ()) -> Accepted | Ignored:
    """The filtering decision for one delivery, checked from the cheapest and most common reason to ignore."""
    scope, repo = delivery.event.scope, delivery.repo
    if scope != HANDLED_SCOPE:
        return Ignored(f"event scope {scope!r} is not handled (only {HANDLED_SCOPE!r})")
    if repo.type != HANDLED_REPO_TYPE:
        return Ignored(f"repo type {repo.type!r} is not handled (only model repos)")
    if not repo_allowed(repo.name, allow):
        return Ignored(f"repo {repo.name} does not match --allow {' '.join(allow)}")
    if not delivery.updated_refs:
        return Ignored("the payload has no updatedRefs")
    branch_ref = f"refs/heads/{repo.default_branch}"
    update = next((u for u in delivery.updated_refs if u.ref == branch_ref), None)
    if update is None:
        refs = ", ".join(sorted({u.ref for u in delivery.updated_refs})[:5])
        return Ignored(f"no update of {branch_ref} (updated: {refs})")
    if update.new_sha == DELETED_SHA:
        return Ignored(f"{branch_ref} was deleted")
    return Accepted(repo.name, update.new_sha, repo.private)
