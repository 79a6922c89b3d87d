"""The benchmark's own pure pieces: the streamed big layers (valid, deterministic, digests
right), the MCO-like drop-in, and the summary of runs."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile

import pytest

from bench import mco, workloads
from bench.suite import summarize


def _stream(seed: str, size: int) -> tuple[bytes, dict]:
    digests: dict = {}
    data = b"".join(workloads.big_layer_chunks(seed, size, digests))
    return data, digests


@pytest.mark.parametrize("size", [0, 1, 511, 512, 100_000])
def test_a_streamed_layer_is_a_gzipped_tar_of_one_file_with_the_reported_digests(size, monkeypatch):
    monkeypatch.setattr(workloads, "CHUNK", 4096)  # several chunks even for small layers
    blob, digests = _stream("t/layer", size)
    tar = gzip.decompress(blob)
    assert digests == {"digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
                       "diff_id": "sha256:" + hashlib.sha256(tar).hexdigest(), "size": len(blob)}
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        (member,) = archive.getmembers()
        assert member.size == size and member.mtime == 0 and member.mode == 0o644
        content = archive.extractfile(member).read()
    assert content == b"".join(workloads._random_chunks("t/layer", size))
    if size >= 4096:
        assert len(gzip.compress(content)) > 0.99 * size, "incompressible"


def test_streamed_layers_are_deterministic_and_differ_by_seed():
    assert _stream("a", 10_000)[1] == _stream("a", 10_000)[1]
    assert _stream("a", 10_000)[1]["digest"] != _stream("b", 10_000)[1]["digest"]


def test_w100_is_release_shaped():
    images = workloads.release_images(100)
    facts = workloads.facts_of(images)
    assert facts["images"] == 100 and facts["layers_per_image"] == [2, 6]
    assert 100 < facts["unique_compressed_mib"] < facts["total_compressed_mib"] < 1024
    bases = {img.layers[0].digest for img in images}
    assert len(bases) == 1, "every image starts from the os base"
    combos = {tuple(layer.digest for layer in img.layers[:-1]) for img in images if len(img.layers) > 2}
    assert len(combos) > 5, "bases in different combinations"


def test_mco_dropin_is_sorted_unique_and_rewritten_only_when_changed(tmp_path):
    text = mco.render_dropin(["r/b@sha256:2", "r/a@sha256:1", "r/b@sha256:2"])
    assert text == '[crio.image]\npinned_images = [\n  "r/a@sha256:1",\n  "r/b@sha256:2",\n]\n'
    assert mco.write_dropin(str(tmp_path), text) is True
    assert (tmp_path / mco.DROPIN_NAME).stat().st_mode & 0o777 == 0o644
    assert mco.write_dropin(str(tmp_path), text) is False
    assert [p.name for p in tmp_path.iterdir()] == [mco.DROPIN_NAME]


def test_summary_is_median_min_max_with_median_phases():
    runs = [{"seconds": s, "phases": {"pulls": s - 1, "space_check": 0.5}, "cpu_seconds": {"crio": s}}
            for s in (3.0, 1.0, 2.0)]
    summary = summarize(runs)
    assert (summary["median"], summary["min"], summary["max"], summary["n"]) == (2.0, 1.0, 3.0, 3)
    assert summary["phases"] == {"pulls": 1.0, "space_check": 0.5}
    assert summary["crio_cpu_seconds"] == 2.0
