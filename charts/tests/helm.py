"""Lints and renders a chart with the Helm SDK (Helm's own Go code, v4, as `libhelm_c` in the
`helm-python-sdk` wheel that `make deps` installs into .venv/tests): what `helm lint --strict`
and `helm template` do, without a helm binary or a cluster.

    python helm.py lint CHART [VALUES.yaml ...]       -> the lint report as JSON; exit 1 on findings
    python helm.py template CHART [VALUES.yaml ...]   -> the rendered manifests on stdout

Release "kubefaas" in namespace "kubefaas-system". Values files merge left to right, as `-f`.
"""

import json
import sys

try:
    import helm_python as helm
except ImportError:  # say what to do rather than print a traceback
    sys.exit(
        f"helm.py: {sys.executable} has no helm_python; run `make deps` "
        "(it installs helm-python-sdk into .venv/tests)"
    )

RELEASE = "kubefaas"
NAMESPACE = "kubefaas-system"
# The Kubernetes version lint checks API versions against (the chart's floor is 1.28).
KUBE_VERSION = "v1.33.0"


def values(files):
    merged = {}
    for path in files:
        with open(path, encoding="utf-8") as f:
            merged = merge(merged, helm.values_from_yaml(f.read()))
    return merged


def merge(base, override):
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def lint(chart, files):
    report = helm.lint(
        chart, values(files), strict=True, namespace=NAMESPACE, kube_version=KUBE_VERSION
    )
    print(json.dumps(report, indent=2))
    # Severity 1 is INFO; WARNING (2) and ERROR (3) fail, as with `helm lint --strict`.
    failed = report["errors"] or any(m["severity"] >= 2 for m in report["messages"])
    return 1 if failed else 0


def template(chart, files):
    # `helm template` is an install with a client-only dry run: no cluster is contacted (the
    # empty kubeconfig makes sure of it) and the release lives in memory.
    empty = "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n"
    with helm.Config(
        namespace=NAMESPACE, storage_driver="memory", kubeconfig_content=empty
    ) as config:
        release = config.install(chart, RELEASE, values(files), dry_run="client")
    sys.stdout.write(release["manifest"])
    return 0


def main(argv):
    if len(argv) < 3 or argv[1] not in ("lint", "template"):
        sys.exit(__doc__)
    command, chart, files = argv[1], argv[2], argv[3:]
    print(f"helm.py: Helm SDK {helm.helm_sdk_version()}", file=sys.stderr)
    return {"lint": lint, "template": template}[command](chart, files)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
