"""Job-spec errors: `SpecError`, and pydantic's validation errors turned into one, with the field's
path (`stages[2].candidates`), the file it came from, and what is allowed (the field's description).

Imports pydantic and peft_search.errors only; the model whose fields are described is passed in.
"""

from __future__ import annotations

from typing import get_args

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from peft_search.errors import InputError


class SpecError(InputError):
    """An invalid spec: `path` is the field inside the spec (`stages[2].candidates`), `source` the file.

    The CLI prints `peft-search: error: jobs/x.yaml: stages[2].candidates: empty list; ...`.
    """

    def __init__(self, path: str, message: str, source: str | None = None):
        self.path = path
        self.source = source
        field = f"{source}: {path}" if source and path else (source or path or "spec")
        super().__init__(field, message)


def _format_loc(loc: tuple) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def model_of(annotation) -> type[BaseModel] | None:
    """The pydantic model inside an annotation such as `list[StageSpec] | None`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        model = model_of(arg)
        if model is not None:
            return model
    return None


def _field_at(root: type[BaseModel], loc: tuple) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """The model that holds the last named key of `loc`, and that key's field."""
    model: type[BaseModel] | None = root
    holder, info = None, None
    for part in loc:
        if isinstance(part, int):
            continue
        if model is None or part not in model.model_fields:
            return model, None
        holder, info = model, model.model_fields[part]
        model = model_of(info.annotation)
    return holder, info


def spec_error(error: ValidationError, source: str | None, root: type[BaseModel]) -> SpecError:
    """The first problem as a SpecError; further ones are listed below it."""
    problems = []
    for item in error.errors():
        loc = tuple(p for p in item["loc"] if p not in ("function-before",))
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, InputError):
            # Raised by a model validator: its field is relative to the model at `loc`.
            path = _format_loc(loc + tuple(_split_path(cause.field)))
            message = cause.message
        elif item["type"] == "extra_forbidden":
            holder, _ = _field_at(root, loc[:-1] + ("_",)) if len(loc) > 1 else (root, None)
            path = _format_loc(loc)
            allowed = ", ".join(holder.model_fields) if holder is not None else ""
            message = f"unknown key {loc[-1]!r}; allowed here: {allowed}"
        else:
            path = _format_loc(loc)
            if item["type"] == "missing":
                message = "required"
            else:
                message = item["msg"].removeprefix("Value error, ") + f", got {_show_input(item.get('input'))}"
            _, info = _field_at(root, loc)
            if info is not None and info.description:
                message += f" ({info.description})"
        problems.append((path, message))
    path, message = problems[0]
    if len(problems) > 1:
        message += "".join(f"\n  also {p}: {m}" for p, m in problems[1:])
    return SpecError(path, message, source)


def _split_path(field: str) -> list:
    """`stages[2].candidates` -> ["stages", 2, "candidates"]."""
    parts: list = []
    for name in field.split("."):
        head, *indices = name.split("[")
        if head:
            parts.append(head)
        parts.extend(int(index.rstrip("]")) for index in indices)
    return parts


def _show_input(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."



__all__ = ["SpecError", "model_of", "spec_error"]
