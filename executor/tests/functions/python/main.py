import ctypes
import os
import sys
import time

counter = 0


class CustomError(Exception):
    pass


def fail_deeply():
    raise CustomError("boom")


def handler(event, context):
    global counter
    action = event.get("action")
    if action == "echo":
        return event["data"]
    if action == "context":
        first = context.get_remaining_time_in_millis()
        time.sleep(0.05)
        return {
            "function_name": context.function_name,
            "function_version": context.function_version,
            "memory_limit_in_mb": int(context.memory_limit_in_mb),
            "aws_request_id": context.aws_request_id,
            "invocation_id": context.invocation_id,
            "remaining_ms": [first, context.get_remaining_time_in_millis()],
        }
    if action == "fail":
        fail_deeply()
    if action == "sleep":
        time.sleep(event["seconds"])
        return "slept"
    if action == "hog":
        blocks = []
        for _ in range(event["mb"]):
            blocks.append(bytearray(b"x") * (1 << 20))
        return len(blocks)
    if action == "log":
        print("to-stdout")
        print("to-stderr", file=sys.stderr)
        return "logged"
    if action == "env":
        return {name: os.environ.get(name) for name in event["names"]}
    if action == "counter":
        counter += 1
        return counter
    if action == "crash":
        ctypes.string_at(0)
    if action == "unserializable":
        return {1, 2}
    if action == "spin":
        end = time.time() + event["ms"] / 1000
        n = 0
        while time.time() < end:
            n += 1
        return n
    raise ValueError("unknown action %r" % action)
