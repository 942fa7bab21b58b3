"""The SQS half of ``broker``: what kombu's SQS transport does not do. Used by broker.py only.

kombu sends, receives and deletes messages. This module creates the queues with the
attributes ``topology.sqs_queues`` gives them (visibility timeout, redrive policy), or,
with ``create_queues`` off, looks up the queues that provisioning created and hands their
addresses to kombu as ``predefined_queues`` (kombu then never lists nor creates queues).
It also extends leases (ChangeMessageVisibility) and measures queue depth.

The endpoint is the host and port of the URL (``sqs://key:secret@host:port``, plain
HTTP, for LocalStack or moto); without a host it is AWS's, or ``AWS_ENDPOINT_URL_SQS``.
Without credentials in the URL, boto3 finds them as usual (environment, profile, role).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from kombu import Connection

from libs.common import topology

log = logging.getLogger(__name__)

_EXISTS = {"QueueAlreadyExists", "QueueNameExists"}
_MISSING = {"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"}
_GONE = {"ReceiptHandleIsInvalid", "InvalidParameterValue", "MessageNotInflight",
         "AWS.SimpleQueueService.MessageNotInflight"}  # fmt: skip
_THROTTLED = {"RequestThrottled", "ThrottlingException", "Throttling", "ServiceUnavailable"}


@dataclass(frozen=True)
class SqsOptions:
    """How the services use SQS (the ``SQS_*`` settings)."""

    region: str = "us-east-1"
    visibility_timeout: int = 60
    wait_seconds: int = 5
    create_queues: bool = True


class SqsSetupError(RuntimeError):
    """A queue the services need is missing or unusable; the message says what to do."""


def is_transient(exc: BaseException) -> bool:
    """An SQS error worth reconnecting for: the network, throttling, a 5xx."""
    if isinstance(exc, BotoCoreError):
        return True
    if isinstance(exc, ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return status >= 500 or _code(exc) in _THROTTLED
    return False


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class _Snapshot(dict[str, dict[str, str]]):
    """kombu iterates ``predefined_queues`` while other threads may add to it: iterate a copy."""

    def items(self) -> list[tuple[str, dict[str, str]]]:  # type: ignore[override]
        return list(super().items())


class SqsAdmin:
    """Queue addresses and attributes for one ``Broker``; thread-safe."""

    def __init__(self, url: str, prefix: str, delivery_limit: int, options: SqsOptions) -> None:
        parsed = Connection(url)  # parses only
        host, port = parsed.hostname, parsed.port
        self.endpoint = f"http://{host}{f':{port}' if port else ''}" if host else None
        self._key, self._secret = parsed.userid, parsed.password
        self.prefix = prefix
        self.delivery_limit = delivery_limit
        self.options = options
        self.predefined = _Snapshot()  # kombu's predefined_queues when queues are not created
        self._urls: dict[str, str] = {}  # SQS name -> URL
        self._arns: dict[str, str] = {}
        self._lock = threading.RLock()
        self._client: Any = None

    # -- what kombu is told ---------------------------------------------------------------
    def transport_options(self) -> dict[str, Any]:
        wait = self.options.wait_seconds
        options: dict[str, Any] = {
            "region": self.options.region,
            "visibility_timeout": self.options.visibility_timeout,
            "wait_time_seconds": wait,
            "polling_interval": 0 if wait else 0.5,  # long polling does the waiting
            "sqs_base64_encoding": False,  # kombu's JSON as it is: a quarter smaller
            "supports_fanout": self.options.create_queues,  # control over SNS
            "client-config": _client_config(wait),
        }
        if not self.options.create_queues:
            options["predefined_queues"] = self.predefined
        return options

    def ready(self) -> None:
        """Before kombu opens a channel: an empty ``predefined_queues`` would let it create."""
        if not self.options.create_queues and not self.predefined:
            self.ensure(topology.dead_queue(self.prefix).name)

    def prime(self, conn: Connection) -> None:
        """Tell the connection's transport the URLs known here: kombu would otherwise look a
        new queue up with ListQueues, which lags on AWS, and create it again (and fail)."""
        cache = getattr(conn.transport, "_queue_cache", None)
        if cache is not None:
            with self._lock:
                cache.update(self._urls)

    # -- queues ----------------------------------------------------------------------------
    def declare(self, pools: tuple[str, ...]) -> None:
        if not self.options.create_queues:
            self.ready()  # provisioning owns the queues; each is looked up when first used
            return
        for queue in topology.sqs_queues(
            self.prefix, pools, self.delivery_limit, self.options.visibility_timeout
        ):
            self._ensure(queue)

    def ensure(self, name: str) -> str:
        """The URL of the queue called ``name`` (in topology's or SQS's spelling), created
        with its attributes first if it is missing and may be created."""
        queue = topology.sqs_queue(
            self.prefix, name, self.delivery_limit, self.options.visibility_timeout
        )
        url = self._ensure(queue)
        if not self.options.create_queues and name not in self.predefined:
            self.predefined[name] = {"url": url}  # kombu uses both spellings
        return url

    def _ensure(self, queue: topology.SqsQueue) -> str:
        with self._lock:
            url = self._urls.get(queue.name)
            if url is None:
                url = self._create(queue) if self.options.create_queues else self._find(queue.name)
                self._urls[queue.name] = url
                if not self.options.create_queues:
                    self.predefined[queue.name] = {"url": url}
            return url

    def _create(self, queue: topology.SqsQueue) -> str:
        dead_arn = None
        if queue.dead_letter_to:
            dead = topology.sqs_queue(
                self.prefix, queue.dead_letter_to, self.delivery_limit, queue.visibility_timeout
            )
            dead_arn = self._arn(self._ensure(dead))
        attributes = topology.sqs_attributes(queue, dead_arn)
        client = self.client()
        try:
            url: str = client.create_queue(QueueName=queue.name, Attributes=attributes)["QueueUrl"]
            return url
        except ClientError as exc:
            if _code(exc) not in _EXISTS:
                raise
        url = client.get_queue_url(QueueName=queue.name)["QueueUrl"]
        client.set_queue_attributes(QueueUrl=url, Attributes=attributes)
        log.info(
            "SQS queue %s had other attributes; set %s", queue.name, attributes,
            extra={"action": "sqs_converge"},
        )  # fmt: skip
        return url

    def _find(self, name: str) -> str:
        try:
            url: str = self.client().get_queue_url(QueueName=name)["QueueUrl"]
            return url
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise SqsSetupError(
                    f"SQS queue {name} does not exist: with SQS_CREATE_QUEUES=false, "
                    "provisioning creates the queues (python -m infra.aws)"
                ) from None
            raise

    def _arn(self, url: str) -> str:
        with self._lock:
            if url not in self._arns:
                attributes = self.client().get_queue_attributes(
                    QueueUrl=url, AttributeNames=["QueueArn"]
                )["Attributes"]
                self._arns[url] = attributes["QueueArn"]
            return self._arns[url]

    def delete(self, name: str) -> None:
        sqs_name = topology.sqs_name(name)
        with self._lock:
            url = self._urls.pop(sqs_name, None)
        if url is None:
            return
        try:
            self.client().delete_queue(QueueUrl=url)
        except (ClientError, BotoCoreError) as exc:
            log.warning("could not delete SQS queue %s: %s", sqs_name, exc,
                        extra={"action": "sqs_delete"})  # fmt: skip

    def depth(self, name: str) -> int:
        attributes = self.client().get_queue_attributes(
            QueueUrl=self.ensure(name), AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"])

    # -- messages --------------------------------------------------------------------------
    def change_visibility(self, queue_url: str, receipt_handle: str, seconds: int) -> bool:
        """False when the message is no longer ours to keep; transient errors only log."""
        try:
            self.client().change_message_visibility(
                QueueUrl=queue_url, ReceiptHandle=receipt_handle, VisibilityTimeout=seconds
            )
            return True
        except ClientError as exc:
            if _code(exc) in _GONE:
                log.warning("lease lost: %s", exc, extra={"action": "lease_lost"})
                return False
            if not is_transient(exc):
                raise
            log.warning("lease not extended: %s", exc, extra={"action": "lease_retry"})
        except BotoCoreError as exc:
            log.warning("lease not extended: %s", exc, extra={"action": "lease_retry"})
        return True

    def ping(self) -> None:
        try:
            self.client().get_queue_url(
                QueueName=topology.sqs_name(topology.dead_queue(self.prefix).name)
            )
        except ClientError as exc:
            if _code(exc) not in _MISSING:  # an answer all the same
                raise

    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                session = boto3.session.Session(
                    aws_access_key_id=self._key,
                    aws_secret_access_key=self._secret,
                    region_name=self.options.region,
                )
                self._client = session.client(
                    "sqs", endpoint_url=self.endpoint,
                    config=Config(**_client_config(self.options.wait_seconds)),
                )  # fmt: skip
            return self._client


def _client_config(wait_seconds: int) -> dict[str, Any]:
    """botocore: fail fast on a dead endpoint, but outwait a long poll."""
    return {
        "connect_timeout": 5,
        "read_timeout": wait_seconds + 25,
        "retries": {"mode": "standard", "max_attempts": 4},
    }
