"""The manifest naming `on_behalf_of` writes an audited decision: like every other
request that does, it is within the caller's read limit, so a CN with a profile cannot
grow the audit log without bound through a read that is otherwise free."""

from __future__ import annotations

from pathlib import Path

from tests.support import Pki, audit_records, client, config_text, running_agent, write_config

LIMIT = "[rate_limit.read]\nrequests = 3\nper_seconds = 3600\n"


def test_naming_an_agent_on_the_manifest_is_within_the_read_limit(pki: Pki, tmp_path: Path) -> None:
    config = write_config(tmp_path / "agent.toml", config_text(pki, tmp_path, extra=LIMIT))
    with running_agent(config) as agent, client(agent, pki, "librarian-1") as http:
        answers = [
            http.get("/v1/tools/manifest", params={"on_behalf_of": "reader-1"}) for _ in range(6)
        ]
        plain = http.get("/v1/tools/manifest")  # without on_behalf_of: no limit, no record
    statuses = [a.status_code for a in answers]
    assert statuses == [403, 403, 403, 429, 429, 429]
    assert {a.json()["error"]["code"] for a in answers} == {
        "on_behalf_of_not_allowed",
        "rate_limited",
    }
    assert all(int(a.headers["retry-after"]) > 0 for a in answers[3:])
    assert plain.status_code == 200
    records = audit_records(config.audit.log_path)
    decisions = [r for r in records if r["event"] == "decision"]
    assert [d["code"] for d in decisions] == ["on_behalf_of_not_allowed"] * 3
    assert [r["code"] for r in records if r["event"] == "rejected"] == ["rate_limited"] * 3
