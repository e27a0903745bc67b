"""Untrusted strings (file, repo, feature and input names, exporter errors, skip reasons) render as the text they are
in the card section and the PR description: no link, image, HTML, extra table column or broken code block."""

import ast
import html
import subprocess
import tempfile
from pathlib import Path
from types import SimpleNamespace

import pytest
from markdown_it import MarkdownIt

from bot.card import context, render_card_section, render_pr_description
from bot.render import md_code, md_text, md_url, one_line, py_name, py_str

EVIL = "x](http://evil)|<img src=x>`.safetensors"
EVIL_FILE = "x](javascript:alert(1))|<img src=x>`.onnx"  # no slash: a file name in a folder we name
NASTY = [
    EVIL,
    "a | b\n\n# heading\n- item\n```\ncode",
    "**bold** _em_ ~~gone~~ [link](http://evil) ![img](http://evil/x.png) <script>alert(1)</script>",
    "&lt;entity&gt; \\| back\\slash\\ $x$ www.evil.example",
    "``double`` and ` single and trailing`",
    "- starts like a list", "1. starts like a numbered list", "# starts like a heading", "> starts like a quote",
    "bidi \u202egnp.exe and zero\u200bwidth and bell \x07",
]
MARKDOWN = MarkdownIt("commonmark").enable("table").enable("strikethrough")


def inline_html(markdown: str) -> str:
    """What a renderer makes of `markdown` as one paragraph, without the <p> wrapper."""
    rendered = MARKDOWN.render(markdown)
    assert rendered.startswith("<p>") and rendered.endswith("</p>\n"), rendered
    return rendered[3:-5]


@pytest.mark.parametrize("text", NASTY)
def test_md_text_renders_as_the_text_itself(text):
    rendered = inline_html(md_text(text))
    assert "<" not in rendered  # no element at all: no link, image, emphasis, code or raw HTML
    assert html.unescape(rendered) == one_line(text)


@pytest.mark.parametrize("text", NASTY)
def test_md_code_renders_as_the_text_itself(text):
    rendered = inline_html(md_code(text))
    if rendered.startswith("<code>"):
        assert rendered.endswith("</code>") and "<" not in rendered[6:-7]
        rendered = rendered[6:-7]
    assert "<" not in rendered
    assert html.unescape(rendered) == one_line(text)


def test_md_code_fences_backticks_with_a_longer_run():
    assert md_code("a ``b`` c") == "```a ``b`` c```"
    assert md_code("`x") == "`` `x ``"
    assert md_code("onnx/model.onnx") == "`onnx/model.onnx`"


@pytest.mark.parametrize("text", NASTY)
def test_escaped_text_keeps_a_table_row_to_its_columns(text):
    row = f"| {md_text(text)} | {md_code(text)} | end |"
    tokens = MARKDOWN.parse(f"| a | b | c |\n|---|---|---|\n{row}\n")
    assert [t.type for t in tokens].count("td_open") == 3
    assert not any(t.type.startswith(("link", "image", "html")) for t in tokens)


def test_py_str_is_a_python_literal_of_the_value():
    for text in NASTY:
        literal = py_str(text)
        assert "\n" not in literal and ast.literal_eval(literal) == text


def test_py_name_keeps_identifiers_and_quotes_anything_else():
    assert py_name("input_ids") == "input_ids"
    assert py_name('x); __import__("os").system("id"); (') == py_str('x); __import__("os").system("id"); (')
    assert py_name("class") == '"class"'


def test_md_url_links_only_plain_http_urls():
    assert md_url("https://github.com/acme/model/commit/abc") == "<https://github.com/acme/model/commit/abc>"
    assert "<" not in inline_html(md_url("javascript:alert(1)"))
    assert 'href="http://evil' not in MARKDOWN.render(md_url("https://ok.example/>[x](http://evil)"))


# -- the templates, rendered with hostile values everywhere ----------------------------------------------------------


def hostile_result():
    validation = SimpleNamespace(max_abs_diff={EVIL: 1e-5}, atol=1e-4,
                                 to_dict=lambda: {"shapes_tried": [f"batch=3, {EVIL}"]})
    artifact = lambda path, fmt: SimpleNamespace(  # noqa: E731
        feature="default", component="model", format=fmt, path=path, size=1234, inputs=[EVIL, "attention_mask"],
        outputs=[EVIL], exporter="torchscript", validation=validation,
        files={path: {"size": 1000}, **({f"{path}_data{EVIL}": {"size": 234}} if fmt == "onnx" else {})})
    failure = SimpleNamespace(feature=EVIL, format="onnx", validation=validation,
                              error=("boom " + EVIL + "\n") * 20 + "\\")  # long: cut to 200 characters
    return SimpleNamespace(
        primary="default", revision="0123456789abcdef", pooling=None, weights_size=5000,
        artifacts=[artifact(f"onnx/{EVIL_FILE}", "onnx"), artifact(f"torchscript/{EVIL_FILE}", "torchscript")],
        failures=[failure], skipped={EVIL: EVIL, "causal-lm": "class " + EVIL + " has no head"})


@pytest.fixture
def hostile_context():
    return context(hostile_result(), "acme/" + EVIL, source_url="https://github.com/acme/m/commit/0123 " + EVIL,
                   trigger="action", pr_ref="refs/pr/" + EVIL, has_tokenizer=True)


def assert_inert(markdown: str, code_blocks: int) -> None:
    tokens = MARKDOWN.parse(markdown)
    inline = [child for t in tokens if t.children for child in t.children]
    assert not [t for t in inline if t.type in ("link_open", "image") and "evil" in str(t.attrs)]
    assert not [t for t in inline if t.type in ("link_open", "image") and "javascript" in str(t.attrs)]
    assert not [t for t in tokens + inline if t.type.startswith("html") and "img" in t.content]
    rows = []
    for t in tokens:
        if t.type == "tr_open":
            rows.append(0)
        if t.type in ("th_open", "td_open"):
            rows[-1] += 1
    assert rows and len(set(rows)) == 1, rows  # every row has the header's column count
    fences = [t for t in tokens if t.type == "fence"]
    assert len(fences) == code_blocks
    for fence in fences:
        if fence.info == "python":
            ast.parse(fence.content)  # the snippet is still valid Python, with the values inside string literals
        else:  # JavaScript: still valid, with the values inside string literals
            assert fence.info == "js"
            script = Path(tempfile.mkdtemp()) / "snippet.mjs"
            script.write_text(fence.content, encoding="utf-8")
            check = subprocess.run(["node", "--check", str(script)], capture_output=True, text=True)
            assert check.returncode == 0, check.stderr


def test_the_card_section_is_inert_with_hostile_names(hostile_context):
    section = render_card_section(hostile_context)
    assert_inert(section, code_blocks=4)  # transformers.js, optimum, onnxruntime, TorchScript
    assert f"hf_hub_download({py_str('acme/' + EVIL)}, {py_str('onnx/' + EVIL_FILE)})" in section


def test_the_pr_description_is_inert_with_hostile_names(hostile_context):
    description = render_pr_description(hostile_context)
    assert_inert(description, code_blocks=5)  # "try it" and the four usage snippets
    failure_row = next(line for line in description.splitlines() if "❌" in line)
    assert "…" in failure_row and "\n" not in failure_row


def test_ordinary_values_render_as_before():
    result = hostile_result()
    for a in result.artifacts:
        a.feature, a.inputs, a.outputs = "default", ["input_ids", "attention_mask"], ["last_hidden_state"]
    result.artifacts[0].path, result.artifacts[1].path = "onnx/model.onnx", "torchscript/model.pt"
    for a in result.artifacts:
        a.files = {a.path: {"size": 1234}}
    result.failures, result.skipped, result.primary = [], {"masked-lm": "no head"}, "default"
    ctx = context(result, "acme/model", source_url="https://github.com/acme/m/commit/0123", pr_ref="refs/pr/3",
                  has_tokenizer=True)
    section, description = render_card_section(ctx), render_pr_description(ctx)
    row = "| default | ONNX | `onnx/model.onnx` | 1.2 KB | input_ids, attention_mask → last_hidden_state |"
    assert row in section
    assert 'InferenceSession(hf_hub_download("acme/model", "onnx/model.onnx"))' in section
    assert "made from <https://github.com/acme/m/commit/0123> (commit `0123456789ab`)" in description
    assert "- `masked-lm`: no head" in description
    assert 'revision="refs/pr/3")' in description


def test_the_action_summary_is_inert_with_hostile_names(tmp_path):
    from bot.action import ActionContext, ActionInputs, RunView, results_markdown
    from bot.job import PublishResult, make_options

    context = ActionContext("push", "acme/models", "f" * 40, tmp_path, "https://github.com", None,
                            f"https://github.com/acme/models/actions/runs/1) {EVIL}", tmp_path, "Fix " + EVIL)
    inputs = ActionInputs("my-org/my-model", EVIL, tmp_path, make_options(), "", "", False, False)
    for status in ("partial", "failed", "dry-run"):
        result = PublishResult(status, "my-org/my-model", None, f"{EVIL}\n# heading {EVIL}", export=hostile_result(),
                               pr_url=f"https://hub.example/pr) {EVIL}", pr_num=3, pr_action="updated",
                               files=[EVIL_FILE], removed=[EVIL_FILE],
                               withheld=[{"path": EVIL_FILE, "feature": EVIL, "format": "onnx", "reason": EVIL}])
        summary = results_markdown(result, RunView(context, inputs, "https://hub.example", False), [EVIL])
        assert_inert(summary, code_blocks=0)
        assert not [t for t in MARKDOWN.parse(summary) if t.type == "heading_open" and t.tag != "h3"
                    and t.tag != "h4"]  # the message's "# heading" stays text


def test_the_pr_update_comment_is_inert_with_hostile_file_names():
    from bot.publish import _update_comment

    plan = SimpleNamespace(deletions=[f"onnx/{EVIL_FILE}"])
    comment = _update_comment('{"source": {"files": {}}}', {EVIL: "a" * 64}, "0123456789abcdef", plan)
    tokens = MARKDOWN.parse(comment)
    inline = [child for t in tokens if t.children for child in t.children]
    assert not [t for t in inline if t.type in ("link_open", "image") or t.type.startswith("html")]
    assert [t.type for t in tokens] == ["paragraph_open", "inline", "paragraph_close"]
    assert "`0123456789ab`" in comment and "changed since the previous export" in comment
