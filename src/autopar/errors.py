"""User-facing input errors: one line naming the field, the value and the fix."""

from __future__ import annotations

from typing import Any


class InputError(ValueError):
    """Bad user input. The CLI prints `str(err)` on one line and exits with code 2."""

    def __init__(self, field: str, value: Any, expected: str):
        self.field = field
        self.value = value
        self.expected = expected
        super().__init__(f"{_short_text(str(field), 120)}: got {_short(value)}; {_short_text(str(expected), 400)}")


class RunStopped(RuntimeError):
    """A run stopped for a reason one line says (a non-finite loss, a checkpoint that could
    not be written): the CLI prints it and exits with code 1, no traceback."""


def _short(value: Any, limit: int = 80) -> str:
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # a 5,000-digit int, a self-referencing structure
        text = f"<{type(value).__name__}>"
    return _short_text(text, limit)


def _short_text(text: str, limit: int) -> str:
    """One line (whitespace runs, newlines included, become one space), at most `limit` characters."""
    text = " ".join(text[: limit * 4].split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def from_pydantic(err: Any, prefix: str = "") -> InputError:
    """Turn the first error of a pydantic ValidationError into an InputError.

    The field path is pydantic's `loc` joined with dots (list indices in brackets).
    """
    errors = err.errors()
    # In a union, pydantic reports one error per branch; the branch that is not a
    # plain type mismatch is the one the user meant.
    first = next((e for e in errors if not e.get("type", "").endswith("_type")), errors[0])
    parts: list[str] = [prefix] if prefix else []
    inner = first.get("ctx", {}).get("error")
    loc = tuple(first.get("loc", ()))
    for i, item in enumerate(loc):
        unknown_key = first.get("type") == "extra_forbidden" and i == len(loc) - 1  # the user's key, capitals and all
        if isinstance(item, str) and _is_branch_tag(item) and not unknown_key:
            continue
        if isinstance(item, int):
            if parts:
                parts[-1] = f"{parts[-1]}[{item}]"
            else:
                parts.append(f"[{item}]")
        else:
            parts.append(str(item))
    if isinstance(inner, InputError):
        # A validator raised a precise error about a sibling field: keep it, add the path.
        return InputError(".".join(p for p in (*parts, inner.field) if p), inner.value, inner.expected)
    field = ".".join(p for p in parts if p) or "<input>"
    msg = first.get("msg", "invalid value")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if first.get("type") == "extra_forbidden":
        msg = "unknown key; remove it or check its spelling"
    elif first.get("type") == "missing":
        return InputError(field, None, "this field is required")
    return InputError(field, first.get("input"), msg[0].lower() + msg[1:] if msg else msg)


def _is_branch_tag(item: str) -> bool:
    """Union-branch names pydantic puts into `loc` (`str`, `DeviceSpec`, `function-after[...]`)."""
    return item in ("str", "int", "float", "bool", "dict") or item[:1].isupper() or "[" in item
