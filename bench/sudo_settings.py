"""What sudo's own settings cost the service account's wrapper calls: the same bare
sudo argv (`zfs list`) run by accounts whose sudoers drop-ins differ only in one
Defaults line, interleaved, against the drop-in as install.sh writes it.

Each variant, the installed drop-in included, gets a service account of its own and a
copy of the installed drop-in for it with the setting added (validated with visudo,
removed at the end), so sudo reads the same files for every variant and only the
setting differs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from bench import workloads as ways
from bench.environment import Account, Bench
from bench.harness import Action, Sample, interleaved
from bench.launcher import Launcher
from bench.plan import Plan
from bench.results import Section, Target, errors, ms, ratio, times
from tests.system import run, service_account

INSTALLED = "as installed"
METHOD = (
    "The bare sudo argv of `zfs list` (as in the latency table), started by a launcher of "
    "each variant's own service account, whose sudoers drop-in is the installed one with "
    "one Defaults line added. Each round runs every variant {per_round} times in a row, the "
    "order rotating; {rounds} rounds. This machine has no syslog socket (`/dev/log`), so "
    "sudo's log line and PAM's session lines are sent nowhere: on a host with a syslog "
    "daemon each costs a datagram more."
)


@dataclass(frozen=True)
class Setting:
    defaults: str  # what is added to the account's Defaults line ("" for as installed)
    trade: str  # what the setting gives up or adds


SETTINGS = {
    INSTALLED: Setting(
        "",
        "install.sh's drop-in: `env_reset`, `!requiretty`, `!pam_session`, `!pam_setcred`, "
        "`secure_path`",
    ),
    "pam_session, pam_setcred": Setting(
        "pam_session, pam_setcred",
        "sudo's default: a PAM session around the wrapper (pam_limits, pam_unix's session "
        "lines) and PAM's credentials step",
    ),
    "pam_session": Setting(
        "pam_session",
        "a PAM session around the wrapper, without the credentials step",
    ),
    "!pam_acct_mgmt": Setting(
        "!pam_acct_mgmt",
        "loses a check: an expired service account could still run the wrappers",
    ),
    "log_output": Setting(
        "log_output, iolog_dir={iolog}",
        "adds a record: every wrapper's output kept in sudo's I/O log",
    ),
}


def measure(bench: Bench, found: list[ways.Workload], plan: Plan) -> Section:
    [workload] = [each for each in found if each.key == "zfs-list"]
    with ExitStack() as stack:
        variants: dict[str, Action] = {}
        for name, setting in SETTINGS.items():
            account = stack.enter_context(_account_with(bench, setting))
            variants[name] = ways.bare(workload, stack.enter_context(Launcher(account)))
        samples = interleaved(variants, rounds=plan.rounds, per_round=plan.per_round)
    return Section(
        "sudo's settings for the wrappers",
        METHOD.format(per_round=plan.per_round, rounds=plan.rounds),
        ("Defaults", "median", "p99", "n", "failed", "÷ as installed", "what it trades"),
        _rows(samples),
        [_target(samples)],
    )


@contextmanager
def _account_with(bench: Bench, setting: Setting) -> Iterator[Account]:
    """A fresh service account granted the installed wrappers by a drop-in of its own:
    the installed one, with `setting` (if any) added to its Defaults."""
    installed = bench.system.wrappers.sudoers
    iolog = bench.root / "sudo-io"
    with service_account() as user:
        drop_in = installed.with_name(f"{installed.name}-{user}")
        text = re.sub(rf"\b{re.escape(bench.system.user)}\b", user, installed.read_text())
        if setting.defaults:
            text += f"Defaults:{user} {setting.defaults.format(iolog=iolog)}\n"
        drop_in.write_text(text)
        try:
            drop_in.chmod(0o440)
            run("visudo", "-cqf", str(drop_in))
            yield Account.of(user)
        finally:
            drop_in.unlink()  # a broken drop-in would break sudo for the whole machine


def _rows(samples: dict[str, Sample]) -> list[tuple[str, ...]]:
    installed = samples[INSTALLED]
    return [
        (
            f"`{name}`" if name != INSTALLED else name,
            ms(sample.median),
            ms(sample.p99),
            str(sample.n),
            errors(sample),
            times(ratio(sample.median, installed.median)),
            SETTINGS[name].trade,
        )
        for name, sample in samples.items()
    ]


def _target(samples: dict[str, Sample]) -> Target:
    installed = samples[INSTALLED].median
    measured = "; ".join(
        f"`{name}` {times(ratio(sample.median, installed), 3)}"
        for name, sample in samples.items()
        if name != INSTALLED
    )
    return Target(
        "sudo-settings",
        "sudo's Defaults for the wrappers: what its PAM session, account check and I/O "
        "logging cost a call (`zfs list`, bare sudo, against the installed drop-in)",
        measured,
    )
