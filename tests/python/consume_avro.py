#!/usr/bin/env python3
"""An independent consumer: confluent-kafka with its Avro deserializer pointed
at inkstream's Schema Registry endpoint. Reads the event topics from the
beginning and prints one JSON line per record whose event id starts with the
given prefix: {"id", "type", "key", "topic", "partition", "headers"}.

Usage: consume_avro.py BROKERS REGISTRY_URL ID_PREFIX EXPECTED [TIMEOUT_S]
"""
import json
import sys
import time

from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

brokers, registry, prefix, expected = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 60.0
topics = [f"inkstream.events.{c}" for c in
          ("writing", "collaboration", "publishing", "analytics", "automation", "system")]
deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry}))
consumer = Consumer({
    "bootstrap.servers": brokers,
    "group.id": f"py-{prefix}-{time.time()}",
    "auto.offset.reset": "earliest",
    # Find topics created after subscribing within a second (default: 5 min).
    "topic.metadata.refresh.interval.ms": 1000,
    "enable.auto.commit": False,
})
consumer.subscribe(topics)
seen = set()
deadline = time.time() + timeout
while len(seen) < expected and time.time() < deadline:
    msg = consumer.poll(0.5)
    if msg is None or msg.error():
        continue
    event = deserializer(msg.value(), SerializationContext(msg.topic(), MessageField.VALUE))
    if not event["id"].startswith(prefix):
        continue
    seen.add(event["id"])
    print(json.dumps({
        "id": event["id"],
        "type": event["type"],
        "ts": event["ts"] if isinstance(event["ts"], int) else int(event["ts"].timestamp() * 1000),
        "key": msg.key().decode(),
        "topic": msg.topic(),
        "partition": msg.partition(),
        "headers": {k: v.decode() for k, v in (msg.headers() or [])},
    }), flush=True)
consumer.close()
print(f"done {len(seen)}", file=sys.stderr)
sys.exit(0 if len(seen) >= expected else 1)
