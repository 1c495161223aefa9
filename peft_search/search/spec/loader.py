"""Reading job specs: YAML (as users write it) into a validated `SearchSpec`, the JSON schema, the
generated key reference (docs/job-spec.md) and readable differences between two specs.

Imports pydantic, yaml and the spec's models; nothing heavy.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable, Collection

import yaml

from peft_search.errors import InputError
from peft_search.search.spec.errors import SpecError, model_of
from peft_search.search.spec.models import FinalSpec, SearchSpec

class SpecLoader(yaml.SafeLoader):
    """SafeLoader that reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`; users write `1e-3`)."""


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_yaml(text: str, source: str | None = None) -> Any:
    """The YAML document in `text` as Python data; SpecError (naming `source`) when it is not YAML."""
    try:
        return yaml.load(text, Loader=SpecLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        raise SpecError("", f"not valid YAML: {error}", source) from None


def parse_spec_text(text: str, source: str | None = None) -> SearchSpec:
    return SearchSpec.from_dict(parse_yaml(text, source), source)


def read_yaml_file(path: str | Path, what: str) -> Any:
    """The YAML document in a file; InputError naming the file when it cannot be read or parsed."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise InputError(source, f"cannot read {what}: {error.strerror or error}") from None
    return parse_yaml(text, source)


def load_spec(path: str | Path, known_tasks: Collection[str] | Callable[[str], object] | None = None) -> SearchSpec:
    """Read and validate a job file; with `known_tasks` (names or a lookup, see `check_tasks`), unknown
    task names are refused too."""
    source = str(path)
    spec = SearchSpec.from_dict(read_yaml_file(path, "the job file"), source)
    if known_tasks is not None:
        try:
            spec.check_tasks(known_tasks)
        except SpecError as error:
            raise SpecError(error.path, error.message, source) from None
    return spec


# Keys added after 0.1 whose defaults would change what an older run did; its spec.yaml lacks them.
V0_1_DEFAULTS = {"sampling": "independent", "racing": None}


def load_run_spec(path: str | Path) -> SearchSpec:
    """A run directory's `spec.yaml`. A run written before pairing and racing existed keeps running as
    it started: independent designs, fixed N."""
    data = read_yaml_file(path, "the run's spec")
    if isinstance(data, dict) and "sampling" not in data:
        data = {**data, **V0_1_DEFAULTS}
    return SearchSpec.from_dict(data, str(path))


def load_final_file(path: str | Path, spec: SearchSpec) -> FinalSpec:
    """A `--final FILE` (YAML of the final section), validated with field paths like the job spec."""
    data = read_yaml_file(path, "the final section")
    try:
        return SearchSpec.from_dict({**spec.to_dict(), "final": data}).final
    except SpecError as error:
        raise SpecError(error.path, error.message, str(path)) from None


def spec_schema() -> dict:
    """The job spec's JSON schema (for `peft-search schema`)."""
    return SearchSpec.model_json_schema()


def schema_text() -> str:
    return json.dumps(spec_schema(), indent=2)


def spec_reference() -> str:
    """The job spec's keys as Markdown tables (docs/job-spec.md is this text; a test keeps them equal)."""
    sections = [("SearchSpec", SearchSpec, "")]
    lines = ["# Job spec reference", "", "Generated from `peft_search/search/spec/models.py` (`peft-search schema` prints the JSON schema).", ""]
    seen = set()
    while sections:
        title, model, prefix = sections.pop(0)
        if model in seen:
            continue
        seen.add(model)
        lines += [f"## `{prefix or 'top level'}` ({title})", "", (model.__doc__ or "").strip().splitlines()[0], ""]
        lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
        for name, info in model.model_fields.items():
            nested = model_of(info.annotation)
            if nested is not None:
                sections.append((nested.__name__, nested, f"{prefix}{name}."))
            kind = str(info.annotation).replace("typing.", "").replace("peft_search.search.spec.models.", "").replace("<class '", "").replace("'>", "").replace(" | ", " or ")
            default = "required" if info.is_required() else json.dumps(info.get_default(call_default_factory=True), default=lambda v: v.model_dump(mode="json"))
            lines.append(f"| `{prefix}{name}` | `{kind}` | `{default}` | {(info.description or '').replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines) + GUIDE


# Appended to the generated tables of docs/job-spec.md: how the decision keys work together.
GUIDE = """
## Sampling, racing and the training length

- `sampling: paired` (default): a stage's designs come in blocks; block k draws every free
  component except the one under study once, and every candidate gets that draw (and the same
  seeds, so the same data order). `designs_per_choice` is then the number of blocks a stage plans.
- `racing` (default `{min_blocks: 3, confidence: 0.95, blocks_per_round: 1}`): every choice first
  runs `min_blocks` blocks; after each round, a choice whose probability of being the best is
  below 1 - `confidence` is dropped, and the stage stops when one choice reaches `confidence`, one
  is left, or all `designs_per_choice` blocks ran. `racing: null` trains every planned design.
  Racing needs `sampling: paired`; `sampling: independent` with `racing: null` is the paper's
  protocol.
- `fidelity`: too short a training length makes trials end at the constant prediction (the
  majority class; Matthews 0), which status and the report count as *collapsed* and warn about
  above 20% of a stage. `peft-search fidelity JOB [--steps 25,50,100] [--designs 8]` trains the
  same pilot designs at two or three lengths, prints each length's collapse rate and the Spearman
  rank correlation of its design scores with the longest length's, and recommends the cheapest
  length with correlation >= 0.8; put it in `fidelity.max_steps`.
"""


def spec_diff(old: SearchSpec, new: SearchSpec, ignore: Collection[str] = ()) -> list[str]:
    """Human-readable differences, one line each (`budget_fraction: 0.005 -> 0.01`); top-level keys in
    `ignore` are skipped. Empty when the specs are the same."""
    lines: list[str] = []
    old_dict, new_dict = old.to_dict(), new.to_dict()
    for key in old_dict:
        if key not in ignore:
            _diff(old_dict[key], new_dict[key], key, lines)
    return lines


def _diff(old, new, path: str, lines: list[str]) -> None:
    if old == new:
        return
    if isinstance(old, dict) and isinstance(new, dict):
        for key in dict.fromkeys([*old, *new]):
            _diff(old.get(key), new.get(key), f"{path}.{key}", lines)
        return
    if old is None or new is None:
        lines.append(f"{path}: {'added' if old is None else 'removed'} ({_show(new if old is None else old)})")
        return
    if isinstance(old, list) and isinstance(new, list) and any(isinstance(x, dict) for x in old + new):
        for i in range(max(len(old), len(new))):
            _diff(old[i] if i < len(old) else None, new[i] if i < len(new) else None, f"{path}[{i}]", lines)
        return
    lines.append(f"{path}: {_show(old)} -> {_show(new)}")


def _show(value) -> str:
    text = json.dumps(value, separators=(", ", ": "))
    return text if len(text) <= 120 else text[:117] + "..."




__all__ = ["SpecLoader", "load_final_file", "load_run_spec", "load_spec", "parse_spec_text", "parse_yaml", "schema_text", "spec_diff", "spec_reference", "spec_schema"]
