"""peft-search: discover parameter-efficient fine-tuning methods by searching PEFT design spaces
(Chen et al., ICLR 2023), on Ray. The Python API (`peft_search/api.py`):

    import peft_search

    run = peft_search.run("jobs/quickstart.yaml")      # a search; returns its RunResult
    peft_search.status(run).stages                     # each stage's outcome, kept choice, choices' means
    peft_search.export(run, "my-method/")              # the discovered design and its weights
    model = peft_search.load_backbone("minilm", num_labels=3)
    peft_search.load_peft(model, "my-method/tweets")

The CLI (`peft-search ...`) is a thin layer over it. Importing the package is light: torch and Ray
load when a function needs them.
"""

from peft_search.api import (
    ChoiceResult,
    RunResult,
    StageResult,
    evaluate,
    export,
    load_backbone,
    load_peft,
    report,
    resume,
    run,
    status,
)
from peft_search.errors import InputError
from peft_search.space import Design

__all__ = ["ChoiceResult", "Design", "InputError", "RunResult", "StageResult", "evaluate", "export", "load_backbone",
           "load_peft", "report", "resume", "run", "status"]
