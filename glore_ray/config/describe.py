"""`glore config`: the effective configuration as YAML, each field under its documentation."""

from __future__ import annotations

import dataclasses
from typing import Any


def field_docs(cls: type) -> dict[str, str]:
    """Each field's documentation: the string literal after it in the class body (read from the
    source, as vLLM derives its CLI help; dataclasses keep no attribute docstrings at run time)."""
    import ast
    import inspect
    import textwrap

    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    return {node.target.id: inspect.cleandoc(after.value.value) for node, after in zip(body, body[1:])
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)}


def describe_config(section: Any, indent: int = 0) -> str:
    """The effective configuration as YAML that `load_config` reads back, each field under its
    documentation as comments."""
    import inspect
    import json

    pad, lines = " " * indent, []
    docs = field_docs(type(section))
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        lines += [f"{pad}# {line}".rstrip() for line in docs.get(f.name, "").splitlines()]
        if dataclasses.is_dataclass(value):
            if f.name not in docs and type(value).__doc__:  # a section without its own: its class's
                lines += [f"{pad}# {line}".rstrip() for line in inspect.cleandoc(type(value).__doc__).splitlines()]
            lines += [f"{pad}{f.name}:", describe_config(value, indent + 2)]
        else:
            # JSON scalars and lists are YAML too: strings quoted, booleans and null as YAML spells them.
            lines.append(f"{pad}{f.name}: {json.dumps(list(value) if isinstance(value, tuple) else value)}")
    return "\n".join(lines)
