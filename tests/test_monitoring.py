"""The shipped Prometheus rules and Grafana dashboard (monitoring/): promtool accepts the
rules, every alert fires on the series that should fire it and stays quiet on their
harmless neighbours (`promtool test rules`, Prometheus's own evaluator), the recording
rules compute what the dashboard shows, and every metric the rules and the dashboard
name is one a live agent really exports, or a recording rule of ours."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support import Pki, RunningAgent, client
from tests.system import REPO

MONITORING = REPO / "monitoring"
RULES = MONITORING / "prometheus-rules.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
INSTANCE = {"instance": "host-1:18443", "job": "host-agent"}
# Series Prometheus itself makes, not the agent.
PROMETHEUS_OWN = {"up"}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    # Debian's prometheus package; scripts/test.sh installs it. A missing promtool fails.
    tool = shutil.which("promtool")
    assert tool is not None, "promtool is missing: apt-get install prometheus"
    return subprocess.run([tool, *args], capture_output=True, text=True, timeout=120)


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    shown = ",".join(f'{key}="{value}"' for key, value in {**INSTANCE, **labels}.items())
    return {"series": f"{name}{{{shown}}}", "values": values}


@dataclass(frozen=True)
class Case:
    """Series under which an alert must (or must not) be firing at `at`."""

    alert: str
    inputs: list[dict[str, str]]
    at: str
    fires: bool
    # The labels the alert carries from its series, beyond instance (and job).
    labels: tuple[tuple[str, str], ...] = ()


def case(alert: str, at: str, firing: list[dict[str, str]], quiet: list[dict[str, str]],
         **labels: str) -> list[Case]:  # fmt: skip
    carried = tuple(labels.items())
    return [Case(alert, firing, at, True, carried), Case(alert, quiet, at, False, carried)]


def counter(name: str, values: str, **labels: str) -> list[dict[str, str]]:
    return [series(name, values, **labels)]


CASES = [
    *case("HostAgentDown", "4m", counter("up", "1 0 0 0 0"), counter("up", "1 1 1 1 1")),
    *case(
        "HostAgentAuditUnwritable",
        "3m",
        counter("host_agent_audit_write_failures_total", "0 0 1 1"),
        counter("host_agent_audit_write_failures_total", "0 0 0 0"),
    ),
    *case(
        "HostAgentCrlExpiresSoon",
        "4m",
        counter("host_agent_crl_next_update_timestamp_seconds", "86400x5"),
        counter("host_agent_crl_next_update_timestamp_seconds", "1000000x5"),
    ),
    *case(
        "HostAgentCrlExpired",
        "4m",
        counter("host_agent_crl_next_update_timestamp_seconds", "100x5"),
        counter("host_agent_crl_next_update_timestamp_seconds", "86400x5"),
    ),
    *case(
        "HostAgentHandshakesFailing",
        "20m",
        counter("host_agent_tls_handshake_failures_total", "0+120x20", reason="unknown_ca"),
        counter("host_agent_tls_handshake_failures_total", "0+30x20", reason="unknown_ca"),
    ),
    *case(
        "HostAgentApprovalsWaiting",
        "35m",
        counter("host_agent_approvals_open", "1x40", status="pending"),
        counter("host_agent_approvals_open", "0x40", status="pending"),
        status="pending",
    ),
    *case(
        "HostAgentApprovalsPiling",
        "8m",
        counter("host_agent_approvals_open", "11x10", status="pending"),
        counter("host_agent_approvals_open", "10x10", status="pending"),
        status="pending",
    ),
    *case(
        "HostAgentSudoersTooBroad",
        "1m",
        counter("host_agent_sudoers_risky_entries", "1x3"),
        counter("host_agent_sudoers_risky_entries", "0x3"),
    ),
    *case(
        "HostAgentRateLimiting",
        "20m",
        counter("host_agent_rate_limited_requests_total", "0+60x20", limit="read"),
        counter("host_agent_rate_limited_requests_total", "0+3x20", limit="read"),
    ),
    *case(
        "HostAgentOperationsFailing",
        "20m",
        [
            *counter(
                "host_agent_requests_total",
                "0+60x20",
                kind="zfs",
                operation="zfs-list",
                outcome="ok",
            ),
            *counter(
                "host_agent_requests_total",
                "0+30x20",
                kind="zfs",
                operation="zfs-list",
                outcome="operation_failed",
            ),
        ],
        [
            *counter(
                "host_agent_requests_total",
                "0+60x20",
                kind="zfs",
                operation="zfs-list",
                outcome="ok",
            ),
            *counter(
                "host_agent_requests_total",
                "0+60x20",
                kind="zfs",
                operation="zfs-list",
                outcome="rule_denied",
            ),
            *counter(
                "host_agent_requests_total",
                "0+3x20",
                kind="zfs",
                operation="zfs-list",
                outcome="operation_failed",
            ),
        ],
    ),
    *case(
        "HostAgentReloadFailed",
        "3m",
        counter("host_agent_config_reloads_total", "0 0 1 1", result="failure"),
        counter("host_agent_config_reloads_total", "0 0 1 1", result="success"),
        result="failure",
    ),
    *case(
        "HostAgentSignalDown",
        "3m",
        counter("host_agent_signal_send_failures_total", "0 0 1 1"),
        counter("host_agent_signal_send_failures_total", "0 0 0 0"),
    ),
    *case(
        "HostAgentApprovalStoreFailing",
        "3m",
        counter("host_agent_approval_store_failures_total", "0 0 2 2"),
        counter("host_agent_approval_store_failures_total", "0 0 0 0"),
    ),
    *case(
        "HostAgentWitnessBehind",
        "8m",
        counter("host_agent_audit_checkpoint_behind_seconds", "1000x10", witness="postgresql"),
        counter("host_agent_audit_checkpoint_behind_seconds", "100x10", witness="postgresql"),
        witness="postgresql",
    ),
    *case(
        "HostAgentRefusalFlood",
        "3m",
        counter("host_agent_audit_refusals_suppressed_total", "0 0 5 5"),
        counter("host_agent_audit_refusals_suppressed_total", "0 0 0 0"),
    ),
]


def rendered(text: str, labels: dict[str, str]) -> str:
    """An annotation as Prometheus renders it: our templates only use {{ $labels.X }}."""
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)


def alert_test(case: Case, rule: dict[str, Any]) -> dict[str, Any]:
    carried = dict(case.labels)
    # Aggregated alerts keep only instance; the others keep every label of their series.
    keeps_series_labels = "sum by (instance)" not in rule["expr"]
    labels = {"instance": INSTANCE["instance"], **carried}
    if keeps_series_labels:
        labels["job"] = INSTANCE["job"]
        for extra in case.inputs[0]["series"].split("{", 1)[1].rstrip("}").split(","):
            key, _, value = extra.partition("=")
            labels.setdefault(key, value.strip('"'))
    expected = {**labels, **rule.get("labels", {})}
    annotations = {k: rendered(v, labels) for k, v in rule.get("annotations", {}).items()}
    alerts = [{"exp_labels": expected, "exp_annotations": annotations}] if case.fires else []
    return {
        "interval": "1m",
        "input_series": case.inputs,
        "alert_rule_test": [{"eval_time": case.at, "alertname": case.alert, "exp_alerts": alerts}],
    }


RECORDED = {
    "interval": "1m",
    "input_series": [
        series("host_agent_requests_total", "0+60x10", kind="zfs", operation="zfs-list",
               outcome="ok"),
        series("host_agent_operation_duration_seconds_bucket", "0+100x10", operation="zfs-list",
               le="0.01"),
        series("host_agent_operation_duration_seconds_bucket", "0+100x10", operation="zfs-list",
               le="+Inf"),
        series("host_agent_crl_next_update_timestamp_seconds", "1000x10"),
    ],
    "promql_expr_test": [
        {
            "expr": "host_agent:requests:rate5m",
            "eval_time": "10m",
            "exp_samples": [{
                "labels": 'host_agent:requests:rate5m{instance="host-1:18443",kind="zfs",'
                          'operation="zfs-list",outcome="ok"}',
                "value": 1,
            }],
        },
        {
            "expr": "host_agent:operation_duration_seconds:p99_5m",
            "eval_time": "10m",
            "exp_samples": [{
                "labels": 'host_agent:operation_duration_seconds:p99_5m{instance="host-1:18443",'
                          'operation="zfs-list"}',
                "value": 0.0099,
            }],
        },
        {
            "expr": "host_agent:crl_seconds_left",
            "eval_time": "1m",
            "exp_samples": [{
                "labels": 'host_agent:crl_seconds_left{instance="host-1:18443",job="host-agent"}',
                "value": 940,
            }],
        },
    ],
}  # fmt: skip


def test_promtool_accepts_the_rules() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_alert_has_a_case_that_fires_it_and_one_that_does_not() -> None:
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert {c.alert for c in CASES if c.fires} == alerts
    assert {c.alert for c in CASES if not c.fires} == alerts


def test_each_alert_fires_exactly_when_it_should(tmp_path: Path) -> None:
    by_name = {rule["alert"]: rule for rule in rules() if "alert" in rule}
    suite = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [alert_test(c, by_name[c.alert]) for c in CASES] + [RECORDED],
    }
    path = tmp_path / "rules.test.yml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    tested = promtool("test", "rules", str(path))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_a_broken_rule_fails_the_tests(tmp_path: Path) -> None:
    """The tests can fail: an alert whose threshold is off by one no longer passes."""
    broken = tmp_path / "rules.yml"
    broken.write_text(
        RULES.read_text().replace(
            'host_agent_approvals_open{status="pending"} > 10',
            'host_agent_approvals_open{status="pending"} > 11',
        )
    )
    by_name = {rule["alert"]: rule for rule in rules() if "alert" in rule}
    piling = [c for c in CASES if c.alert == "HostAgentApprovalsPiling"]
    suite = {
        "rule_files": [str(broken)],
        "evaluation_interval": "1m",
        "tests": [alert_test(c, by_name[c.alert]) for c in piling],
    }
    path = tmp_path / "rules.test.yml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    assert promtool("test", "rules", str(path)).returncode != 0  # fmt: skip


# --- metric names: what the rules and the dashboard read must exist ------------------

PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The series an expression reads: identifiers that are not functions, keywords,
    label names (inside {} or a by/without/on/ignoring list), strings or numbers."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges, with Grafana's $__rate_interval
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word, after = match.group(0), text[match.end() :].lstrip()
        if after.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        if text[max(0, match.start() - 1)] == "$":  # a Grafana variable
            continue
        names.add(word)
    return names


def exported(exposition: str) -> set[str]:
    """Every series name the agent's registry can produce, from its # TYPE lines (present
    for every family, sampled or not yet): a counter's name already ends in _total."""
    names = set()
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            if kind == "histogram":
                names |= {name + suffix for suffix in ("_bucket", "_sum", "_count")}
            else:
                names.add(name)
    return names


def dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_tokenizer_finds_series_and_only_series() -> None:
    expr = ('sum by (operation, le) (rate(host_agent_x_bucket{instance=~"$instance",'
            'le="0.5"}[$__rate_interval])) / on(instance) group_left up > bool 0.5')  # fmt: skip
    assert metric_names(expr) == {"host_agent_x_bucket", "up"}


def test_every_metric_the_rules_and_dashboard_read_is_exported_by_a_live_agent(
    agent: RunningAgent, pki: Pki
) -> None:
    with client(agent, pki, "admin-1") as http:
        exposition = http.get("/metrics").text
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    available = exported(exposition) | recorded | PROMETHEUS_OWN
    read = {
        where: metric_names(expr)
        for where, expr in [
            *((f"rule {r.get('record') or r.get('alert')}", r["expr"]) for r in rules()),
            *((f"panel query {e}", e) for e in dashboard_expressions()),
        ]
    }
    missing = {where: names - available for where, names in read.items() if names - available}
    assert missing == {}
    assert all(read.values()), "an expression that reads no series"
    # And the dashboard shows every family of the agent's but the per-request build info.
    shown = set().union(*(metric_names(e) for e in dashboard_expressions()))
    families = {n for n in exported(exposition) if not n.endswith("_created")}
    via_rules = {
        name
        for rule in rules()
        if rule.get("record") in shown
        for name in metric_names(rule["expr"])
    }
    unshown = {
        n.removesuffix("_total").removesuffix("_bucket") for n in families - shown - via_rules
    }
    assert unshown <= {"host_agent_operation_duration_seconds_sum",
                       "host_agent_operation_duration_seconds_count"}, unshown  # fmt: skip


def test_the_dashboard_is_one_grafana_can_import() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert 'instance=~"$instance"' in target["expr"], target["expr"]
