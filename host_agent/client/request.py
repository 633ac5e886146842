"""What the client sends to `POST /host/op`, kept so an approved request can be resubmitted."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class OpRequest:
    """One operation request: the adapter `kind`, its `resource`, and `args` (command first)."""

    kind: str
    resource: str | None
    args: tuple[str, ...]
    reason: str | None = None
    dry_run: bool = False
    approval_id: str | None = None

    @classmethod
    def of(
        cls,
        kind: str,
        resource: str | None,
        args: Sequence[str],
        reason: str | None = None,
        *,
        dry_run: bool = False,
        approval_id: str | None = None,
    ) -> OpRequest:
        # A bare string is a sequence too; sent as is it would become one argument per letter.
        if isinstance(args, str):
            raise TypeError("args must be a list of strings, the command first")
        return cls(kind, resource, tuple(args), reason, dry_run, approval_id)

    def approved(self, approval_id: str) -> OpRequest:
        """The same request, resubmitted under a granted approval."""
        return replace(self, approval_id=approval_id)

    def body(self) -> dict[str, Any]:
        """The JSON body; optional fields only when set, as the server refuses unknown ones."""
        body: dict[str, Any] = {"kind": self.kind, "resource": self.resource, "args": [*self.args]}
        if self.reason is not None:
            body["reason"] = self.reason
        if self.dry_run:
            body["dry_run"] = True
        if self.approval_id is not None:
            body["approval_id"] = self.approval_id
        return body
