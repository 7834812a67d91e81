"""The documentation's generated parts, read from the plugin's own code at every build.

A page asks for a part with a line of its own, ``<!-- leanhost:NAME [ARG] -->``;
this Sphinx extension replaces that line with Markdown before MyST parses the
page. So the options and ini values come from ``plugin/settings.py``'s
``add_options``, the fixtures from their docstrings, the leak kinds from
``core/kinds.py``, the escape words from ``core/escapes.py``, the command
reference from the ``leanhost`` command's own ``--help`` and the report's fields
from its JSON Schema: none of them can drift from the code. An unknown part, or
an argument that names nothing, fails the build.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any, cast

import pytest
from sphinx.application import Sphinx
from sphinx.errors import ExtensionError

__all__ = ["cli_commands", "expand", "recorded_options", "setup"]

_MARKER = re.compile(r"^<!-- leanhost:([a-z-]+)(?: (.+?))? -->$", re.MULTILINE)
#: The width ``--help`` is rendered at, so the generated text does not depend on the terminal.
_HELP_COLUMNS = "88"


class _Option:
    """One ``addoption`` or ``addini`` call, as ``add_options`` made it."""

    def __init__(self, names: tuple[str, ...], attrs: dict[str, Any]) -> None:
        self.names = names
        self.attrs = attrs


class _Group:
    def __init__(self, description: str) -> None:
        self.description = description
        self.options: list[_Option] = []

    def addoption(self, *names: str, **attrs: Any) -> None:
        self.options.append(_Option(names, attrs))


class _RecordingParser:
    """Stands in for ``pytest.Parser`` to record what ``add_options`` registers, nothing more."""

    def __init__(self) -> None:
        self.groups: dict[str, _Group] = {}
        self.inis: list[_Option] = []

    def getgroup(self, name: str, description: str = "") -> _Group:
        return self.groups.setdefault(name, _Group(description))

    def addini(self, name: str, help: str, type: str | None = None, **attrs: Any) -> None:
        self.inis.append(_Option((name,), {"help": help, "type": type or "string", **attrs}))


def recorded_options() -> _RecordingParser:
    """Every option and ini value the plugin registers, from its own ``add_options``."""
    from pytest_leanhost.plugin.settings import add_options

    parser = _RecordingParser()
    add_options(cast(pytest.Parser, parser))
    return parser


def _md(text: str) -> str:
    """Plain help text as Markdown text: no character of it read as markup."""
    return re.sub(r"([\\`*_<>\[\]|#])", r"\\\1", " ".join(text.split()))


def _rst_to_md(text: str) -> str:
    """A docstring's reST inline markup as Markdown: roles and double backticks become code."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def _options() -> str:
    parser = recorded_options()
    inis = {option.names[0] for option in parser.inis}
    out: list[str] = []
    for group in parser.groups.values():
        for option in group.options:
            name = option.names[0]
            attrs = option.attrs
            flag = attrs.get("action") in ("store_true", "store_false")
            usage = name if flag else f"{name} {attrs.get('metavar', 'VALUE')}"
            out += [f"### `{name}`", "", f"`{usage}`: {_md(attrs['help'])}.", ""]
            default = "off" if flag else attrs.get("default")
            facts = [f"default: `{default}`" if default is not None else "no default"]
            twin = name.removeprefix("--").replace("-", "_")
            if twin in inis:
                facts.append(f"the ini value [`{twin}`](#{twin}) sets it too")
            out += ["; ".join(facts).capitalize() + ".", ""]
    return "\n".join(out)


def _inis() -> str:
    out: list[str] = []
    for option in recorded_options().inis:
        name, attrs = option.names[0], option.attrs
        default = attrs.get("default")
        shown = ", ".join(default) if isinstance(default, list) else str(default)
        out += [
            f"### `{name}`",
            "",
            f"{_md(attrs['help'])}.",
            "",
            f"Type: `{attrs['type']}`; default: `{shown}`."
            if shown
            else f"Type: `{attrs['type']}`; default: empty.",
            "",
        ]
    return "\n".join(out)


def _fixture(name: str) -> str:
    from pytest_leanhost import plugin

    if name not in plugin.__all__:
        raise ExtensionError(f"leanhost:fixture {name}: the plugin has no such fixture")
    doc = inspect.getdoc(getattr(plugin, name)) or ""
    if not doc:
        raise ExtensionError(f"leanhost:fixture {name}: the fixture has no docstring")
    return _rst_to_md(doc)


def _fixture_list() -> str:
    from pytest_leanhost import plugin

    out = ["| fixture | what it gives |", "| --- | --- |"]
    for name in plugin.__all__:
        first = (inspect.getdoc(getattr(plugin, name)) or "").split("\n\n")[0]
        summary = _rst_to_md(" ".join(first.split())).replace("|", "\\|")
        out.append(f"| [`{name}`](#{name}) | {summary} |")
    return "\n".join(out)


def _factory_signature() -> str:
    from pytest_leanhost.plugin.fixtures import ServerFactory

    signature = inspect.signature(ServerFactory.__call__)  # annotations stay strings
    shown: list[str] = []
    for parameter in signature.parameters.values():
        if parameter.name == "self":
            continue
        star = "*" if parameter.kind is inspect.Parameter.VAR_POSITIONAL else ""
        text = f"{star}{parameter.name}: {parameter.annotation}"
        if parameter.default is not inspect.Parameter.empty:
            text += f" = {parameter.default!r}"
        shown.append(text)
    lines = ",\n".join(f"    {text}" for text in shown)
    return f"```python\nleanhost_server(\n{lines},\n) -> ServerProcess\n```"


def _words() -> dict[str, tuple[dict[str, str], str]]:
    """The closed word lists a page can ask about: kinds and escape words, with their headers."""
    from pytest_leanhost.core.escapes import ESCAPE_MEANINGS
    from pytest_leanhost.core.kinds import LEAK_KINDS

    return {
        "kind": ({str(k): v for k, v in LEAK_KINDS.items()}, "| kind | what was found |"),
        "escape": (
            {str(k): v for k, v in ESCAPE_MEANINGS.items()},
            "| word | what it says about the process |",
        ),
    }


def _table_of(which: str) -> Callable[[], str]:
    """A part: the table of one word list, each word linking to its troubleshooting entry."""

    def table() -> str:
        meanings, header = _words()[which]
        out = [header, "| --- | --- |"]
        out += [
            f"| [`{word}`]({{root}}troubleshooting.md#{word}) | {_md(meaning)} |"
            for word, meaning in meanings.items()
        ]
        return "\n".join(out)

    return table


def _meaning_of(which: str) -> Callable[[str], str]:
    """A part: what one word of a word list means, from the code."""

    def meaning(name: str) -> str:
        meanings = _words()[which][0]
        if name not in meanings:
            raise ExtensionError(f"leanhost:{which} {name}: no such word in the code")
        return f"**What it means:** {_md(meanings[name])}."

    return meaning


def cli_commands(
    parser: argparse.ArgumentParser | None = None, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command of ``leanhost`` and its parser, the top level first, depth first."""
    if parser is None:
        from pytest_leanhost.core.cli import build_parser

        parser = build_parser()
        path = ("leanhost",)
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from cli_commands(sub, (*path, name))


def _cli_help(command: str) -> str:
    wanted = tuple(command.split())
    for path, parser in cli_commands():
        if path == wanted:
            previous = os.environ.get("COLUMNS")
            os.environ["COLUMNS"] = _HELP_COLUMNS
            try:
                text = parser.format_help()
            finally:
                if previous is None:
                    del os.environ["COLUMNS"]
                else:
                    os.environ["COLUMNS"] = previous
            return f"```text\n$ {command} --help\n{text.rstrip()}\n```"
    raise ExtensionError(f"leanhost:cli-help {command}: the leanhost command has no such command")


def _schema_fields() -> str:
    text = (resources.files("pytest_leanhost") / "schemas" / "report.schema.json").read_text()
    schema = json.loads(text)
    definitions = schema.get("$defs", {})
    out = ["| key | type | meaning |", "| --- | --- | --- |"]

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return cast(dict[str, Any], definitions[ref.removeprefix("#/$defs/")])
        return node

    def kind_of(node: dict[str, Any]) -> str:
        node = resolve(node)
        if "enum" in node:
            return " \\| ".join(f"`{json.dumps(value)}`" for value in node["enum"])
        if "const" in node:
            return f"`{json.dumps(node['const'])}`"
        if "anyOf" in node or "oneOf" in node:
            return " or ".join(kind_of(n) for n in node.get("anyOf", node.get("oneOf", [])))
        kind = node.get("type", "any")
        if isinstance(kind, list):
            kind = " or ".join(kind)
        if kind == "array" and isinstance(node.get("items"), dict):
            return f"array of {kind_of(node['items'])}"
        return str(kind)

    def walk(node: dict[str, Any], prefix: str) -> None:
        node = resolve(node)
        if node.get("type") == "array" or "items" in node:
            node = resolve(node.get("items", {}))
            prefix += "[]"
        for option in node.get("anyOf", node.get("oneOf", [])):
            if resolve(option).get("type") == "object":
                node = resolve(option)
        required = set(node.get("required", []))
        for key, child in node.get("properties", {}).items():
            name = f"{prefix}.{key}" if prefix else key
            meaning = _md(resolve(child).get("description", child.get("description", "")))
            optional = "" if key in required else " (optional)"
            out.append(f"| `{name}` | {kind_of(child)} | {meaning}{optional} |")
            walk(child, name)

    walk(schema, "")
    return "\n".join(out)


_PARTS: dict[str, Callable[..., str]] = {
    "options": _options,
    "inis": _inis,
    "fixture": _fixture,
    "fixture-list": _fixture_list,
    "factory-signature": _factory_signature,
    "kinds": _table_of("kind"),
    "escapes": _table_of("escape"),
    "kind": _meaning_of("kind"),
    "escape": _meaning_of("escape"),
    "cli-help": _cli_help,
    "schema-fields": _schema_fields,
}


def expand(text: str, where: str = "") -> str:
    """``text`` with every ``<!-- leanhost:NAME [ARG] -->`` line replaced by its part.

    ``where`` is the page's name (``reference/options``): links are made relative to it.
    """

    def replace(found: re.Match[str]) -> str:
        name, arg = found.group(1), found.group(2)
        part = _PARTS.get(name)
        if part is None:
            raise ExtensionError(f"{where}: unknown generated part leanhost:{name}")
        made = part(arg) if arg is not None else part()
        return made.replace("{root}", "../" * where.count("/"))  # links from this page

    return _MARKER.sub(replace, text)


def _source_read(app: Sphinx, docname: str, source: list[str]) -> None:
    source[0] = expand(source[0], docname)


def setup(app: Sphinx) -> dict[str, object]:
    """Register the generated parts with Sphinx."""
    app.connect("source-read", _source_read)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
