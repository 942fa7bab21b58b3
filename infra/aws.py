"""`python -m infra.aws`: Conveyor's SQS queues and S3 bucket, from libs/common/topology.py.

    python -m infra.aws                 create what is missing, update what differs
    python -m infra.aws --check         change nothing; exit 1 with a diff if anything differs
    python -m infra.aws --print-script  the same as `awslocal` commands (a LocalStack hook)

Everything comes from the settings the services read: the names from QUEUE_PREFIX,
DELIVERY_LIMIT, SQS_VISIBILITY_TIMEOUT and the bucket of STORAGE_URL=s3://bucket/prefix;
SQS's endpoint and keys from BROKER_URL=sqs://key:secret@host:port when it names a host,
its region from SQS_REGION. Otherwise boto3's own variables apply (AWS_ENDPOINT_URL,
AWS_ENDPOINT_URL_SQS, AWS_ENDPOINT_URL_S3, AWS_DEFAULT_REGION, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY), as they do for the services.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from kombu import Connection

from infra import aws_script
from libs.common import settings, topology
from libs.common.topology import SqsQueue, sqs_attributes

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


@dataclass(frozen=True)
class Plan:
    prefix: str
    pools: tuple[str, ...]
    delivery_limit: int
    visibility_timeout: int
    queues: list[SqsQueue]
    bucket: str | None

    def attributes(self, queue: SqsQueue, arns: Mapping[str, str]) -> dict[str, str]:
        """What SetQueueAttributes should give ``queue``; ``arns``: the queues' ARNs so far."""
        dead_arn = arns.get(queue.dead_letter_to) if queue.dead_letter_to else None
        return sqs_attributes(queue, dead_arn)


def make_plan(config: settings.Settings, pools: tuple[str, ...]) -> Plan:
    parts = urlsplit(config.storage_url)
    bucket = parts.netloc if parts.scheme == "s3" else None
    if bucket is not None and not _BUCKET.fullmatch(bucket):
        raise ValueError(f"STORAGE_URL: {bucket!r} is not a valid S3 bucket name")
    timeout = config.sqs_visibility_timeout
    queues = topology.sqs_queues(config.queue_prefix, pools, config.delivery_limit, timeout)
    queues.sort(key=lambda q: q.dead_letter_to is not None)  # dead-letter targets first
    for q in queues:
        if len(q.name) > 80:
            raise ValueError(f"queue name {q.name!r} is too long for SQS (80 at most)")
    return Plan(config.queue_prefix, pools, config.delivery_limit, timeout, queues, bucket)


def _flat(attributes: Mapping[str, str]) -> dict[str, str]:
    flat = {"VisibilityTimeout": attributes.get("VisibilityTimeout", "unset")}
    for key, value in json.loads(attributes.get("RedrivePolicy") or "{}").items():
        flat[f"RedrivePolicy.{key}"] = str(value)
    return flat


def differences(want: Mapping[str, str], have: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(attribute, what it is, what it should be) for each attribute not as wanted."""
    w, h = _flat(want), _flat(have)
    keys = sorted(w.keys() | h.keys())
    return [(k, h.get(k, "unset"), w.get(k, "unset")) for k in keys if h.get(k) != w.get(k)]


def provision(plan: Plan, sqs: Any, s3: Any, apply: bool, say: Callable[[str], None]) -> int:
    """Create and update (``apply``) or only compare; ``say`` each finding. Returns the
    number of differences left."""
    arns: dict[str, str] = {}
    left = 0
    for queue in plan.queues:
        url, differ = _queue(queue, plan.attributes(queue, arns), sqs, apply, say)
        left += differ
        if url is not None:
            found = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
            arns[queue.name] = found["Attributes"]["QueueArn"]
    if plan.bucket is None:
        say("no bucket: STORAGE_URL is not s3://bucket/prefix")
    else:
        left += _bucket(plan.bucket, s3, apply, say)
    return left


def _queue(
    queue: SqsQueue, want: dict[str, str], sqs: Any, apply: bool, say: Callable[[str], None]
) -> tuple[str | None, int]:
    """The queue's URL (None: missing) and how many of its attributes still differ."""
    try:
        url: str = sqs.get_queue_url(QueueName=queue.name)["QueueUrl"]
    except sqs.exceptions.QueueDoesNotExist:
        if not apply:
            say(f"queue {queue.name}: missing")
            return None, 1
        url = sqs.create_queue(QueueName=queue.name, Attributes=want)["QueueUrl"]
        say(f"created queue {queue.name}: " + ", ".join(f"{k} {v}" for k, v in _flat(want).items()))
        return url, 0
    have = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    diff = differences(want, have)
    if not diff:
        say(f"queue {queue.name}: up to date")
    elif not apply:
        say(
            f"queue {queue.name} differs: " + "; ".join(f"{k} is {a}, want {b}" for k, a, b in diff)
        )
        return url, len(diff)
    else:
        changed = {key.split(".")[0]: "" for key, _, _ in diff}  # "": remove a RedrivePolicy
        sqs.set_queue_attributes(QueueUrl=url, Attributes={**changed, **want})
        say(f"updated queue {queue.name}: " + ", ".join(f"{k} {a} -> {b}" for k, a, b in diff))
    return url, 0


def _bucket(name: str, s3: Any, apply: bool, say: Callable[[str], None]) -> int:
    try:
        s3.head_bucket(Bucket=name)
        say(f"bucket {name}: up to date")
        return 0
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket"):
            raise
    if not apply:
        say(f"bucket {name}: missing")
        return 1
    region = s3.meta.region_name
    where = {} if region == "us-east-1" else {"LocationConstraint": region}
    s3.create_bucket(Bucket=name, **({"CreateBucketConfiguration": where} if where else {}))
    say(f"created bucket {name}")
    return 0


def _clients(config: settings.Settings) -> tuple[Any, Any]:
    """SQS as the services reach it: the endpoint and keys of BROKER_URL=sqs://key:secret@host:port
    if it names a host, and their region (SQS_REGION, AWS_REGION, AWS_DEFAULT_REGION); S3 as
    libs/common/s3.py does, from boto3's own configuration."""
    retries: Any = {"mode": "standard", "max_attempts": 3}
    options = Config(connect_timeout=5, read_timeout=30, retries=retries)
    url = config.broker_url if (config.broker_url or "").startswith("sqs:") else "sqs://"
    broker = Connection(url)  # parses only
    endpoint = f"http://{broker.hostname}:{broker.port or 80}" if broker.hostname else None
    sqs = boto3.client(
        "sqs",
        region_name=config.sqs_region,
        endpoint_url=endpoint,
        aws_access_key_id=broker.userid or None,
        aws_secret_access_key=broker.password or None,
        config=options,
    )
    return sqs, boto3.client("s3", config=options)


def _describe(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        message = " ".join(str(error.get("Message", "")).split())[:200]
        return f"{exc.operation_name}: {error.get('Code')}: {message}"
    hint = " (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
    hint = hint if isinstance(exc, NoCredentialsError) else ""
    return " ".join(str(exc).split()) + hint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m infra.aws",
        description=__doc__,
        epilog="Settings (environment variables):\n" + settings.describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--pools", default="shared", help="task pools, comma-separated [shared]")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="compare only; exit 1 on a difference")
    mode.add_argument("--print-script", action="store_true", help="print awslocal commands")
    args = parser.parse_args(argv)
    pools = tuple(dict.fromkeys(p.strip() for p in args.pools.split(",") if p.strip()))
    if not pools or not all(c.isalnum() or c in "-_" for c in "".join(pools)):
        parser.error("--pools: comma-separated names of letters, digits, '-' and '_'")
    try:
        config = settings.load()
        plan = make_plan(config, pools)
    except ValueError as exc:  # SettingsError included
        print(f"conveyor: invalid setting: {exc}", file=sys.stderr)
        return 2
    if args.print_script:
        sys.stdout.write(aws_script.script(plan))
        return 0
    try:
        sqs, s3 = _clients(config)
        left = provision(plan, sqs, s3, not args.check, lambda line: print(f"conveyor: {line}"))
    except (BotoCoreError, ClientError) as exc:
        print(f"conveyor: AWS: {_describe(exc)}", file=sys.stderr)
        return 1
    if left:
        print(f"conveyor: {left} difference(s) from the topology; `python -m infra.aws` fixes them")
        return 1
    print(f"conveyor: {len(plan.queues)} queue(s){' and the bucket' if plan.bucket else ''} OK")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
