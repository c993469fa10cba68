"""Checks of everything the dispatcher ships for Kubernetes and Grafana.

Run by scripts/check-deploy, which provides the tools (helm-python-sdk,
kubernetes-validate, promtool, @grafana/schema + tsc). Every check prints one
line; the script exits 1 if any failed.

  1. helm lint (strict, Kubernetes 1.30) with the default values and with
     every values file in helm/dispatcher/ci/ (all options on).
  2. helm template of the same, plus values that must be refused.
  3. kubernetes-validate -k 1.30 --strict on every rendered manifest.
  4. What the rendered manifests must say (probes, grace period, security
     context, secrets only as references, labels, rules = the plain file).
  5. The rendered dispatcher configs pass `dispatcher validate` (when a
     dispatcher binary is given); the Dockerfile passes hadolint.
  6. promtool check rules / test rules; every alert has a firing test and a
     runbook section in docs/operations.md.
  7. The dashboard JSON: structure, then a type-check against Grafana's own
     schema (@grafana/schema) with tsc.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import yaml

import helm_python as helm

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "dispatcher"
RULES = CHART / "files" / "alerts.yaml"
RULE_TESTS = ROOT / "helm" / "tests" / "alerts.test.yaml"
DASHBOARDS = sorted((CHART / "files" / "dashboards").glob("*.json"))
RUNBOOK = ROOT / "docs" / "operations.md"
KUBE_VERSION = "1.30"
RELEASE = "dispatcher"
NAMESPACE = "dispatch"

failures: list[str] = []


def check(name: str, fn: Callable[[], str | None]) -> None:
    """Run one check; a returned string is shown as detail."""
    try:
        detail = fn()
    except Exception as e:  # noqa: BLE001 - every failure is reported the same way
        failures.append(name)
        print(f"FAIL  {name}\n      {type(e).__name__}: {e}".rstrip())
        return
    print(f"ok    {name}" + (f" ({detail})" if detail else ""))


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, text=True, capture_output=True, **kw)


# ---------------------------------------------------------------- scenarios


def scenarios() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {"default": {}}
    for f in sorted((CHART / "ci").glob("*-values.yaml")):
        out[f.name.removesuffix("-values.yaml")] = yaml.safe_load(f.read_text()) or {}
    # The PrometheusRule with no overrides: must be the plain rule file.
    out["rules-as-shipped"] = {"prometheusRule": {"enabled": True}}
    return out


def render(values: dict[str, Any], name: str = RELEASE) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=name, namespace=NAMESPACE)


def documents(rendered: dict[str, str]) -> list[dict[str, Any]]:
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                docs.append(doc)
    return docs


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def duration_seconds(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+)\s*(ms|s|m|h)", text)
    assert parts and re.fullmatch(r"\s*(\d+\s*(ms|s|m|h)\s*)+", text), f"not a duration: {text!r}"
    return sum(int(n) * units[u] for n, u in parts)


# ---------------------------------------------------------------- chart checks


def lint(values: dict[str, Any]) -> str:
    report = helm.lint(CHART, values or None, strict=True, kube_version=f"v{KUBE_VERSION}.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2] + [
        {"severity": 3, "path": "", "error": e} for e in report.get("errors", [])
    ]
    assert not problems, "; ".join(f"{m['path']}: {m['error']}" for m in problems)
    infos = [m["error"] for m in report["messages"] if m["severity"] < 2]
    return "; ".join(infos) if infos else ""


def kubernetes_validate(files: list[Path], kv: str) -> str:
    r = run([kv, "-k", KUBE_VERSION, "--strict", *map(str, files)])
    out = (r.stdout + r.stderr).strip()
    bad = [line for line in out.splitlines() if not line.startswith(("INFO", "WARN"))]
    assert r.returncode == 0 and not bad, out
    passed = sum(1 for line in out.splitlines() if line.startswith("INFO") and " passed " in line)
    crds = sorted(
        {m.group(1) for m in re.finditer(r"Couldn't find schema for kind (\w+)", out)}
    )
    return f"{passed} resources valid" + (f"; no schema for CRDs {', '.join(crds)}" if crds else "")


def check_manifests(name: str, values: dict[str, Any], docs: list[dict[str, Any]]) -> str:
    merged = helm.Chart.load(CHART).merge_values(values or None)
    kinds = sorted(d["kind"] for d in docs)
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]

    # Probes on the admin port.
    port = merged["metrics"]["port"]
    api = merged["api"]
    expected_ports = [{"name": "metrics", "containerPort": port, "protocol": "TCP"}]
    if api["enabled"]:
        expected_ports.append({"name": "api", "containerPort": api["port"], "protocol": "TCP"})
    assert container["ports"] == expected_ports
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}

    # The kill timeout covers the drain.
    grace = duration_seconds(merged["config"]["pipeline"].get("shutdown_grace", "25s"))
    tgps = pod["terminationGracePeriodSeconds"]
    assert tgps > grace, f"terminationGracePeriodSeconds {tgps} <= shutdown_grace {grace}"
    if merged.get("terminationGracePeriodSeconds") is None:
        assert tgps == math.ceil(grace) + merged["shutdownMarginSeconds"], tgps

    # Non-root, read-only root filesystem, nothing extra.
    sc, psc = container["securityContext"], pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert container["resources"].get("requests"), "resources.requests"

    # The config: from the ConfigMap, admin port reachable, secrets only as
    # ${VAR} from Secret references.
    config_maps = {c["metadata"]["name"]: c for c in by_kind(docs, "ConfigMap")}
    volumes = {v["name"]: v for v in pod["volumes"]}
    cm = config_maps[volumes["config"]["configMap"]["name"]]
    config = yaml.safe_load(cm["data"]["dispatcher.yaml"])
    assert config["admin"]["listen"] == f"0.0.0.0:{port}"

    # The management API: off unless asked for; then on loopback (reached by
    # port-forward) unless told otherwise, its token from a Secret.
    env_by_name = {e["name"]: e for e in container.get("env", [])}
    if api["enabled"]:
        host = "127.0.0.1" if api["loopbackOnly"] else "0.0.0.0"
        assert config["api"]["listen"] == f"{host}:{api['port']}", config["api"]
        assert config["api"]["tokens"] == ["${DISPATCHER_API_TOKEN}"]
        ref = env_by_name["DISPATCHER_API_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": api["tokenSecret"]["name"], "key": api["tokenSecret"]["key"]}, ref
    else:
        assert "api" not in config and "DISPATCHER_API_TOKEN" not in env_by_name

    # The NetworkPolicy: on by default; the metrics port open, the API port
    # only to the listed peers, egress never to link-local or metadata.
    policies = by_kind(docs, "NetworkPolicy")
    assert bool(policies) == merged["networkPolicy"]["enabled"]
    if policies:
        (np,) = policies
        assert np["spec"]["podSelector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
        ingress = np["spec"]["ingress"]
        ports = [p["port"] for rule in ingress for p in rule["ports"]]
        api_open = api["enabled"] and not api["loopbackOnly"] and bool(merged["networkPolicy"]["api"]["from"])
        assert ports == (["metrics", "api"] if api_open else ["metrics"]), ports
        for rule in ingress:
            if rule["ports"][0]["port"] == "api":
                assert rule.get("from"), "the API port is never open to every peer"
        if merged["networkPolicy"]["egress"]["enabled"]:
            blocks = [t["ipBlock"] for rule in np["spec"]["egress"] for t in rule.get("to", [])]
            refused = {c for b in blocks for c in b.get("except", [])}
            for cidr in ("169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128", "fd20:ce::254/128", "192.0.0.192/32"):
                assert cidr in refused, f"egress allows {cidr}"
    assert container["args"][-2:] == ["--config", "/etc/dispatcher/dispatcher.yaml"]
    from_secrets = {
        e["name"] for e in container.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})
    }
    for ep in config.get("endpoints") or []:
        for s in ([ep["secret"]] if "secret" in ep else []) + ep.get("secrets", []):
            m = re.fullmatch(r"\$\{([A-Za-z0-9_]+)\}", s)
            assert m, f"endpoint {ep['id']}: secret is not a ${{VAR}} reference"
            assert m.group(1) in from_secrets, f"{m.group(1)} does not come from a Secret"
    everything = json.dumps(docs)
    assert "whsec_" not in everything, "a whsec_ secret in the manifests"
    assert "hooks.slack.com" not in everything, "a Slack webhook URL in the manifests"
    assert not by_kind(docs, "Secret"), "the chart must not create Secrets"

    # Pods roll when the config changes.
    annotations = dep["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])

    # The metrics Service selects the pods.
    svc = one(docs, "Service")
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert svc["spec"]["ports"][0]["targetPort"] == "metrics"

    # PDB, autoscalers.
    pdb = by_kind(docs, "PodDisruptionBudget")
    assert bool(pdb) == merged["podDisruptionBudget"]["enabled"]
    hpa, keda = by_kind(docs, "HorizontalPodAutoscaler"), by_kind(docs, "ScaledObject")
    assert bool(hpa) == merged["autoscaling"]["enabled"]
    assert bool(keda) == merged["keda"]["enabled"]
    assert ("replicas" in dep["spec"]) == (not hpa and not keda), "replicas with an autoscaler"
    for scaler in hpa + keda:
        assert scaler["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    if keda:
        (trigger,) = keda[0]["spec"]["triggers"]
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka" and "${" not in meta["bootstrapServers"]
        assert meta["consumerGroup"] == merged["config"]["kafka"]["group_id"]
        assert all(isinstance(v, str) for v in meta.values()), "KEDA metadata values are strings"

    # Prometheus-operator objects.
    sm = by_kind(docs, "ServiceMonitor")
    assert bool(sm) == merged["serviceMonitor"]["enabled"]
    if sm:
        (endpoint,) = sm[0]["spec"]["endpoints"]
        assert endpoint["port"] == "metrics" and endpoint["honorLabels"] is True
        assert sm[0]["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        assert {"action": "replace", "targetLabel": "job", "replacement": merged["metrics"]["jobName"]} in endpoint["relabelings"]
    rules = by_kind(docs, "PrometheusRule")
    assert bool(rules) == merged["prometheusRule"]["enabled"]

    # The dashboards, for the Grafana sidecar.
    dashboards = [c for c in config_maps.values() if "-dashboard-" in c["metadata"]["name"]]
    assert bool(dashboards) == merged["dashboards"]["enabled"]
    for d in dashboards:
        label = merged["dashboards"]["label"]
        assert d["metadata"]["labels"][label] == merged["dashboards"]["labelValue"]
        for key, text in d["data"].items():
            assert json.loads(text) == json.loads((CHART / "files" / "dashboards" / key).read_text())

    # Labels: the recommended ones everywhere.
    for d in docs:
        labels = d["metadata"].get("labels", {})
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "helm.sh/chart"):
            assert key in labels, f"{d['kind']} {d['metadata']['name']}: no {key} label"
    return ", ".join(f"{k}" for k in kinds)


def check_rules_object(name: str, values: dict[str, Any], docs: list[dict[str, Any]], promtool: str, tmp: Path) -> str:
    (rule,) = by_kind(docs, "PrometheusRule")
    groups = rule["spec"]["groups"]
    path = tmp / f"prometheusrule-{name}.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    r = run([promtool, "check", "rules", str(path)])
    assert r.returncode == 0, r.stdout + r.stderr
    shipped = yaml.safe_load(RULES.read_text())["groups"]
    pr = values.get("prometheusRule", {})
    if not any(pr.get(k) for k in ("overrides", "disabled", "additionalAlertLabels", "additionalGroups", "runbookBaseUrl")):
        assert groups == shipped, "the PrometheusRule differs from files/alerts.yaml"
        return "same rules as files/alerts.yaml; promtool check rules ok"
    alerts = {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}
    for disabled in pr.get("disabled", {}):
        assert disabled not in alerts, f"{disabled} should be left out"
    for alert_name, o in pr.get("overrides", {}).items():
        a = alerts[alert_name]
        if "expr" in o:
            assert a["expr"] == o["expr"]
        if "for" in o:
            assert a["for"] == o["for"]
        if "severity" in o:
            assert a["labels"]["severity"] == o["severity"]
        for k, v in o.get("annotations", {}).items():
            assert a["annotations"][k] == v
    for a in alerts.values():
        for k, v in pr.get("additionalAlertLabels", {}).items():
            assert a["labels"][k] == v, f"{a['alert']}: label {k}"
        if pr.get("runbookBaseUrl"):
            assert a["annotations"]["runbook_url"].startswith(pr["runbookBaseUrl"] + "#"), a["alert"]
    return f"{len(alerts)} alerts with overrides applied; promtool check rules ok"


def check_dispatcher_validate(name: str, docs: list[dict[str, Any]], binary: str, tmp: Path) -> str:
    dep = one(docs, "Deployment")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    cm = next(c for c in by_kind(docs, "ConfigMap") if "dispatcher.yaml" in c.get("data", {}))
    path = tmp / f"dispatcher-{name}.yaml"
    path.write_text(cm["data"]["dispatcher.yaml"])
    # The container's environment, with stand-ins for the Secrets' values.
    env = {"PATH": os.environ.get("PATH", "")}
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "secretKeyRef" in e.get("valueFrom", {}):
            if "SECRETS_KEY" in e["name"]:
                # An encryption key: 32 bytes in base64, one per variable
                # (the dispatcher refuses a key listed twice).
                digest = hashlib.sha256(e["name"].encode()).digest()
                env[e["name"]] = base64.b64encode(digest).decode()
            elif "SECRET" in e["name"]:
                env[e["name"]] = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
            elif "TOKEN" in e["name"]:
                env[e["name"]] = "stand-in-token-0123456789abcdef0123456789abcdef"
            else:
                env[e["name"]] = "stand-in"
        else:
            env[e["name"]] = "stand-in"
    r = run([binary, "validate", "--config", str(path)], env=env)
    output = (r.stdout + r.stderr).strip()
    # The default values have no endpoints in the file: they come from the
    # endpoint store then, and the config is valid all the same.
    assert r.returncode == 0, output
    return output.split(": ", 1)[-1]


REFUSED: list[tuple[str, dict[str, Any], str]] = [
    (
        "a literal signing secret in an endpoint",
        {"config": {"endpoints": [{"id": "a", "url": "https://a.example/", "events": ["*"], "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]}},
        "secret",
    ),
    (
        "a whsec_ secret hidden in a header",
        {"config": {"endpoints": [{"id": "a", "url": "https://a.example/", "events": ["*"], "headers": {"X-Key": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}}]}},
        "whsec_",
    ),
    (
        "a Slack webhook URL in the config",
        {"config": {"endpoints": [{"id": "s", "url": "https://hooks.slack.com/services/T000/B000/XXXX", "events": ["*"]}]}},
        "Slack",
    ),
    (
        "a literal Kafka password",
        {"config": {"kafka": {"brokers": "k:9092", "options": {"sasl.password": "hunter2"}}}},
        "sasl.password",
    ),
    (
        "a ${VAR} that no secretEnv provides",
        {"config": {"endpoints": [{"id": "a", "url": "https://a.example/", "events": ["*"], "secret": "${MISSING_SECRET}"}]}},
        "MISSING_SECRET",
    ),
    (
        "the management API without a token Secret",
        {"api": {"enabled": True}},
        "tokenSecret",
    ),
    (
        "a config.api written by hand",
        {"config": {"api": {"listen": "0.0.0.0:9465"}}},
        "api",
    ),
    (
        "a config.secrets written by hand",
        {"config": {"secrets": {"encryption_keys": ["${KEY}"]}}},
        "encryptionKeys",
    ),
    (
        "HPA and KEDA together",
        {"autoscaling": {"enabled": True}, "keda": {"enabled": True}},
        "exclusive",
    ),
    (
        "a grace period shorter than the drain",
        {"terminationGracePeriodSeconds": 20},
        "must exceed",
    ),
    (
        "a shutdown_grace the chart cannot read",
        {"config": {"pipeline": {"shutdown_grace": "25 seconds"}}},
        "shutdown_grace",
    ),
    (
        "no Kafka brokers",
        {"config": {"kafka": {"brokers": ""}}},
        "brokers",
    ),
    (
        "an unknown top-level value",
        {"replicas": 3},
        "replicas",
    ),
    (
        "KEDA with brokers only known at run time",
        {"keda": {"enabled": True}, "config": {"kafka": {"brokers": "${KAFKA_BROKERS}"}}, "env": [{"name": "KAFKA_BROKERS", "value": "k:9092"}]},
        "bootstrapServers",
    ),
]


def refused(values: dict[str, Any], expect: str) -> str:
    try:
        render(values)
    except helm.HelmError as e:
        message = str(e)
        assert expect in message, f"refused, but the message does not mention {expect!r}: {message}"
        line = next(l for l in message.splitlines() if expect in l).strip()
        return re.sub(r"^.*?execution error at \([^)]*\): ", "", line)[:120]
    raise AssertionError("rendered without complaint")


# ---------------------------------------------------------------- rules


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def check_rule_docs() -> str:
    anchors = {
        slug(m.group(2))
        for m in re.finditer(r"^(#{1,6})\s+(.*)$", RUNBOOK.read_text(), re.M)
    }
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired = {
        t["alertname"]
        for test in tests
        for t in test.get("alert_rule_test", [])
        if t.get("exp_alerts")
    }
    quiet = {
        t["alertname"]
        for test in tests
        for t in test.get("alert_rule_test", [])
        if not t.get("exp_alerts")
    }
    for r in rules:
        name = r["alert"]
        assert r["labels"].get("severity") in ("warning", "critical", "info"), f"{name}: severity"
        assert r["annotations"].get("summary") and r["annotations"].get("description"), f"{name}: summary/description"
        url = r["annotations"].get("runbook_url", "")
        assert url.startswith("docs/operations.md#"), f"{name}: runbook_url {url!r}"
        anchor = url.split("#", 1)[1]
        assert anchor in anchors, f"{name}: docs/operations.md has no section #{anchor}"
        assert name in fired, f"{name}: no promtool test where it fires"
        assert name in quiet, f"{name}: no promtool test where it must stay quiet"
    return f"{len(rules)} alerts, each with a runbook section and firing and quiet test cases"


# ---------------------------------------------------------------- dashboards


def check_dashboard_structure(path: Path) -> str:
    d = json.loads(path.read_text())
    assert d.get("uid") and d.get("title"), "uid and title"
    ids: set[int] = set()
    queries = 0
    variables = {v["name"] for v in d.get("templating", {}).get("list", [])}
    assert "datasource" in variables, "a datasource variable"
    for p in d["panels"]:
        assert p["id"] not in ids, f"panel id {p['id']} twice"
        ids.add(p["id"])
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, f"panel {p['title']}: outside the grid"
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p.get("description"), f"panel {p['title']}: description"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)) and refs, f"panel {p['title']}: refIds"
        for t in p["targets"]:
            assert t["expr"].strip(), f"panel {p['title']}: empty query"
            for var in re.findall(r"\$(\w+)", t["expr"]):
                assert var in variables or var.startswith("__"), f"panel {p['title']}: unknown variable ${var}"
            queries += 1
    return f"{len(ids)} panels, {queries} queries"


TS_PRELUDE = """\
// Generated by scripts/deploy/check.py: the dashboard JSON, type-checked
// against Grafana's dashboard schema. Json<T> is the schema's JSON form: a
// TypeScript string enum (ThresholdsMode, FieldColorModeId, ...) is written
// in JSON as its value.
import type { Dashboard } from '@grafana/schema';
type Json<T> = T extends string ? `${T}`
  : T extends number | boolean | null | undefined ? T
  : T extends ReadonlyArray<infer U> ? Array<Json<U>>
  : T extends object ? { [K in keyof T]: Json<T[K]> }
  : T;
"""


def typecheck_dashboards(node_dir: Path) -> str:
    work = node_dir / "check"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    files = []
    for i, path in enumerate(DASHBOARDS):
        ts = work / f"dashboard{i}.ts"
        ts.write_text(
            TS_PRELUDE
            + f"// {path.relative_to(ROOT)}\nconst dashboard = (\n"
            + path.read_text()
            + "\n) satisfies Json<Dashboard>;\nexport default dashboard;\n"
        )
        files.append(ts.name)
    (work / "tsconfig.json").write_text(json.dumps({
        "compilerOptions": {
            "strict": True, "noEmit": True, "target": "es2022",
            "module": "nodenext", "moduleResolution": "nodenext",
            "skipLibCheck": True, "types": [],
        },
        "files": files,
    }))
    tsc = node_dir / "node_modules" / ".bin" / "tsc"
    r = run([str(tsc), "-p", str(work / "tsconfig.json")], cwd=work)
    out = (r.stdout + r.stderr).strip()
    # Point errors at the JSON file's lines rather than the generated file's.
    offset = TS_PRELUDE.count("\n") + 2
    out = re.sub(
        r"dashboard(\d+)\.ts\((\d+),(\d+)\)",
        lambda m: f"{DASHBOARDS[int(m.group(1))].relative_to(ROOT)}:{int(m.group(2)) - offset}:{m.group(3)}",
        out,
    )
    assert r.returncode == 0, out
    version = json.loads((node_dir / "node_modules" / "@grafana" / "schema" / "package.json").read_text())["version"]
    return f"{len(files)} dashboard(s) satisfy @grafana/schema {version} Dashboard"


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--node-dir", type=Path, required=True, help="where @grafana/schema and typescript are installed")
    ap.add_argument("--kubernetes-validate", required=True)
    ap.add_argument("--promtool", required=True)
    ap.add_argument("--hadolint", required=True)
    ap.add_argument("--dispatcher", help="a dispatcher binary, to `validate` the rendered configs")
    ap.add_argument("--out", type=Path, help="keep the rendered manifests here")
    args = ap.parse_args()

    helm.disable_logging()
    tmp = Path(tempfile.mkdtemp(prefix="check-deploy-"))
    out = args.out or tmp / "rendered"

    print(f"== Helm chart {CHART.relative_to(ROOT)} (helm SDK {helm.helm_sdk_version()}, Kubernetes {KUBE_VERSION})")
    rendered: dict[str, list[dict[str, Any]]] = {}
    for name, values in scenarios().items():
        if name != "rules-as-shipped":
            check(f"helm lint --strict [{name}]", lambda v=values: lint(v))

        def template(name: str = name, values: dict[str, Any] = values) -> str:
            manifests = render(values)
            target = out / name
            if target.exists():
                shutil.rmtree(target)
            target.mkdir(parents=True)
            for path, text in manifests.items():
                if text.strip() and not path.endswith("NOTES.txt"):
                    (target / Path(path).name).write_text(text)
            rendered[name] = documents(manifests)
            return f"{len(rendered[name])} objects"

        check(f"helm template [{name}]", template)
        if name not in rendered:
            continue
        check(
            f"kubernetes-validate -k {KUBE_VERSION} --strict [{name}]",
            lambda n=name: kubernetes_validate(sorted((out / n).glob("*.yaml")), args.kubernetes_validate),
        )
        check(f"manifests [{name}]", lambda n=name, v=values: check_manifests(n, v, rendered[n]))
        if by_kind(rendered[name], "PrometheusRule"):
            check(f"PrometheusRule [{name}]", lambda n=name, v=values: check_rules_object(n, v, rendered[n], args.promtool, tmp))
        if args.dispatcher:
            check(f"dispatcher validate [{name}]", lambda n=name: check_dispatcher_validate(n, rendered[n], args.dispatcher, tmp))
    if not args.dispatcher:
        print("skip  dispatcher validate: no dispatcher binary given (DISPATCHER_BIN)")
    check("release name containing 'dispatcher' keeps short names", lambda: _short_names())
    check("metrics.jobName reaches the ServiceMonitor and the rules", lambda: _job_name())
    check("kafka.retry_topic reaches the rules", lambda: _retry_topic())
    check("kafka.spill_topic reaches the rules", lambda: _spill_topic())
    for what, values, expect in REFUSED:
        check(f"refused: {what}", lambda v=values, e=expect: refused(v, e))

    print("\n== Image")

    def hadolint() -> str:
        r = run([args.hadolint, "--no-color", str(ROOT / "Dockerfile")])
        assert r.returncode == 0, (r.stdout + r.stderr).strip()
        ignore = (ROOT / ".dockerignore").read_text().split()
        for needed in ("target", ".git", ".tools", ".venv"):
            assert needed in ignore, f".dockerignore should leave out {needed}"
        return "no findings"

    check("hadolint Dockerfile", hadolint)

    print("\n== Alert rules")
    for cmd in (["check", "rules", str(RULES)], ["test", "rules", str(RULE_TESTS)]):
        def prom(cmd: list[str] = cmd) -> str:
            r = run([args.promtool, *cmd], cwd=ROOT)
            assert r.returncode == 0, (r.stdout + r.stderr).strip()
            return (r.stdout + r.stderr).strip().splitlines()[-1].strip()
        check(f"promtool {' '.join(cmd[:2])} {Path(cmd[2]).relative_to(ROOT)}", prom)
    check("alerts: runbook sections and test coverage", check_rule_docs)

    print("\n== Grafana dashboards")
    for path in DASHBOARDS:
        check(f"structure of {path.relative_to(ROOT)}", lambda p=path: check_dashboard_structure(p))
    check("tsc --noEmit against @grafana/schema", lambda: typecheck_dashboards(args.node_dir))

    shutil.rmtree(tmp, ignore_errors=True)
    print()
    if failures:
        print(f"check-deploy: {len(failures)} check(s) failed: " + "; ".join(failures))
        return 1
    print("check-deploy: all checks passed")
    return 0


def _short_names() -> str:
    docs = documents(render({}, name="dispatcher-prod"))
    names = {d["metadata"]["name"] for d in docs}
    assert "dispatcher-prod" in names and not any("dispatcher-prod-dispatcher" in n for n in names), names
    return ", ".join(sorted(names))


def _job_name() -> str:
    docs = documents(render({
        "metrics": {"jobName": "webhooks"},
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
    }))
    (sm,) = by_kind(docs, "ServiceMonitor")
    assert {"action": "replace", "targetLabel": "job", "replacement": "webhooks"} in sm["spec"]["endpoints"][0]["relabelings"]
    (rule,) = by_kind(docs, "PrometheusRule")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert not any('job="dispatcher"' in e for e in exprs), "a rule still selects job=dispatcher"
    using = [e for e in exprs if 'job="webhooks"' in e]
    assert using, "no rule selects the job"
    return f"{len(using)} rules select job=\"webhooks\""


def _retry_topic() -> str:
    docs = documents(render({
        "config": {"kafka": {"retry_topic": "webhooks.retry"}},
        "prometheusRule": {"enabled": True},
    }))
    (rule,) = by_kind(docs, "PrometheusRule")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert not any("dispatcher\\\\.retry" in e for e in exprs), "a rule still matches dispatcher.retry"
    using = [e for e in exprs if "webhooks\\\\.retry\\\\..+" in e]
    assert using, "no rule matches the retry topics"
    return f"{len(using)} rules match webhooks\\\\.retry\\\\..+"


def _spill_topic() -> str:
    docs = documents(render({
        "config": {"kafka": {"retry_topic": "webhooks.retry", "spill_topic": "webhooks.spill"}},
        "prometheusRule": {"enabled": True},
    }))
    (rule,) = by_kind(docs, "PrometheusRule")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert not any("dispatcher\\\\.spill" in e for e in exprs), "a rule still matches dispatcher.spill"
    using = [e for e in exprs if 'webhooks\\\\.retry\\\\..+|webhooks\\\\.spill"' in e]
    assert using, "no rule tells the source topics from the retry and spill topics"
    return f"{len(using)} rules match webhooks\\\\.retry\\\\..+|webhooks\\\\.spill"


if __name__ == "__main__":
    sys.exit(main())
