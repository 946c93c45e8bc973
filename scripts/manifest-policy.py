#!/usr/bin/env python3
"""Checks a rendered Kubernetes overlay of orchestratorm8 against the deployment policy.

Usage: manifest-policy.py OVERLAY RENDERED.yaml [ENV_OUT]
       manifest-policy.py --self-test OVERLAY RENDERED.yaml

--self-test proves the policy can fail: the rendered overlay must pass, and each of a
list of planted violations (a literal secret in the configuration file, in an
`ORCHESTRATORM8__` override of the ConfigMap or of the container's env, a lost probe...)
must be reported; it also checks that every field of config8's `Secret` type
(crates/config8/src/settings.rs) is one the policy knows as secret.

The schema validation (kubernetes-validate) tells whether the objects are well formed;
this tells whether they say what docs/DEPLOYMENT.md promises: probes, ports, security
context, replicas per overlay, secrets only by reference, and a configuration file in
the Go original's shape. It reads the output of `kustomize build`; it renders nothing.

With ENV_OUT, it also writes the environment the container would get from the
overlay's ConfigMap (secret values replaced by placeholders) as KEY=VALUE lines, and
the configuration file next to it (ENV_OUT with suffix .configuration.yaml), so that
`orchestratorm8 config check` can load exactly what the pod would load.
"""

import copy
import os
import re
import sys

import yaml

EXPECTED_REPLICAS = {"dev": 1, "staging": 2, "prod": 3}
PORT = 8005
SECRET_KEYS = {"POSTGRESQL_PASSWORD", "RABBITMQ_PASSWORD", "ORCHESTRATORM8_API_TOKEN"}
GO_TOP_LEVEL = {"APP_ENV", "LOG_LEVEL", "ORCHESTRATORM8", "Database", "RabbitMQ"}
NEW_SECTIONS = {"Scheduler", "Workflow", "HTTP", "LeaderElection"}
# Every key of the configuration file that config8 holds in its `Secret` type (checked
# against crates/config8/src/settings.rs by --self-test): each must be a ${VAR}
# placeholder when set, whether in the file or through an ORCHESTRATORM8__ override.
SECRET_CONFIG_KEYS = {
    ("Database", "password"),
    ("RabbitMQ", "password"),
    ("HTTP", "api_token"),
    ("Log", "apm_secret_token"),
}
REQUIRED_SECRET_KEYS = {("Database", "password"), ("RabbitMQ", "password")}
PLACEHOLDER = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*\}$")
# user:password@ in a URL (ORCHESTRATORM8.Services, Log.apm_server_url...).
URL_USERINFO = re.compile(r"://[^/@\s:]*:([^/@\s]*)@")

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
    for section, key in sorted(SECRET_CONFIG_KEYS):
        value = dig(conf, section, key)
        if value is None and (section, key) not in REQUIRED_SECRET_KEYS:
            continue
        check(isinstance(value, str) and PLACEHOLDER.match(value),
              f"{section}.{key} is a ${{VAR}} placeholder, not a literal")
    for path, value in strings(conf):
        m = URL_USERINFO.search(value)
        check(not m or PLACEHOLDER.match(m.group(1)) or m.group(1) == "",
              f"{path}: no literal password in a URL")
    check(dig(conf, "LeaderElection", "enabled") is True, "LeaderElection.enabled true")
    check(dig(conf, "Log", "file") is None, "Log.file empty (read-only root filesystem)")
    env = {}
    for ref in container.get("envFrom", []):
        name = dig(ref, "configMapRef", "name")
        if check(name in cms, f"envFrom refers to a rendered ConfigMap ({name})"):
            data = cms[name].get("data", {})
            leaked = sorted(SECRET_KEYS & data.keys())
            check(not leaked, f"no secret in ConfigMap {name} ({leaked})")
            for key, value in data.items():
                check(not secret_override(key) or PLACEHOLDER.match(str(value)),
                      f"ConfigMap {name}: {key} overrides a secret with a literal")
            env.update(data)
    for e in container.get("env", []):
        key = e.get("name", "")
        check(not secret_override(key) or "value" not in e,
              f"container env {key} overrides a secret with a literal value")
    return text, env


def strings(obj, path=""):
    """Every string of a parsed YAML document, with its dotted path."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from strings(v, f"{path}[{i}]")
    elif isinstance(obj, str):
        yield path, obj


def secret_override(env_key):
    """Whether ENV_KEY is an ORCHESTRATORM8__SECTION__KEY override of a secret key
    (config8 matches sections and keys without regard to case)."""
    parts = env_key.split("__")
    if len(parts) < 3 or parts[0] != "ORCHESTRATORM8":
        return False
    wanted = {(s.lower(), k.lower()) for s, k in SECRET_CONFIG_KEYS}
    return (parts[1].lower(), parts[2].lower()) in wanted


def evaluate(overlay, objs):
    """Runs every check on the rendered objects; (failures, kinds, text, env)."""
    failures.clear()
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
    return list(failures), kinds, text, env


def self_test(overlay, objs):
    """The policy passes the rendered overlay and fails each planted violation."""
    found, _, _, _ = evaluate(overlay, objs)
    if found:
        sys.exit(f"self-test {overlay}: the unplanted overlay fails: {found}")

    def configmap(o):
        return next(c for c in o if c.get("kind") == "ConfigMap"
                    and "configuration.yaml" in c.get("data", {}))

    def env_configmap(o):
        return next(c for c in o if c.get("kind") == "ConfigMap"
                    and "configuration.yaml" not in c.get("data", {}))

    def container(o):
        dep = next(d for d in o if d.get("kind") == "Deployment")
        return dep["spec"]["template"]["spec"]["containers"][0]

    def edit_conf(section, key, value):
        def plant(o):
            cm = configmap(o)
            conf = yaml.safe_load(cm["data"]["configuration.yaml"])
            conf.setdefault(section, {})[key] = value
            cm["data"]["configuration.yaml"] = yaml.safe_dump(conf)
        return plant

    def set_env_cm(key, value):
        return lambda o: env_configmap(o)["data"].__setitem__(key, value)

    def set_container_env(key, value):
        return lambda o: container(o).setdefault("env", []).append({"name": key, "value": value})

    plants = [
        ("literal HTTP.api_token", edit_conf("HTTP", "api_token", "s3cr3t-token"),
         "HTTP.api_token is a ${VAR} placeholder"),
        ("literal Database.password", edit_conf("Database", "password", "pw"),
         "Database.password is a ${VAR} placeholder"),
        ("literal RabbitMQ.password", edit_conf("RabbitMQ", "password", "pw"),
         "RabbitMQ.password is a ${VAR} placeholder"),
        ("literal Log.apm_secret_token", edit_conf("Log", "apm_secret_token", "apm"),
         "Log.apm_secret_token is a ${VAR} placeholder"),
        ("placeholder with a literal tail", edit_conf("HTTP", "api_token", "${TOKEN}x"),
         "HTTP.api_token is a ${VAR} placeholder"),
        ("password in a service URL",
         edit_conf("ORCHESTRATORM8", "Services", {"asmm8": "http://u:pw@asmm8:8000/"}),
         "no literal password in a URL"),
        ("ORCHESTRATORM8__HTTP__API_TOKEN in the ConfigMap",
         set_env_cm("ORCHESTRATORM8__HTTP__API_TOKEN", "s3cr3t-token"),
         "ORCHESTRATORM8__HTTP__API_TOKEN overrides a secret"),
        ("ORCHESTRATORM8__database__Password in the ConfigMap",
         set_env_cm("ORCHESTRATORM8__database__Password", "pw"),
         "ORCHESTRATORM8__database__Password overrides a secret"),
        ("ORCHESTRATORM8__LOG__APM_SECRET_TOKEN as a container env value",
         set_container_env("ORCHESTRATORM8__LOG__APM_SECRET_TOKEN", "apm"),
         "ORCHESTRATORM8__LOG__APM_SECRET_TOKEN overrides a secret with a literal value"),
        ("POSTGRESQL_PASSWORD in the ConfigMap", set_env_cm("POSTGRESQL_PASSWORD", "pw"),
         "no secret in ConfigMap"),
        ("no readiness probe", lambda o: container(o).pop("readinessProbe"),
         "readiness probe GET /ready"),
    ]
    for what, plant, expected in plants:
        planted = copy.deepcopy(objs)
        plant(planted)
        found, _, _, _ = evaluate(overlay, planted)
        if not any(expected in f for f in found):
            sys.exit(f"self-test {overlay}: planted {what}: expected a failure "
                     f"containing {expected!r}, got {found}")

    # Every `Secret` field of config8 is one the policy knows.
    settings = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            "..", "crates", "config8", "src", "settings.rs")
    with open(settings) as f:
        fields = set(re.findall(r"pub (\w+): (?:Option<)?Secret\b", f.read()))
    if not fields:
        sys.exit(f"self-test: no Secret field found in {settings}")
    unknown = sorted(fields - {k for _, k in SECRET_CONFIG_KEYS})
    if unknown:
        sys.exit(f"self-test: config8 Secret fields unknown to SECRET_CONFIG_KEYS: {unknown}")
    print(f"policy self-test ok: {overlay}: {len(plants)} planted violations reported; "
          f"Secret fields {sorted(fields)} covered")


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--self-test":
        with open(sys.argv[3]) as f:
            self_test(sys.argv[2], [o for o in yaml.safe_load_all(f) if o])
        return
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    overlay, rendered = sys.argv[1], sys.argv[2]
    with open(rendered) as f:
        objs = [o for o in yaml.safe_load_all(f) if o]
    failures_found, kinds, text, env = evaluate(overlay, objs)

    if failures_found:
        for what in failures_found:
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
