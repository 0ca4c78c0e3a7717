"""``docs/run-options.md``, written from the declarations: ``RunConfig``'s options and ``AGENT_SPECS``.

The page is generated, never edited by hand; a test fails when it differs from what the code
declares. Regenerate it after adding an option or an agent::

    python -m ponder.options_doc > docs/run-options.md

Example:
    >>> text = markdown()
    >>> "| `--tasks` | `tasks` |" in text and "| `debate` |" in text
    True
"""

from __future__ import annotations

from typing import Any

__all__ = ["markdown"]


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown() -> str:
    """The page: the agents (what each reads) and every run option (flag, YAML key, default, help)."""
    from ponder.agents import AGENT_SPECS
    from ponder.cli import _flag_for
    from ponder.config import RunConfig, option_meta

    lines = [
        "# Run options and agents",
        "",
        "Generated from `RunConfig` (`ponder/config.py`) and `AGENT_SPECS` (`agents/registry.py`) by",
        "`python -m ponder.options_doc > docs/run-options.md`; do not edit by hand. Every option is a",
        "`ponder run` flag and a key of a `--config` YAML file; `ponder run --help` shows the same text.",
        "",
        "## Agents",
        "",
        "Every agent reads the common options (policy, sampling, tasks, trials, memory store);",
        "the column lists the ones only some agents read. Setting one for an agent that does not",
        "read it is an error.",
        "",
        "| agent | what it is | its own options | memory | embodied |",
        "|---|---|---|---|---|",
    ]
    fields = RunConfig.model_fields
    for name in sorted(AGENT_SPECS):
        s = AGENT_SPECS[name]
        opts = ", ".join(f"`{_flag_for(o, fields[o])[0] or o}`" for o in s.options)
        lines.append(
            f"| `{name}` | {_cell(s.description)} | {opts} | {'yes' if s.uses_memory else ''} "
            f"| {'yes' if s.embodied else ''} |"
        )
    lines += [
        "",
        "## Options",
        "",
        "*resume*: a resumed run must keep the value (it is part of what the results mean).",
        "",
        "| flag | YAML key | default | resume | what it does |",
        "|---|---|---|---|---|",
    ]
    for key, info in fields.items():
        flag = _flag_for(key, info)[0]
        default = info.get_default(call_default_factory=True)
        keeps = "must keep" if option_meta(info).get("defining", True) else ""
        lines.append(
            f"| {f'`{flag}`' if flag else ''} | `{key}` | `{default!r}` | {keeps} | {_cell(info.description)} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
