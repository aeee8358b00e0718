"""Every `dae` command fails in one line: a bad setting, a missing input file and an unreachable
broker each give exit code 2, one line on stderr naming what is wrong and what to do, and no
traceback (--verbose adds it).

The commands are found by walking the app's command tree, so a new command is covered by the
bad-setting case and (when it has --bootstrap) the broker case without touching this file; the
missing-input cases are listed per command, and a new command must be added to that list.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.tools.fileio import write_signal

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
BAD_SETTING = {"DAE_BATCH__MAX_BATCH": "abc"}
NOWHERE = "127.0.0.1:1"  # nothing listens on port 1: connections are refused at once


def leaves(cmd=None, path=()):
    """(argv prefix, click command) of every leaf command of the app."""
    cmd = cmd or typer.main.get_command(app)
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from leaves(sub, path + (name,))
    else:
        yield path, cmd


COMMANDS = {" ".join(p): c for p, c in leaves()}
KAFKA_COMMANDS = sorted(n for n, c in COMMANDS.items() if any("--bootstrap" in p.opts for p in c.params))

# Missing inputs per command (None: the command reads no input file). {wav}: an existing recording.
MISSING_INPUTS: dict[str, list[list[str]] | None] = {
    "replay": [["/missing/rec.wav"]],
    "denoise": [["/missing/rec.wav", "{tmp}/out.wav"], ["{wav}", "{tmp}/out.wav", "--model", "/missing/ckpt"]],
    "evaluate": [["--data", "/missing/data"], ["--model", "conv=/missing/ckpt"]],
    "evaluate-alerts": [["--nab-dir", "/missing/nab"], ["--no-nab", "--model", "/missing/ckpt"]],
    "worker": None, "train": None, "simulate": None, "capture": None, "retrain": None, "demo": None,
    "bench": None, "kafka start": None, "kafka stop": None, "kafka status": None, "models list": None,
    "models show": None, "models promote": None, "models rollback": None,
}
# A value for each required parameter, by name.
SAMPLE = {"sample_rate": "16000", "version": "v1", "file": "{wav}", "input": "{wav}", "output": "{tmp}/out.wav"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    wav = tmp / "rec.wav"
    write_signal(wav, np.sin(np.arange(4000) / 10.0).astype(np.float32), 16000)
    return {"tmp": str(tmp), "wav": str(wav)}


def argv(name: str, extra: list[str], files: dict) -> list[str]:
    """The command's words, a sample value for each required parameter ``extra`` does not give, then
    ``extra`` (whose leading words, when not options, are the positional arguments)."""
    words = name.split()
    positional_given = bool(extra) and not extra[0].startswith("--")
    for p in COMMANDS[name].params:
        if not p.required:
            continue
        if p.name not in SAMPLE:
            pytest.fail(f"dae {name}: add a sample value for the required parameter {p.name!r} to SAMPLE")
        if p.param_type_name == "argument":
            if not positional_given:
                words.append(SAMPLE[p.name])
        elif p.opts[0] not in extra:
            words += [p.opts[0], SAMPLE[p.name]]
    return [w.format(**files) for w in words + extra]


def check_one_line(res, *needles: str) -> str:
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ")
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def test_every_command_is_listed():
    assert set(MISSING_INPUTS) == set(COMMANDS), "classify the new command in MISSING_INPUTS"
    assert {"worker", "simulate", "replay", "capture", "retrain", "demo", "bench"} <= set(KAFKA_COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_bad_setting_is_one_line_naming_the_variable(name, files):
    res = runner.invoke(app, argv(name, [], files), env=BAD_SETTING)
    line = check_one_line(res, "DAE_BATCH__MAX_BATCH", "'abc'", "batch.max_batch")
    assert "fix or unset it" in line


@pytest.mark.parametrize("name,extra", [(n, e) for n, cases in sorted(MISSING_INPUTS.items()) if cases
                                        for e in cases])
def test_missing_input_is_one_line_naming_the_file(name, extra, files):
    res = runner.invoke(app, argv(name, extra, files))
    missing = next(w for w in extra if "/missing" in w).split("=")[-1]
    check_one_line(res, missing)


@pytest.mark.parametrize("how", ["flag", "env"])
@pytest.mark.parametrize("name", KAFKA_COMMANDS)
def test_unreachable_broker_is_one_line_saying_how_to_start_one(name, how, files):
    extra, env = (["--bootstrap", NOWHERE], {}) if how == "flag" else ([], {"DAE_KAFKA__BOOTSTRAP_SERVERS": NOWHERE})
    res = runner.invoke(app, argv(name, extra, files), env=env)
    check_one_line(res, NOWHERE, "dae kafka start", "DAE_KAFKA__BOOTSTRAP_SERVERS")


def test_verbose_adds_the_traceback(files):
    res = runner.invoke(app, ["replay", "/missing/rec.wav", "--verbose"])
    assert res.exit_code == 2
    assert "Traceback" in res.stderr and "CommandError" in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("error: /missing/rec.wav")


@pytest.mark.parametrize("args,env,needle", [
    (["worker", "--bootstrap", NOWHERE], {}, NOWHERE),
    (["models", "list"], BAD_SETTING, "DAE_BATCH__MAX_BATCH"),
])
def test_a_real_process_prints_one_line_and_no_log_noise(args, env, needle):
    """Outside pytest's log capture: kafka-python's own error lines must not reach stderr either."""
    res = subprocess.run([sys.executable, "-m", "pipeline.cli.app", *args], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, **env}, timeout=120)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and needle in res.stderr


def test_denoise_refuses_a_rate_the_model_does_not_serve_unless_forced(files, tmp_path):
    from tests.test_cli import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path, rate=1000.0)
    out = tmp_path / "out.wav"
    res = runner.invoke(app, ["denoise", files["wav"], str(out), "--model", str(ckpt)])
    line = check_one_line(res, "16000 Hz", "1000 Hz", "dae train --sample-rate 16000", "--force")
    assert not out.exists(), line
    res = runner.invoke(app, ["denoise", files["wav"], str(out), "--model", str(ckpt), "--force"])
    assert res.exit_code == 0, res.output
    assert "warning (--force)" in res.stderr and out.exists()


def test_an_unknown_exception_keeps_its_traceback(monkeypatch, tmp_path):
    """Bugs are not dressed up as user errors: the exception reaches the caller."""
    import pipeline.cli.stream as stream

    class Bug(Exception):
        pass

    def boom(*a, **k):
        raise Bug("a bug")

    monkeypatch.setattr(stream, "input_path", boom)
    res = runner.invoke(app, ["replay", str(tmp_path / "x.wav")])
    assert isinstance(res.exception, Bug)


@pytest.mark.kafka
def test_a_taken_metrics_port_is_one_line_naming_the_setting(kafka_bootstrap):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = runner.invoke(app, ["retrain", "--every", "1h", "--bootstrap", kafka_bootstrap],
                            env={"DAE_METRICS__HOST": "127.0.0.1", "DAE_METRICS__PORT": str(port)})
    check_one_line(res, "DAE_METRICS__PORT", "DAE_METRICS__ENABLED=false")
