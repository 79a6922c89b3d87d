import argparse

import pytest

from pinsvc import config
from pinsvc.errors import InvalidArgument


def parse(argv, env=None, file=None):
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return config.load(parser.parse_args(argv), env=env or {}, file=file)


def test_flags_beat_env_beat_file(tmp_path):
    f = tmp_path / "pinsvc.toml"
    f.write_text('node_name = "file"\n[pull]\nparallelism = 2\nmax_attempts = 9\n[registry]\ninsecure = ["a:1"]\n')
    s = parse(["--pull-parallelism", "4"], env={"PINSVC_PULL_PARALLELISM": "3", "PINSVC_NODE_NAME": "env"}, file=f)
    assert (s.pull.parallelism, s.pull.backoff.attempts, s.node_name, s.registry.insecure) == (4, 9, "env", ("a:1",))


def test_defaults_match_the_documented_ones():
    s = parse([])
    assert s.dropin_path.as_posix() == "/etc/crio/crio.conf.d/50-pinned-images"
    assert (s.pull.parallelism, s.space.decompression_factor, s.space.min_free_bytes, s.space.max_usage_percent) == (
        5, 2.0, 16 << 30, 85.0)
    assert s.server.socket_mode == "0600" and s.dropin_temp_dir.as_posix() == "/etc/crio"


@pytest.mark.parametrize("argv, words", [
    (["--reload-strategy", "kill"], "reload.strategy 'kill'"),
    (["--pull-parallelism", "many"], "pull.parallelism: 'many'"),
    (["--pull-parallelism", "0"], "must be >= 1"),
    (["--dropin-filename", "../x"], "dropin.filename"),
])
def test_bad_settings_are_named(argv, words):
    with pytest.raises(InvalidArgument) as e:
        parse(argv)
    assert words in str(e.value)


def test_unknown_setting_in_file_is_named(tmp_path):
    f = tmp_path / "x.toml"
    f.write_text("[pull]\nparalelism = 3\n")
    with pytest.raises(InvalidArgument, match="unknown setting \\[pull\\] paralelism"):
        parse([], file=f)
