"""An independent Kafka client (confluent-kafka) for Ferry's end-to-end tests.

  kafka_peer.py read BOOTSTRAP TOPIC COUNT    print COUNT records of TOPIC, one JSON line each
  kafka_peer.py write BOOTSTRAP TOPIC ID      produce one binary-mode CloudEvent record
  kafka_peer.py create BOOTSTRAP TOPIC N      create TOPIC with N partitions
  kafka_peer.py zstd BOOTSTRAP TOPIC ID       produce one binary-mode CloudEvent, zstd-compressed
  kafka_peer.py records BOOTSTRAP TOPIC TAG   produce three records to partition 0: a plain one
                                              (key, headers, JSON value), a binary-mode and a
                                              structured-mode CloudEvent; ids/keys carry TAG
"""
import json
import sys

from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic


def read(bootstrap, topic, count):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "interop-reader",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.subscribe([topic])
    got = 0
    while got < count:
        m = c.poll(30.0)
        if m is None:
            sys.exit(f"only {got} of {count} records within 30 s")
        if m.error():
            sys.exit(str(m.error()))
        headers = {k: v.decode() for k, v in (m.headers() or [])}
        print(json.dumps({"key": m.key().decode() if m.key() else None,
                          "value": m.value().decode() if m.value() else None,
                          "headers": headers}), flush=True)
        got += 1
    c.close()


def write(bootstrap, topic, event_id, compression="none"):
    p = Producer({"bootstrap.servers": bootstrap, "batch.num.messages": 1,
                  "compression.type": compression})
    p.produce(topic, key=b"peer", value=b'{"from":"python"}', headers=[
        ("ce_specversion", b"1.0"), ("ce_id", event_id.encode()), ("ce_source", b"/python"),
        ("ce_type", b"interop.test"), ("content-type", b"application/json")])
    if p.flush(30) != 0:
        sys.exit("not delivered")


def create(bootstrap, topic, partitions):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        future.result(30)


def records(bootstrap, topic, tag):
    p = Producer({"bootstrap.servers": bootstrap, "batch.num.messages": 1})
    p.produce(topic, partition=0, key=f"key-{tag}".encode(), value=b'{"plain":true}',
              headers=[("content-type", b"application/json"), ("X-Trace.Id", tag.encode())])
    p.produce(topic, partition=0, value=b"binary", headers=[
        ("ce_specversion", b"1.0"), ("ce_id", f"bin-{tag}".encode()),
        ("ce_source", b"/python"), ("ce_type", b"interop.binary"),
        ("content-type", b"text/plain")])
    p.produce(topic, partition=0, value=json.dumps({
        "specversion": "1.0", "id": f"json-{tag}", "source": "/python",
        "type": "interop.structured", "data": {"structured": True}}).encode(),
        headers=[("content-type", b"application/cloudevents+json")])
    if p.flush(30) != 0:
        sys.exit("not delivered")


if __name__ == "__main__":
    verb, bootstrap, topic, arg = sys.argv[1:5]
    if verb == "read":
        read(bootstrap, topic, int(arg))
    elif verb == "create":
        create(bootstrap, topic, int(arg))
    elif verb == "records":
        records(bootstrap, topic, arg)
    elif verb == "zstd":
        write(bootstrap, topic, arg, "zstd")
    else:
        write(bootstrap, topic, arg)
