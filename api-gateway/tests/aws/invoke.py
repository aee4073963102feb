"""Drives the gateway's Lambda Invoke API with boto3, as a user of AWS's SDK would, and prints
what came back as one JSON object for api-gateway/tests/lambda_api.rs to check.

    python invoke.py ENDPOINT TOKEN
"""

import base64
import json
import sys

import boto3
import botocore.config
import botocore.exceptions

endpoint, token = sys.argv[1], sys.argv[2]


def client(session_token):
    return boto3.client(
        "lambda",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="kubefaas",
        aws_secret_access_key="not-checked",
        aws_session_token=session_token,
        config=botocore.config.Config(retries={"max_attempts": 1}),
    )


lam = client(token)
out = {}

ok = lam.invoke(FunctionName="echo", Payload=json.dumps({"name": "boto"}), LogType="Tail")
out["ok"] = {
    "status": ok["StatusCode"],
    "payload": json.loads(ok["Payload"].read()),
    "function_error": ok.get("FunctionError"),
    "version": ok.get("ExecutedVersion"),
    "log": base64.b64decode(ok["LogResult"]).decode(),
    "request_id": ok["ResponseMetadata"]["HTTPHeaders"].get("x-amzn-requestid"),
}

arn = "arn:aws:lambda:us-east-1:000000000000:function:echo"
by_arn = lam.invoke(FunctionName=arn, Qualifier="$LATEST")
out["by_arn"] = json.loads(by_arn["Payload"].read())

failed = lam.invoke(FunctionName="raises", Payload=b"{}")
out["failed"] = {
    "status": failed["StatusCode"],
    "function_error": failed.get("FunctionError"),
    "payload": json.loads(failed["Payload"].read()),
}

event = lam.invoke(FunctionName="echo", InvocationType="Event", Payload=b'{"name": "later"}')
out["event"] = {
    "status": event["StatusCode"],
    "request_id": event["ResponseMetadata"]["HTTPHeaders"].get("x-amzn-requestid"),
}

dry = lam.invoke(FunctionName="echo", InvocationType="DryRun")
out["dry_run"] = dry["StatusCode"]


def error_of(call):
    try:
        call()
    except botocore.exceptions.ClientError as error:
        return {
            "code": error.response["Error"]["Code"],
            "status": error.response["ResponseMetadata"]["HTTPStatusCode"],
            "message": error.response["Error"].get("Message", ""),
        }
    return None


out["missing"] = error_of(lambda: lam.invoke(FunctionName="no-such-function"))
out["bad_json"] = error_of(lambda: lam.invoke(FunctionName="echo", Payload=b"{not json"))
out["bad_token"] = error_of(lambda: client("kf_00000000deadbeef").invoke(FunctionName="echo"))
out["bad_version"] = error_of(lambda: lam.invoke(FunctionName="echo", Qualifier="7"))

print(json.dumps(out))
