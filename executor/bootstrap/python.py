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


class CognitoIdentity:
    """The caller's Cognito identity: both ids are None, since no caller brings one."""

    __slots__ = ("cognito_identity_id", "cognito_identity_pool_id")

    def __init__(self):
        self.cognito_identity_id = None
        self.cognito_identity_pool_id = None

    def __repr__(self):
        return "CognitoIdentity([cognito_identity_id=%s,cognito_identity_pool_id=%s])" % (
            self.cognito_identity_id,
            self.cognito_identity_pool_id,
        )


class LambdaContext:
    """The context handed to handlers, with the attributes and types of AWS Lambda's."""

    def __init__(self, init, request):
        self.aws_request_id = request["id"]
        self.invocation_id = request["id"]
        self.log_group_name = init["log_group_name"]
        self.log_stream_name = init["log_stream_name"]
        self.function_name = init["function_name"]
        # A string, as on AWS (which reads it from AWS_LAMBDA_FUNCTION_MEMORY_SIZE).
        self.memory_limit_in_mb = str(init["memory_limit_in_mb"])
        self.function_version = init["function_version"]
        self.invoked_function_arn = init["invoked_function_arn"]
        self.client_context = None
        self.identity = CognitoIdentity()
        self._deadline_ms = request["deadline_ms"]

    def get_remaining_time_in_millis(self):
        return max(0, int(self._deadline_ms - time.time() * 1000))

    def __repr__(self):
        fields = (
            "aws_request_id",
            "log_group_name",
            "log_stream_name",
            "function_name",
            "memory_limit_in_mb",
            "function_version",
            "invoked_function_arn",
            "client_context",
            "identity",
        )
        return "LambdaContext([%s])" % ",".join(
            "%s=%s" % (name, getattr(self, name)) for name in fields
        )


def error_of(exc, skip_frames=0):
    """The structured error of `exc`; its stack leaves out the first `skip_frames` frames (the
    bootstrap's own, above the user's code)."""
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not take the bootstrap down
        message = "<%s whose message cannot be printed>" % type(exc).__name__
    tb = exc.__traceback__
    for _ in range(skip_frames):
        if tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
    try:
        stack = "".join(traceback.format_exception(type(exc), exc, tb))
    except Exception:
        stack = traceback.format_exc()
    return {"type": type(exc).__name__, "message": message, "stack": stack}


class InitError(Exception):
    """A handler that cannot be loaded, typed as AWS Lambda's python runtime types it."""

    def __init__(self, kind, message, cause=None):
        super().__init__(message)
        self.kind = kind
        self.cause = cause


def load_handler(spec):
    """The handler named `module.function`, imported; raises InitError for the failures AWS
    gives a `Runtime.*` type, and lets any other exception raised by the module propagate."""
    module_name, _, func_name = spec.rpartition(".")
    if not module_name or not func_name:
        raise InitError(
            "Runtime.MalformedHandlerName",
            "Bad handler '%s': the handler must be module.function" % spec,
        )
    try:
        module = importlib.import_module(module_name.replace("/", "."))
    except ImportError as exc:
        raise InitError(
            "Runtime.ImportModuleError",
            "Unable to import module '%s': %s" % (module_name, exc),
            exc,
        ) from exc
    except SyntaxError as exc:
        raise InitError(
            "Runtime.UserCodeSyntaxError",
            "Syntax error in module '%s': %s" % (module_name, exc),
            exc,
        ) from exc
    handler = getattr(module, func_name, None)
    if not callable(handler):
        raise InitError(
            "Runtime.HandlerNotFound",
            "Handler '%s' missing on module '%s'" % (func_name, module_name),
        )
    return handler


def init_error_of(exc):
    """The structured error of a failed load: a `Runtime.*` type with the stack of its cause,
    or the user's own exception raised while the module ran."""
    if isinstance(exc, InitError):
        error = error_of(exc.cause, skip_frames=1) if exc.cause else {"stack": None}
        return {"type": exc.kind, "message": str(exc), "stack": error["stack"]}
    return error_of(exc, skip_frames=2)


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
    version = sys.version_info
    os.environ.setdefault("AWS_EXECUTION_ENV", "AWS_Lambda_python%d.%d" % version[:2])
    marker = init["marker"].encode("utf-8")
    code_dir = init["code_dir"]
    sys.path.insert(0, code_dir)
    try:
        handler = load_handler(init["handler"])
    except BaseException as exc:  # noqa: B036 - a SystemExit at import is an init error too
        end_logs(marker)
        send({"type": "init_error", "error": init_error_of(exc)})
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
            reply["error"] = error_of(exc, skip_frames=1)
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
