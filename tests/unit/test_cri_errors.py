import grpc
import pytest

from pinsvc import errors
from pinsvc.adapters.cri import pull_error

IMAGE = "127.0.0.1:43401/app@sha256:" + "4" * 64


class FakeRpcError(grpc.aio.AioRpcError):
    def __init__(self, code, details):
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.mark.parametrize("details, kind, retryable", [
    ('pinging container registry 127.0.0.1:43401: Get "http://127.0.0.1:43401/v2/": dial tcp 127.0.0.1:43401: '
     "connect: connection refused", errors.RegistryError, True),
    ("reading manifest sha256:40140140 in 127.0.0.1:43401/app: manifest unknown", errors.ImageNotFound, False),
    ("initializing source: reading manifest: unauthorized: authentication required", errors.Unauthorized, False),
    ("received unexpected HTTP status: 503 Service Unavailable", errors.RegistryError, True),
    ("toomanyrequests: rate limit", errors.RegistryError, True),
    ("writing blob: write /var/lib/containers/x: no space left on device", errors.NoSpaceLeft, False),
    ("something odd at :401 port 8401", errors.RuntimeError_, True),
])
def test_pull_errors_are_classified_by_cause_not_by_digits_in_ports(details, kind, retryable):
    error = pull_error(IMAGE, FakeRpcError(grpc.StatusCode.UNKNOWN, details))
    assert type(error) is kind and error.retryable == retryable
    assert IMAGE in str(error)
