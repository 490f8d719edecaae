"""An independent Kafka client (confluent-kafka) for Ferry's end-to-end tests.

  kafka_peer.py read BOOTSTRAP TOPIC COUNT    print COUNT records of TOPIC, one JSON line each
  kafka_peer.py write BOOTSTRAP TOPIC ID      produce one binary-mode CloudEvent record
"""
import json
import sys

from confluent_kafka import Consumer, Producer


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


def write(bootstrap, topic, event_id):
    p = Producer({"bootstrap.servers": bootstrap, "batch.num.messages": 1})
    p.produce(topic, key=b"peer", value=b'{"from":"python"}', headers=[
        ("ce_specversion", b"1.0"), ("ce_id", event_id.encode()), ("ce_source", b"/python"),
        ("ce_type", b"interop.test"), ("content-type", b"application/json")])
    if p.flush(30) != 0:
        sys.exit("not delivered")


if __name__ == "__main__":
    verb, bootstrap, topic, arg = sys.argv[1:5]
    if verb == "read":
        read(bootstrap, topic, int(arg))
    else:
        write(bootstrap, topic, arg)
