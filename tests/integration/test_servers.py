"""The throw-away servers of tests/servers.py do what the other tests rely on."""

from __future__ import annotations

import uuid

import psycopg
import pytest
import sqlalchemy as sa
from kombu import Connection, Consumer, Message, Producer, Queue

from tests.servers import PostgresServer, RabbitMQServer, amqp_answers

pytestmark = pytest.mark.integration


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def confirming(rabbitmq: RabbitMQServer) -> Connection:
    return Connection(rabbitmq.url, transport_options={"confirm_publish": True})


def publish(conn: Connection, queue: Queue, body: bytes) -> None:
    Producer(conn.default_channel).publish(
        body, routing_key=queue.name, delivery_mode=2, content_type="application/octet-stream"
    )


# --------------------------------------------------------------------------- RabbitMQ


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of sockets listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.rsplit(":", 1)
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.add(address)
    return found


def test_rabbitmq_listens_on_loopback_only(rabbitmq: RabbitMQServer) -> None:
    assert rabbitmq.url == f"amqp://guest:guest@127.0.0.1:{rabbitmq.port}//"
    assert amqp_answers(rabbitmq.port)
    loopback = {"0100007F"}  # 127.0.0.1, little-endian hex
    assert listening_addresses(rabbitmq.port) == loopback
    assert listening_addresses(rabbitmq.dist_port) == loopback  # Erlang distribution
    assert listening_addresses(rabbitmq.epmd_port) <= loopback | {
        "00000000000000000000000001000000"  # ::1 (epmd always adds loopback)
    }


def test_kombu_publish_confirm_consume(rabbitmq: RabbitMQServer) -> None:
    with confirming(rabbitmq) as conn:
        channel = conn.default_channel
        queue = Queue(unique("confirm"), channel=channel, auto_delete=True)
        queue.declare()
        publish(conn, queue, b"payload")
        # publish() returned, so the broker acked: confirm mode was really on.
        assert channel._confirm_selected

        received: list[Message] = []
        with Consumer(channel, queues=[queue], callbacks=[lambda _b, m: received.append(m)]):
            conn.drain_events(timeout=10)
        assert [m.body for m in received] == [b"payload"]
        received[0].ack()


def test_quorum_queue_delivery_limit_dead_letters(rabbitmq: RabbitMQServer) -> None:
    limit = 2
    with confirming(rabbitmq) as conn:
        channel = conn.default_channel
        dlq = Queue(unique("dlq"), channel=channel, durable=True)
        dlq.declare()
        queue = Queue(
            unique("quorum"),
            channel=channel,
            durable=True,
            queue_arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": limit,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": dlq.name,
            },
        )
        queue.declare()
        publish(conn, queue, b"poison")

        deliveries = 0
        for _ in range(limit + 5):
            message = queue.get(no_ack=False)
            if message is None:
                break
            deliveries += 1
            message.reject(requeue=True)
        # Delivered limit + 1 times, then routed to the dead-letter queue.
        assert deliveries == limit + 1
        assert queue.get(no_ack=False) is None
        dead = dlq.get(no_ack=True)
        assert dead is not None and dead.body == b"poison"

        listing = rabbitmq.rabbitmqctl("list_queues", "--quiet", "name", "type")
        assert f"{queue.name}\tquorum" in listing.splitlines()


QUEUE_ARGUMENTS = {"classic": {}, "quorum": {"x-queue-type": "quorum"}}


@pytest.mark.parametrize(
    ("outage", "queue_types"),
    [
        ("stop", ["classic", "quorum"]),
        # RabbitMQ 3.10.8 (Debian 12): a quorum queue declared a moment before the
        # node is SIGKILLed can come back empty and leaderless (Ra recovers at
        # index 0); only classic queues are checked against a crash.
        ("kill", ["classic"]),
    ],
    ids=["stop", "kill"],
)
def test_broker_outage_keeps_durable_messages(
    rabbitmq: RabbitMQServer, outage: str, queue_types: list[str]
) -> None:
    queues = {
        kind: Queue(unique(f"durable-{kind}"), durable=True, queue_arguments=QUEUE_ARGUMENTS[kind])
        for kind in queue_types
    }
    with confirming(rabbitmq) as conn:
        for kind, queue in queues.items():
            queue.bind(conn.default_channel).declare()
            publish(conn, queue, kind.encode())

    port = rabbitmq.port
    try:
        if outage == "kill":
            rabbitmq.kill()
        else:
            rabbitmq.stop()
        assert not rabbitmq.running
        assert not amqp_answers(port)
    finally:
        rabbitmq.start()  # leave the shared broker running for the other tests
    assert rabbitmq.port == port

    with Connection(rabbitmq.url) as conn:
        for kind, queue in queues.items():
            message = queue.bind(conn.default_channel).get(no_ack=True)
            assert message is not None, f"{kind} message lost"
            assert message.body == kind.encode()
            queue.bind(conn.default_channel).delete()


# --------------------------------------------------------------------------- PostgreSQL


def test_postgres_app_database_exists(postgres: PostgresServer) -> None:
    assert postgres.url == f"postgresql+psycopg://postgres@127.0.0.1:{postgres.port}/conveyor"
    with postgres.connect("conveyor") as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("conveyor",)


def test_pg_url_is_a_fresh_database(pg_url: str, postgres: PostgresServer) -> None:
    url = sa.make_url(pg_url)
    assert url.drivername == "postgresql+psycopg"
    assert url.database is not None and url.database.startswith("t_")

    with psycopg.connect(url.set(drivername="postgresql").render_as_string()) as conn:
        assert conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone() == (0,)
        conn.execute("CREATE TABLE job (id serial PRIMARY KEY, name text NOT NULL)")
        conn.execute("INSERT INTO job (name) VALUES ('a'), ('b')")
        conn.commit()

    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            names = conn.execute(sa.text("SELECT name FROM job ORDER BY id")).scalars().all()
        assert names == ["a", "b"]
    finally:
        engine.dispose()


def test_drop_database_terminates_open_connections(postgres: PostgresServer) -> None:
    name = f"t_{uuid.uuid4().hex}"
    postgres.create_database(name)
    leftover = postgres.connect(name)  # a test that forgot to close its connection
    try:
        postgres.drop_database(name)
    finally:
        leftover.close()
    with postgres.connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
    assert row == (0,)
