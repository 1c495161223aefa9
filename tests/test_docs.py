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
