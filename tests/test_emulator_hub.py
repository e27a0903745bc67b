"""The Hub emulator, driven by the REAL huggingface_hub client over HTTP: if these pass, the bot's Hub code can be
tested against the emulator and trusted to speak the protocol the client speaks."""

import hashlib
import os
import subprocess
import sys

os.environ["HF_HUB_DISABLE_XET"] = "1"  # the emulator speaks LFS only (it also forces this flag while it runs)
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"  # both are read when huggingface_hub is imported

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import safetensors.numpy  # noqa: E402
from huggingface_hub import (  # noqa: E402
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (  # noqa: E402
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import _http  # noqa: E402

from tests.emulators.hub import is_lfs  # noqa: E402

# The client's own LFS upload passes raw bytes as `data=`, which httpx2 deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")

TOKEN = "hf_test_token"
REPO = "some-org/tiny-model"
WEIGHTS = safetensors.numpy.save({"w": np.zeros((2, 3), dtype=np.float32)})  # a real, tiny .safetensors file
CONFIG = b'{"model_type": "bert"}'


@pytest.fixture
def api(hub):
    return HfApi(endpoint=hub.url, token=TOKEN)


@pytest.fixture
def source(hub):
    """A repo the bot does not own (it may only open PRs there), holding a config and LFS weights."""
    return hub.create_repo(REPO, {"config.json": CONFIG, "model.safetensors": WEIGHTS})


def _status(err) -> int:
    return err.value.response.status_code


def test_whoami_reports_user_and_role(hub, api):
    assert api.whoami()["name"] == "bot-user"
    assert api.whoami()["auth"]["accessToken"]["role"] == "write"
    assert HfApi(endpoint=hub.url, token="hf_read_token").whoami()["auth"]["accessToken"]["role"] == "read"


def test_unknown_token_is_401(hub):
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(endpoint=hub.url, token="hf_nope").whoami()
    assert _status(err) == 401


def test_env_points_a_subprocess_client_at_the_hub(hub):
    code = "from huggingface_hub import HfApi; print(HfApi().whoami()['name'])"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **hub.env()}, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "bot-user"


def test_create_repo_and_exist_ok(hub, api):
    url = api.create_repo("bot-user/exports")
    assert url.repo_id == "bot-user/exports" and url.startswith(hub.url)
    assert api.create_repo("bot-user/exports", exist_ok=True).repo_id == "bot-user/exports"
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("bot-user/exports")
    assert _status(err) == 409
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("someone-else/exports")
    assert _status(err) == 403
    assert set(hub.files("bot-user/exports")) == {".gitattributes"}


def test_model_info_with_files_metadata(hub, api, source):
    info = api.model_info(REPO, files_metadata=True)
    assert info.sha == source == hub.head(REPO)
    siblings = {s.rfilename: s for s in info.siblings}
    assert siblings["model.safetensors"].lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert siblings["model.safetensors"].size == len(WEIGHTS)
    assert siblings["config.json"].lfs is None and siblings["config.json"].size == len(CONFIG)
    assert info.last_modified is not None
    assert api.model_info(REPO, revision=source).sha == source


def test_existence_checks_and_safetensors_header(hub, api, source):
    assert api.repo_exists(REPO) and not api.repo_exists("some-org/missing")
    assert api.file_exists(REPO, "model.safetensors") and not api.file_exists(REPO, "nope.bin")
    assert api.revision_exists(REPO, source) and not api.revision_exists(REPO, "nope")
    # The header is read with a Range request, which /resolve redirects to the CDN for an LFS file.
    assert api.get_safetensors_metadata(REPO).parameter_count == {"F32": 6}
    assert ("GET", f"/lfs/{hashlib.sha256(WEIGHTS).hexdigest()}") in hub.requests


def test_list_repo_tree_recursive_and_paged(hub, api):
    hub.create_repo(REPO, {"a.txt": b"a", "onnx/model.onnx": b"x" * 10, "onnx/sub/c.txt": b"c"})
    hub.tree_page_size = 2  # forces the client through several Link: rel="next" pages
    flat = {f.path: f for f in api.list_repo_tree(REPO)}
    assert set(flat) == {".gitattributes", "a.txt", "onnx"}
    assert not hasattr(flat["onnx"], "size")  # a RepoFolder
    deep = {f.path: f for f in api.list_repo_tree(REPO, recursive=True)}
    assert {"onnx/sub", "onnx/sub/c.txt", "onnx/model.onnx"} <= set(deep)
    assert deep["onnx/model.onnx"].lfs.size == 10
    assert [f.path for f in api.list_repo_tree(REPO, path_in_repo="onnx/sub")] == ["onnx/sub/c.txt"]
    assert sorted(api.list_repo_files(REPO)) == [".gitattributes", "a.txt", "onnx/model.onnx", "onnx/sub/c.txt"]


def test_downloads_at_a_sha_go_through_the_cdn(hub, source, tmp_path):
    hub.commit(REPO, {"model.safetensors": b"newer weights"})  # main moves on; the sha must still serve the old files
    path = hf_hub_download(REPO, "model.safetensors", revision=source, endpoint=hub.url, token=TOKEN,
                           cache_dir=tmp_path)
    assert open(path, "rb").read() == WEIGHTS
    assert ("GET", f"/lfs/{hashlib.sha256(WEIGHTS).hexdigest()}") in hub.requests

    folder = snapshot_download(REPO, revision=source, endpoint=hub.url, token=TOKEN, cache_dir=tmp_path)
    assert open(os.path.join(folder, "config.json"), "rb").read() == CONFIG
    seen = len(hub.requests)
    snapshot_download(REPO, revision=source, endpoint=hub.url, token=TOKEN, cache_dir=tmp_path)
    assert not [r for r in hub.requests[seen:] if r[0] == "GET"]  # served from the cache


def test_config_download_fetches_no_weights(hub, source, tmp_path):
    hf_hub_download(REPO, "config.json", endpoint=hub.url, token=TOKEN, cache_dir=tmp_path)
    assert not [r for r in hub.requests if "safetensors" in r[1] or r[1].startswith("/lfs/")]


def test_create_commit_opens_pr_from_parent_commit(hub, api, source):
    info = api.create_commit(REPO, [CommitOperationAdd("onnx/model.onnx", b"onnx bytes")],
                             commit_message="Add ONNX export", commit_description="Exported by the bot",
                             create_pr=True, parent_commit=source)
    assert info.pr_num == 1 and info.pr_revision == "refs/pr/1"
    assert info.pr_url == f"{hub.url}/{REPO}/discussions/1"
    assert hub.head(REPO) == source  # main untouched
    assert hub.head(REPO, "refs/pr/1") == info.oid
    assert hub.files(REPO, "refs/pr/1")["onnx/model.onnx"] == b"onnx bytes"
    (pr,) = hub.discussions(REPO)
    assert (pr.num, pr.title, pr.description, pr.status, pr.ref, pr.author) == (
        1, "Add ONNX export", "Exported by the bot", "open", "refs/pr/1", "bot-user")

    second = api.create_commit(REPO, [CommitOperationAdd("onnx/README.md", b"notes")],
                               commit_message="Add notes", revision=info.pr_revision)
    assert second.pr_url is None
    assert hub.head(REPO, "refs/pr/1") == second.oid
    assert set(hub.files(REPO, "refs/pr/1")) >= {"onnx/model.onnx", "onnx/README.md"}
    details = api.get_discussion_details(REPO, 1)
    assert [e.oid for e in details.events if e.type == "commit"] == [info.oid, second.oid]
    assert details.target_branch == "refs/heads/main" and details.conflicting_files == []
    assert "onnx/README.md" in details.diff


def test_commit_with_unchanged_files_opens_no_pr(hub, api, source):
    info = api.create_commit(REPO, [CommitOperationAdd("config.json", CONFIG)], commit_message="Nothing new",
                             create_pr=True)
    assert info.pr_url is None and info.pr_num is None and info.oid == source
    assert hub.discussions(REPO) == []


def test_stale_parent_commit_is_412(hub, api):
    first = hub.create_repo("bot-user/exports", {"a.txt": b"1"})
    hub.commit("bot-user/exports", {"a.txt": b"2"})
    with pytest.raises(HfHubHTTPError) as err:
        api.create_commit("bot-user/exports", [CommitOperationAdd("b.txt", b"x")], commit_message="late",
                          parent_commit=first)
    assert _status(err) == 412


def test_pr_from_stale_parent_branches_from_it_and_reports_conflicts(hub, api, source):
    hub.commit(REPO, {"config.json": b'{"model_type": "roberta"}'})
    info = api.create_commit(REPO, [CommitOperationAdd("config.json", b'{"model_type": "bert", "x": 1}')],
                             commit_message="Fix config", create_pr=True, parent_commit=source)
    assert hub.get_commit(REPO, info.oid).parent == source
    assert hub.files(REPO, "refs/pr/1")["config.json"] == b'{"model_type": "bert", "x": 1}'
    assert api.get_discussion_details(REPO, info.pr_num).conflicting_files == ["config.json"]


def test_direct_push_to_foreign_repo_and_read_only_token_are_403(hub, source):
    ops = [CommitOperationAdd("x.txt", b"x")]
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(endpoint=hub.url, token=TOKEN).create_commit(REPO, ops, commit_message="push")
    assert _status(err) == 403
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(endpoint=hub.url, token="hf_read_token").create_commit(REPO, ops, commit_message="pr", create_pr=True)
    assert _status(err) == 403


def test_lfs_upload_round_trips_and_is_not_uploaded_twice(hub, api, source, tmp_path):
    blob = os.urandom(3 * 1024 * 1024)
    info = api.create_commit(REPO, [CommitOperationAdd("model.onnx", blob)], commit_message="Add ONNX",
                             create_pr=True)
    assert [m for m, p in hub.requests if p.startswith("/upload/")] == ["PUT"]
    path = hf_hub_download(REPO, "model.onnx", revision=info.pr_revision, endpoint=hub.url, token=TOKEN,
                           cache_dir=tmp_path)
    assert open(path, "rb").read() == blob

    seen = len(hub.requests)
    api.create_commit(REPO, [CommitOperationAdd("copy.onnx", blob)], commit_message="Again",
                      revision=info.pr_revision)
    assert not [p for _, p in hub.requests[seen:] if p.startswith("/upload/")]  # already stored: no actions
    assert hub.files(REPO, "refs/pr/1")["copy.onnx"] == blob


def test_multipart_lfs_upload(hub, api):
    hub.create_repo("bot-user/exports")
    hub.multipart_chunk_size = 1024 * 1024
    blob = os.urandom(2 * 1024 * 1024 + 5)
    api.create_commit("bot-user/exports", [CommitOperationAdd("model.onnx_data", blob)], commit_message="big")
    assert hub.files("bot-user/exports")["model.onnx_data"] == blob
    assert sum(1 for m, p in hub.requests if m == "PUT" and p.startswith("/upload/")) == 3


def test_lfs_rule():
    assert is_lfs("model.onnx", 1) and is_lfs("weights.BIN", 1) and is_lfs("notes.txt", 11 * 1024 * 1024)
    assert not is_lfs("config.json", 100) and not is_lfs("empty.onnx", 0)


def test_delete_file_in_pr(hub, api, source):
    info = api.create_commit(REPO, [CommitOperationDelete("config.json")], commit_message="rm", create_pr=True)
    assert "config.json" not in hub.files(REPO, info.pr_revision)
    with pytest.raises(RemoteEntryNotFoundError):
        api.create_commit(REPO, [CommitOperationDelete("nope.json")], commit_message="rm", revision=info.pr_revision)
    with pytest.raises(RemoteEntryNotFoundError):  # a refused commit leaves no half-opened PR behind
        api.create_commit(REPO, [CommitOperationDelete("nope.json")], commit_message="rm", create_pr=True)
    assert len(hub.discussions(REPO)) == 1


def test_discussions_listing_comments_and_status(hub, api, source):
    api.create_discussion(REPO, "Question about the tokenizer", description="Which vocab?")
    draft = api.create_pull_request(REPO, "Empty PR")
    assert draft.status == "draft" and draft.num == 2 and draft.is_pull_request
    assert hub.head(REPO, "refs/pr/2") == source
    pr = api.create_commit(REPO, [CommitOperationAdd("model.onnx", b"o")], commit_message="Add ONNX",
                           create_pr=True)
    assert pr.pr_num == 3

    hub.discussions_page_size = 2  # the client follows pages with ?p=
    assert [d.num for d in api.get_repo_discussions(REPO)] == [3, 2, 1]
    assert [d.num for d in api.get_repo_discussions(REPO, discussion_type="pull_request")] == [3, 2]
    assert [d.num for d in api.get_repo_discussions(REPO, discussion_type="discussion")] == [1]
    assert [d.num for d in api.get_repo_discussions(REPO, author="nobody")] == []

    comment = api.comment_discussion(REPO, 3, "Validation: max abs diff 1e-6")
    assert comment.content == "Validation: max abs diff 1e-6"
    change = api.change_discussion_status(REPO, 3, "closed", comment="Superseded")
    assert change.new_status == "closed"
    assert [d.num for d in api.get_repo_discussions(REPO, discussion_status="open")] == [2, 1]
    details = api.get_discussion_details(REPO, 3)
    assert details.status == "closed"
    assert [e.type for e in details.events] == ["comment", "commit", "comment", "comment", "status-change"]
    assert hub.discussions(REPO)[2].comments == ["Validation: max abs diff 1e-6", "Superseded"]


def test_merge_pr_puts_files_on_main(hub, api, source):
    info = api.create_commit(REPO, [CommitOperationAdd("model.onnx", b"onnx")], commit_message="Add ONNX",
                             create_pr=True)
    merge = hub.merge_pr(REPO, info.pr_num)
    assert hub.head(REPO) == merge and hub.files(REPO)["model.onnx"] == b"onnx"
    details = api.get_discussion_details(REPO, info.pr_num)
    assert details.status == "merged" and details.merge_commit_oid == merge
    with pytest.raises(HfHubHTTPError) as err:  # a merged PR takes no more commits
        api.create_commit(REPO, [CommitOperationAdd("late.txt", b"l")], commit_message="late",
                          revision=info.pr_revision)
    assert _status(err) == 403


def test_close_pr_helper(hub, api, source):
    info = api.create_commit(REPO, [CommitOperationAdd("model.onnx", b"onnx")], commit_message="Add ONNX",
                             create_pr=True)
    hub.close_pr(REPO, info.pr_num)
    assert api.get_discussion_details(REPO, info.pr_num).status == "closed"


def test_typed_errors(hub, api, source, tmp_path):
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("some-org/missing")
    with pytest.raises(RevisionNotFoundError):
        api.model_info(REPO, revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(REPO, "config.json", revision="0" * 40, endpoint=hub.url, token=TOKEN, cache_dir=tmp_path)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "missing.json", endpoint=hub.url, token=TOKEN, cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("some-org/missing", "config.json", endpoint=hub.url, token=TOKEN, cache_dir=tmp_path)


def test_private_repo_is_not_found_without_access(hub):
    hub.create_repo("someone/secret", {"a.txt": b"a"}, private=True)
    for token in (False, TOKEN):
        with pytest.raises(RepositoryNotFoundError) as err:
            HfApi(endpoint=hub.url, token=token).model_info("someone/secret")
        assert _status(err) == (401 if token is False else 404)
    hub.orgs["someone"] = {"bot-user"}
    assert HfApi(endpoint=hub.url, token=TOKEN).model_info("someone/secret").private is True


@pytest.fixture
def backoff_sleeps(monkeypatch):
    """The client's backoff waits (1, 2, 4, 8, 8 s), recorded instead of slept."""
    sleeps = []
    monkeypatch.setattr(_http.time, "sleep", sleeps.append)
    return sleeps


def test_injected_failures_are_retried_where_the_client_backs_off(hub, api, source, backoff_sleeps):
    hub.fail_next("GET", r"/tree/", 429)  # list_repo_tree goes through http_backoff
    assert ".gitattributes" in [f.path for f in api.list_repo_tree(REPO)]
    assert [p for _, p in hub.requests].count(f"/api/models/{REPO}/tree/main") == 2
    assert backoff_sleeps == [1]

    hub.fail_next("GET", rf"^/api/models/{REPO}$", 503)  # model_info does not retry
    with pytest.raises(HfHubHTTPError) as err:
        api.model_info(REPO)
    assert _status(err) == 503


def test_failed_head_of_uncached_file(hub, source, tmp_path, backoff_sleeps):
    hub.fail_next("HEAD", r"/resolve/", 500)  # once: the client retries the HEAD with backoff and succeeds
    path = hf_hub_download(REPO, "config.json", endpoint=hub.url, token=TOKEN, cache_dir=tmp_path)
    assert open(path, "rb").read() == CONFIG

    hub.fail_next("HEAD", r"/resolve/", 500, times=7)  # persistently: reported as a LOCAL miss, not an HTTP error
    with pytest.raises(LocalEntryNotFoundError) as err:
        hf_hub_download(REPO, "model.safetensors", endpoint=hub.url, token=TOKEN, cache_dir=tmp_path)
    assert isinstance(err.value, EntryNotFoundError) and not isinstance(err.value, RemoteEntryNotFoundError)
    assert backoff_sleeps == [1, 2, 4, 8, 8]  # one plain HEAD, then one with 5 retries

    hub.fail_next("HEAD", r"/resolve/", 500)  # with the file cached: the cached copy, silently
    assert hf_hub_download(REPO, "config.json", endpoint=hub.url, token=TOKEN, cache_dir=tmp_path) == path


def test_list_repo_refs(hub, api, source):
    api.create_pull_request(REPO, "Empty PR")
    refs = api.list_repo_refs(REPO, include_pull_requests=True)
    assert [(b.name, b.target_commit) for b in refs.branches] == [("main", source)]
    assert [p.ref for p in refs.pull_requests] == ["refs/pr/1"]


def test_edit_opening_comment_rewrites_the_description(hub, api, source):
    info = api.create_commit(REPO, [CommitOperationAdd("model.onnx", b"onnx")], commit_message="Add ONNX",
                             commit_description="first text", create_pr=True)
    opening = api.get_discussion_details(REPO, info.pr_num).events[0]
    edited = api.edit_discussion_comment(REPO, info.pr_num, opening.id, "second text")
    assert (edited.content, edited.edited, edited.id) == ("second text", True, opening.id)
    (pr,) = hub.discussions(REPO)
    assert pr.description == "second text" and pr.comments == []
    assert pr.events[0]["data"]["numEdits"] == 1
    assert [h["raw"] for h in pr.events[0]["data"]["history"]] == ["second text", "first text"]
    details = api.get_discussion_details(REPO, info.pr_num)
    assert details.events[0].content == "second text"
    hub.tokens["hf_other_token"] = "someone-else"
    with pytest.raises(HfHubHTTPError) as err:  # only the author edits a comment
        HfApi(endpoint=hub.url, token="hf_other_token").edit_discussion_comment(REPO, 1, opening.id, "x")
    assert _status(err) == 403
    with pytest.raises(HfHubHTTPError) as err:
        api.edit_discussion_comment(REPO, 1, "0" * 24, "x")
    assert _status(err) == 404


def test_deleting_lfs_files_in_a_pr_and_merging_it(hub, api, source):
    info = api.create_commit(REPO, [CommitOperationAdd("onnx/model.onnx", b"graph"),
                                    CommitOperationDelete("model.safetensors")],
                             commit_message="swap", create_pr=True, parent_commit=source)
    assert set(hub.files(REPO, info.pr_revision)) == {".gitattributes", "config.json", "onnx/model.onnx"}
    assert "onnx/model.onnx" in hub.get_commit(REPO, info.pr_revision).lfs
    assert "model.safetensors" in api.get_discussion_details(REPO, info.pr_num).diff
    hub.merge_pr(REPO, info.pr_num)
    assert set(hub.files(REPO)) == {".gitattributes", "config.json", "onnx/model.onnx"}


def test_dropped_connections_before_and_after_handling(hub, api, source):
    import httpx2

    hub.drop_next("GET", rf"^/api/models/{REPO}$")
    with pytest.raises(httpx2.RemoteProtocolError):
        api.model_info(REPO)
    assert api.model_info(REPO).sha == source  # only the next request

    hub.drop_next("POST", r"/commit/", after=True)  # the commit lands, its answer is lost
    with pytest.raises(httpx2.RemoteProtocolError):
        api.create_commit(REPO, [CommitOperationAdd("a.txt", b"a")], commit_message="lost answer", create_pr=True)
    (pr,) = hub.discussions(REPO)
    assert pr.title == "lost answer" and hub.files(REPO, pr.ref)["a.txt"] == b"a"
