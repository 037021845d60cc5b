"""Generate the JSON Schema files of the event contract from the pydantic models.

Upstream teams validate against ``schemas/jsonschema/<type>.v<version>.schema.json`` without
running our code. The files are generated, committed, and checked by a unit test to match the
models; after changing a model run ``python -m schemas.jsonschema_gen``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, create_model

from schemas.events import EVENT_REGISTRY, Envelope, EventSpec, spec_for

__all__ = ["SCHEMA_BASE_URL", "SCHEMA_DIR", "main", "render_all", "schema_filename", "write_all"]

#: Prefix of every schema's ``$id``.
SCHEMA_BASE_URL = "https://govnotify.example/schemas/"
#: Where the generated files live in the repository (and in the installed package).
SCHEMA_DIR = Path(__file__).resolve().parent / "jsonschema"
_DRAFT = "https://json-schema.org/draft/2020-12/schema"
# Fixed values for the example event in each schema, so the output is deterministic.
_EXAMPLE_ENVELOPE: dict[str, Any] = {
    "event_id": "0b6c3f0e-5d2a-4c51-9a43-6f1f2d9e8a10",
    "occurred_at": "2024-06-03T09:30:00+08:00",
}
# The upstream system that publishes each family, for the example's ``source``.
_EXAMPLE_SOURCE = {
    "licenses": "license-registry",
    "cases": "case-system",
    "evaluations": "evaluation-system",
}


def schema_filename(event_type: str, version: int) -> str:
    """``license.issued``, 1 → ``license.issued.v1.schema.json``."""
    return f"{event_type}.v{version}.schema.json"


def _event_model(spec: EventSpec) -> type[BaseModel]:
    # The envelope with event_type/schema_version pinned and payload typed: pydantic then emits
    # one self-contained schema with the payload's nested models under $defs.
    name = "".join(p.title() for p in spec.event_type.replace("_", ".").split(".")) + (
        f"V{spec.version}Event"
    )
    return create_model(  # type: ignore[call-overload,no-any-return]
        name,
        __base__=Envelope,
        __doc__=Envelope.__doc__,
        event_type=(Literal[spec.event_type], ...),  # type: ignore[valid-type]
        schema_version=(Literal[spec.version], ...),  # type: ignore[valid-type]
        payload=(spec.payload_model, ...),
    )


def _schema(spec: EventSpec) -> dict[str, Any]:
    filename = schema_filename(spec.event_type, spec.version)
    schema = _event_model(spec).model_json_schema()
    schema["$schema"] = _DRAFT
    schema["$id"] = SCHEMA_BASE_URL + filename
    schema["title"] = f"{spec.event_type} v{spec.version}"
    schema["description"] = (
        f"Event {spec.event_type}, schema version {spec.version}. Kafka topic family "
        f"'{spec.family}', key payload.{spec.key_field}."
    )
    payload_examples = spec.payload_model.model_json_schema().get("examples", [])
    schema["examples"] = [
        {
            **_EXAMPLE_ENVELOPE,
            "event_type": spec.event_type,
            "schema_version": spec.version,
            "source": _EXAMPLE_SOURCE.get(spec.family, "upstream"),
            "payload": example,
        }
        for example in payload_examples
    ]
    return schema


def render_all() -> dict[str, str]:
    """File name → JSON text, for every registered (event_type, version)."""
    out: dict[str, str] = {}
    for event_type, version in sorted(EVENT_REGISTRY):
        schema = _schema(spec_for(event_type, version))
        text = json.dumps(schema, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
        out[schema_filename(event_type, version)] = text
    return out


def write_all(folder: Path | None = None) -> list[Path]:
    """Write every schema into ``folder`` (default :data:`SCHEMA_DIR`), removing stale ones."""
    folder = SCHEMA_DIR if folder is None else folder
    folder.mkdir(parents=True, exist_ok=True)
    rendered = render_all()
    written = []
    for filename, text in rendered.items():
        path = folder / filename
        path.write_text(text, encoding="utf-8")
        written.append(path)
    for old in folder.glob("*.schema.json"):
        if old.name not in rendered:
            old.unlink()
    return written


def main() -> int:
    """``python -m schemas.jsonschema_gen``: regenerate the committed schema files."""
    for path in write_all():
        print(path.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
