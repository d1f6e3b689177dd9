#!/usr/bin/env python3
"""Checks deploy/: each overlay renders with `kubectl kustomize`, validates
against the Kubernetes schemas (kubernetes-validate, strict), and keeps the
settings an SRE relies on: security context, probes, resources, graceful
termination, secrets. Run by .ci/run; needs kubectl and
`pip install kubernetes-validate` (which brings PyYAML).

    python3 deploy/check.py
"""

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OVERLAYS = ["dev", "production"]
BASE_KINDS = {
    "Deployment",
    "Service",
    "ConfigMap",
    "ServiceAccount",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "NetworkPolicy",
}

failures = []


def check(condition, what):
    if not condition:
        failures.append(what)


def need(tool, how):
    if shutil.which(tool) is None:
        sys.exit(f"deploy/check.py: {tool} not found on PATH; {how}")


def render(overlay):
    result = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / "deploy" / "overlays" / overlay)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        sys.exit(f"kubectl kustomize deploy/overlays/{overlay} failed:\n{result.stderr}")
    return result.stdout


def validate(overlay, text):
    out = ROOT / "target" / "deploy-check" / f"{overlay}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    result = subprocess.run(
        ["kubernetes-validate", "--strict", "--quiet", str(out)],
        capture_output=True,
        text=True,
    )
    check(
        result.returncode == 0,
        f"{overlay}: does not validate against the Kubernetes schemas:\n{result.stdout}{result.stderr}",
    )


def server_env_names():
    """Every environment variable the server reads (config.rs)."""
    config = (ROOT / "services" / "rapport-server" / "src" / "config.rs").read_text()
    return set(re.findall(r'env = "([A-Z0-9_]+)"', config))


def server_stop_timeout():
    """Seconds the server may take after the drain (lib.rs's STOP_TIMEOUT)."""
    lib = (ROOT / "services" / "rapport-server" / "src" / "lib.rs").read_text()
    found = re.search(r"STOP_TIMEOUT: Duration = Duration::from_secs\((\d+)\)", lib)
    check(found is not None, "services/rapport-server/src/lib.rs defines STOP_TIMEOUT in seconds")
    return int(found.group(1)) if found else 0


def check_overlay(overlay, docs):
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    for kind in BASE_KINDS:
        check(len(by_kind.get(kind, [])) == 1, f"{overlay}: exactly one {kind}")
    if failures:
        return
    deployment = by_kind["Deployment"][0]
    config = by_kind["ConfigMap"][0]["data"]
    hpa = by_kind["HorizontalPodAutoscaler"][0]["spec"]
    pod = deployment["spec"]["template"]["spec"]
    containers = pod["containers"]
    check(len(containers) == 1, f"{overlay}: one container")
    c = containers[0]
    where = f"{overlay}: container {c['name']}"

    # Security.
    psc = pod.get("securityContext", {})
    csc = c.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True, f"{overlay}: pod runAsNonRoot")
    check(psc.get("runAsUser", 0) != 0, f"{overlay}: pod runs as a non-zero uid")
    check(csc.get("runAsNonRoot") is True, f"{where}: runAsNonRoot")
    check(csc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem")
    check(csc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation false")
    check(csc.get("privileged") in (None, False), f"{where}: not privileged")
    check(csc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: drops ALL capabilities")
    check(pod.get("automountServiceAccountToken") is False, f"{overlay}: no service account token")

    # Native gRPC probes: readiness on the overall health (follows the
    # database), liveness and startup on "liveness" (does not).
    grpc_port = next(p["containerPort"] for p in c["ports"] if p["name"] == "grpc")
    readiness = c.get("readinessProbe", {}).get("grpc", {})
    check(readiness.get("port") == grpc_port, f"{where}: gRPC readiness probe on the gRPC port")
    check(readiness.get("service", "") == "", f"{where}: readiness checks the overall health")
    for probe in ["livenessProbe", "startupProbe"]:
        grpc = c.get(probe, {}).get("grpc", {})
        check(grpc.get("port") == grpc_port, f"{where}: gRPC {probe} on the gRPC port")
        check(grpc.get("service") == "liveness", f"{where}: {probe} asks for 'liveness'")

    # Resources.
    resources = c.get("resources", {})
    check("cpu" in resources.get("requests", {}), f"{where}: a CPU request")
    check("memory" in resources.get("requests", {}), f"{where}: a memory request")
    check("memory" in resources.get("limits", {}), f"{where}: a memory limit")

    # Graceful termination: preStop pause + drain + what the server may take
    # after the drain (rapport_server::STOP_TIMEOUT, and 1 s for the
    # runtime's blocking threads) fit in the grace period.
    drain = int(config["RAPPORT_DRAIN_TIMEOUT_SECS"])
    pause = c.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    after_drain = server_stop_timeout() + 1
    check(
        pause + drain + after_drain <= grace,
        f"{overlay}: preStop {pause}s + drain {drain}s + {after_drain}s after it fit in {grace}s",
    )

    # Configuration the server knows.
    known = server_env_names() | {"RUST_LOG"}
    for key in config:
        check(key in known or key.startswith("OTEL_"), f"{overlay}: ConfigMap key {key} is read by nobody")
    tokens = next((v for v in pod["volumes"] if v["name"] == "tokens"), {})
    check(
        tokens.get("secret", {}).get("secretName") == "rapport-tokens",
        f"{overlay}: tokens come from the rapport-tokens secret",
    )
    check(config.get("RAPPORT_TOKENS_FILE", "").startswith("/etc/rapport/tokens/"), f"{overlay}: tokens file set")

    # Ports.
    service_ports = {p["name"] for p in by_kind["Service"][0]["spec"]["ports"]}
    check(service_ports == {"grpc", "metrics"}, f"{overlay}: Service serves grpc and metrics")

    replicas = deployment["spec"]["replicas"]
    env = {e["name"]: e for e in c.get("env", [])}
    data = next(v for v in pod["volumes"] if v["name"] == "data")
    if overlay == "dev":
        check(replicas == 1 and hpa["maxReplicas"] == 1, "dev: one replica, never scaled (SQLite)")
        check(deployment["spec"].get("strategy", {}).get("type") == "Recreate", "dev: Recreate")
        check("persistentVolumeClaim" in data, "dev: SQLite on a volume")
        check(len(by_kind.get("PersistentVolumeClaim", [])) == 1, "dev: its claim")
        check("RAPPORT_DATABASE_URL" not in env, "dev: the embedded default")
    else:
        check(replicas == 3 and hpa["minReplicas"] == 3, "production: three replicas at least")
        url = env.get("RAPPORT_DATABASE_URL", {}).get("valueFrom", {}).get("secretKeyRef", {})
        check(url.get("name") == "rapport-postgres", "production: PostgreSQL URL from a secret")
        check("OTEL_EXPORTER_OTLP_ENDPOINT" in config, "production: an OTLP endpoint")
        check("Secret" not in by_kind, "production: no secret in the repository")
        key = next((v for v in pod["volumes"] if v["name"] == "master-key"), {})
        check(
            key.get("secret", {}).get("secretName") == "rapport-master-key",
            "production: the master key comes from the rapport-master-key secret",
        )
        mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
        check(
            config.get("RAPPORT_MASTER_KEY_FILE", "").startswith(mounts.get("master-key", "?") + "/"),
            "production: RAPPORT_MASTER_KEY_FILE is in the master key's mount",
        )


def main():
    need("kubectl", "install kubectl (kustomize is built in) to render deploy/")
    need("kubernetes-validate", "run `pip install kubernetes-validate`")
    import yaml

    for overlay in OVERLAYS:
        text = render(overlay)
        validate(overlay, text)
        docs = [d for d in yaml.safe_load_all(text) if d]
        check_overlay(overlay, docs)
        print(f"deploy/overlays/{overlay}: {len(docs)} resources rendered")
    if failures:
        print("deploy/ check failed:", file=sys.stderr)
        for failure in failures:
            print(f"  - {failure}", file=sys.stderr)
        sys.exit(1)
    print("deploy/: both overlays render, validate, and keep their security settings and probes")


if __name__ == "__main__":
    main()
