"""docs/support-matrix.md is what `hub-export-bot features --markdown` prints: regenerate it when this fails."""

from pathlib import Path

from bot.matrix import support_matrix

DOC = Path(__file__).resolve().parent.parent / "docs" / "support-matrix.md"


def test_support_matrix_doc_is_in_sync_with_the_registry():
    assert DOC.read_text(encoding="utf-8") == support_matrix(), \
        "run: hub-export-bot features --markdown > docs/support-matrix.md"


def test_matrix_lists_all_35_seed_architectures():
    text = support_matrix()
    assert "Registered architectures: 35." in text
    for name in ("ALBERT", "BART", "OpenAI GPT-2", "Perceiver", "T5", "XLM-RoBERTa-XL", "GPT-J", "ViT"):
        assert f"| {name} |" in text
