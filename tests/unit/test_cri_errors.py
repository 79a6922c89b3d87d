import grpc
import pytest

from pinsvc import errors
from pinsvc.adapters.cri import CriClient, pull_error
from pinsvc.gen.runtime.v1 import api_pb2

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


class FakeFsStub:
    """ImageFsInfo that fails with the given errors first, then answers."""

    def __init__(self, failures):
        self.failures = list(failures)
        self.calls = 0

    async def ImageFsInfo(self, request, timeout=None):
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        fs = api_pb2.FilesystemUsage(
            fs_id=api_pb2.FilesystemIdentifier(mountpoint="/var/lib/containers/storage/overlay-images"))
        return api_pb2.ImageFsInfoResponse(image_filesystems=[fs])


RACE = ("get image fs info unable to get usage for /s/overlay-images: get disk usage for path /s/overlay-images: "
        "lstat /s/overlay-images/.tmp-images.json1492144130: no such file or directory")


async def test_image_fs_retries_crio_walking_its_store_while_a_pull_removes_a_temp_file():
    client = CriClient("unix:///nonexistent.sock", connect_wait=0)
    try:
        client._stub = FakeFsStub([FakeRpcError(grpc.StatusCode.UNKNOWN, RACE)] * 2)
        (fs,) = await client.image_fs()
        assert fs.mountpoint.endswith("overlay-images") and client._stub.calls == 3
        client._stub = FakeFsStub([FakeRpcError(grpc.StatusCode.UNKNOWN, RACE)] * 9)
        with pytest.raises(errors.RuntimeError_, match="no such file or directory"):
            await client.image_fs()
        assert client._stub.calls == 5, "bounded"
        client._stub = FakeFsStub([FakeRpcError(grpc.StatusCode.UNKNOWN, "permission denied")])
        with pytest.raises(errors.RuntimeError_, match="permission denied"):
            await client.image_fs()
        assert client._stub.calls == 1, "other failures are not retried"
    finally:
        await client.close()
