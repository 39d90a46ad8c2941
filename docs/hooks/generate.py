"""The mkdocs hook that writes the reference from the code, so that the manual cannot drift from it.

A page asks for a generated part with a marker line, replaced when the site is built:

    <!-- generated: study-file -->    every key of the study file: its default and description (synthdata.spec)
    <!-- generated: cli -->           every command and option (synthdata.cli's argparse parser)
    <!-- generated: metrics -->       every metric name (synthdata.metrics.registry)

and a study page's measured table is re-rendered from stored results by the runner's current formatter
when `docs/studies/<study>/results.csv` exists:

    <!-- results: quickstart -->
    ```text
    (the table as the formatter prints it)
    ```
    <!-- /results -->

`tests/test_docs.py` imports this file too: the same functions are what it checks.
"""
from __future__ import annotations

import argparse
import re
import textwrap
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

DOCS = Path(__file__).resolve().parents[1]
REPO = DOCS.parent
MARKER = re.compile(r"^<!-- generated: ([\w-]+) -->$", re.M)
RESULTS = re.compile(r"^<!-- results: ([\w.-]+) -->\n```text\n(.*?)```\n<!-- /results -->$", re.M | re.S)


# --- the study file -------------------------------------------------------------------------------------------------

def _flow(value: Any) -> str:
    """A value as YAML on one line (`[replace, augment]`, `{train: 0.6, ...}`, `null`)."""
    return yaml.safe_dump([value], default_flow_style=True, width=10_000).strip()[1:-1]


def _choices(annotation: Any) -> list[str]:
    """The words a Literal-typed key takes (also inside `X | None`)."""
    if get_origin(annotation) is Literal:
        return [str(a) for a in get_args(annotation)]
    return [c for arg in get_args(annotation) for c in _choices(arg)]


def _comment(field: Any, width: int) -> list[str]:
    text = field.description or ""
    choices = _choices(field.annotation)
    if len(choices) > 1 and not all(c in text for c in choices):
        text = f"{text} One of: {', '.join(choices)}.".strip()
    return textwrap.wrap(text, width) if text else []


def section_yaml(model: Any, indent: int = 0) -> list[str]:
    """A spec section as commented YAML: every key with its default, its description above it."""
    from pydantic import BaseModel

    lines: list[str] = []
    pad = " " * indent
    dump = model.model_dump(mode="json")
    for name, field in type(model).model_fields.items():
        lines += [f"{pad}# {line}" for line in _comment(field, 100 - indent)]
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            lines.append(f"{pad}{name}:")
            lines += section_yaml(value, indent + 2)
        else:
            lines.append(f"{pad}{name}: {_flow(dump[name])}")
    return lines


def _kinds_of(key: str) -> list[str]:
    from synthdata.spec import STUDY_KINDS

    return [kind for kind, cls in STUDY_KINDS.items() if key in cls.model_fields]


def default_studies() -> dict[str, Any]:
    """Each kind's study with every default, as the spec builds it (detect needs one source to be valid)."""
    from synthdata.spec import parse_spec

    return {
        "loop": parse_spec({"name": "example"}),
        "mix": parse_spec({"name": "example", "kind": "mix"}),
        "detect": parse_spec({"name": "example", "kind": "detect",
                              "detect": {"sources": {"gaussian": {"type": "generator", "generator": {"name": "gaussian"}}}}}),
        "guide": parse_spec({"name": "example", "kind": "guide"}),
    }


def section_blocks() -> dict[str, str]:
    """Top-level key -> its commented YAML block with the defaults (from whichever kind has the key)."""
    from pydantic import BaseModel

    blocks: dict[str, str] = {}
    for kind, study in default_studies().items():
        for name, field in type(study).model_fields.items():
            if name in blocks:
                continue
            value = getattr(study, name)
            head = [f"# {line}" for line in _comment(field, 100)]
            if isinstance(value, BaseModel):
                body = [f"{name}:", *section_yaml(value, 2)]
            elif name == "name":
                body = [f"{name}: example"]
            elif name == "kind":
                body = [f"{name}: {kind}"]
            else:
                body = [f"{name}: {_flow(study.model_dump(mode='json')[name])}"]
            blocks[name] = "\n".join(head + body)
    return blocks


def _source_table() -> str:
    from synthdata.spec.detect import SOURCE_SPECS

    rows = ["| type | key | default | what |", "| --- | --- | --- | --- |"]
    for cls in SOURCE_SPECS:
        kind = get_args(cls.model_fields["type"].annotation)[0]
        rows.append(f"| `{kind}` | | | {cls.__doc__.split(chr(10) + chr(10))[0].replace(chr(10), ' ')} |")
        for name, field in cls.model_fields.items():
            if name != "type":
                default = "required" if field.is_required() else f"`{_flow(field.get_default(call_default_factory=True))}`"
                rows.append(f"| | `{name}` | {default} | {field.description or ''} |")
    return "\n".join(rows)


def study_file_page() -> str:
    from synthdata.spec import GaussianSpec, GMMSpec, PluginSpec

    out = []
    for name, block in section_blocks().items():
        kinds = _kinds_of(name)
        used = "every study" if len(kinds) == 4 else " and ".join(f"`kind: {k}`" for k in kinds)
        out += [f"### `{name}`", "", f"Used by {used}.", "", "```yaml", block, "```", ""]
    alternatives = [GaussianSpec(), GMMSpec()]
    out += ["### Other generators", "", "The toy generators (`generator: {name: gaussian}` or `gmm`), with their defaults:", ""]
    for spec in alternatives:
        out += ["```yaml", "generator:", *section_yaml(spec, 2), "```", ""]
    plugin = PluginSpec.model_fields
    out += [f"A plug-in: `generator: {{name: NAME, params: {{...}}}}`. {PluginSpec.__doc__.replace(chr(10), ' ')}",
            f"`name`: {plugin['name'].description} `params`: {plugin['params'].description}", "",
            "### Detect sources", "", "`detect.sources` maps a name of your choice to one of these:", "", _source_table(), ""]
    return "\n".join(out)


# --- the command line -------------------------------------------------------------------------------------------------

def _subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[str, argparse.ArgumentParser]]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {c.dest: c.help for c in action._choices_actions}
    return {name: (helps.get(name, ""), sub) for name, sub in action.choices.items()}


def cli_parser() -> argparse.ArgumentParser:
    """The `synthdata` command's parser, its usage lines wrapped at 100 columns whatever the terminal."""
    import os

    from synthdata.cli import _parser

    os.environ["COLUMNS"] = "100"  # argparse wraps usage to the terminal; the page must not depend on who built it
    return _parser()


def cli_page() -> str:
    out = []
    for name, (summary, sub) in _subcommands(cli_parser()).items():
        out += [f"## `synthdata {name}`", "", summary, ""]
        if sub.description:
            out += [sub.description, ""]
        out += ["```text", sub.format_usage().strip(), "```", "", "| argument | default | what |", "| --- | --- | --- |"]
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            flags = ", ".join(f"`{f}`" for f in action.option_strings) or f"`{action.dest.upper()}`"
            if action.option_strings and action.nargs != 0:
                flags += f" `{action.metavar or action.dest.upper()}`"
            default = "" if action.default in (None, False, [], argparse.SUPPRESS) else f"`{action.default}`"
            if action.required and action.option_strings:
                default = "required"
            choices = f" One of: {', '.join(action.choices)}." if action.choices else ""
            out.append(f"| {flags} | {default} | {(action.help or '').replace('|', '/')}{choices} |")
        out.append("")
    return "\n".join(out)


# --- metric names ---------------------------------------------------------------------------------------------------

def metrics_page() -> str:
    from synthdata.metrics.registry import METRICS

    def bound(x: float) -> str:
        return "inf" if x == float("inf") else "-inf" if x == float("-inf") else f"{x:g}"

    rows = ["| MLflow metric | what it is | table header | better | range | with a 95% interval |", "| --- | --- | --- | --- | --- | --- |"]
    for m in METRICS:
        interval = f"`{m.name}_ci_low`, `{m.name}_ci_high`" if m.interval else ""
        rows.append(f"| `{m.name}` | {m.label} | {m.header} | {m.better or ''} | [{bound(m.bounds[0])}, {bound(m.bounds[1])}] "
                    f"| {interval} |")
    return "\n".join(rows)


GENERATED = {"study-file": study_file_page, "cli": cli_page, "metrics": metrics_page}


# --- study tables from stored results ------------------------------------------------------------------------------------

def stored_results(study: str) -> Path:
    return DOCS / "studies" / study / "results.csv"


def render_results(study: str) -> str | None:
    """The study's table, as its runner formats it today, from `docs/studies/<study>/results.csv` (None without one)."""
    path = stored_results(study)
    if not path.is_file():
        return None
    import pandas as pd

    from loops import runner_for

    kind = (yaml.safe_load((REPO / "studies" / f"{study}.yaml").read_text()) or {}).get("kind", "loop")
    return runner_for(kind).format_table(pd.read_csv(path)).rstrip("\n") + "\n"


def with_results(markdown: str) -> str:
    """Every results block whose study has stored results, re-rendered; the others as written."""
    def swap(match: re.Match) -> str:
        text = render_results(match.group(1))
        return match.group(0) if text is None else f"<!-- results: {match.group(1)} -->\n```text\n{text}```\n<!-- /results -->"

    return RESULTS.sub(swap, markdown)


# --- mkdocs' hook ---------------------------------------------------------------------------------------------------

def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    markdown = MARKER.sub(lambda m: GENERATED[m.group(1)](), markdown)
    return with_results(markdown)


if __name__ == "__main__":  # rewrite the committed pages' tables from their stored results (after dropping in a results.csv)
    for page in sorted((DOCS / "studies").glob("*.md")):
        text = page.read_text()
        if with_results(text) != text:
            page.write_text(with_results(text))
            print(f"rewrote {page.relative_to(REPO)}")
