"""The tokens file: the services, the stack and the `e2c` commands refuse one that is
missing, unset, readable by others, or holds a short or example token, and say why without
printing a token; the stack's own file is created 0600 from its first byte."""

from __future__ import annotations

import json
import os
import secrets
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.exceptions import HTTPException

from deploy import cli
from shared.http import (
    Authorizer,
    TokensFileError,
    create_tokens_file,
    load_tokens,
    partner_tokens_changed,
)
from shared.private_files import write_private
from shared.settings import PROJECT_ROOT
from tests.tokens import TOKENS, write_tokens_file

EXAMPLE_FILE = PROJECT_ROOT / "deploy" / "tokens.example.json"
GOOD = secrets.token_urlsafe(32)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """No umask at all: whatever mode a file gets is the one its code asked for."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def tokens_file(tmp_path: Path, tokens: dict[str, str], mode: int = 0o600) -> Path:
    path = tmp_path / "tokens.json"
    write_private(path, json.dumps(tokens))
    path.chmod(mode)
    return path


def refusal(path: Path | None) -> str:
    with pytest.raises(TokensFileError) as raised:
        load_tokens(path)
    return str(raised.value)


def test_the_test_tokens_are_compliant(tmp_path: Path) -> None:
    path = write_tokens_file(tmp_path / "tokens.json")

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_tokens(path) == TOKENS


def test_an_unset_or_missing_file_is_refused(tmp_path: Path) -> None:
    assert "E2C_TOKENS_FILE is not set" in refusal(None)
    assert "does not exist" in refusal(tmp_path / "nowhere.json")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o644, 0o660])
def test_a_file_open_to_group_or_others_is_refused(tmp_path: Path, mode: int) -> None:
    message = refusal(tokens_file(tmp_path, {GOOD: "admin"}, mode))

    assert "readable or writable by group or others" in message
    assert f"{mode:04o}" in message and "chmod 600" in message
    assert GOOD not in message


def test_a_short_token_is_refused_without_printing_it(tmp_path: Path) -> None:
    short = "s3cr3t-but-only-31-characters.."[:31]
    message = refusal(tokens_file(tmp_path, {GOOD: "admin", short: "finance"}))

    assert "role 'finance'" in message and "shorter than 32 characters" in message
    assert short not in message and GOOD not in message


@pytest.mark.parametrize(
    "example",
    ["change-me-admin", "change-me-ml-toulouse",
     "a-long-token-that-says-CHANGE-ME-somewhere-0123456789"],
)
def test_an_example_token_is_refused(tmp_path: Path, example: str) -> None:
    message = refusal(tokens_file(tmp_path, {example: "admin"}))

    assert "example value" in message and example not in message


def test_every_token_of_the_example_file_is_refused(tmp_path: Path) -> None:
    examples = json.loads(EXAMPLE_FILE.read_text())
    assert examples
    for token, role in examples.items():
        message = refusal(tokens_file(tmp_path, {token: role}))
        assert "example value" in message and token not in message


def test_a_swapped_entry_is_refused_without_printing_the_token(tmp_path: Path) -> None:
    message = refusal(tokens_file(tmp_path, {"admin": GOOD}))

    assert "role is not one of" in message and GOOD not in message


@pytest.mark.parametrize("content", ["{not json", "[]", "{}", '{"x": 1}'])
def test_a_malformed_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "tokens.json"
    write_private(path, content)

    refusal(path)


def test_the_stack_creates_its_tokens_file_0600_from_the_first_byte(
    tmp_path: Path, umask_zero: None
) -> None:
    path = tmp_path / "var" / "tokens.json"

    token = create_tokens_file(path)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_tokens(path) == {token: "admin"} and len(token) >= 32
    with pytest.raises(FileExistsError):
        create_tokens_file(path)  # never over a file the operator wrote


def test_the_cli_reads_the_tokens_file_with_the_same_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tokens_file(tmp_path, {GOOD: "ops"}, mode=0o644)
    monkeypatch.setenv("E2C_TOKENS_FILE", str(path))
    monkeypatch.delenv("E2C_TOKEN", raising=False)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")

    with pytest.raises(SystemExit) as raised:
        cli.main(["ops", "status"])

    assert "readable or writable by group or others" in str(raised.value)
    assert GOOD not in str(raised.value) + capsys.readouterr().out


@pytest.mark.parametrize("problem", ["unset", "missing", "loose", "short", "example"])
def test_a_service_refuses_to_start_and_says_why(tmp_path: Path, problem: str) -> None:
    secret = {"short": "short-admin-token", "example": "change-me-admin"}.get(problem, GOOD)
    path = tokens_file(tmp_path, {secret: "admin"}, 0o644 if problem == "loose" else 0o600)
    env = {key: value for key, value in os.environ.items() if not key.startswith("E2C_")}
    env.update(E2C_DATA_DIR=str(tmp_path / "data"), KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")
    if problem != "unset":
        env["E2C_TOKENS_FILE"] = str(tmp_path / "gone.json" if problem == "missing" else path)

    run = subprocess.run(
        [sys.executable, "-m", "services.outcomes"], cwd=PROJECT_ROOT, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )

    assert run.returncode != 0
    assert run.stderr.startswith("cannot start: "), run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    assert secret not in run.stdout + run.stderr
    assert not (tmp_path / "data" / "stores").exists()  # refused before the store is made


# --- Partners added and removed while the services run --------------------------------------


def request_with(token: str) -> Any:
    from starlette.requests import Request

    return Request({"type": "http", "headers": [(b"authorization", f"Bearer {token}".encode())]})


def test_a_partner_added_is_accepted_and_one_removed_refused_without_restart(
    tmp_path: Path,
) -> None:
    path = write_tokens_file(tmp_path / "tokens.json")
    auth = Authorizer(load_tokens(path), path)

    token = partner_tokens_changed(path, "ml-nouvelle", add=True)
    assert token is not None and len(token) >= 32
    assert auth.role(request_with(token)) == "partner:ml-nouvelle"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_tokens(path) == {**TOKENS, token: "partner:ml-nouvelle"}

    again = partner_tokens_changed(path, "ml-nouvelle", add=True)  # a new one replaces it
    assert again != token and auth.role(request_with(again)) == "partner:ml-nouvelle"
    with pytest.raises(HTTPException) as refused:
        auth.role(request_with(token))
    assert refused.value.status_code == 401

    partner_tokens_changed(path, "ml-nouvelle", add=False)
    with pytest.raises(HTTPException):
        auth.role(request_with(again))
    assert load_tokens(path) == TOKENS


def test_a_changed_file_that_fails_the_checks_keeps_the_tokens(tmp_path: Path) -> None:
    path = write_tokens_file(tmp_path / "tokens.json")
    auth = Authorizer(load_tokens(path), path)
    [admin] = [token for token, role in TOKENS.items() if role == "admin"]

    write_private(path, json.dumps({"short": "admin"}))

    assert auth.role(request_with(admin)) == "admin"
