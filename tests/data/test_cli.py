"""`vigos data synth|prepare` through the CLI."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from vigos.data.cli import app
from vigos.data.synthetic import PLANTED_DROPS


def test_synth_then_prepare(tmp_path):
    runner = CliRunner()
    res = runner.invoke(
        app, ["synth", "-o", str(tmp_path / "src"), "--rows", "12", "--format", "parquet", "--bad-rows"]
    )
    assert res.exit_code == 0, res.output
    assert f"wrote {12 + sum(PLANTED_DROPS.values())} rows (parquet)" in res.output
    res = runner.invoke(
        app, ["prepare", "--source", str(tmp_path / "src"), "-o", str(tmp_path / "out"), "--no-progress"]
    )
    assert res.exit_code == 0, res.output
    assert f"rows in {12 + sum(PLANTED_DROPS.values())}, out 12" in res.output
    assert "duplicate 1" in res.output and (tmp_path / "out" / "stats.json").is_file()


def test_bad_format_is_a_usage_error(tmp_path):
    res = CliRunner().invoke(app, ["synth", "-o", str(tmp_path / "x"), "--format", "csv"])
    assert res.exit_code == 2 and not (tmp_path / "x").exists()


def test_user_error_is_one_line_through_the_main_cli(tmp_path, capsys):
    from vigos.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["data", "prepare", "--source", "./no-such-data", "--output", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data source './no-such-data' does not exist") and "\n" not in err
