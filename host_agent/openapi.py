"""The API's own description: OpenAPI 3.1 in host_agent/openapi.yaml (docs/openapi.yaml
links to it), served as JSON at `GET /openapi.json`."""

from __future__ import annotations

import json
from importlib import resources

import yaml

PATH = "/openapi.json"


def description_json() -> bytes:
    """The description as JSON; the YAML is read from the installed package, so what an
    agent serves is what it was built with."""
    text = resources.files("host_agent").joinpath("openapi.yaml").read_text(encoding="utf-8")
    return json.dumps(yaml.safe_load(text), separators=(",", ":")).encode()
