"""`python -m infra.aws --print-script`: the provisioning of infra/aws.py as a POSIX shell
script of `awslocal` commands, for LocalStack's init hooks (`localstack/init/ready.d/`).

The committed hook is this script for the default settings; tests/integration/
test_provisioning.py regenerates it and fails when the two differ.
"""

from __future__ import annotations

import json
import shlex
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from infra.aws import Plan

HOOK = "localstack/init/ready.d/10-conveyor.sh"
REGENERATE = (
    f"env -i STORAGE_URL=s3://conveyor .venv/bin/python -m infra.aws --print-script > {HOOK}"
)
_ARN = "CONVEYORDEADLETTERARN"  # stands for a shell variable until the script is written


def script(plan: Plan) -> str:
    """A POSIX shell script of `awslocal` commands that does what ``aws.provision`` does
    (without reporting differences): idempotent, it creates or updates."""
    q = shlex.quote
    lines = [
        "#!/bin/sh",
        "# Conveyor's SQS queues, dead-letter queue and S3 bucket, for LocalStack's ready.d hook.",
        "# GENERATED from libs/common/topology.py by infra/aws_script.py; do not edit. Regenerate:",
        f"#   {REGENERATE}",
        f"# prefix {plan.prefix}, pools {','.join(plan.pools)}, DELIVERY_LIMIT"
        f" {plan.delivery_limit}, SQS_VISIBILITY_TIMEOUT {plan.visibility_timeout},"
        f" bucket {plan.bucket or '(none)'}",
        "set -eu",
        "",
        "# queue NAME ATTRIBUTES: create the queue or find it (URL in $url), set its attributes.",
        "queue() {",
        '  url=$(awslocal sqs create-queue --queue-name "$1" --query QueueUrl --output text)',
        '  awslocal sqs set-queue-attributes --queue-url "$url" --attributes "$2"',
        '  echo "conveyor: queue $1 ready"',
        "}",
        "# arn: the ARN of the queue at $url",
        "arn() {",
        '  awslocal sqs get-queue-attributes --queue-url "$url" --attribute-names QueueArn'
        " --query Attributes.QueueArn --output text",
        "}",
        "",
    ]
    variables: dict[str, str] = {}
    for queue in plan.queues:
        attributes = q(json.dumps(plan.attributes(queue, {queue.dead_letter_to or "": _ARN})))
        if queue.dead_letter_to is not None:
            attributes = attributes.replace(_ARN, f"'\"${variables[queue.dead_letter_to]}\"'")
        lines.append(f"queue {q(queue.name)} {attributes}")
        if queue.name in {other.dead_letter_to for other in plan.queues}:
            variables[queue.name] = "arn_" + queue.name.replace("-", "_")
            lines.append(f"{variables[queue.name]}=$(arn)")
    if plan.bucket is not None:
        b = q(plan.bucket)
        lines += [
            "",
            'region=${AWS_DEFAULT_REGION:-us-east-1} where=""  # us-east-1 takes no constraint',
            '[ "$region" = us-east-1 ] || where="--create-bucket-configuration'
            ' LocationConstraint=$region"',
            f"awslocal s3api head-bucket --bucket {b} >/dev/null 2>&1 ||"
            f" awslocal s3api create-bucket --bucket {b} $where >/dev/null",
            f"echo {q(f'conveyor: bucket {plan.bucket} ready')}",
        ]
    return "\n".join(lines) + "\n"
