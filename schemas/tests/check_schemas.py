#!/usr/bin/env python3
"""Cross-checks the Avro schemas and the Rust Avro encoding with fastavro.

fastavro is an Avro implementation independent of the `apache-avro` crate the Rust code
uses, so agreeing with it means the bytes on Kafka follow the Avro specification rather
than one library's reading of it.

Usage:
    pip install fastavro
    INKSTREAM_AVRO_EXAMPLES_DIR=/tmp/avro-examples \
        cargo test -p inkstream-schemas write_examples_for_an_independent_avro_implementation
    python3 schemas/tests/check_schemas.py /tmp/avro-examples

The Rust test writes, for every example event, `<name>.avro.bin` (a raw Avro datum of the
envelope `inkstream.Event`, no container header) and `<name>.json` (the event as an Avro
reader should return it: every field present, `null` for absent optional fields,
timestamps in ms). This script

1. parses every `.avsc` under `schemas/avro/` (except `previous/`) with one shared
   `named_schemas` dict: shared types first, then the payloads, the envelope last;
2. checks that every field default is a valid value of the field's type, and that the
   envelope's `data` union names exactly one record per payload file,
   following the naming convention (`writing/keystroke.avsc` -> `inkstream.writing.Keystroke`);
3. decodes every `.avro.bin` with `fastavro.schemaless_reader`, checks that it equals the
   `.json` and that the `data` branch is the record of the event's `type`, and that
   fastavro's own encoding of the `.json` is byte-for-byte the Rust encoding;
4. checks that every payload type has at least one example.

Exits with status 1 and a message per problem on any failure.
"""

import datetime
import io
import json
import sys
from pathlib import Path

try:
    import fastavro
except ImportError:  # pragma: no cover - depends on the environment
    sys.exit("check_schemas.py: fastavro is not installed (pip install fastavro)")

AVRO_DIR = Path(__file__).resolve().parent.parent / "avro"
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def schema_files():
    """Every schema file in parse order: common types, payloads, envelope last."""
    common = sorted((AVRO_DIR / "common").glob("*.avsc"))
    payloads = sorted(
        path
        for directory in sorted(AVRO_DIR.iterdir())
        if directory.is_dir() and directory.name not in ("common", "previous")
        for path in directory.glob("*.avsc")
    )
    envelope = AVRO_DIR / "envelope.avsc"
    return common, payloads, envelope


def record_name(category, name):
    """`writing`, `session_ended` -> `inkstream.writing.SessionEnded`."""
    pascal = "".join(part.capitalize() for part in name.split("_"))
    return f"inkstream.{category}.{pascal}"


def load_schemas(errors):
    """Parses every schema with a shared named_schemas dict; returns (envelope, {type: record})."""
    common, payloads, envelope_path = schema_files()
    named = {}
    for path in common + payloads + [envelope_path]:
        rel = path.relative_to(AVRO_DIR)
        try:
            with open(path, encoding="utf-8") as f:
                schema = json.load(f)
            parsed = fastavro.parse_schema(schema, named_schemas=named)
        except Exception as e:  # fastavro raises several exception types
            errors.append(f"{rel}: does not parse: {e}")
            continue
        if path == envelope_path:
            envelope = parsed
    if errors:
        return None, {}

    for path in common + payloads + [envelope_path]:
        check_defaults(path, named, errors)

    records = {}
    for path in payloads:
        category, name = path.parent.name, path.stem
        expected = record_name(category, name)
        with open(path, encoding="utf-8") as f:
            schema = json.load(f)
        actual = f"{schema.get('namespace')}.{schema.get('name')}"
        if actual != expected:
            errors.append(f"{path.relative_to(AVRO_DIR)}: record is {actual}, expected {expected}")
        records[f"{category}.{name}"] = expected

    data = next((f for f in envelope["fields"] if f["name"] == "data"), None)
    if data is None or not isinstance(data["type"], list):
        errors.append("envelope.avsc: the data field must be a union")
        return None, records
    branches = [b if isinstance(b, str) else b.get("name") for b in data["type"]]
    if sorted(branches) != sorted(records.values()):
        missing = sorted(set(records.values()) - set(branches))
        extra = sorted(set(branches) - set(records.values()))
        errors.append(
            f"envelope.avsc: the data union does not match the payload files "
            f"(missing: {missing}, without a file: {extra})"
        )
    if len(set(branches)) != len(branches):
        errors.append("envelope.avsc: the data union names a record twice")
    return envelope, records


def check_defaults(path, named, errors):
    """Every field default is a valid value of the field's type (of a union's first branch)."""
    with open(path, encoding="utf-8") as f:
        schema = json.load(f)
    for field in schema.get("fields", []):
        if "default" not in field:
            continue
        field_type = field["type"]
        branch = field_type[0] if isinstance(field_type, list) else field_type
        probe = {
            "type": "record",
            "name": "DefaultProbe",
            "namespace": "inkstream.check",
            "fields": [{"name": "value", "type": branch}],
        }
        try:
            parsed = fastavro.parse_schema(probe, named_schemas=dict(named))
            fastavro.validation.validate({"value": field["default"]}, parsed, raise_errors=True)
        except Exception as e:
            errors.append(
                f"{path.relative_to(AVRO_DIR)}: field {field['name']}: the default "
                f"{field['default']!r} is not a valid {json.dumps(branch)}: {e}"
            )


def normalize(value):
    """fastavro's decoded form -> JSON form: timestamps become ms since the epoch."""
    if isinstance(value, datetime.datetime):
        return (value - EPOCH) // datetime.timedelta(milliseconds=1)
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize(v) for v in value]
    return value


def describe_difference(decoded, expected, path="event"):
    """The first difference between two JSON-like values, as a readable string."""
    if isinstance(decoded, dict) and isinstance(expected, dict):
        for key in sorted(set(decoded) | set(expected)):
            if key not in decoded:
                return f"{path}.{key}: missing from the decoded record"
            if key not in expected:
                return f"{path}.{key}: decoded but not expected ({decoded[key]!r})"
            diff = describe_difference(decoded[key], expected[key], f"{path}.{key}")
            if diff:
                return diff
        return None
    if isinstance(decoded, list) and isinstance(expected, list) and len(decoded) == len(expected):
        for i, (d, e) in enumerate(zip(decoded, expected)):
            diff = describe_difference(d, e, f"{path}[{i}]")
            if diff:
                return diff
        return None
    if decoded != expected or isinstance(decoded, bool) != isinstance(expected, bool):
        return f"{path}: decoded {decoded!r}, expected {expected!r}"
    return None


def check_example(bin_path, envelope, records, errors):
    """Checks one example; returns its event type (or None)."""
    name = bin_path.name[: -len(".avro.bin")]
    json_path = bin_path.with_name(f"{name}.json")
    if not json_path.exists():
        errors.append(f"{bin_path.name}: no matching {json_path.name}")
        return None
    with open(json_path, encoding="utf-8") as f:
        expected = json.load(f)
    event_type = expected.get("type")
    if event_type not in records:
        errors.append(f"{json_path.name}: unknown event type {event_type!r}")
        return None

    raw = bin_path.read_bytes()
    buffer = io.BytesIO(raw)
    try:
        decoded = fastavro.schemaless_reader(
            buffer, envelope, None, return_record_name=True, return_record_name_override=True
        )
    except Exception as e:
        errors.append(f"{bin_path.name}: fastavro cannot decode it: {e}")
        return event_type
    if buffer.tell() != len(raw):
        errors.append(f"{bin_path.name}: {len(raw) - buffer.tell()} bytes left after the event")

    branch, data = decoded["data"]
    if branch != records[event_type]:
        errors.append(
            f"{bin_path.name}: data holds {branch} but the type {event_type} needs "
            f"{records[event_type]}"
        )
    decoded = normalize(dict(decoded, data=data))
    diff = describe_difference(decoded, expected)
    if diff:
        errors.append(f"{bin_path.name}: {diff}")
        return event_type

    # The other direction: fastavro's encoding of the expected event is the Rust encoding.
    out = io.BytesIO()
    try:
        fastavro.schemaless_writer(
            out, envelope, dict(expected, data=(records[event_type], expected["data"]))
        )
    except Exception as e:
        errors.append(f"{json_path.name}: fastavro cannot encode it: {e}")
        return event_type
    ours = out.getvalue()
    if ours != raw:
        differences = (i for i, (a, b) in enumerate(zip(ours, raw)) if a != b)
        at = next(differences, min(len(ours), len(raw)))
        errors.append(
            f"{bin_path.name}: fastavro encodes the same event differently: first difference "
            f"at byte {at} (fastavro {len(ours)} bytes, Rust {len(raw)} bytes)"
        )
    return event_type


def main(argv):
    if len(argv) != 2:
        sys.exit(f"usage: {argv[0]} <examples dir written by the Rust test>")
    examples_dir = Path(argv[1])
    errors = []
    envelope, records = load_schemas(errors)
    if envelope is None:
        print("\n".join(f"FAIL {e}" for e in errors), file=sys.stderr)
        return 1

    binaries = sorted(examples_dir.glob("*.avro.bin")) if examples_dir.is_dir() else []
    if not binaries:
        errors.append(
            f"{examples_dir}: no *.avro.bin examples (was INKSTREAM_AVRO_EXAMPLES_DIR set?)"
        )
    covered = {check_example(path, envelope, records, errors) for path in binaries}
    for event_type in sorted(set(records) - covered):
        if binaries:
            errors.append(f"{event_type}: no example")

    framed = check_framed(examples_dir, errors)

    if errors:
        print("\n".join(f"FAIL {e}" for e in errors), file=sys.stderr)
        print(f"{len(errors)} problem(s) with the Avro schemas or examples", file=sys.stderr)
        return 1
    print(f"ok: {framed} Confluent-framed records decode with the published schema alone")
    print(
        f"ok: {len(records)} payload schemas parse with fastavro {fastavro.__version__}; "
        f"{len(binaries)} examples decode to their JSON and re-encode to the same bytes"
    )
    return 0


def check_framed(examples_dir, errors):
    """Decodes `*.framed.bin` (magic 0, 4-byte big-endian schema id, Avro datum) with
    nothing but the published standalone schema (`published.avsc`) and its id
    (`published.id`), as a Confluent consumer with a registry would."""
    published = examples_dir / "published.avsc"
    if not published.exists():
        errors.append(f"{published}: missing (the published envelope schema)")
        return 0
    schema = fastavro.parse_schema(json.loads(published.read_text()))
    schema_id = int((examples_dir / "published.id").read_text())
    count = 0
    for path in sorted(examples_dir.glob("*.framed.bin")):
        raw = path.read_bytes()
        if raw[0] != 0:
            errors.append(f"{path.name}: magic byte {raw[0]}, expected 0")
            continue
        found = int.from_bytes(raw[1:5], "big")
        if found != schema_id:
            errors.append(f"{path.name}: schema id {found}, expected {schema_id}")
            continue
        buf = io.BytesIO(raw[5:])
        record = fastavro.schemaless_reader(buf, schema)
        if buf.read():
            errors.append(f"{path.name}: trailing bytes after the record")
        expected = json.loads((examples_dir / path.name.replace(".framed.bin", ".json")).read_text())
        if normalize(record) != normalize(expected):
            errors.append(f"{path.name}: {describe_difference(normalize(record), normalize(expected))}")
        count += 1
    if count == 0:
        errors.append(f"{examples_dir}: no *.framed.bin examples")
    return count


if __name__ == "__main__":
    sys.exit(main(sys.argv))
