"""``tensafe push`` / ``tensafe pull`` end to end against the fake Hub, in process."""

from __future__ import annotations

from pathlib import Path

from fake_hub import FakeHub
from typer.testing import CliRunner

from shared_core.cli import build_app

REPO = "alice/cli-adapter"


def test_cli_push_then_pull(online: FakeHub, key_dirs, make_package, tmp_path: Path) -> None:
    app = build_app()
    runner = CliRunner()
    package = make_package()
    keys = str(key_dirs["publisher"])
    pushed = runner.invoke(app, ["push", str(package), "--repo-id", REPO, "--public-key", keys])
    assert pushed.exit_code == 0, pushed.output
    assert pushed.stdout.strip() == f"{online.url}/{REPO}"
    assert online.is_private(REPO)

    pulled = runner.invoke(app, ["pull", REPO, "--local-dir", str(tmp_path / "out"), "--public-key", keys])
    assert pulled.exit_code == 0, pulled.output
    assert "verified alice/cli-adapter@" in pulled.stdout
    assert "epsilon=7.5" in pulled.stdout
    assert (tmp_path / "out" / "tssp.dsse.json").is_file()


def test_cli_failures_are_one_line(online: FakeHub, key_dirs, make_package, tmp_path: Path) -> None:
    app = build_app()
    runner = CliRunner()
    keys = str(key_dirs["publisher"])
    missing = runner.invoke(app, ["pull", "alice/nope", "--local-dir", str(tmp_path / "o"), "--public-key", keys])
    assert missing.exit_code == 1
    assert missing.stderr.count("\n") == 1
    assert missing.stderr.startswith("tensafe: cannot pull alice/nope: repository not found")

    no_key = runner.invoke(app, ["push", str(make_package()), "--repo-id", REPO])
    assert no_key.exit_code == 1
    assert "--public-key" in no_key.stderr
    assert REPO not in {rid for _, rid in online.repos}


def test_cli_push_offline_names_the_staged_package(key_dirs, make_package) -> None:
    package = make_package()
    result = CliRunner().invoke(
        build_app(), ["push", str(package), "--repo-id", REPO, "--public-key", str(key_dirs["publisher"])]
    )
    assert result.exit_code == 1
    assert f"tensafe push {package} --repo-id {REPO}" in result.stderr
