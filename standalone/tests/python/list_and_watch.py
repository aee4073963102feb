"""Lists and watches Functions with the official Python client (argv: kubeconfig path).

Prints one line per step; exits non-zero on any failure. Run by tests/python_client.rs.
"""
import sys
import threading

from kubernetes import client, config, watch

GROUP, VERSION, PLURAL, NS = "kubefaas.io", "v1alpha1", "functions", "default"


def function(name):
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Function",
        "metadata": {"name": name, "labels": {"via": "python"}},
        "spec": {"runtime": "python", "handler": "main.handler", "code": {"inline": "def handler(e, c): return e"}},
    }


def main():
    config.load_kube_config(config_file=sys.argv[1])
    api = client.CustomObjectsApi()
    api.create_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, function("py-first"))
    listed = api.list_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, label_selector="via=python")
    names = [item["metadata"]["name"] for item in listed["items"]]
    assert names == ["py-first"], names
    print("listed", " ".join(names))

    rv = listed["metadata"]["resourceVersion"]
    creator = threading.Timer(0.2, lambda: api.create_namespaced_custom_object(
        GROUP, VERSION, NS, PLURAL, function("py-second")))
    creator.start()
    seen = None
    w = watch.Watch()
    for event in w.stream(api.list_namespaced_custom_object, GROUP, VERSION, NS, PLURAL,
                          resource_version=rv, timeout_seconds=20):
        seen = (event["type"], event["object"]["metadata"]["name"])
        w.stop()
    assert seen == ("ADDED", "py-second"), seen
    print("watched", *seen)

    try:
        api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "missing")
        raise AssertionError("expected 404")
    except client.ApiException as e:
        assert e.status == 404, e.status
    print("not found 404")


if __name__ == "__main__":
    main()
