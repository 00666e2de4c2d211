"""``--help`` names only flags that exist, shows each default once, lists choices; produce --list."""

from __future__ import annotations

import argparse
import re

import pytest

from stream_meta.cli.main import _parser, main


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[name] = sub
                out.update({f"{name} {k}": v for k, v in _subparsers(sub).items()})
    return out


COMMANDS = _subparsers(_parser())


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_names_only_flags_that_exist(command):
    parser = COMMANDS[command]
    known = {s for a in parser._actions for s in a.option_strings}
    text = parser.format_help()
    # Flags of other commands may be named when the text says which command they belong to.
    mentioned = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))
    other = {"--bootstrap", "--group", "--checkpoint-dir", "--metrics-url", "--topic", "--dataset", "--limit",
             "--help", "--json"}
    unknown = {f for f in mentioned - known if f not in other or command == "produce"}
    assert not unknown, f"{command} --help names flags it does not have: {sorted(unknown)}"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_default_is_shown_at_most_once(command):
    parser = COMMANDS[command]
    for action in parser._actions:
        shown = parser._get_formatter()._expand_help(action) if action.help else ""
        assert shown.count("default") <= 1, (command, action.option_strings, shown)


def test_algorithm_lists_its_choices_in_help_and_in_the_error(capsys):
    help_text = COMMANDS["run"].format_help()
    from stream_meta.daemon.config import ALGORITHM_CHOICES

    assert "--algorithm {" + ",".join(ALGORITHM_CHOICES) + "}" in help_text
    assert "gail-meta" in ALGORITHM_CHOICES and "maml" in ALGORITHM_CHOICES
    with pytest.raises(SystemExit) as exc:
        main(["run", "--algorithm", "magic"])
    assert exc.value.code == 2
    assert "invalid choice: 'magic' (choose from 'maml', 'fomaml'" in capsys.readouterr().err


def test_produce_list_prints_every_data_set(capsys):
    from stream_meta.data.datasets import DATASETS

    assert main(["produce", "--list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == list(DATASETS)
    assert any(line.startswith("digits-rotations ") and "64-d, 10 classes" in line for line in out)


def test_produce_without_topic_or_dataset_says_which(capsys):
    assert main(["produce", "--dataset", "digits-rotations"]) == 2
    assert capsys.readouterr().err.strip() == "stream-meta: error: produce needs --topic (try --list for the data sets)"
    assert main(["produce", "--topic", "t", "--dataset", "nope"]) == 2
    assert "unknown data set 'nope'" in capsys.readouterr().err


def test_bench_passes_its_arguments_through_after_a_leading_double_dash(capsys):
    from stream_meta.cli.main import main

    assert main(["bench", "decode", "--", "--records", "20", "--dim", "8", "--repeats", "1"]) == 0
    assert "batch v2 f32" in capsys.readouterr().out
