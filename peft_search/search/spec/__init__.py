"""The job spec: its models (`models.py`), its error formatting (`errors.py`) and reading it from
YAML (`loader.py`). Imports space, pydantic and yaml; never torch, ray or train."""

from peft_search.search.spec import loader, models
from peft_search.search.spec.errors import SpecError
from peft_search.search.spec.loader import load_final_file, load_run_spec, load_spec, parse_spec_text, parse_yaml, schema_text, spec_diff, spec_reference, spec_schema
from peft_search.search.spec.models import (
    CONTENDERS,
    DataSpec,
    Fidelity,
    FinalSpec,
    Hyperparameters,
    JointSearch,
    Racing,
    Resources,
    SearchSpec,
    StageSpec,
    Tuning,
)

__all__ = sorted({*loader.__all__, *models.__all__})
