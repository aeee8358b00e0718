"""`dae --help` and every command's help read well: no reST markup, every command and option has
help, defaults are values a user can type, and rendering help imports no torch (it stays fast)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from pipeline.cli.app import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
MARKUP = re.compile(r"``|:(mod|func|class|meth|data|attr|exc|ref):`")


def commands(cmd=None, path=()):
    """(argv prefix, click command) of the root, every group and every leaf command."""
    cmd = cmd or typer.main.get_command(app)
    yield path, cmd
    for name, sub in getattr(cmd, "commands", {}).items():
        yield from commands(sub, path + (name,))


ALL = {" ".join(p): c for p, c in commands()}


def help_text(path: str) -> str:
    res = runner.invoke(app, [*path.split(), "--help"], env={"COLUMNS": "250"})
    assert res.exit_code == 0, res.output
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", res.output).split())  # one line, box drawing removed


@pytest.mark.parametrize("path", sorted(ALL))
def test_help_has_no_markup_and_every_option_has_help(path):
    text = help_text(path)
    assert not MARKUP.search(text), MARKUP.search(text)
    assert "DEFAULT_" not in text and "models.training" not in text
    cmd = ALL[path]
    assert (cmd.help or "").strip(), f"dae {path}: no help"
    for p in cmd.params:
        if p.name != "help":
            assert (getattr(p, "help", None) or "").strip(), f"dae {path}: {p.opts[0]} has no help"


@pytest.mark.parametrize("path", sorted(p for p, c in ALL.items() if not hasattr(c, "commands")))
def test_every_command_takes_verbose(path):
    assert any("--verbose" in p.opts for p in ALL[path].params)


def test_architecture_defaults_are_shown_as_typed_and_match_the_trainer():
    from models.training import DEFAULT_ARCH
    from models.training.config import TRAINABLE

    for path in ("train", "retrain"):
        text = help_text(path)
        assert f"[default: {DEFAULT_ARCH}]" in text
        assert all(a in text for a in TRAINABLE), (TRAINABLE, text)


def test_retrain_help_says_not_worse_as_the_readme_does():
    assert "not worse" in help_text("retrain")
    assert "not worse" in (ROOT / "README.md").read_text()


def test_capture_max_seconds_and_wait_are_explained():
    text = help_text("capture")
    assert "--max-seconds" in text and "in any case" in text
    assert "--wait" in text


def test_help_imports_neither_torch_nor_kafka():
    code = ("import sys; from typer.testing import CliRunner; from pipeline.cli.app import app; "
            "from tests.test_cli_help import ALL; r = CliRunner(); "
            "[r.invoke(app, [*p.split(), '--help']) for p in ALL]; "
            "print(sorted(m for m in ('torch', 'kafka', 'models.training') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
