"""A server never reads outside its root: not through a variant rendered by all_variants, not
through a convolution's impulse response, not through an SFX list's model folder; over HTTP,
MCP (the SDK's in-memory client) and the service layer they share."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import httpx
import numpy as np
import pytest

from soundscape.servers.http import build_app
from soundscape.servers.service import AccessError, Service, Settings

from .conftest import wav
from .servers_util import running, studio_folder

VARIANT_OUT = """\
name: escvar
duration: 2 s
sample_rate: 22050
elements:
  tone: {{file: tone.wav, loop: true}}
variants:
  night:
    elements:
      s: {{file: {secret}}}
"""

IR_OUT = """\
name: escir
duration: 2 s
sample_rate: 22050
elements:
  tone:
    file: tone.wav
    effects:
      - convolution: {{ir: {secret}}}
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    studio_folder(root)
    sr = 22050
    wav(tmp_path / "secret.wav", 0.3 * np.sin(2 * np.pi * 880 * np.arange(sr) / sr), sr)
    secret = tmp_path / "secret.wav"
    (root / "scenes/escvar.yaml").write_text(VARIANT_OUT.format(secret=secret))
    (root / "scenes/escir.yaml").write_text(IR_OUT.format(secret=secret))
    (root / "scenes/esclink.yaml").write_text(IR_OUT.format(secret="link/secret.wav"))
    (root / "scenes/link").symlink_to(tmp_path, target_is_directory=True)
    return root


def written(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in (root / "renders").rglob("*.wav"))


def test_all_variants_checks_every_variant(root: Path, tmp_path: Path) -> None:
    service = Service(Settings(root=root))
    expected = (f"scenes/escvar.yaml: elements.s.file: {tmp_path / 'secret.wav'} is outside the "
                f"server's root; copy the recording under it")
    with pytest.raises(AccessError) as e:
        service.call(service.render, "scenes/escvar.yaml", all_variants=True)
    assert str(e.value) == expected
    assert not (root / "renders").exists() or written(root) == []
    with running(build_app(service)) as url, httpx.Client(base_url=url) as client:
        job = client.post("/api/jobs", json={"scene": "scenes/escvar.yaml",
                                             "all_variants": True}).json()
        with client.stream("GET", job["events_url"], timeout=60) as r:
            last = [json.loads(x[5:]) for x in r.iter_lines() if x.startswith("data:")][-1]
        assert (last["type"], last["error"]) == ("error", f"Error: {expected}")
    assert written(root) == []

    async def mcp() -> None:
        from mcp import Client

        from soundscape.servers.mcp import build

        async with Client(build(service)) as c:
            r = await c.call_tool("render_scene", {"scene": "scenes/escvar.yaml",
                                                   "all_variants": True})
            assert r.is_error
            assert r.content[0].text == f"Error executing tool render_scene: {expected}"

    anyio.run(mcp)
    assert written(root) == []


@pytest.mark.parametrize("scene", ["escir", "esclink"])
def test_an_impulse_response_out_of_the_root_is_refused(root: Path, tmp_path: Path,
                                                        scene: str) -> None:
    service = Service(Settings(root=root))
    shown = tmp_path / "secret.wav" if scene == "escir" else "scenes/link/secret.wav"
    for call in (lambda: service.call(service.validate, f"scenes/{scene}.yaml"),
                 lambda: service.call(service.render, f"scenes/{scene}.yaml")):
        with pytest.raises(AccessError) as e:
            call()
        assert str(e.value) == (
            f"scenes/{scene}.yaml: elements.tone.effects[0].convolution.ir: "
            f"{shown} is outside the server's root; copy the impulse "
            f"response under it")
    assert not (root / "renders").exists() or written(root) == []
    # an impulse response under the root is fine
    (root / "scenes/inside.yaml").write_text(IR_OUT.format(secret="hum.wav")
                                             .replace("escir", "inside"))
    assert service.call(service.render, "scenes/inside.yaml")["renders"][0]["mix"] == \
        "renders/inside/mix.wav"


@pytest.mark.parametrize("model", ["{outside}", "../../model", "link/model"])
def test_an_sfx_lists_model_out_of_the_root_is_refused(root: Path, tmp_path: Path,
                                                       model: str) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model/config.json").write_text("{}")
    given = model.format(outside=tmp_path / "model")
    (root / "scenes/sfx.yaml").write_text(
        f"name: sfxout\nmodel: {given}\nsounds:\n  - {{name: click, prompt: a click}}\n")
    service = Service(Settings(root=root))
    with pytest.raises(AccessError) as e:
        service.call(service.sfx, "scenes/sfx.yaml")
    assert str(e.value) == f"scenes/sfx.yaml: model: {given} is outside the server's root"
    assert not (root / "renders").exists()
