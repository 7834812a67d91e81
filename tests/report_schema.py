"""The JSON Schema shipped in the package, and validating real ``--leanhost-report`` documents."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import jsonschema

SCHEMA: dict[str, Any] = json.loads(
    resources.files("pytest_leanhost").joinpath("schemas/report.schema.json").read_text()
)


def validate_report(document: object) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``document`` is a report the schema allows."""
    jsonschema.Draft202012Validator(SCHEMA).validate(document)
