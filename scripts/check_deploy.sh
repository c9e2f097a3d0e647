#!/usr/bin/env bash
# Deployment artefacts checked with the real tools, as CI does through tests/test_deploy_*.py:
# hadolint (Dockerfiles), docker-compose config (both profiles), promtool (Prometheus config, rules and
# the rules' unit tests), then the pytest checks (Helm lint and render, Kubernetes schemas, PromQL metric
# names).
# Needs: pip install -e '.[serve,train,dev]' and apt-get install prometheus docker-compose.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_BIN="${VENV:-.venv}/bin"
export PATH="$VENV_BIN:$PATH"

echo "== hadolint $(hadolint --version)"
hadolint docker/Dockerfile.gateway docker/Dockerfile.train docker/Dockerfile.triton-cpu

for profiles in "" "--profile cpu"; do
    echo "== docker-compose config ${profiles:-(default: COMPOSE_PROFILES from docker/.env)}"
    # shellcheck disable=SC2086  # the profile flags are two words
    # Placeholder credentials: compose has no defaults for them and refuses to start without.
    env -i PATH="$PATH" OCC_TRITON_KEY=check GRAFANA_ADMIN_PASSWORD=check \
        docker-compose -f docker/docker-compose.yml $profiles config --quiet
done

echo "== $(promtool --version 2>&1 | head -1)"
promtool check config docker/prometheus/prometheus.yml
(cd docker/prometheus/tests && promtool test rules ./*.yml)

echo "== pytest tests/test_deploy_*.py"
pytest -q tests/test_deploy_docker.py tests/test_deploy_helm.py tests/test_deploy_monitoring.py
