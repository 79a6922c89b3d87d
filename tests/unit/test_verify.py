from pinsvc.core.verify import check, verify_pins
from pinsvc.model import RuntimeImage

A, B = "r.io/a@sha256:" + "a" * 64, "r.io/b@sha256:" + "b" * 64


def image(ref, pinned):
    return RuntimeImage(id=ref[-8:], repo_digests=(ref,), pinned=pinned)


def test_check_compares_pins_case_insensitively():
    checks = check([image(A.upper().replace("SHA256", "sha256"), True), image(B, True)], [A], [B])
    assert [c.ok for c in checks] == [True, False]


async def test_present_but_unpinned_image_is_pulled_again_once_then_verified():
    pinned = {A: False}
    pulls = []

    async def listing():
        return [image(A, pinned[A])]

    async def repull(ref):
        pulls.append(ref)
        pinned[A] = True

    report = await verify_pins(listing, [A], [], timeout=2, interval=0.01, repull=repull, repull_after=0.05)
    assert report.ok and pulls == [A] and report.repulled == (A,)


async def test_verification_times_out_naming_the_images():
    async def listing():
        return [image(B, True)]

    report = await verify_pins(listing, [A], [B], timeout=0.1, interval=0.01)
    assert not report.ok
    assert f"{A} is not present" in report.message() and f"{B} is still pinned" in report.message()
