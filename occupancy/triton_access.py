"""Who may use Triton's model-control and admin APIs: a key, shared by the Triton server, the gateway and
`occ publish`.

Triton restricts protocols with `--grpc-restricted-protocol` / `--http-restricted-api`
(`<protocols>:<header>=<key>`): a restricted call without the header and key is refused (gRPC
UNAVAILABLE, HTTP 403). Inference, health and model metadata stay open; loading and unloading models
(which runs their code), reading configs, shared memory, statistics, tracing and logging need the key.
gRPC clients send the header with Triton's `triton-grpc-protocol-` prefix. The key comes from the
environment variable TRITON_KEY_ENV everywhere; the Helm chart and the compose file spell these names
too (tests/test_deploy_*.py check that they agree).
"""

TRITON_KEY_ENV = "OCC_TRITON_KEY"
TRITON_KEY_HEADER = "occ-triton-key"
GRPC_HEADER_PREFIX = "triton-grpc-protocol-"
RESTRICTED_PROTOCOLS: tuple[str, ...] = (
    "model-repository", "model-config", "shared-memory", "statistics", "trace", "logging",
)


def restricted_flags(key: str) -> list[str]:
    """tritonserver flags that restrict RESTRICTED_PROTOCOLS (gRPC and HTTP) to requests with `key`."""
    setting = f"{','.join(RESTRICTED_PROTOCOLS)}:{TRITON_KEY_HEADER}={key}"
    return [f"--grpc-restricted-protocol={setting}", f"--http-restricted-api={setting}"]


def grpc_headers(key: str | None) -> dict[str, str] | None:
    """The headers a tritonclient.grpc call of a restricted protocol sends (None without a key)."""
    return None if key is None else {GRPC_HEADER_PREFIX + TRITON_KEY_HEADER: key}
