"""The command line's help is plain text, and the commands it and the errors point to exist."""

from __future__ import annotations

import argparse
import re
from importlib.metadata import entry_points

import pytest

from concept_erase.cli import build_parser, main
from concept_erase.concepts import list_presets, load_preset


def _all_help(parser: argparse.ArgumentParser, path=("concept-erase",)):
    """``(command path, --help text)`` of the parser and of every subcommand under it."""
    yield " ".join(path), parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _all_help(sub, (*path, name))


HELP = dict(_all_help(build_parser()))


def test_every_command_has_help():
    assert {"concept-erase", "concept-erase erase", "concept-erase eval", "concept-erase codebook train"} <= set(HELP)
    assert len(HELP) >= 12


@pytest.mark.parametrize("command", sorted(HELP))
def test_help_is_plain_text(command):
    """No reStructuredText markup (``literal``, `role`, ``Examples::``) in any --help output."""
    text = HELP[command]
    assert "`" not in text, [line for line in text.splitlines() if "`" in line]
    assert not re.search(r"\w::$", text, re.M)


def _parsers(parser: argparse.ArgumentParser, path=("concept-erase",)):
    yield " ".join(path), parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_flags_named_in_option_help_exist():
    """Every --flag an option's help names ("see --list-presets") is a flag of that command or of the
    top level; quoted commands ('hf download ... --local-dir DIR') are another program's."""
    parser = build_parser()
    top = {s for a in parser._actions for s in a.option_strings}
    checked = 0
    for command, sub in _parsers(parser):
        known = top | {s for a in sub._actions for s in a.option_strings}
        for action in sub._actions:
            text = re.sub(r"'[^']*'", "", action.help or "")
            named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*(?![\w])", text))
            assert named <= known, (command, action.option_strings, sorted(named - known))
            checked += len(named)
    assert checked >= 3  # --list-presets, --robustness's three flags, ...


def test_list_presets(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["erase", "--list-presets"])  # no --out needed
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["preset", "phrase", "description"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert sorted(rows) == list_presets()
    red = load_preset("no-red")
    assert red.phrase in rows["no-red"] and red.description.rstrip(".") in rows["no-red"]
    assert "see --list-presets" in HELP["concept-erase erase"]


def test_error_advice_names_commands_that_exist(tmp_path, monkeypatch):
    """The download advice names huggingface_hub's current command line ('hf download'), which is installed."""
    from concept_erase.errors import WeightsNotFoundError
    from concept_erase.loading import load_base

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotFoundError) as error:
        load_base("someone/not-cached-pipeline", "cpu")
    message = str(error.value)
    assert "'hf download someone/not-cached-pipeline --local-dir DIR'" in message
    assert "huggingface-cli" not in message
    installed = {e.name for e in entry_points(group="console_scripts")}
    assert "hf" in installed
