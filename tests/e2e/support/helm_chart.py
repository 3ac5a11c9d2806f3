"""Lints and renders a Helm chart offline with Helm's own engine (helm-python-sdk), as
`helm lint --strict` and `helm template --include-crds` would.

Usage: helm_chart.py CHART RELEASE NAMESPACE [VALUES_JSON]

Prints the rendered manifests (CRDs first, then the templates; NOTES.txt left out) as one
YAML stream. Exits 1 with the findings when the chart does not lint cleanly: any finding
above INFO (icon is recommended) counts.
"""

import json
import sys

import helm_python as helm

INFO = 1


def main():
    chart_path, release, namespace = sys.argv[1:4]
    values = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    lint = helm.lint(chart_path, values, strict=True, namespace=namespace)
    findings = lint["errors"] + [m for m in lint["messages"] if m["severity"] > INFO]
    if findings:
        print(json.dumps(findings, indent=2), file=sys.stderr)
        sys.exit(1)
    chart = helm.Chart.load(chart_path)
    documents = [crd["data"] for crd in chart.crds]
    rendered = chart.render(values, name=release, namespace=namespace, is_install=True)
    for name in sorted(rendered):
        if not name.endswith("NOTES.txt") and rendered[name].strip():
            documents.append(f"# Source: {name}\n{rendered[name]}")
    print("".join(f"---\n{doc.strip()}\n" for doc in documents))


if __name__ == "__main__":
    main()
