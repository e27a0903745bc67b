"""README splicing: the maintainer's card is kept byte for byte; only our section and tags change."""

from bot.card import END, START, splice_readme

SECTION = "## ONNX and TorchScript exports\n\nA table."


def test_missing_readme_is_created_with_tags():
    text = splice_readme(None, SECTION, ["onnx", "torchscript"])
    assert text.startswith("---\ntags:\n- onnx\n- torchscript\n---\n")
    assert f"{START}\n{SECTION}\n{END}" in text


def test_front_matter_and_text_are_kept_and_tags_appended_to_a_block_list():
    readme = ("---\nlicense: apache-2.0  # keep this comment\ntags:\n  - sentence-transformers\n  - 'bert'\n"
              "pipeline_tag: feature-extraction\n---\n\n# My model\n\nMaintainer text.\n")
    text = splice_readme(readme, SECTION, ["onnx", "torchscript"])
    assert text.startswith("---\nlicense: apache-2.0  # keep this comment\ntags:\n  - sentence-transformers\n"
                           "  - 'bert'\n  - onnx\n  - torchscript\npipeline_tag: feature-extraction\n---\n")
    assert "\n# My model\n\nMaintainer text.\n\n" + START in text


def test_flow_style_tags_and_existing_tags_are_not_duplicated():
    readme = "---\ntags: [bert, onnx]\n---\nBody\n"
    assert splice_readme(readme, SECTION, ["onnx", "torchscript"]).startswith("---\ntags: [bert, onnx, torchscript]\n---\n")


def test_front_matter_without_tags_gets_a_tags_key():
    readme = "---\nlicense: mit\n---\nBody\n"
    assert splice_readme(readme, SECTION, ["onnx"]).startswith("---\nlicense: mit\ntags:\n- onnx\n---\nBody\n")


def test_an_earlier_section_is_replaced_in_place():
    readme = f"# Title\n\nBefore.\n\n{START}\nold section\n{END}\n\nAfter.\n"
    text = splice_readme(readme, SECTION, ["onnx"])
    assert "old section" not in text and text.count(START) == 1
    assert text.endswith(f"Before.\n\n{START}\n{SECTION}\n{END}\n\nAfter.\n")


def test_splicing_twice_is_stable():
    once = splice_readme("---\ntags:\n- bert\n---\nText\n", SECTION, ["onnx"])
    assert splice_readme(once, SECTION, ["onnx"]) == once


def test_windows_line_endings_are_kept():
    readme = "---\r\ntags:\r\n- bert\r\n---\r\nText\r\n"
    text = splice_readme(readme, SECTION, ["onnx"])
    assert text.startswith("---\r\ntags:\r\n- bert\r\n- onnx\r\n---\r\nText\r\n")
