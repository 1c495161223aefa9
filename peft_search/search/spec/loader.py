"""Reading job specs: YAML (as users write it) into a validated `SearchSpec`, the JSON schema, the
generated key reference (docs/job-spec.md) and readable differences between two specs.

A job file is refused before anything is built from it when it cannot be decoded (UTF-8, or the
encoding its byte-order mark names), is not YAML, repeats a key, or expands through anchors and
aliases into more than MAX_VALUES values; the error names the file, the field or line, and why.

Imports pydantic, yaml and the spec's models; nothing heavy.
"""

from __future__ import annotations

import codecs
import json
import re
from pathlib import Path, PurePath
from typing import Any, Callable, Collection

import yaml

from peft_search.errors import InputError
from peft_search.search.spec.errors import SpecError, model_of
from peft_search.search.spec.models import FinalSpec, SearchSpec
from peft_search.search.stage.selection import KN

# Flow collections ([...], {...}) nested deeper than this are refused as they are scanned: PyYAML's
# scanner takes time quadratic in their depth, and a job spec nests three or four levels.
MAX_FLOW_DEPTH = 50


class SpecLoader(yaml.SafeLoader):
    """SafeLoader that reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`; users write `1e-3`) and
    refuses flow collections nested deeper than MAX_FLOW_DEPTH."""

    def fetch_flow_collection_start(self, TokenClass):  # noqa: N803 - PyYAML's name
        if self.flow_level >= MAX_FLOW_DEPTH:
            raise yaml.scanner.ScannerError(None, None, f"[ and {{ nested more than {MAX_FLOW_DEPTH} levels deep", self.get_mark())
        super().fetch_flow_collection_start(TokenClass)


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


# Limits on what a job file may be: a real spec is a few hundred lines and a few hundred values.
MAX_FILE_BYTES = 1 << 20
MAX_VALUES = 100_000  # values after expanding anchors and aliases (a "billion laughs" file is refused)
MAX_INT_DIGITS = 30  # far beyond any bound of the spec, far below Python's int-parsing limit
# Byte-order marks read besides plain UTF-8 (UTF-32's first, as its LE mark begins with UTF-16's).
BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def parse_yaml(text: str, source: str | None = None) -> Any:
    """The YAML document in `text` as Python data; SpecError (naming `source`) when it is not YAML, has
    a key twice (naming the key and both lines), or expands through anchors and aliases beyond
    MAX_VALUES values."""
    loader = SpecLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, source)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = " ".join(filter(None, (error.context, error.problem)))
        raise SpecError("", f"not valid YAML{where}: {problem}", source) from None
    except yaml.YAMLError as error:
        raise SpecError("", f"not valid YAML: {error}", source) from None
    except RecursionError:
        raise SpecError("", "not a job spec: its values are nested too deeply to read", source) from None
    finally:
        loader.dispose()


def _check_nodes(root: yaml.Node, source: str | None) -> None:
    """Refuse, before anything is built from it: a key given twice in one mapping, an integer too long
    to be meant, an alias inside its own anchor, and a document whose anchors and aliases expand to
    more than MAX_VALUES values. Walks each node once (aliases share nodes), iteratively."""
    sizes: dict[int, int] = {}  # expanded values under each node, capped at MAX_VALUES + 1
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, str, bool]] = [(root, "", False)]
    while stack:
        node, path, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_nodes.discard(key)
            sizes[key] = min(MAX_VALUES + 1, 1 + sum(sizes[id(child)] for _, child in _children(node, path)))
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise SpecError(path, f"an alias at line {node.start_mark.line + 1} refers to its own anchor; a job spec "
                            "is a tree", source)
        if isinstance(node, yaml.ScalarNode):
            if node.tag == "tag:yaml.org,2002:int" and len(node.value) > MAX_INT_DIGITS:
                raise SpecError(path, f"a {len(node.value)}-digit number at line {node.start_mark.line + 1}; "
                                "no value of a job spec needs more than a few digits", source)
            sizes[key] = 1
            continue
        if isinstance(node, yaml.MappingNode):
            _check_unique_keys(node, path, source)
        open_nodes.add(key)
        stack.append((node, path, True))
        stack.extend((child, child_path, False) for child_path, child in _children(node, path) if id(child) not in sizes)
    if sizes[id(root)] > MAX_VALUES:
        raise SpecError("", f"anchors and aliases (&name, *name) expand this document to more than {MAX_VALUES:,} "
                        "values; a job spec has a few hundred, so write the values out", source)


def _children(node: yaml.Node, path: str) -> list[tuple[str, yaml.Node]]:
    """A node's children with their field paths (`stages[2]`, `fidelity.max_steps`)."""
    if isinstance(node, yaml.SequenceNode):
        return [(f"{path}[{i}]", child) for i, child in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode):
        children = []
        for key, value in node.value:
            name = key.value if isinstance(key, yaml.ScalarNode) else "?"
            children += [(path, key), (f"{path}.{name}" if path else name, value)]
        return children
    return []


def _check_unique_keys(node: yaml.MappingNode, path: str, source: str | None) -> None:
    seen: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue  # complex keys are refused when the document is built; `<<` merges may override
        line = key.start_mark.line + 1
        if (key.tag, key.value) in seen:
            field = f"{path}.{key.value}" if path else key.value
            raise SpecError(field, f"duplicate key {key.value!r} at lines {seen[key.tag, key.value]} and {line}; YAML "
                            "would silently keep the last one, so give each key once", source)
        seen[key.tag, key.value] = line


def parse_spec_text(text: str, source: str | None = None) -> SearchSpec:
    return SearchSpec.from_dict(parse_yaml(text, source), source)


def read_yaml_file(path: str | Path, what: str) -> Any:
    """The YAML document in a file; InputError naming the file when it cannot be read, decoded or
    parsed. The file is UTF-8 (a UTF-8, UTF-16 or UTF-32 byte-order mark switches to that encoding)."""
    source = str(path)
    try:
        if isinstance(path, (str, PurePath)):
            with open(path, "rb") as handle:
                data = handle.read(MAX_FILE_BYTES + 1)
        else:  # a run's storage path (search.storage.StoragePath), maybe on an object store
            data = path.read_bytes()
    except OSError as error:
        raise InputError(source, f"cannot read {what}: {error.strerror or error}") from None
    if len(data) > MAX_FILE_BYTES:
        raise SpecError("", f"larger than {MAX_FILE_BYTES >> 20} MiB; {what} is a short YAML file", source)
    return parse_yaml(decode_text(data, source), source)


def decode_text(data: bytes, source: str | None = None) -> str:
    """`data` as text: UTF-8, or the encoding its byte-order mark names; SpecError naming the encoding,
    the line and the byte that cannot be decoded."""
    encoding = next((name for bom, name in BOMS if data.startswith(bom)), "utf-8")
    label = encoding.upper().removesuffix("-SIG")
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise SpecError("", f"not {label} text: byte {data[error.start]:#04x} at line {line} (offset {error.start}) cannot "
                        f"be decoded ({error.reason}); save the file as UTF-8", source) from None
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise SpecError("", f"not {label} text: a NUL character at line {line}; it looks like UTF-16 or UTF-32 without a "
                        "byte-order mark, so save the file as UTF-8", source)
    return text


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
    racing = data.get("racing") if isinstance(data, dict) else None
    if isinstance(racing, dict) and "procedure" not in racing:  # raced before KN++: a resumed stage races on under KN
        data = {**data, "racing": {**racing, "procedure": KN}}
    return SearchSpec.from_dict(data, str(path))


def load_final_file(path: str | Path, spec: SearchSpec) -> FinalSpec:
    """A `--final FILE` (YAML of the final section), validated with field paths like the job spec."""
    data = read_yaml_file(path, "the final section")
    try:
        return spec.with_final(data).final
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
- `racing` (default `{min_blocks: 8, confidence: 0.95, delta: 0.05, on_tie: best_mean, procedure: kn++,
  blocks_per_round: 1, lookahead: auto}`): a stage runs its blocks in rounds under a selection procedure with a
  stated guarantee (docs/design.md, "Selection procedure"): Kim and Nelson's KN++ on the paired
  blocks (KN with the variances updated at every look; `procedure: kn` keeps the first stage's). Every choice first runs `min_blocks` blocks (the first stage); after each round a choice
  that has fallen behind another by more than KN's allowance is dropped (only with a first stage of
  at least 8 blocks), and the stage stops when one choice is left (*selected*: the best with
  probability >= `confidence` whenever it is at least `delta` better than every other), when every
  remaining choice is within `delta` of the best with that confidence (a *tie*, which keeps a
  choice by `on_tie`), or when all `designs_per_choice` blocks ran (*undecided*: the best mean,
  no guarantee). `racing: null` trains every planned design. Racing needs `sampling: paired`;
  `sampling: independent` with `racing: null` is the paper's protocol.
- `fidelity`: too short a training length makes trials end at the constant prediction (the
  majority class; Matthews 0), which status and the report count as *collapsed* and warn about
  above 20% of a stage. `peft-search fidelity JOB [--steps 25,50,100] [--designs 8]` trains the
  same pilot designs at two or three lengths, prints each length's collapse rate and the Spearman
  rank correlation of its design scores with the longest length's, and recommends the cheapest
  length with correlation >= 0.8; put it in `fidelity.max_steps`.

## What is checked, and when

Before a run directory exists, `peft-search run` checks the job in this order
(`peft_search/search/preflight.py`; `run --dry-run`, `resume --spec` and `fidelity` make the same
checks). The first problem exits with status 2 and an error naming the file and the field
(`jobs/x.yaml: fidelity.max_steps: ...`), with no traceback, and nothing is created.

1. The file: at most 1 MiB, UTF-8 (a UTF-8, UTF-16 or UTF-32 byte-order mark switches to that
   encoding; otherwise the error names the encoding, the line and the byte), one YAML document
   (syntax errors give the line and column), no key twice in one mapping (the error names the key
   and both lines; `<<` merges may still override), anchors and aliases that expand to at most
   100,000 values and never contain themselves, `[` and `{` nested at most 50 deep, integers of at
   most 30 digits.
2. The keys: known keys only, at every level; strict types (`"32"` is not 32, `4.0` is not an
   integer); no infinite or NaN number anywhere (`.inf`, `.nan`, `1e999`); every number within the
   bounds in the tables above; seeds within 32 bits; `batch_size` at most `max_train_examples`;
   `name` one directory name (the run directory is always `<storage>/<name>-<time>`, never
   elsewhere); task names the trial layer knows.
3. The size: at most 1,000,000 trials, counted from the spec (every stage's candidates x
   `designs_per_choice` x tasks x seeds, and the final evaluation); the error gives the count and
   what to lower.
4. The data: each task valid for `data.source` (bundled: tweets only; file tasks: local only; GLUE
   tasks: hub or local) and local data where the trial layer reads it.
5. The storage: it can be created and written.
6. Resources, when Ray would start in this process (no `--address`): `resources.cpus` and
   `resources.gpus` at most what this machine has (as Ray counts them; a container's CPU limit
   included), and `resources.workers` x 0.5 CPU (plus 0.1 for the trial that drives them) within its
   CPUs. Otherwise a trial would wait forever for resources that never come. With `--address` the
   cluster decides.
7. The experiment trackers (`tracking`): the client of each is installed (`pip install
   'peft-search[mlflow]'`, `[wandb]`); the MLflow server answers and the experiment is found or
   created; W&B online has a key in the environment. A dry run checks the clients only.
8. The backbone: an installed alias, a local directory or a Hub id whose config loads and is of a
   supported type (errors name `backbone`); `num_groups` at most its blocks; `max_length` at most
   its positions; a `budget_fraction` that buys at least the smallest design.
9. Stage 0 planned exactly as the run plans it (module sizes, infeasible draws redrawn, a stage none
   of whose candidates can meet the budget refused); the run starts from this plan.

Later stages are planned when they start, since they depend on the decisions before them. A run
that ends early (an error, a stage with no finished design) says `failed` in its `state.json`, with
the reason under `error` (Ctrl-C or SIGTERM: `interrupted`); `peft-search resume RUN` continues it. A run
killed outright (kill -9, a lost machine) stays `running` and resumes the same way. A failure of one
trial (a NaN loss, out of memory, a download that fails) is recorded as that trial's status.

What a dry run cannot check offline, it lists: a Hub backbone not in the local Hugging Face cache
(the run downloads its config first, then makes the checks of steps 8 and 9), and data read from
the Hub (GLUE tasks with `data.source: hub`), which trials download when they first need it. A
dry run checks resources against this machine too; for a job meant for a cluster, give the
cluster's `--address` (a dry run never connects).
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
