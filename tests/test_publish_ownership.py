"""Ownership, against the Hub emulator with the real huggingface_hub client: the bot replaces or deletes only files
its own manifest lists with their current hash; a maintainer's file at one of its paths is never touched, and the
artifacts that would need that path are left out, with the reason. PR updates remove the bot's dropped files and
rewrite the PR description; a poorer export never replaces a fuller one."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from bot import publish as pub
from bot.manifest import MANIFEST_NAME, owned_paths, plan_files, read_manifest
from bot.job import make_options
from tests.test_publish import README, REPO, checkpoint_files, run, strict_validation, tiny_retrained

MAINTAINER_ONNX = b"the maintainers' own fp32 graph"
MAINTAINER_QUANTIZED = b"the maintainers' own int8 graph, made from their fp32 graph"
TORCHSCRIPT_ONLY = make_options(formats=["torchscript"], exporter="torchscript")


@pytest.fixture
def repo(hub, tiny):
    hub.create_repo(REPO, {**checkpoint_files(tiny("bert", "sequence-classification")), "README.md": README.encode()})
    return REPO


def pr_manifest(hub, ref="refs/pr/1") -> dict:
    return json.loads(hub.files(REPO, ref)[MANIFEST_NAME])


def test_a_maintainers_onnx_files_are_never_overwritten(hub, tiny, tmp_path):
    hub.create_repo(REPO, {**checkpoint_files(tiny("bert", "sequence-classification")), "README.md": README.encode(),
                           "onnx/model.onnx": MAINTAINER_ONNX, "onnx/model_quantized.onnx": MAINTAINER_QUANTIZED})
    result = run(hub, tmp_path)
    assert result.status == pub.OPENED and result.exit_code == 0
    files = hub.files(REPO, "refs/pr/1")
    assert files["onnx/model.onnx"] == MAINTAINER_ONNX  # not replaced: the quantized graph still matches it
    assert files["onnx/model_quantized.onnx"] == MAINTAINER_QUANTIZED
    assert "torchscript/model.pt" in files and "onnx/model_default.onnx" in files  # other paths are free
    [withheld] = result.withheld
    assert withheld["path"] == "onnx/model.onnx" and withheld["format"] == "onnx"
    assert "`onnx/model.onnx` is already in the repo and was not written by hub-export-bot" in withheld["reason"]
    assert "left out because their paths hold the maintainers' files" in result.message
    # the manifest claims only what the PR carries, and says what was left out
    manifest = pr_manifest(hub)
    assert "onnx/model.onnx" not in [a["path"] for a in manifest["artifacts"]]
    assert manifest["withheld"] == result.withheld
    # merging only adds files (and edits the README between the markers): the data says so
    assert result.replaced == [] and result.removed == []
    assert "onnx/model.onnx" not in result.added and "torchscript/model.pt" in result.added
    assert "| `onnx/model.onnx` |" not in hub.discussions(REPO)[0].description


def test_merged_exports_are_the_bots_own_files_and_a_new_pr_replaces_and_removes_them(hub, repo, tmp_path, tiny):
    run(hub, tmp_path / "first")
    hub.merge_pr(REPO, 1)
    exported = set(pr_manifest(hub, "main")["artifacts"][0]["files"]) | {a["path"] for a in pr_manifest(hub, "main")[
        "artifacts"]}
    hub.commit(REPO, {"model.safetensors": tiny_retrained(tiny, tmp_path)}, message="retrain")
    result = run(hub, tmp_path / "second", options=TORCHSCRIPT_ONLY)
    assert result.status == pub.OPENED and result.pr_num == 2
    onnx = sorted(p for p in exported if p.startswith("onnx/"))
    assert onnx and result.removed == onnx  # own files the new export no longer has
    assert set(result.replaced) == {"torchscript/model.pt", "torchscript/model_default.pt", MANIFEST_NAME}
    assert result.added == []
    files = hub.files(REPO, "refs/pr/2")
    assert not any(p.startswith("onnx/") for p in files)
    hub.merge_pr(REPO, 2)
    assert not any(p.startswith("onnx/") for p in hub.files(REPO))


def test_a_pr_update_removes_dropped_own_files_keeps_maintainer_edits_and_rewrites_the_description(
        hub, repo, tmp_path, tiny):
    first = run(hub, tmp_path / "first")
    # a maintainer replaces one of the bot's files on the PR branch, and adds one of their own
    hub.commit(REPO, {"onnx/model_default.onnx": b"a maintainer's fix", "notes.txt": b"review notes"},
               branch="refs/pr/1")
    hub.commit(REPO, {"model.safetensors": tiny_retrained(tiny, tmp_path)}, message="retrain")
    result = run(hub, tmp_path / "update", options=TORCHSCRIPT_ONLY)
    assert result.status == pub.UPDATED and result.pr_action == pub.PR_UPDATED and result.warnings == []
    files = hub.files(REPO, "refs/pr/1")
    assert "onnx/model.onnx" not in files  # the bot's own, no longer exported: removed
    assert files["onnx/model_default.onnx"] == b"a maintainer's fix"  # not the bot's any more: kept
    assert files["notes.txt"] == b"review notes"
    assert set(pr_manifest(hub)["artifacts"][0]["files"]) <= set(files)
    (pr,) = hub.discussions(REPO)
    assert pr.description == result.description != first.description  # the opening comment was rewritten
    assert "| sequence-classification | TorchScript |" in pr.description and "| ONNX |" not in pr.description
    assert "Removed from this PR" in pr.comments[-1] and "`onnx/model.onnx`" in pr.comments[-1]
    assert "`onnx/model_default.onnx`" not in pr.comments[-1]


def test_a_poorer_export_of_the_same_sources_does_not_replace_the_pr(hub, repo, tmp_path, monkeypatch):
    run(hub, tmp_path / "first")
    head = hub.head(REPO, "refs/pr/1")
    strict_validation(monkeypatch, "onnx")
    result = run(hub, tmp_path / "second", options=make_options(exporter="torchscript", opset=17))
    assert (result.status, result.pr_action, result.pr_num, result.exit_code) == (pub.PARTIAL, pub.PR_KEPT, 1, 3)
    assert result.message.startswith("kept PR #1 as it is") and "onnx/model.onnx" in result.message
    assert hub.head(REPO, "refs/pr/1") == head and hub.discussions(REPO)[0].comments == []


def test_a_foreign_manifest_at_the_bots_path_is_not_replaced(hub, tiny, tmp_path):
    hub.create_repo(REPO, {**checkpoint_files(tiny("bert", "sequence-classification")),
                           MANIFEST_NAME: b'{"made by": "another tool"}'})
    with pytest.raises(pub.UsageError, match="was not written by hub-export-bot"):
        run(hub, tmp_path, options=TORCHSCRIPT_ONLY)
    assert hub.discussions(REPO) == []


# -- the ownership rule itself, on plain data ----------------------------------------------------------------------


def artifact(path: str, feature: str, fmt: str = "onnx", extra: tuple[str, ...] = (), sha: str = "new"):
    files = {p: {"sha256": f"{sha}:{p}", "size": 1} for p in (path, *extra)}
    return SimpleNamespace(path=path, feature=feature, format=fmt, files=files, component="model")


def test_files_that_only_work_together_are_withheld_together():
    seq2seq = [artifact("onnx/encoder_model.onnx", "seq2seq-lm"), artifact("onnx/decoder_model_merged.onnx",
                                                                             "seq2seq-lm")]
    big = artifact("onnx/model_default.onnx", "default", extra=("onnx/model_default.onnx_data",))
    ts = artifact("torchscript/model.pt", "seq2seq-lm", fmt="torchscript")
    maintainer = {"onnx/decoder_model_merged.onnx": "theirs", "onnx/model_default.onnx_data": "theirs"}
    plan = plan_files([*seq2seq, big, ts], maintainer, set(), maintainer, set())
    assert [a.path for a in plan.artifacts] == ["torchscript/model.pt"]
    reasons = {w["path"]: w["reason"] for w in plan.withheld}
    assert reasons["onnx/decoder_model_merged.onnx"].startswith("`onnx/decoder_model_merged.onnx` is already")
    assert reasons["onnx/encoder_model.onnx"].startswith("left out with `onnx/decoder_model_merged.onnx`")
    assert "`onnx/model_default.onnx_data` is already in the repo" in reasons["onnx/model_default.onnx"]
    assert plan.deletions == [] and plan.removed == [] and plan.replaced == []


def test_a_file_is_owned_only_with_the_hash_the_manifest_lists():
    manifest = read_manifest(json.dumps({"schema_version": 1, "source": {}, "artifacts": [
        {"path": "onnx/model.onnx", "files": {"onnx/model.onnx": {"sha256": "aa"}, "onnx/model.onnx_data":
                                               {"sha256": "bb"}}}]}))
    present = {"onnx/model.onnx": "aa", "onnx/model.onnx_data": "changed by hand", MANIFEST_NAME: None}
    assert owned_paths(manifest, present) == {"onnx/model.onnx", MANIFEST_NAME}
    assert owned_paths(None, present) == set()
    assert read_manifest('{"made by": "another tool"}') is None and read_manifest("not json") is None


def test_an_encoder_decoders_one_torchscript_file_replaces_its_split_files_without_loss():
    """An earlier export's three TorchScript files are the submodules of the one file now: not lost, so a partial
    export that still has them (another feature failed) may replace it; a missing submodule is lost."""
    from bot.manifest import lost_artifacts

    earlier = {"source": {"files": {"model.safetensors": "s"}}, "artifacts": [
        {"feature": "seq2seq-lm", "format": "torchscript", "component": c, "path": f"torchscript/{c}.pt"}
        for c in ("encoder_model", "decoder_model")]}

    def result(*submodules):
        bundle = SimpleNamespace(feature="seq2seq-lm", format="torchscript", component="model",
                                 submodules=[SimpleNamespace(component=c) for c in submodules])
        return SimpleNamespace(artifacts=[bundle], failures=["default: validation failed"])

    assert lost_artifacts(earlier, {"model.safetensors": "s"}, result("encoder_model", "decoder_model")) == []
    assert lost_artifacts(earlier, {"model.safetensors": "s"}, result("encoder_model")) == \
        ["torchscript/decoder_model.pt"]
