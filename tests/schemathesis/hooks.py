"""schemathesis hooks for inkstream (tests/tests/schemathesis.rs loads them
through SCHEMATHESIS_HOOKS): how to send an NDJSON body, which schemathesis
has no serializer for. The document's NDJSON body is an array of events;
each item goes on its own line."""

import json

import schemathesis


@schemathesis.serializer("application/x-ndjson", "application/ndjson")
def ndjson(ctx, value):
    items = value if isinstance(value, list) else [value]
    return "".join(json.dumps(item) + "\n" for item in items).encode()
