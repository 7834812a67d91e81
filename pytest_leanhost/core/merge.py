"""``leanhost report merge``: several ``--leanhost-report`` files, one verdict, one report.

A suite split into shards (one CI job each) writes one report per shard. This
reads them, checks that each is a leanhost report of a known ``schema_version``
(:class:`ReportFileError`, one line naming the file, when it is not), and
merges them: findings keep every key they have (their test, host, and the
shard's ``session_id``), counts are summed, and the merged document is itself a
valid report of the current schema version, with a ``shards`` list saying where
it came from. Reading and merging never touch a process or a path named inside
a report. Standard library only, no pytest.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from typing import Any, NamedTuple, TypeGuard

from pytest_leanhost.core.finding import Finding, FindingShapeError
from pytest_leanhost.core.summary import REPORT_SCHEMA_VERSION, grouped_lines

__all__ = [
    "KNOWN_SCHEMA_VERSIONS",
    "MergedReport",
    "ReportFileError",
    "ShardReport",
    "merge_reports",
    "read_report",
    "summary_lines",
]

#: The report versions this merge reads: later versions only add keys to earlier ones.
KNOWN_SCHEMA_VERSIONS = frozenset(range(1, REPORT_SCHEMA_VERSION + 1))

#: Top-level counts every known version has.
_COUNTS = ("registries_checked", "records_checked")

#: What each finding of a merged report has at least (what a version 1 report lacks).
_FINDING_DEFAULTS: dict[str, object] = {"process": None}


class ReportFileError(ValueError):
    """A file that is not a leanhost report this version reads; ``str()`` is one line."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: not a leanhost report: {reason}")
        self.path = path
        self.reason = reason


class ShardReport(NamedTuple):
    """One report file, read and checked: its document and its findings, parsed."""

    path: str
    document: dict[str, Any]
    findings: tuple[Finding, ...]


class MergedReport(NamedTuple):
    """The merge of several reports: the document to write and its findings, parsed, in order."""

    document: dict[str, Any]
    #: ``(report path, session id, finding)`` for each finding, in the document's order.
    sources: tuple[tuple[str, str, Finding], ...]
    #: One line for each file that was left out (a session already merged).
    warnings: tuple[str, ...] = ()

    @property
    def findings(self) -> tuple[Finding, ...]:
        """Every finding, allowed ones included, in the document's order."""
        return tuple(finding for _, _, finding in self.sources)

    @property
    def failing(self) -> tuple[Finding, ...]:
        """The findings that fail the run (not allowed by their test's marker)."""
        return tuple(finding for finding in self.findings if not finding.allowed)


def read_report(path: str | os.PathLike[str]) -> ShardReport:
    """Read and check one report file; :class:`ReportFileError` naming the file if it is not one.

    The shape is checked by hand (no jsonschema at run time): the top-level keys
    every known version has, with their types, and each finding as
    :meth:`Finding.from_json` reads it. Unknown keys are kept.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ReportFileError(name, f"cannot read it ({exc.strerror or exc})") from None
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ReportFileError(name, f"not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise ReportFileError(name, f"a JSON {type(document).__name__}, not an object")
    version = document.get("schema_version")
    if "schema_version" not in document:
        raise ReportFileError(name, "no schema_version")
    if not _is_int(version) or version not in KNOWN_SCHEMA_VERSIONS:
        known = ", ".join(str(v) for v in sorted(KNOWN_SCHEMA_VERSIONS))
        raise ReportFileError(
            name, f"unknown schema_version {version!r} (this leanhost reads {known})"
        )
    session = document.get("session_id")
    if not isinstance(session, str) or not session:
        raise ReportFileError(name, f"session_id is {session!r}, not a non-empty string")
    if not isinstance(document.get("interrupted"), bool):
        raise ReportFileError(name, "interrupted is not true or false")
    for key in _COUNTS:
        value = document.get(key)
        if not _is_int(value) or value < 0:
            raise ReportFileError(name, f"{key} is {value!r}, not a count")
    seconds = document.get("check_seconds")
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or seconds < 0:
        raise ReportFileError(name, f"check_seconds is {seconds!r}, not a number of seconds")
    raw = document.get("findings")
    if not isinstance(raw, list):
        raise ReportFileError(name, "findings is not a list")
    findings: list[Finding] = []
    for index, item in enumerate(raw):
        try:
            findings.append(Finding.from_json(item))
        except FindingShapeError as exc:
            raise ReportFileError(name, f"finding {index}: {exc}") from None
    for key in ("earlier_sessions", "watched_registries"):
        if not isinstance(document.get(key, []), list):
            raise ReportFileError(name, f"{key} is not a list")
    if not all(isinstance(entry, dict) for entry in document.get("earlier_sessions", [])):
        raise ReportFileError(name, "earlier_sessions holds something other than objects")
    if not all(isinstance(entry, str) for entry in document.get("watched_registries", [])):
        raise ReportFileError(name, "watched_registries holds something other than paths")
    if "shards" in document and not _are_shards(document["shards"]):
        raise ReportFileError(name, "shards is not a list of merged reports' entries")
    return ShardReport(name, document, tuple(findings))


def _are_shards(value: object) -> bool:
    """Whether ``value`` is a merged report's ``shards`` list, as :func:`merge_reports` writes."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(entry, dict)
            and isinstance(entry.get("report"), str)
            and isinstance(entry.get("session_id"), str)
            and entry["session_id"] != ""
            and _is_int(entry.get("schema_version"))
            and isinstance(entry.get("interrupted"), bool)
            and _is_int(entry.get("findings"))
            for entry in value
        )
    )


def merge_reports(shards: Sequence[ShardReport]) -> MergedReport:
    """One report from several: every finding with its shard's session, counts summed.

    The merged ``session_id`` is ``merge-`` and a digest of the shards' session
    ids (the same shards give the same id); each finding carries its own
    shard's ``session_id`` unless it already has one (a merged report merged
    again). ``check_seconds`` is the slowest shard's: shards run side by side.
    A file with a session that was already merged (the same report named
    twice, or a shard and a merged report holding it) is left out with a
    warning, so no leak is counted twice.
    """
    entries: list[tuple[tuple[str, str, int], dict[str, Any], tuple[str, str, Finding]]] = []
    listed: list[dict[str, Any]] = []
    earlier: list[dict[str, Any]] = []
    seen_earlier: set[tuple[object, ...]] = set()
    watched: dict[str, None] = {}
    merged_from: dict[str, str] = {}
    warnings: list[str] = []
    kept: list[ShardReport] = []
    for shard in shards:
        document = shard.document
        session = document["session_id"]
        # A merged report stands for its shards' sessions, a plain one for its own.
        covers = [entry["session_id"] for entry in document.get("shards", [])] or [session]
        repeated = next((s for s in covers if s in merged_from), None)
        if repeated is not None:
            warnings.append(
                f"{shard.path}: session {repeated} was already merged from "
                f"{merged_from[repeated]}; left out"
            )
            continue
        merged_from.update(dict.fromkeys(covers, shard.path))
        kept.append(shard)
        for raw, finding in zip(document["findings"], shard.findings, strict=True):
            own = raw.get("session_id")
            merged = {
                **_FINDING_DEFAULTS,
                **finding.to_json(),
                **raw,
                "session_id": own if isinstance(own, str) and own else session,
            }
            key = (finding.nodeid or "", finding.kind, finding.pid or 0)
            entries.append((key, merged, (shard.path, merged["session_id"], finding)))
        if "shards" in document:  # a merged report (checked by read_report): its own shards
            listed.extend(document["shards"])
        else:
            listed.append(
                {
                    "report": shard.path,
                    "session_id": session,
                    "schema_version": document["schema_version"],
                    "interrupted": document["interrupted"],
                    "findings": len(shard.findings),
                }
            )
        for leftover in document.get("earlier_sessions", []):
            identity = (
                leftover.get("session_id"),
                leftover.get("pid"),
                leftover.get("started_unix"),
            )
            if identity not in seen_earlier:
                seen_earlier.add(identity)
                earlier.append(leftover)
        watched.update(dict.fromkeys(document.get("watched_registries", [])))
    entries.sort(key=lambda entry: entry[0])
    digest = hashlib.sha256("\0".join(merged_from).encode("utf-8")).hexdigest()[:16]
    merged_document = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "session_id": f"merge-{digest}",
        "interrupted": any(shard.document["interrupted"] for shard in kept),
        "registries_checked": sum(shard.document["registries_checked"] for shard in kept),
        "records_checked": sum(shard.document["records_checked"] for shard in kept),
        "check_seconds": max((shard.document["check_seconds"] for shard in kept), default=0),
        "findings": [merged for _, merged, _ in entries],
        "earlier_sessions": earlier,
        "watched_registries": list(watched),
        "shards": listed,
    }
    return MergedReport(
        document=merged_document,
        sources=tuple(source for _, _, source in entries),
        warnings=tuple(warnings),
    )


def summary_lines(merged: MergedReport) -> list[tuple[str, bool]]:
    """The merged verdict as the session's ``leanhost`` section says it; each line red or not.

    The findings of each report's session are grouped by test
    (:func:`grouped_lines`, the terminal section's own form) under one line
    naming the report and the session; the last line counts the leaks, as the
    session's does.
    """
    lines: list[tuple[str, bool]] = []
    groups: dict[tuple[str, str], list[Finding]] = {}
    for path, session, finding in merged.sources:
        groups.setdefault((path, session), []).append(finding)
    for (path, session), findings in groups.items():
        failing = sum(1 for finding in findings if not finding.allowed)
        lines.append((f"{path} (session {session}): {len(findings)} leak(s)", failing > 0))
        lines.extend(grouped_lines(findings))
    document = merged.document
    reports, failing = len(document["shards"]), len(merged.failing)
    if merged.sources:
        lines.append(
            (
                f"leanhost: {failing} leak(s) failed the run, "
                f"{len(merged.sources) - failing} allowed; {reports} report(s) merged",
                False,
            )
        )
    else:
        lines.append(
            (
                f"leanhost: no leaks ({reports} report(s) merged, "
                f"{document['registries_checked']} registries checked)",
                False,
            )
        )
    return lines


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)
