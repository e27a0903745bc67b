"""docs/support-matrix.md is what `hub-export-bot features --markdown` prints: regenerate it when this fails."""

from pathlib import Path

from bot.matrix import support_matrix

DOC = Path(__file__).resolve().parent.parent / "docs" / "support-matrix.md"


def test_support_matrix_doc_is_in_sync_with_the_registry():
    assert DOC.read_text(encoding="utf-8") == support_matrix(), \
        "run: hub-export-bot features --markdown > docs/support-matrix.md"


def test_matrix_lists_the_seed_and_the_current_architectures():
    text = support_matrix()
    assert "Registered architectures: 58." in text  # the 35 of the seed list and 23 published today
    for name in ("ALBERT", "BART", "OpenAI GPT-2", "Perceiver", "T5", "XLM-RoBERTa-XL", "GPT-J", "ViT"):
        assert f"| {name} |" in text
