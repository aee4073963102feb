"""kubefaas python bootstrap: loads one handler once and serves invocations one at a time.

Private protocol with the kubefaas driver: one JSON object per line over the unix socket named
by KUBEFAAS_CONTROL_SOCKET. The user's stdout/stderr are left alone (they are the invocation's
logs); after each invocation the bootstrap writes the log marker the driver chose to fd 1 so the
driver knows where one invocation's logs end. Standard library only.
"""

import importlib
import json
import os
import socket
import sys
import time
import traceback


class LambdaContext:
    """The Lambda-compatible context object handed to handlers."""

    def __init__(self, init, request):
        self.function_name = init.get("function_name", "")
        self.function_version = init.get("function_version", "")
        self.memory_limit_in_mb = init.get("memory_limit_in_mb", 0)
        self.invoked_function_arn = init.get("function_name", "")
        self.log_group_name = "/kubefaas/" + self.function_name
        self.log_stream_name = init.get("instance_id", "")
        self.aws_request_id = request["id"]
        self.invocation_id = request["id"]
        self.identity = None
        self.client_context = None
        self._deadline_ms = request["deadline_ms"]

    def get_remaining_time_in_millis(self):
        return max(0, int(self._deadline_ms - time.time() * 1000))


def error_of(exc):
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not take the bootstrap down
        message = "<%s whose message cannot be printed>" % type(exc).__name__
    return {"type": type(exc).__name__, "message": message, "stack": traceback.format_exc()}


def end_logs(marker):
    # The user's output must reach the pipe before the marker does.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os.write(1, marker)


def main():
    path = os.environ.pop("KUBEFAAS_CONTROL_SOCKET")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    reader = sock.makefile("rb")

    def send(msg):
        sock.sendall(json.dumps(msg).encode("ascii") + b"\n")

    init = json.loads(reader.readline())
    marker = init["marker"].encode("utf-8")
    code_dir = init["code_dir"]
    sys.path.insert(0, code_dir)
    module_name, _, func_name = init["handler"].rpartition(".")
    try:
        if not module_name or not func_name:
            raise ValueError("handler must be module.function, got %r" % init["handler"])
        module = importlib.import_module(module_name)
        handler = getattr(module, func_name, None)
        if not callable(handler):
            raise AttributeError(
                "module %r has no function %r" % (module_name, func_name)
            )
    except BaseException as exc:  # noqa: B036 - a SystemExit at import is an init error too
        end_logs(marker)
        send({"type": "init_error", "error": error_of(exc)})
        return
    end_logs(marker)
    send({"type": "ready"})

    while True:
        line = reader.readline()
        if not line:
            return
        request = json.loads(line)
        context = LambdaContext(init, request)
        reply = {"type": "result", "id": request["id"]}
        try:
            result = handler(request.get("payload"), context)
            try:
                encoded = json.dumps(result, allow_nan=False)
                reply["ok"] = None
            except (TypeError, ValueError) as exc:
                encoded = None
                reply["error"] = {
                    "type": "ResultNotSerializable",
                    "message": "handler returned a value that is not JSON: %s" % exc,
                    "stack": None,
                }
        except Exception as exc:
            encoded = None
            reply["error"] = error_of(exc)
        end_logs(marker)
        if encoded is None:
            send(reply)
        else:
            # Splice the already-encoded result in rather than encoding it twice.
            # ASCII-escaped JSON also survives lone surrogates, which UTF-8 cannot encode.
            head = json.dumps({"type": "result", "id": request["id"]})
            sock.sendall((head[:-1] + ', "ok": ' + encoded + "}\n").encode("ascii"))


if __name__ == "__main__":
    main()
