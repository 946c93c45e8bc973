#!/usr/bin/env python3
"""Checks a rendered Kubernetes overlay of orchestratorm8 against the deployment policy.

Usage: manifest-policy.py OVERLAY RENDERED.yaml [ENV_OUT]

The schema validation (kubernetes-validate) tells whether the objects are well formed;
this tells whether they say what docs/DEPLOYMENT.md promises: probes, ports, security
context, replicas per overlay, secrets only by reference, and a configuration file in
the Go original's shape. It reads the output of `kustomize build`; it renders nothing.

With ENV_OUT, it also writes the environment the container would get from the
overlay's ConfigMap (secret values replaced by placeholders) as KEY=VALUE lines, and
the configuration file next to it (ENV_OUT with suffix .configuration.yaml), so that
`orchestratorm8 config check` can load exactly what the pod would load.
"""

import sys

import yaml

EXPECTED_REPLICAS = {"dev": 1, "staging": 2, "prod": 3}
PORT = 8005
SECRET_KEYS = {"POSTGRESQL_PASSWORD", "RABBITMQ_PASSWORD", "ORCHESTRATORM8_API_TOKEN"}
GO_TOP_LEVEL = {"APP_ENV", "LOG_LEVEL", "ORCHESTRATORM8", "Database", "RabbitMQ"}
NEW_SECTIONS = {"Scheduler", "Workflow", "HTTP", "LeaderElection"}

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
    return cond


def one(objs, kind):
    found = [o for o in objs if o.get("kind") == kind]
    check(len(found) == 1, f"exactly one {kind} (found {len(found)})")
    return found[0] if found else {}


def dig(obj, *path, default=None):
    for key in path:
        if isinstance(obj, dict) and key in obj:
            obj = obj[key]
        elif isinstance(obj, list) and isinstance(key, int) and key < len(obj):
            obj = obj[key]
        else:
            return default
    return obj


def check_deployment(dep, overlay):
    want = EXPECTED_REPLICAS.get(overlay)
    if want is not None:
        check(dig(dep, "spec", "replicas") == want,
              f"Deployment replicas {dig(dep, 'spec', 'replicas')}, expected {want} for {overlay}")
    pod = dig(dep, "spec", "template", "spec", default={})
    selector = dig(dep, "spec", "selector", "matchLabels", default={})
    labels = dig(dep, "spec", "template", "metadata", "labels", default={})
    check(selector and all(labels.get(k) == v for k, v in selector.items()),
          "Deployment selector matches its pod labels")
    ann = dig(dep, "spec", "template", "metadata", "annotations", default={})
    check(ann.get("prometheus.io/scrape") == "true", "pod annotation prometheus.io/scrape=true")
    check(ann.get("prometheus.io/port") == str(PORT), f"pod annotation prometheus.io/port={PORT}")
    check(ann.get("prometheus.io/path") == "/metrics", "pod annotation prometheus.io/path=/metrics")
    psc = pod.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True, "pod securityContext.runAsNonRoot")
    check(dig(psc, "seccompProfile", "type") == "RuntimeDefault", "pod seccompProfile RuntimeDefault")
    check(pod.get("automountServiceAccountToken") is False, "no service account token mounted")
    containers = pod.get("containers", [])
    check(len(containers) == 1, "one container")
    c = containers[0] if containers else {}
    sc = c.get("securityContext", {})
    check(sc.get("allowPrivilegeEscalation") is False, "container allowPrivilegeEscalation false")
    check(sc.get("readOnlyRootFilesystem") is True, "container readOnlyRootFilesystem true")
    check(dig(sc, "capabilities", "drop") == ["ALL"], "container drops ALL capabilities")
    check(sc.get("runAsNonRoot") is True, "container runAsNonRoot")
    check(dig(sc, "seccompProfile", "type") == "RuntimeDefault", "container seccompProfile RuntimeDefault")
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports", [])}
    check(ports.get("http") == PORT, f"container port http={PORT}")
    args = c.get("args", [])
    check(args[:1] == ["launch"] and "--port" in args and args[args.index("--port") + 1] == str(PORT),
          f"container runs `launch --port {PORT}`")
    check(dig(c, "livenessProbe", "httpGet", "path") == "/health", "liveness probe GET /health")
    check(dig(c, "readinessProbe", "httpGet", "path") == "/ready", "readiness probe GET /ready")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        check(dig(c, probe, "httpGet", "port") in ("http", PORT), f"{probe} on the http port")
    res = c.get("resources", {})
    check(dig(res, "requests", "cpu") and dig(res, "requests", "memory"), "cpu and memory requests")
    check(dig(res, "limits", "memory"), "memory limit")
    # Secrets only by reference, never as literal env values.
    env = {e.get("name"): e for e in c.get("env", [])}
    for key in SECRET_KEYS:
        check(dig(env, key, "valueFrom", "secretKeyRef", "name"), f"{key} comes from a Secret")
        check("value" not in env.get(key, {}), f"{key} has no literal value")
    # The only writable paths are mounted volumes.
    mounts = {m.get("mountPath"): m for m in c.get("volumeMounts", [])}
    check(mounts.get("/etc/orchestratorm8", {}).get("readOnly") is True,
          "configuration mounted read-only at /etc/orchestratorm8")
    return c, pod


def check_config(objs, pod, container):
    vols = {v.get("name"): v for v in pod.get("volumes", [])}
    cm_name = dig(vols, "config", "configMap", "name")
    cms = {o["metadata"]["name"]: o for o in objs if o.get("kind") == "ConfigMap"}
    if not check(cm_name in cms, f"config volume refers to a rendered ConfigMap ({cm_name})"):
        return None, {}
    text = dig(cms[cm_name], "data", "configuration.yaml")
    if not check(isinstance(text, str), "ConfigMap holds configuration.yaml"):
        return None, {}
    conf = yaml.safe_load(text)
    check(isinstance(conf, dict), "configuration.yaml is a mapping")
    conf = conf if isinstance(conf, dict) else {}
    missing = sorted((GO_TOP_LEVEL | NEW_SECTIONS) - conf.keys())
    check(not missing, f"configuration.yaml has every section (missing: {missing})")
    for key in ("password",):
        for section in ("Database", "RabbitMQ"):
            value = dig(conf, section, key)
            check(isinstance(value, str) and value.startswith("${") and value.endswith("}"),
                  f"{section}.{key} is a ${{VAR}} placeholder, not a literal")
    check(dig(conf, "LeaderElection", "enabled") is True, "LeaderElection.enabled true")
    check(dig(conf, "Log", "file") is None, "Log.file empty (read-only root filesystem)")
    env = {}
    for ref in container.get("envFrom", []):
        name = dig(ref, "configMapRef", "name")
        if check(name in cms, f"envFrom refers to a rendered ConfigMap ({name})"):
            data = cms[name].get("data", {})
            leaked = sorted(SECRET_KEYS & data.keys())
            check(not leaked, f"no secret in ConfigMap {name} ({leaked})")
            env.update(data)
    return text, env


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    overlay, rendered = sys.argv[1], sys.argv[2]
    with open(rendered) as f:
        objs = [o for o in yaml.safe_load_all(f) if o]
    kinds = sorted(o.get("kind", "?") for o in objs)
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "ServiceAccount"):
        check(kind in kinds, f"has a {kind}")
    dep = one(objs, "Deployment")
    container, pod = check_deployment(dep, overlay)
    svc = one(objs, "Service")
    check([p.get("port") for p in dig(svc, "spec", "ports", default=[])] == [PORT], f"Service port {PORT}")
    check(dig(svc, "spec", "selector") == dig(dep, "spec", "selector", "matchLabels"),
          "Service selects the Deployment's pods")
    pdb = one(objs, "PodDisruptionBudget")
    check(dig(pdb, "spec", "selector", "matchLabels") == dig(dep, "spec", "selector", "matchLabels"),
          "PodDisruptionBudget selects the Deployment's pods")
    np = one(objs, "NetworkPolicy")
    check(dig(np, "spec", "podSelector", "matchLabels") == dig(dep, "spec", "selector", "matchLabels"),
          "NetworkPolicy applies to the Deployment's pods")
    ingress_ports = {p.get("port") for r in dig(np, "spec", "ingress", default=[]) for p in r.get("ports", [])}
    check(ingress_ports == {PORT}, f"NetworkPolicy ingress only on {PORT} (got {ingress_ports})")
    egress_ports = {p.get("port") for r in dig(np, "spec", "egress", default=[]) for p in r.get("ports", [])}
    check(egress_ports == {53, 5432, 5671, 5672},
          f"NetworkPolicy egress DNS, 5432, 5671, 5672 (got {sorted(egress_ports)})")
    secrets = [o for o in objs if o.get("kind") == "Secret"]
    if overlay in ("staging", "prod"):
        check(not secrets, f"{overlay} commits no Secret (found {len(secrets)})")
    text, env = check_config(objs, pod, container)

    if failures:
        for what in failures:
            print(f"POLICY FAIL {overlay}: {what}")
        sys.exit(1)
    print(f"policy ok: {overlay}: {len(objs)} objects ({', '.join(kinds)})")
    if len(sys.argv) == 4 and text is not None:
        out = sys.argv[3]
        with open(out, "w") as f:
            for key, value in sorted(env.items()):
                f.write(f"{key}={value}\n")
            for key in sorted(SECRET_KEYS):
                f.write(f"{key}=placeholder-{key.lower()}\n")
        with open(out + ".configuration.yaml", "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
