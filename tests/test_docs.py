"""Documentation that is generated from the code stays equal to it."""

from pathlib import Path

from peft_search.search.spec import spec_reference

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_job_spec_reference_is_current():
    expected = spec_reference()
    assert (DOCS / "job-spec.md").read_text() == expected, (
        "docs/job-spec.md is stale: regenerate it with "
        "python -c \"from peft_search.search.spec import spec_reference; open('docs/job-spec.md','w').write(spec_reference())\""
    )
    for key in ("budget_fraction", "stages", "designs_per_choice", "fidelity.max_steps", "resources.workers", "final.tuning.trials"):
        assert f"`{key}`" in expected


def _study_tables():
    import importlib.util

    spec = importlib.util.spec_from_file_location("study_tables", DOCS / "study" / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_study_tables_are_computed_from_the_committed_data():
    """docs/study.md's tables are docs/study/tables.py's output, which reads only docs/study/: every
    generated block equals what the script prints from the committed data now."""
    tables = _study_tables()
    page = (DOCS / "study.md").read_text()
    blocks = [m.group(2) for m in tables.BLOCK.finditer(page)]
    assert {"pilot", "staged", "joint", "random", "final"} <= set(blocks)
    assert tables.refresh(page) == page, "docs/study.md is stale: run .venv/bin/python docs/study/tables.py --write"
    assert len(tables.pilot().splitlines()) == 2 + 4 * 3  # header, rule, 4 tasks x 3 lengths
    assert tables.main(["nonsense"]) == 2


def test_the_code_cites_sections_that_exist_in_docs_design_md():
    """Docstrings cite docs/design.md by section name ("docs/design.md, "Budget""); each cited name is
    a section heading there (or a bold rule inside one), and no citation points outside the repo."""
    import re

    root = DOCS.parent
    design = (DOCS / "design.md").read_text()
    names = set(re.findall(r"^##+ (.+)$", design, re.M)) | set(re.findall(r"\*\*(.+?)\*\*", design))
    cited = {}
    for path in sorted((root / "peft_search").rglob("*.py")):
        text = path.read_text()
        assert not re.search(r"\b(DESIGN|FACTS|STYLE)\.md", text), f"{path} cites a file outside the repo"
        for citation in re.finditer(r'docs/design\.md,[ \t]*((?:"[^"\n]+"(?:[ \t]*(?:and|,)[ \t]*)?)+)', text):
            for name in re.findall(r'"([^"\n]+)"', citation.group(1)):
                cited.setdefault(name, []).append(path.relative_to(root).as_posix())
    assert cited, "no citation found: the pattern no longer matches how the code cites docs/design.md"
    missing = {name: paths for name, paths in cited.items() if name not in names}
    assert not missing, f"cited sections missing from docs/design.md: {missing}"
