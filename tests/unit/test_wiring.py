"""The agent as pinsvc/wiring.py builds it from the settings."""

from __future__ import annotations

from pathlib import Path

from pinsvc.config import Settings, replace
from pinsvc.wiring import build_agent

NAME = "50-pinned-images"


async def test_the_reloader_finds_crio_by_the_cri_socket(tmp_path) -> None:
    settings = replace(Settings(), cri_endpoint="unix:///run/crio/crio.sock", reload={"strategy": "signal"},
                       state_dir=tmp_path / "state", dropin={"directory": tmp_path / "crio.conf.d"})
    agent = build_agent(settings)
    try:
        reloader = agent.reloader
        assert reloader.cri_socket == Path("/run/crio/crio.sock") and reloader.settings.strategy == "signal"
    finally:
        await agent.close()


async def test_the_dropin_settings(tmp_path) -> None:
    settings = replace(Settings(), dropin={"directory": tmp_path / "crio.conf.d", "adopt_foreign": True,
                                           "crio_binary": "", "crio_config": tmp_path / "crio.conf"},
                       state_dir=tmp_path / "state")
    agent = build_agent(settings)
    try:
        d = agent.dropin
        assert d.path == tmp_path / "crio.conf.d" / NAME
        assert d.temp_dir == tmp_path  # '' = the parent of the drop-in directory
        assert d.adopt_foreign and d.crio_binary == "" and d.crio_config == tmp_path / "crio.conf"
    finally:
        await agent.close()
