"""Parsing and filtering of Hub webhook deliveries, with hand-built payloads shaped like the Hub's."""

import json

import pytest

from bot.server.payload import (Accepted, Ignored, InvalidPayload, MalformedJSON, decide, parse_allow,
                                parse_delivery, repo_allowed)

NEW, OLD = "a" * 40, "b" * 40


def hub_payload(**changes) -> dict:
    """A push to main of a public model repo, as the Hub sends it (webhook version 3)."""
    payload = {
        "event": {"action": "update", "scope": "repo.content"},
        "repo": {"type": "model", "name": "acme/tiny-bert", "id": "6523a1f0c0ffee", "private": False,
                 "url": {"web": "https://huggingface.co/acme/tiny-bert",
                         "api": "https://huggingface.co/api/models/acme/tiny-bert"},
                 "headSha": NEW, "owner": {"id": "60f0c0ffee"}},
        "updatedRefs": [{"ref": "refs/heads/main", "oldSha": OLD, "newSha": NEW}],
        "webhook": {"id": "6529c0ffee", "version": 3},
    }
    for dotted, value in changes.items():
        *path, last = dotted.split("__")
        target = payload
        for key in path:
            target = target[key]
        if value is ...:
            del target[last]
        else:
            target[last] = value
    return payload


def decision(allow=(), **changes):
    return decide(parse_delivery(json.dumps(hub_payload(**changes)).encode()), allow)


def test_push_to_main_of_a_model_repo_is_accepted_with_new_sha():
    assert decision() == Accepted("acme/tiny-bert", NEW, private=False)


def test_accepted_fields_come_from_updated_refs_not_head_sha():
    other = "c" * 40
    result = decision(repo__headSha=other, repo__private=True)
    assert result == Accepted("acme/tiny-bert", NEW, private=True)


def test_uppercase_sha_is_normalised_and_unknown_fields_are_ignored():
    result = decision(updatedRefs=[{"ref": "refs/heads/main", "newSha": NEW.upper(), "extra": 1}], future={"x": 1})
    assert result == Accepted("acme/tiny-bert", NEW, private=False)


@pytest.mark.parametrize("changes, reason", [
    ({"event__scope": "discussion"}, "event scope 'discussion' is not handled"),
    ({"event__scope": "repo.config"}, "event scope 'repo.config' is not handled"),
    ({"event__scope": "discussion.comment", "updatedRefs": ...}, "event scope 'discussion.comment'"),
    ({"repo__type": "dataset"}, "repo type 'dataset' is not handled"),
    ({"repo__type": "space"}, "repo type 'space' is not handled"),
    ({"updatedRefs": ...}, "the payload has no updatedRefs"),
    ({"updatedRefs": []}, "the payload has no updatedRefs"),
    ({"updatedRefs": [{"ref": "refs/pr/3", "newSha": NEW}]}, "no update of refs/heads/main (updated: refs/pr/3)"),
    ({"updatedRefs": [{"ref": "refs/heads/dev", "newSha": NEW}]}, "no update of refs/heads/main"),
    ({"updatedRefs": [{"ref": "refs/tags/v1", "newSha": NEW}]}, "no update of refs/heads/main"),
    ({"updatedRefs": [{"ref": "refs/heads/main", "oldSha": OLD, "newSha": "0" * 40}]}, "refs/heads/main was deleted"),
])
def test_everything_else_is_ignored_with_a_reason(changes, reason):
    result = decision(**changes)
    assert isinstance(result, Ignored) and reason in result.reason


def test_main_among_several_refs_is_found():
    refs = [{"ref": "refs/pr/1", "newSha": OLD}, {"ref": "refs/heads/main", "newSha": NEW}]
    assert decision(updatedRefs=refs).sha == NEW


def test_a_default_branch_in_the_payload_is_honoured():
    refs = [{"ref": "refs/heads/main", "newSha": OLD}, {"ref": "refs/heads/trunk", "newSha": NEW}]
    assert decision(repo__defaultBranch="trunk", updatedRefs=refs).sha == NEW
    assert isinstance(decision(repo__defaultBranch="trunk"), Ignored)


def test_a_created_branch_is_accepted_without_an_old_sha():
    refs = [{"ref": "refs/heads/main", "oldSha": "0" * 40, "newSha": NEW}]
    assert decision(updatedRefs=refs) == Accepted("acme/tiny-bert", NEW, private=False)


@pytest.mark.parametrize("allow, repo, served", [
    ((), "anyone/model", True),
    (("acme/*",), "acme/tiny-bert", True),
    (("acme/*",), "ACME/Tiny-Bert", True),
    (("acme/*",), "acme-evil/model", False),
    (("acme/*",), "other/model", False),
    (("other/*", "acme/tiny-*"), "acme/tiny-bert", True),
    (("acme/bert",), "acme/bert-large", False),
    (("acme",), "acme/tiny-bert", True),
    (("acme",), "Acme/Tiny-Bert", True),
    (("acme",), "acme-evil/model", False),
    (("acme",), "evil/acme", False),
    (("ACME/Tiny-*",), "acme/tiny-bert", True),
    (("acme/*bert",), "acme/tiny-bert", True),
    (("acme/*",), "acmeX/model", False),
    (("acme*",), "acme-evil/model", False),  # refused by the CLI; never a prefix match if it gets here
    (("*/model",), "acme/model", False),
])
def test_allow_patterns(allow, repo, served):
    assert repo_allowed(repo, allow) is served
    result = decision(allow, repo__name=repo)
    assert isinstance(result, Accepted) is served
    if not served:
        assert f"repo {repo} does not match --allow" in result.reason


@pytest.mark.parametrize("pattern", ["acme*", "acme?", "*", "*/model", "[a]cme/*", "acme/a/b", "/x", "acme/", ""])
def test_allow_patterns_name_a_whole_owner(pattern):
    with pytest.raises(ValueError):
        parse_allow(pattern)


def test_allow_pattern_syntax():
    assert parse_allow("acme") == ("acme", "*")
    assert parse_allow("Acme/BERT-*") == ("acme", "bert-*")


def test_filtering_by_scope_comes_before_allow():
    result = decision(("acme/*",), event__scope="discussion", repo__name="other/x")
    assert "scope" in result.reason


@pytest.mark.parametrize("body", [b"", b"{", b"not json", b"\xff\xfe", b"[" * 100_000])
def test_malformed_json_is_a_400(body):
    with pytest.raises(MalformedJSON) as info:
        parse_delivery(body)
    assert info.value.status_code == 400


@pytest.mark.parametrize("changes, loc", [
    ({"event": ...}, "event"),
    ({"event__scope": ...}, "event.scope"),
    ({"repo": ...}, "repo"),
    ({"repo__name": ...}, "repo.name"),
    ({"repo__type": ...}, "repo.type"),
    ({"repo__name": "no-namespace"}, "repo.name"),
    ({"repo__name": "a/b/c"}, "repo.name"),
    ({"repo__name": "acme/<script>"}, "repo.name"),
    ({"repo__name": "acme/../etc"}, "repo.name"),
    ({"repo__name": 42}, "repo.name"),
    ({"updatedRefs": [{"ref": "refs/heads/main"}]}, "updatedRefs.0.newSha"),
    ({"updatedRefs": [{"ref": "refs/heads/main", "newSha": "HEAD"}]}, "updatedRefs.0.newSha"),
    ({"updatedRefs": "refs/heads/main"}, "updatedRefs"),
])
def test_missing_or_malformed_fields_are_a_422_naming_the_field(changes, loc):
    with pytest.raises(InvalidPayload) as info:
        parse_delivery(json.dumps(hub_payload(**changes)).encode())
    assert info.value.status_code == 422
    assert loc in [e["loc"] for e in info.value.errors]
    assert loc in info.value.detail


@pytest.mark.parametrize("body", [b"[]", b"42", b'"text"', b"null"])
def test_json_that_is_not_an_object_is_a_422(body):
    with pytest.raises(InvalidPayload):
        parse_delivery(body)
