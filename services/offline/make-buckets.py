"""Create the buckets named by the environment variables given as arguments (what the
stack's minio-init job does with mc), against AWS_ENDPOINT_URL. Idempotent."""

import os
import sys

import boto3

s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1",
                  aws_access_key_id=os.environ["MINIO_ROOT_USER"], aws_secret_access_key=os.environ["MINIO_ROOT_PASSWORD"])
existing = {bucket["Name"] for bucket in s3.list_buckets().get("Buckets", [])}
for variable in sys.argv[1:]:
    name = os.environ[variable]
    if name not in existing:
        s3.create_bucket(Bucket=name)
    print(f"bucket {name} ready")
