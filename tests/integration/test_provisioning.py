"""`python -m infra.aws` and the LocalStack hook provision what the topology declares.

The hook (localstack/init/ready.d/10-conveyor.sh) is generated from the topology and
compared byte for byte; provisioning runs as a process against moto's server and is
checked with boto3; the generated script itself runs against moto through an `awslocal`
stand-in when the AWS CLI is installed.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import uuid
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import boto3
import pytest

from infra import aws_script
from libs.common import topology
from libs.common.settings import Settings
from tests.servers import MotoServer, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
POOLS = ("shared", "gpu")
DELIVERY_LIMIT = 3
VISIBILITY = 45


def base_env() -> dict[str, str]:
    """This process's environment without Conveyor's settings or any AWS_ variable."""
    ours = {f.metadata["env"] for f in fields(Settings)}
    return {k: v for k, v in os.environ.items() if k not in ours and not k.startswith("AWS_")}


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.aws", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def redrive(arn: str, max_receive_count: int) -> str:
    return json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": max_receive_count})


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@dataclass
class Target:
    """A unique prefix and bucket on the shared moto server, and boto3 clients for it."""

    env: dict[str, str]
    prefix: str
    bucket: str
    sqs: Any
    s3: Any

    def queues(self) -> list[topology.SqsQueue]:
        return topology.sqs_queues(self.prefix, POOLS, DELIVERY_LIMIT, VISIBILITY)

    def url(self, name: str) -> str:
        return str(self.sqs.get_queue_url(QueueName=name)["QueueUrl"])

    def attributes(self, name: str) -> dict[str, str]:
        found = self.sqs.get_queue_attributes(QueueUrl=self.url(name), AttributeNames=["All"])
        return {k: v for k, v in found["Attributes"].items() if not k.startswith("Approximate")}

    def set(self, name: str, **attributes: str) -> None:
        self.sqs.set_queue_attributes(QueueUrl=self.url(name), Attributes=attributes)


@pytest.fixture
def target(moto: MotoServer) -> Target:
    token = uuid.uuid4().hex[:10]
    prefix, bucket = f"prov{token}", f"prov-{token}"
    env = {
        **base_env(),
        **moto.env,
        "QUEUE_PREFIX": prefix,
        "STORAGE_URL": f"s3://{bucket}/data",
        "DELIVERY_LIMIT": str(DELIVERY_LIMIT),
        "SQS_VISIBILITY_TIMEOUT": str(VISIBILITY),
    }
    session = boto3.Session(
        aws_access_key_id=moto.access_key,
        aws_secret_access_key=moto.secret_key,
        region_name=moto.region,
    )
    sqs = session.client("sqs", endpoint_url=moto.endpoint)
    s3 = session.client("s3", endpoint_url=moto.endpoint)
    return Target(env, prefix, bucket, sqs, s3)


# --------------------------------------------------------------------------- the hook


def test_the_committed_hook_is_generated_from_the_topology() -> None:
    env = {"STORAGE_URL": "s3://conveyor"}  # what `env -i STORAGE_URL=... python` sees
    generated = subprocess.run(
        [sys.executable, "-m", "infra.aws", "--print-script"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=60,
        check=True,
    ).stdout
    hook = ROOT / aws_script.HOOK
    assert hook.read_bytes() == generated, (
        f"{aws_script.HOOK} is stale; regenerate it:\n{aws_script.REGENERATE}"
    )
    assert hook.stat().st_mode & stat.S_IXUSR, f"LocalStack runs hooks directly: chmod +x {hook}"
    for name in ("conveyor-dead", "conveyor-jobs", "conveyor-events", "conveyor-tasks-shared"):
        assert f"queue {name} " in generated.decode()


# --------------------------------------------------------------------------- provisioning


def test_creates_queues_with_redrive_policy_and_the_bucket(target: Target) -> None:
    out = ok(run(target.env, "--pools", ",".join(POOLS)))
    p = target.prefix
    names = {f"{p}-dead", f"{p}-jobs", f"{p}-events", f"{p}-tasks-shared", f"{p}-tasks-gpu"}
    assert {q.name for q in target.queues()} == names  # the names kombu's SQS transport uses
    listed = target.sqs.list_queues(QueueNamePrefix=p).get("QueueUrls", [])
    assert {url.rsplit("/", 1)[1] for url in listed} == names
    dead_arn = target.attributes(f"{p}-dead")["QueueArn"]
    for queue in target.queues():
        attributes = target.attributes(queue.name)
        assert attributes["VisibilityTimeout"] == str(VISIBILITY)
        assert f"created queue {queue.name}" in out
        if queue.name == f"{p}-dead":
            assert "RedrivePolicy" not in attributes
            continue
        policy = json.loads(attributes["RedrivePolicy"])
        assert policy["deadLetterTargetArn"] == dead_arn
        assert int(policy["maxReceiveCount"]) == DELIVERY_LIMIT + 1
    target.s3.head_bucket(Bucket=target.bucket)
    assert f"created bucket {target.bucket}" in out


def test_a_second_run_changes_nothing(target: Target) -> None:
    ok(run(target.env, "--pools", ",".join(POOLS)))
    before = {q.name: target.attributes(q.name) for q in target.queues()}
    out = ok(run(target.env, "--pools", ",".join(POOLS)))
    assert "created" not in out and "updated" not in out, out
    assert out.count(": up to date") == len(before) + 1  # the queues and the bucket
    assert {q.name: target.attributes(q.name) for q in target.queues()} == before


def test_check_finds_each_difference_and_a_run_repairs_them(target: Target) -> None:
    pools = ",".join(POOLS)
    ok(run(target.env, "--pools", pools))
    assert "OK" in ok(run(target.env, "--check", "--pools", pools))

    p = target.prefix
    jobs_arn = target.attributes(f"{p}-jobs")["QueueArn"]
    target.set(f"{p}-tasks-shared", VisibilityTimeout="10")
    target.set(f"{p}-events", RedrivePolicy=redrive(target.attributes(f"{p}-dead")["QueueArn"], 9))
    target.set(f"{p}-dead", RedrivePolicy=redrive(jobs_arn, 2))  # a DLQ redrives nowhere
    target.s3.delete_bucket(Bucket=target.bucket)
    unchanged = {q.name: target.attributes(q.name) for q in target.queues()}

    checked = run(target.env, "--check", "--pools", pools)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    out = checked.stdout
    assert f"queue {p}-tasks-shared differs: VisibilityTimeout is 10, want {VISIBILITY}" in out
    assert f"queue {p}-events differs: RedrivePolicy.maxReceiveCount is 9, want 4" in out
    assert f"RedrivePolicy.deadLetterTargetArn is {jobs_arn}, want unset" in out
    assert f"bucket {target.bucket}: missing" in out
    assert "5 difference(s)" in out and "python -m infra.aws" in out
    assert "Traceback" not in checked.stderr
    assert {q.name: target.attributes(q.name) for q in target.queues()} == unchanged

    out = ok(run(target.env, "--pools", pools))
    assert f"updated queue {p}-tasks-shared: VisibilityTimeout 10 -> {VISIBILITY}" in out
    assert f"updated queue {p}-events: RedrivePolicy.maxReceiveCount 9 -> 4" in out
    assert f"updated queue {p}-dead: RedrivePolicy.deadLetterTargetArn {jobs_arn} -> unset" in out
    assert "RedrivePolicy" not in target.attributes(f"{p}-dead")
    ok(run(target.env, "--check", "--pools", pools))


def test_check_changes_nothing_where_nothing_exists(target: Target) -> None:
    checked = run(target.env, "--check")
    assert checked.returncode == 1
    for queue in topology.sqs_queues(target.prefix, ("shared",), DELIVERY_LIMIT, VISIBILITY):
        assert f"queue {queue.name}: missing" in checked.stdout
    assert f"bucket {target.bucket}: missing" in checked.stdout
    assert not target.sqs.list_queues(QueueNamePrefix=target.prefix).get("QueueUrls")


def test_without_an_s3_storage_url_only_queues_are_made(target: Target) -> None:
    out = ok(run({**target.env, "STORAGE_URL": "file:///tmp/conveyor-storage"}))
    assert "no bucket: STORAGE_URL is not s3://" in out
    assert f"queue {target.prefix}-tasks-shared" in out


def test_an_sqs_broker_url_with_a_host_is_the_sqs_endpoint(
    target: Target, moto: MotoServer
) -> None:
    """As for the services: BROKER_URL=sqs://key:secret@host:port names SQS's endpoint."""
    env = {k: v for k, v in target.env.items() if k != "AWS_ENDPOINT_URL"}
    env["AWS_ENDPOINT_URL_S3"] = moto.endpoint
    env["BROKER_URL"] = f"sqs://{moto.access_key}:{moto.secret_key}@127.0.0.1:{moto.port}"
    ok(run(env))
    assert target.attributes(f"{target.prefix}-tasks-shared")["VisibilityTimeout"] == "45"


@pytest.mark.parametrize(
    ("change", "args", "code", "expected"),
    [
        ({"SQS_VISIBILITY_TIMEOUT": "1m"}, (), 2, "invalid setting: SQS_VISIBILITY_TIMEOUT"),
        ({"DELIVERY_LIMIT": "0"}, (), 2, "invalid setting: DELIVERY_LIMIT"),
        ({"STORAGE_URL": "s3://Not_A_Bucket/x"}, (), 2, "not a valid S3 bucket name"),
        ({"QUEUE_PREFIX": "q" * 80}, (), 2, "too long for SQS"),
        ({}, ("--pools", "a b"), 2, "--pools: comma-separated names"),
        ({"AWS_ENDPOINT_URL": "UNREACHABLE"}, (), 1, "AWS: Could not connect to the endpoint"),
        ({"AWS_ACCESS_KEY_ID": ""}, (), 1, "Unable to locate credentials (set AWS_ACCESS_KEY_ID"),
    ],
)
def test_bad_input_fails_with_one_line(
    target: Target, change: dict[str, str], args: tuple[str, ...], code: int, expected: str
) -> None:
    env = {**target.env, **change}
    if env["AWS_ENDPOINT_URL"] == "UNREACHABLE":
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{free_port()}"
    if not env["AWS_ACCESS_KEY_ID"]:
        del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
        env.update(AWS_SHARED_CREDENTIALS_FILE=os.devnull, AWS_CONFIG_FILE=os.devnull)
        env["AWS_EC2_METADATA_DISABLED"] = "true"
    result = run(env, *args)
    assert result.returncode == code, result.stdout + result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) <= (2 if args else 1)  # argparse: + usage
    assert not target.sqs.list_queues(QueueNamePrefix=target.prefix).get("QueueUrls")


# --------------------------------------------------------------------------- the script, run


def test_the_generated_script_converges_existing_queues(target: Target, tmp_path: Path) -> None:
    """The hook's commands really work: against queues made with other attributes, the
    script (through an `awslocal` that is `aws --endpoint-url`) leaves what --check wants."""
    env = {**target.env, "SQS_VISIBILITY_TIMEOUT": "30"}
    ok(run(env, "--pools", "shared"))
    script = tmp_path / "hook.sh"
    script.write_text(ok(run(target.env, "--print-script", "--pools", "shared")))
    script.chmod(0o755)
    stand_in = tmp_path / "bin" / "awslocal"
    stand_in.parent.mkdir()
    aws = Path(sys.executable).with_name("aws")  # the dev group's AWS CLI, in this venv
    stand_in.write_text(f'#!/bin/sh\nexec {aws} --endpoint-url "$AWS_ENDPOINT_URL" "$@"\n')
    stand_in.chmod(0o755)
    path = f"{stand_in.parent}{os.pathsep}{target.env.get('PATH', '')}"
    hook = subprocess.run(
        [str(script)],
        env={**target.env, "PATH": path},
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert hook.returncode == 0, hook.stdout + hook.stderr
    assert f"conveyor: bucket {target.bucket} ready" in hook.stdout
    assert "OK" in ok(run(target.env, "--check", "--pools", "shared"))
