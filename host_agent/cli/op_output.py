"""What `host-agent op` prints: the operation's own output for people (details on stderr),
or exactly one JSON document for scripts; and which exit status each ending gets."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any, Protocol, TextIO

from host_agent.cli.common import EXIT_OK, EXIT_PENDING, EXIT_USAGE
from host_agent.cli.connection import ending
from host_agent.cli.op_views import PLAIN, Style, render
from host_agent.client import (
    ApprovalState,
    ApprovalStatus,
    ApprovalTicket,
    ClientError,
    DryRun,
    OperationResult,
    RateLimited,
)
from host_agent.client.results import at_time


class Output(Protocol):
    def usage(self, message: str) -> int: ...
    def pending(self, ticket: ApprovalTicket, *, final: bool) -> int: ...
    def progress(self, status: ApprovalStatus) -> None: ...
    def result(self, result: OperationResult) -> int: ...
    def dry_run(self, dry_run: DryRun) -> int: ...
    def error(self, error: ClientError) -> int: ...


def output_for(as_json: bool, *, exact: bool = False) -> Output:
    """`--json`'s one document, or people's output (`exact`: `-p`'s numbers)."""
    if as_json:
        return JsonOutput(sys.stdout)
    return HumanOutput(sys.stdout, sys.stderr, Style(exact, wants_colour(sys.stdout)))


def wants_colour(stream: TextIO) -> bool:
    """Colour for a terminal only, and never with NO_COLOR set (no-color.org) or TERM=dumb."""
    return stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


class HumanOutput:
    """stdout carries only the operation's own output, so `op zfs list tank | ...` works;
    everything about the request goes to stderr. Waiting redraws one line on a terminal,
    and in a log writes a line when something changes or a minute has passed."""

    QUIET_SECONDS = 60.0

    def __init__(
        self,
        stdout: TextIO,
        stderr: TextIO,
        style: Style = PLAIN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stdout, self.stderr, self.clock = stdout, stderr, clock
        self.style = style
        self.interactive = stderr.isatty()
        self._line_open = False
        self._last: tuple[object, ...] | None = None
        self._last_at = 0.0

    def usage(self, message: str) -> int:
        self._say(message)
        return EXIT_USAGE

    def pending(self, ticket: ApprovalTicket, *, final: bool) -> int:
        needs = f"{ticket.approvals_required} approval(s)"
        self._say(
            f"{ticket.operation} on {ticket.resource} waits for approval {ticket.approval_id}",
            f"  needs:   {needs}{' from an admin' if ticket.admin_only else ''}",
            *_asked_lines(ticket),
            f"  expires: {_time(ticket.expires_at)} (in {_duration(ticket.seconds_left())})",
        )
        if final:
            self._say(f"  then:    host-agent op --follow {ticket.approval_id} --wait")
        return EXIT_PENDING

    def progress(self, status: ApprovalStatus) -> None:
        if status.status is ApprovalState.APPROVED:
            self._say(f"  approved by {status.decided_by}{at_time(status.decided_at)}: running it")
            return
        if status.status is not ApprovalState.PENDING:
            return  # the ending says it
        line = (
            f"  pending: {len(status.approvers)} of {status.approvals_required} "
            f"approval(s), expires in {_duration(status.seconds_left())}"
        )
        if self.interactive:
            self.stderr.write(f"\r\033[K{line}")
            self.stderr.flush()
            self._line_open = True
            return
        seen = (status.status, status.approvers)
        if seen != self._last or self.clock() - self._last_at >= self.QUIET_SECONDS:
            self._say(line)
            self._last, self._last_at = seen, self.clock()

    def result(self, result: OperationResult) -> int:
        self._output(result)
        if self.interactive:
            self._say(
                f"done: {result.operation} on {result.resource} (exit {result.exit_code}, "
                f"{result.duration_ms:.0f} ms, request {result.request_id})"
            )
        return EXIT_OK

    def dry_run(self, dry_run: DryRun) -> int:
        decision = dry_run.decision
        self._end_line()
        self.stdout.write(
            f"operation: {dry_run.operation} on {dry_run.resource}\n"
            f"decision:  {decision.effect} ({decision.code}): {decision.reason}\n"
            f"rule:      {decision.rule}\n"
            f"argv:      {' '.join(dry_run.argv)}\n"
        )
        return EXIT_OK

    def error(self, error: ClientError) -> int:
        word, status = ending(error)
        if error.result is not None:
            self._output(error.result)
        details = [error.code]
        if error.field:
            details.append(f"field {error.field}")
        if error.request_id:
            details.append(f"request {error.request_id}")
        if isinstance(error, RateLimited) and error.retry_after is not None:
            details.append(f"retry after {error.retry_after} s")
        self._say(f"host-agent: {word}: {error.message} ({', '.join(details)})")
        return status

    def _output(self, result: OperationResult) -> None:
        """The operation's output as a person reads it; the tool's own text when there is
        no such form, or when the agent cut the output short (a table of part of it would
        look whole)."""
        self._end_line()
        drawn = None if result.truncated else render(result.operation, result.data, self.style)
        self.stdout.write(result.stdout if drawn is None else drawn)
        self.stdout.flush()
        self.stderr.write(result.stderr)
        if result.truncated:
            self._say("host-agent: the agent truncated this output")

    def _say(self, *lines: str) -> None:
        self._end_line()
        for line in lines:
            print(line, file=self.stderr)

    def _end_line(self) -> None:
        if self._line_open:
            self.stderr.write("\n")
            self._line_open = False


class JsonOutput:
    """One document on stdout: `status` is ok, dry_run, pending, or the error's ending."""

    def __init__(self, stdout: TextIO) -> None:
        self.stdout = stdout
        self._ticket: ApprovalTicket | None = None

    def usage(self, message: str) -> int:
        self._print({"status": "usage", "error": {"code": "usage", "message": message}})
        return EXIT_USAGE

    def pending(self, ticket: ApprovalTicket, *, final: bool) -> int:
        self._ticket = ticket
        if final:
            self._print({"status": "pending", "approval": _ticket(ticket)})
        return EXIT_PENDING

    def progress(self, status: ApprovalStatus) -> None:
        """Silent: the final document says how it ended."""

    def result(self, result: OperationResult) -> int:
        self._print({"status": "ok", "result": dataclasses.asdict(result)})
        return EXIT_OK

    def dry_run(self, dry_run: DryRun) -> int:
        self._print({"status": "dry_run", "dry_run": dataclasses.asdict(dry_run)})
        return EXIT_OK

    def error(self, error: ClientError) -> int:
        word, status = ending(error)
        document: dict[str, Any] = {
            "status": word,
            "error": {
                "code": error.code,
                "message": error.message,
                "field": error.field,
                "http_status": error.status,
                "request_id": error.request_id,
            },
        }
        if isinstance(error, RateLimited):
            document["error"]["retry_after"] = error.retry_after
        if error.result is not None:
            document["result"] = dataclasses.asdict(error.result)
        if error.approval is not None:
            document["approval"] = dataclasses.asdict(error.approval)
        self._print(document)
        return status

    def _print(self, document: dict[str, Any]) -> None:
        if self._ticket is not None and "approval" not in document:
            document["approval"] = _ticket(self._ticket)
        self.stdout.write(json.dumps(document, default=_encode, indent=2) + "\n")


def _ticket(ticket: ApprovalTicket) -> dict[str, Any]:
    """The ticket's own fields (not the client holding it), its request as sent."""
    names = [field.name for field in dataclasses.fields(ApprovalTicket)]
    values = {name: getattr(ticket, name) for name in names}
    values["request"] = ticket.request.body()
    values["asked"] = [dataclasses.asdict(asked) for asked in ticket.asked]
    return values


def _encode(value: object) -> str:
    if isinstance(value, dt.datetime):
        return _time(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def _asked_lines(ticket: ApprovalTicket) -> list[str]:
    if not ticket.asked:
        return ["  asked:   (the agent names no channel that can decide it)"]
    first, *rest = (asked.who for asked in ticket.asked)
    return [f"  asked:   {first}", *(f"           {who}" for who in rest)]


def _time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat(timespec="seconds")


def _duration(seconds: float) -> str:
    """4m05s, 1h02m05s: short enough for a countdown."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
