#!/usr/bin/env python3
"""An independent consumer of inkstream's topics through an external Schema
Registry: confluent-kafka's AvroDeserializer with a SchemaRegistryClient
pointed at the registry (which fetches each record's writer schema by the id
in its Confluent framing). Reads TOPICS (comma-separated) from the beginning
and prints one JSON line per record that MATCH selects (`id:<prefix>`: its
`event_id` header starts with it; `key:<key>`: its key is that), decided
before decoding: {"topic", "key", "schema_id" (from the framing),
"schema_id_header", "event"} with the decoded event (`ts` in ms).

Usage: consume_registry.py BROKERS REGISTRY_URL TOPICS MATCH EXPECTED [TIMEOUT_S]
"""
import datetime
import json
import sys
import time

from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

brokers, registry, topics, match = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4]
how, _, what = match.partition(":")
expected = int(sys.argv[5])
timeout = float(sys.argv[6]) if len(sys.argv) > 6 else 60.0
# confluent-kafka sets no HTTP timeout by default: a stalled request would
# hang the consumer past every deadline.
deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry, "timeout": 10}))
consumer = Consumer({
    "bootstrap.servers": brokers,
    "group.id": f"py-registry-{time.time()}",
    "auto.offset.reset": "earliest",
    # Find topics created after subscribing within a second (default: 5 min).
    "topic.metadata.refresh.interval.ms": 1000,
    "enable.auto.commit": False,
})
consumer.subscribe(topics)


def plain(v):
    if isinstance(v, datetime.datetime):
        return int(v.timestamp() * 1000)
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [plain(x) for x in v]
    if isinstance(v, bytes):
        return v.hex()
    return v


seen = 0
deadline = time.time() + timeout
while seen < expected and time.time() < deadline:
    msg = consumer.poll(0.5)
    if msg is None or msg.error():
        continue
    headers = {k: v.decode() for k, v in (msg.headers() or [])}
    key = (msg.key() or b"").decode()
    if how == "id" and not headers.get("event_id", "").startswith(what):
        continue
    if how == "key" and key != what:
        continue
    value = msg.value()
    while True:
        try:
            event = deserializer(value, SerializationContext(msg.topic(), MessageField.VALUE))
            break
        except Exception as e:  # a registry call that timed out: try again
            print(f"decode failed, retrying: {e}", file=sys.stderr, flush=True)
            if time.time() >= deadline:
                raise
            time.sleep(0.5)
    seen += 1
    print(json.dumps({
        "topic": msg.topic(),
        "key": key,
        "schema_id": int.from_bytes(value[1:5], "big"),
        "schema_id_header": headers.get("schema_id"),
        "event": plain(event),
    }), flush=True)
consumer.close()
print(f"done {seen}", file=sys.stderr)
sys.exit(0 if seen >= expected else 1)
