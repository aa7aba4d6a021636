"""The CLI imports only the module of the subcommand that runs (issue 17).

`build_parser(argv)` registers only the command argv names; these tests keep
cli.SUBCOMMANDS in step with the modules and the per-command parser identical
to the full one (same help, same parsing).
"""

import argparse

import pytest

from pushproxy import cli


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_the_table_names_every_command_the_modules_register():
    full = subcommands(cli.build_parser())
    listed = ["serve", "check-config"] + [name for _m, _a, names in cli.SUBCOMMANDS
                                          for name in names]
    assert list(full) == listed


@pytest.mark.parametrize("name", [name for _m, _a, names in cli.SUBCOMMANDS for name in names]
                         + ["serve", "check-config"])
def test_a_command_alone_has_the_same_parser_as_in_the_full_one(name):
    alone = subcommands(cli.build_parser([name, "--whatever"]))
    assert set(alone) <= {"serve", "check-config", *next(
        (names for _m, _a, names in cli.SUBCOMMANDS if name in names), ())}
    assert alone[name].format_help() == subcommands(cli.build_parser())[name].format_help()


def test_help_version_and_unknown_words_get_the_full_parser():
    full = set(subcommands(cli.build_parser()))
    for argv in ([], ["--help"], ["--version"], ["no-such-command"], ["-h", "demo"]):
        assert set(subcommands(cli.build_parser(argv))) == full, argv
    assert cli.chosen_command(["--version"]) is None
    assert cli.chosen_command(["demo", "--once"]) == "demo"
