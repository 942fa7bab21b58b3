"""The two ways the services run in the benchmark: on RabbitMQ with local file storage, or
on SQS with S3 storage (both served by moto), and what differs between them per run:
the settings, how to tell that the queues exist and the workers consume, cleaning up.

On SQS, every process reaches S3 through the metering proxy (``bench.meter``), each on
its own port, and the dispatcher reaches SQS through it too; the workers and the web
service talk to SQS directly. ``--no-meter`` sends everything straight to moto.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import boto3
from botocore.exceptions import ClientError
from kombu import Connection

from bench.services import Service, deadline_loop, service_env
from libs.common import topology
from tests.servers import MotoServer, RabbitMQServer, free_port, port_is_open

POOL = "shared"
# As in the services' defaults; set explicitly so that the benchmark does not drift.
SQS_VISIBILITY_TIMEOUT = 60
SQS_WAIT_SECONDS = 5
_CONSUMING = re.compile(r"worker \S+: consuming")


def task_queue_name(prefix: str) -> str:
    return topology.task_queue(prefix, POOL, 1).name


@dataclass
class Meter:
    service: Service
    ports: dict[str, int]
    log: Path
    sqs_listeners: set[str]


class RabbitBackend:
    name = "rabbitmq"
    storage_kind = "file"

    def __init__(self, rabbit: RabbitMQServer) -> None:
        self.server = rabbit

    def base_env(self, prefix: str, work: Path) -> dict[str, str]:
        storage = work / f"storage-{prefix}"
        storage.mkdir()
        return {"BROKER_URL": self.server.url, "STORAGE_URL": str(storage)}

    def process_env(self, role: str, meter: Meter | None) -> dict[str, str]:
        return {}

    def start_meter(self, roles: list[str], logs: Path, code: Path) -> Meter | None:
        return None

    def queues_declared(self, prefix: str) -> bool:
        return self.queue_info(task_queue_name(prefix)) is not None

    def workers_consuming(self, prefix: str, workers: list[Service]) -> bool:
        info = self.queue_info(task_queue_name(prefix))
        return info is not None and info[1] >= len(workers)

    def object_path(self, prefix: str, key: str) -> str | None:
        return None

    def cleanup(self, prefix: str, work: Path) -> None:
        shutil.rmtree(work / f"storage-{prefix}", ignore_errors=True)

    def queue_info(self, queue: str) -> tuple[int, int] | None:
        """(messages, consumers) of ``queue``, or None if it does not exist (yet)."""
        try:
            with Connection(self.server.url, connect_timeout=5) as conn:
                channel = conn.channel()
                try:
                    ok = channel.queue_declare(queue=queue, passive=True)
                    return int(ok.message_count), int(ok.consumer_count)
                finally:
                    with contextlib.suppress(Exception):
                        channel.close()
        except Exception:  # the passive declare of a missing queue closes the channel with 404
            return None


class SqsBackend:
    name = "sqs"
    storage_kind = "s3"

    def __init__(self, moto: MotoServer, *, meter: bool) -> None:
        self.server = moto
        self.metered = meter
        options: dict[str, Any] = {
            "endpoint_url": moto.endpoint, "region_name": moto.region,
            "aws_access_key_id": moto.access_key, "aws_secret_access_key": moto.secret_key,
        }  # fmt: skip
        self.s3 = boto3.client("s3", **options)
        self.sqs = boto3.client("sqs", **options)

    def broker_url(self, port: int) -> str:
        key, secret = quote(self.server.access_key, safe=""), quote(self.server.secret_key, safe="")
        return f"sqs://{key}:{secret}@127.0.0.1:{port}"

    @staticmethod
    def bucket(prefix: str) -> str:
        return prefix.lower().replace("_", "-")

    def base_env(self, prefix: str, work: Path) -> dict[str, str]:
        self.s3.create_bucket(Bucket=self.bucket(prefix))
        return {
            **self.server.env,
            "BROKER_URL": self.broker_url(self.server.port),
            "STORAGE_URL": f"s3://{self.bucket(prefix)}/conveyor",
            "SQS_VISIBILITY_TIMEOUT": str(SQS_VISIBILITY_TIMEOUT),
            "SQS_WAIT_SECONDS": str(SQS_WAIT_SECONDS),
        }

    def start_meter(self, roles: list[str], logs: Path, code: Path) -> Meter | None:
        """The metering proxy: an S3 listener per role, and one for the dispatcher's SQS."""
        if not self.metered:
            return None
        ports = {role: free_port() for role in [*roles, "dispatcher-sqs"]}
        listeners = [f"{role}={port}" for role, port in ports.items()]
        listeners[-1] += ":sqs"
        log = logs / "meter.jsonl"
        upstream = self.server.endpoint.removeprefix("http://")
        args = ["--upstream", upstream, "--log", str(log), *listeners]
        service = Service.start("meter", "bench.meter", service_env(), logs, code, args)
        meter = Meter(service, ports, log, {"dispatcher-sqs"})
        for _ in deadline_loop(30, 0.1, "the metering proxy to listen"):
            service.check_alive()
            if all(port_is_open(port) for port in ports.values()):
                return meter
        raise AssertionError("unreachable")

    def process_env(self, role: str, meter: Meter | None) -> dict[str, str]:
        """Per process: S3 through its own listener; the dispatcher's SQS through one too.
        Workers log at INFO, for their "consuming" line (they log nothing per task)."""
        env = {"LOG_LEVEL": "INFO"} if role.startswith("worker") else {}
        if meter is None:
            return env
        env["AWS_ENDPOINT_URL_S3"] = f"http://127.0.0.1:{meter.ports[role]}"
        if role == "dispatcher":
            env["BROKER_URL"] = self.broker_url(meter.ports["dispatcher-sqs"])
        return env

    def queues_declared(self, prefix: str) -> bool:
        try:
            self.sqs.get_queue_url(QueueName=topology.sqs_name(task_queue_name(prefix)))
        except ClientError:
            return False
        return True

    def workers_consuming(self, prefix: str, workers: list[Service]) -> bool:
        """SQS has no consumer count: each worker logs ``worker NAME: consuming`` (INFO)."""
        return all(_CONSUMING.search(w.log_text()) for w in workers)

    def object_path(self, prefix: str, key: str) -> str | None:
        """The request path of an object as the proxy logs it."""
        return f"/{self.bucket(prefix)}/conveyor/{key}"

    def cleanup(self, prefix: str, work: Path) -> None:
        """Empty and delete the run's bucket: moto holds objects in memory."""
        bucket = self.bucket(prefix)
        with contextlib.suppress(ClientError):
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    self.s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
            uploads = self.s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
            for upload in uploads:
                self.s3.abort_multipart_upload(
                    Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                )
            self.s3.delete_bucket(Bucket=bucket)


Backend = RabbitBackend | SqsBackend
