"""`e2c stack console` (the end of `make run`): the console's address, the tokens file and
the roles in it, never a token, and the address of the year `make run` simulated."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from deploy import cli
from shared.private_files import write_private

ADMIN = "admin-token-of-the-test-" + "a" * 20
PARTNER = "partner-token-of-the-test-" + "p" * 20


def test_it_names_the_address_the_file_and_its_roles_but_no_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens = tmp_path / "tokens.json"
    write_private(tokens, f'{{"{ADMIN}": "admin", "{PARTNER}": "partner:ml-test"}}')
    monkeypatch.setenv("E2C_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("E2C_TOKENS_FILE", str(tokens))
    monkeypatch.setenv("CONSOLE_PORT", "18000")

    assert cli.main(["stack", "console"]) == 0

    out = capsys.readouterr().out
    assert out.startswith("Console: http://127.0.0.1:18000\n")
    assert f"a token of {tokens}, e.g. its admin token" in out
    assert "roles in that file: admin, partner:ml-test;" in out
    assert f"http://127.0.0.1:18000/finance?year={date.today().year - 1}" in out
    assert ADMIN not in out and PARTNER not in out
