# Every recipe calls a plain bash script under scripts/: `just` is a convenience, never
# a requirement (`just demo` = `bash scripts/demo.sh`, and so on).

set shell := ["bash", "-euo", "pipefail", "-c"]
set positional-arguments := true

# List the recipes.
default:
    @just --list

# Install (if missing), start and wait for the local PostgreSQL and RabbitMQ.
services:
    bash scripts/services.sh

# The service's main job, end to end on this machine.
demo *ARGS:
    bash scripts/demo.sh "$@"

# The whole test suite, as CI runs it.
test:
    bash scripts/test.sh

# Benchmarks with their floors; writes target/bench/report.json.
bench *ARGS:
    bash scripts/bench.sh "$@"

# rustfmt, clippy, deployment manifests, Dockerfile, compose file, shellcheck.
lint:
    bash scripts/lint.sh

# Validate the Kubernetes overlays, Dockerfile and compose file offline.
manifests:
    bash scripts/validate-manifests.sh

# Check a configuration file (secrets redacted); touches no server.
check CONFIG="configs/configuration.yaml":
    bash scripts/check.sh "$1"

# Fault-injection suite (scripts/fault.sh, when present).
fault *ARGS:
    if [ -f scripts/fault.sh ]; then bash scripts/fault.sh "$@"; else echo "scripts/fault.sh does not exist yet" >&2; exit 1; fi
