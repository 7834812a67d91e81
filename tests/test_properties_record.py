"""Properties of the record's wire format: the reader never fails but with RecordError, and
every valid record reads back and writes out byte for byte as serde_json writes it."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pytest_leanhost.record import ProcessRecord, RecordError

pytestmark = pytest.mark.timeout(120)

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

U32 = st.integers(0, 2**32 - 1)
U128 = st.integers(0, 2**128 - 1)
# Any Unicode scalar value (st.characters leaves out surrogates, which UTF-8 cannot hold),
# control characters and non-ASCII text included.
TEXT = st.text(st.characters(codec="utf-8"), max_size=40)

RECORD_FIELDS = tuple(field.name for field in dataclasses.fields(ProcessRecord))
OPTIONAL_FIELDS = ("parent_pid_at_start", "process_group_id", "bind", "http_path")

records = st.builds(
    ProcessRecord,
    pid=U32,
    executable=TEXT,
    cwd=TEXT,
    started_unix_millis=U128,
    parent_pid_at_start=st.none() | U32,
    process_group_id=st.none() | U32,
    transport=st.sampled_from(["stdio", "http"]) | TEXT,
    bind=st.none() | TEXT,
    http_path=st.none() | TEXT,
)

# JSON whitespace, exactly the four characters both serde_json and Python's json accept.
WHITESPACE = st.text(st.sampled_from(" \t\n\r"), max_size=3)

# Raw JSON text for the values of unknown fields: every kind of JSON value, numbers
# beyond any integer type (serde_json skips them unparsed), `-0`, and objects with
# duplicate keys (serde_json never looks inside an ignored value).
_json_scalars = st.one_of(
    st.sampled_from(["null", "true", "false", "-0", "0", "-0.0", "1e400", "-1E-400"]),
    st.integers().map(str),
    st.integers(4300, 4400).map(lambda digits: "9" * digits),
    st.floats(allow_nan=False, allow_infinity=False).map(json.dumps),
    TEXT.map(lambda text: json.dumps(text, ensure_ascii=False)),
    TEXT.map(json.dumps),
)
_json_keys = st.sampled_from(["pid", "a", ""]) | TEXT
json_values: st.SearchStrategy[str] = st.recursive(
    _json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(lambda items: "[" + ", ".join(items) + "]"),
        st.lists(st.tuples(_json_keys, inner), max_size=4).map(
            lambda pairs: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in pairs) + "}"
        ),
    ),
    max_leaves=8,
)
unknown_keys = st.sampled_from(["future_field", "x", "Pid", "pid ", "bind_"]) | TEXT.filter(
    lambda key: key not in RECORD_FIELDS
)


def serde_pretty(record: ProcessRecord) -> bytes:
    """What serde_json's ``to_vec_pretty`` writes for ``record``, written out independently.

    Strings: ``"`` and ``\\`` escaped, the five short escapes (\\b \\f \\n \\r \\t), every
    other control character below U+0020 as ``\\u00xx`` in lowercase hex, all the rest
    (DEL, non-ASCII, U+2028) as raw UTF-8.
    """
    short = {
        '"': '\\"',
        "\\": "\\\\",
        "\b": "\\b",
        "\f": "\\f",
        "\n": "\\n",
        "\r": "\\r",
        "\t": "\\t",
    }

    def string(text: str) -> str:
        return (
            '"'
            + "".join(
                short.get(char, f"\\u{ord(char):04x}" if ord(char) < 0x20 else char)
                for char in text
            )
            + '"'
        )

    def value(item: object) -> str:
        if item is None:
            return "null"
        if isinstance(item, str):
            return string(item)
        return str(item)

    lines = [f'  "{name}": {value(getattr(record, name))}' for name in RECORD_FIELDS]
    return ("{\n" + ",\n".join(lines) + "\n}").encode("utf-8")


def parsed(data: bytes) -> ProcessRecord | RecordError:
    """The record in ``data``, or the RecordError saying why there is none.

    Any other exception propagates: that is the bug the properties look for.
    """
    try:
        return ProcessRecord.from_json_bytes(data)
    except RecordError as exc:
        return exc


@settings(PROPERTY, max_examples=400)
@given(
    st.binary(max_size=300)
    | json_values.map(str.encode)
    | st.text(st.sampled_from('{}[]":, 0123456789-+.eEtruefalsnNIiy\\u\n'), max_size=80).map(
        str.encode
    )
)
@example(b"1" * 4301)  # past Python's integer-string limit: ValueError before the fix
@example(b'{"x": ' + b"7" * 5000 + b"}")
@example(b"[" * 50_000)
@example(b"\xef\xbb\xbf{}")
@example(b'{"pid": 1, "pid": 2}')
@example(b'"\\ud800"')
def test_reading_arbitrary_bytes_fails_only_with_record_error(data: bytes) -> None:
    outcome = parsed(data)
    assert isinstance(outcome, ProcessRecord) or str(outcome)  # an error always says why


@PROPERTY
@given(
    records,
    st.data(),
)
def test_reading_damaged_records_fails_only_with_record_error(
    record: ProcessRecord, data: st.DataObject
) -> None:
    """Near-valid input (a real record with bytes cut, inserted or replaced, or a JSON
    token spliced in) reaches deep into the parser, where random bytes never get."""
    valid = bytearray(record.to_json_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(valid)))
        splice = data.draw(
            st.binary(max_size=4)
            | json_values.map(str.encode)
            | st.sampled_from([b"NaN", b"-Infinity", b"-0", b"\\ud800", b"\xed\xa0\x80"])
        )
        cut = data.draw(st.integers(0, 3))
        valid[at : at + cut] = splice
    outcome = parsed(bytes(valid))
    assert isinstance(outcome, ProcessRecord) or str(outcome)


@PROPERTY
@given(records)
def test_a_valid_record_round_trips_byte_for_byte_in_serde_pretty_format(
    record: ProcessRecord,
) -> None:
    data = record.to_json_bytes()
    assert data == serde_pretty(record)
    assert data == json.dumps(dataclasses.asdict(record), indent=2, ensure_ascii=False).encode()
    again = ProcessRecord.from_json_bytes(data)
    assert again == record
    assert again.to_json_bytes() == data


@PROPERTY
@given(records, st.data())
def test_unknown_fields_are_ignored_and_missing_optional_fields_read_as_none(
    record: ProcessRecord, data: st.DataObject
) -> None:
    """Fields in any order, any JSON whitespace, optional ``None`` fields left out or null,
    and unknown fields (repeated, nested, holding any JSON value) between them."""
    pairs = []
    for name in RECORD_FIELDS:
        value = getattr(record, name)
        if value is None and name in OPTIONAL_FIELDS and data.draw(st.booleans()):
            continue  # missing reads as None
        pairs.append((json.dumps(name), json.dumps(value, ensure_ascii=data.draw(st.booleans()))))
    extras = data.draw(st.lists(st.tuples(unknown_keys.map(json.dumps), json_values), max_size=5))
    extras += extras[: data.draw(st.integers(0, len(extras)))]  # an unknown field twice
    members = data.draw(st.permutations(pairs + extras))
    ws = [data.draw(WHITESPACE) for _ in range(4 * len(members) + 2)]
    text = (
        ws[0]
        + "{"
        + ",".join(
            f"{ws[4 * i + 1]}{key}{ws[4 * i + 2]}:{ws[4 * i + 3]}{value}{ws[4 * i + 4]}"
            for i, (key, value) in enumerate(members)
        )
        + "}"
        + ws[-1]
    )
    assert ProcessRecord.from_json_bytes(text.encode("utf-8")) == record


@PROPERTY
@given(records, st.sampled_from(RECORD_FIELDS), st.data())
def test_a_known_field_given_twice_is_refused(
    record: ProcessRecord, twice: str, data: st.DataObject
) -> None:
    fields = dataclasses.asdict(record)
    members = [f"{json.dumps(name)}: {json.dumps(value)}" for name, value in fields.items()]
    at = data.draw(st.integers(0, len(members)))
    members.insert(at, f"{json.dumps(twice)}: {json.dumps(fields[twice])}")
    with pytest.raises(RecordError, match=f"duplicate field `{twice}`"):
        ProcessRecord.from_json_bytes(("{" + ", ".join(members) + "}").encode())


@PROPERTY
@given(
    records,
    st.sampled_from(RECORD_FIELDS),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "-0", "1.5", "true", "[]", "{}"]),
)
def test_a_value_serde_json_refuses_for_a_field_is_refused(
    record: ProcessRecord, name: str, token: str
) -> None:
    """serde_json has no NaN or Infinity, reads ``-0`` as a float, and takes no number for a
    string field nor a non-integer for an integer field."""
    fields = {key: json.dumps(value) for key, value in dataclasses.asdict(record).items()}
    fields[name] = token
    text = "{" + ", ".join(f'"{key}": {value}' for key, value in fields.items()) + "}"
    with pytest.raises(
        RecordError, match="not JSON" if token.lstrip("-") in ("NaN", "Infinity") else f"`{name}`"
    ):
        ProcessRecord.from_json_bytes(text.encode())


@PROPERTY
@given(records, st.sampled_from(["NaN", "Infinity", "-Infinity"]))
def test_nan_or_infinity_even_in_an_unknown_field_is_not_json(
    record: ProcessRecord, token: str
) -> None:
    data = record.to_json_bytes()[:-1] + f', "extra": [{token}]}}'.encode()
    with pytest.raises(RecordError, match="not JSON"):
        ProcessRecord.from_json_bytes(data)


@PROPERTY
@given(records, st.sampled_from(["executable", "cwd", "transport", "bind", "http_path"]))
def test_a_lone_surrogate_in_a_text_field_is_refused_both_ways(
    record: ProcessRecord, name: str
) -> None:
    broken = ProcessRecord(**{**dataclasses.asdict(record), name: "a\ud800b"})
    with pytest.raises(RecordError):
        broken.to_json_bytes()
    text = json.dumps(dataclasses.asdict(broken))  # escapes it as \ud800
    with pytest.raises(RecordError, match=f"`{name}`"):
        ProcessRecord.from_json_bytes(text.encode())
    assert parsed(record.to_json_bytes()) == record
