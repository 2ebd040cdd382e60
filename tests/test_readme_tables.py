"""The result tables of README.md and benchmarks/README.md are the results files
(benchmarks/readme_tables.py)."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "readme_tables.py"
_spec = importlib.util.spec_from_file_location("readme_tables", SCRIPT)
readme_tables = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(readme_tables)


@pytest.mark.parametrize(
    "document", readme_tables.DOCUMENTS, ids=lambda p: str(p.relative_to(readme_tables.HERE.parent))
)
def test_every_block_equals_its_results_file(document):
    text = document.read_text()
    found = readme_tables.blocks(text)
    assert found or document != readme_tables.README, "README.md has no results block"
    regenerated = readme_tables.blocks(readme_tables.render(text))
    for name, body in found.items():
        assert body == regenerated[name], (
            f"{document.name} block {name!r} differs from benchmarks/results/{name}.md: "
            "run python benchmarks/readme_tables.py"
        )


def test_the_documents_hold_the_headline_tables():
    assert "compare_summary" in readme_tables.blocks(readme_tables.README.read_text())
    docs = readme_tables.README.parent / "docs"
    found = {
        name
        for page in ("method.md", "benchmarks.md")
        for name in readme_tables.blocks((docs / page).read_text())
    }
    assert {"quality", "stability", "ablation", "paper_preset", "compare"} <= found


def test_render_fills_blocks_from_files(tmp_path):
    (tmp_path / "a.md").write_text("| new a |\n")
    (tmp_path / "b.md").write_text("| new b |")  # a missing final newline is added
    text = (
        "intro\n<!-- results:a -->\n| old |\n<!-- /results:a -->\n"
        "mid\n<!-- results:b -->\n<!-- /results:b -->\nend\n"
    )
    assert readme_tables.render(text, tmp_path) == (
        "intro\n<!-- results:a -->\n| new a |\n<!-- /results:a -->\n"
        "mid\n<!-- results:b -->\n| new b |\n<!-- /results:b -->\nend\n"
    )
    only_b = readme_tables.render(text, tmp_path, {"b"})
    assert readme_tables.blocks(only_b) == {"a": "| old |\n", "b": "| new b |\n"}
    with pytest.raises(FileNotFoundError):
        readme_tables.render(text, tmp_path / "elsewhere")
