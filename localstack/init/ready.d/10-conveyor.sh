#!/bin/sh
# Conveyor's SQS queues, dead-letter queue and S3 bucket, for LocalStack's ready.d hook.
# GENERATED from libs/common/topology.py by infra/aws_script.py; do not edit. Regenerate:
#   env -i STORAGE_URL=s3://conveyor .venv/bin/python -m infra.aws --print-script > localstack/init/ready.d/10-conveyor.sh
# prefix conveyor, pools shared, DELIVERY_LIMIT 5, SQS_VISIBILITY_TIMEOUT 60, bucket conveyor
set -eu

# queue NAME ATTRIBUTES: create the queue or find it (URL in $url), set its attributes.
queue() {
  url=$(awslocal sqs create-queue --queue-name "$1" --query QueueUrl --output text)
  awslocal sqs set-queue-attributes --queue-url "$url" --attributes "$2"
  echo "conveyor: queue $1 ready"
}
# arn: the ARN of the queue at $url
arn() {
  awslocal sqs get-queue-attributes --queue-url "$url" --attribute-names QueueArn --query Attributes.QueueArn --output text
}

queue conveyor-dead '{"VisibilityTimeout": "60"}'
arn_conveyor_dead=$(arn)
queue conveyor-jobs '{"VisibilityTimeout": "60", "RedrivePolicy": "{\"deadLetterTargetArn\": \"'"$arn_conveyor_dead"'\", \"maxReceiveCount\": \"6\"}"}'
queue conveyor-events '{"VisibilityTimeout": "60", "RedrivePolicy": "{\"deadLetterTargetArn\": \"'"$arn_conveyor_dead"'\", \"maxReceiveCount\": \"6\"}"}'
queue conveyor-tasks-shared '{"VisibilityTimeout": "60", "RedrivePolicy": "{\"deadLetterTargetArn\": \"'"$arn_conveyor_dead"'\", \"maxReceiveCount\": \"6\"}"}'

region=${AWS_DEFAULT_REGION:-us-east-1} where=""  # us-east-1 takes no constraint
[ "$region" = us-east-1 ] || where="--create-bucket-configuration LocationConstraint=$region"
awslocal s3api head-bucket --bucket conveyor >/dev/null 2>&1 || awslocal s3api create-bucket --bucket conveyor $where >/dev/null
echo 'conveyor: bucket conveyor ready'
