"""The tool manifest as OpenAI-compatible providers take it: `?format=openai`.

A bare JSON array of function tools, each `strict`, with parameter schemas cut down
to the JSON Schema keywords of OpenAI's strict structured outputs, which the other
OpenAI-compatible providers accept too:

    type, properties, required, additionalProperties (false), items, enum, description

Strict mode also wants every property listed in `required`, an optional one taking
null. What the subset cannot say (lengths, patterns, item counts) moves into the
description; the agent still validates every call against the full schema, so
nothing is loosened by leaving it out here. The manifest's own members (`x-host-agent`)
go too: a model is handed the array as it is.
"""

from __future__ import annotations

import copy
from typing import Any

# The keywords a strict-mode parameter schema may use (docs/proxy.md lists them).
STRICT_KEYWORDS = frozenset(
    {"type", "properties", "required", "additionalProperties", "items", "enum", "description"}
)
CHECK_APPROVAL = "check_approval"


def openai_tools(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's tools in strict OpenAI form, and `check_approval` when any tool
    may wait for a human."""
    tools = [
        {
            "type": "function",
            "function": {
                "name": tool["function"]["name"],
                "description": tool["function"]["description"],
                "parameters": strict_schema(tool["function"]["parameters"]),
                "strict": True,
            },
        }
        for tool in manifest["tools"]
    ]
    if any(tool["x-host-agent"]["approval"] != "never" for tool in manifest["tools"]):
        tools.append(_check_approval())
    return tools


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` in the strict subset: what the subset cannot say is described instead."""
    schema = copy.deepcopy(schema)
    notes = _notes(schema)
    result: dict[str, Any] = {key: schema[key] for key in schema if key in STRICT_KEYWORDS}
    if notes:
        result["description"] = " ".join(filter(None, [result.get("description"), *notes]))
    if result.get("type") == "object":
        properties = {name: strict_schema(value) for name, value in schema["properties"].items()}
        required = set(schema.get("required", ()))
        for name, value in properties.items():
            if name not in required:  # strict mode: present, and null when not given
                value["type"] = [value["type"], "null"]
                if "enum" in value:
                    value["enum"] = [*value["enum"], None]
        result["properties"] = properties
        result["required"] = list(properties)
        result["additionalProperties"] = False
    if "prefixItems" in schema:
        # Positional items (`items: false` after them) have no strict-mode spelling: any
        # string is allowed here, and the notes say what each position takes.
        result["items"] = {"type": "string"}
    elif "items" in result:
        result["items"] = strict_schema(result["items"])
    return result


def _notes(schema: dict[str, Any]) -> list[str]:
    """The constraints the strict subset cannot carry, in words."""
    notes = []
    if "minLength" in schema or "maxLength" in schema:
        notes.append(f"{schema.get('minLength', 0)} to {schema.get('maxLength', '…')} characters.")
    positions = schema.get("prefixItems", ())
    if "minItems" in schema or "maxItems" in schema or positions:
        most = schema.get("maxItems", len(positions) or "…")
        notes.append(f"{schema.get('minItems', 0)} to {most} items.")
    if "pattern" in schema:
        notes.append("Checked by the agent against a pattern; printable ASCII only.")
    if positions:
        described = "; ".join(
            f"{index}. {position.get('description', 'a string')}"
            for index, position in enumerate(positions, 1)
        )
        notes.append(f"In this order: {described}.")
    return notes


def _check_approval() -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": CHECK_APPROVAL,
            "description": (
                "Ask about an operation that waited for a human. Pending: how long is left. "
                "Approved: it runs now, exactly as it was asked for, and this returns its "
                "result. Denied or expired: it will not run."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "approval_id": {
                        "type": "string",
                        "description": "The approval id the pending answer gave (ap-...).",
                    }
                },
                "required": ["approval_id"],
                "additionalProperties": False,
            },
            "strict": True,
        },
    }
