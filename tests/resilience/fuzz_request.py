"""A coverage-guided fuzz target for request parsing (request_parsing.parse_everything).

Run it with atheris (pip install atheris); libFuzzer options follow the module name:

    .venv/bin/python -m tests.resilience.fuzz_request -runs=1000000 -max_len=8192 [CORPUS_DIR]

A crash is an exception other than the project's typed refusals, or a broken invariant.
Only host_agent is instrumented: instrumenting everything it imports takes 20 s a start.
test_properties.py runs it briefly, seeded, when atheris is installed.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris  # type: ignore[import-untyped, import-not-found, unused-ignore]

with atheris.instrument_imports(include=["host_agent"]):
    from tests.resilience.request_parsing import contract_registry, parse_everything


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        registry = contract_registry(Path(directory))
        atheris.Setup(sys.argv, lambda data: parse_everything(registry, data))
        atheris.Fuzz()


if __name__ == "__main__":
    main()
