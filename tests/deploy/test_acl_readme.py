"""The README's ACL table is the one the broker gets (`acl_table()`), row for row."""

from __future__ import annotations

import re

from deploy.kafka_security import acl_table
from shared.settings import PROJECT_ROOT

ROW = re.compile(r"^\| `([^`]+)` \| (.+) \|$")


def readme_acl_rows() -> list[tuple[str, str]]:
    text = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## The broker's trust boundary", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        match = ROW.match(line.strip())
        if match:
            rows.append((match.group(1), match.group(2).replace("`", "")))
    return rows


def test_the_readme_shows_the_acls_the_broker_gets() -> None:
    assert readme_acl_rows() == acl_table()
