"""The MCP server through the MCP SDK's own client, over stdio and over streamable HTTP.

Each transport: the tools are listed; a bad scene comes back as exactly the ``Error:`` line the
CLI prints; a scene renders with the tiny model (with progress notifications) and its manifest is
read back through the resource link the result carries.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
import soundfile
from typer.testing import CliRunner

from soundscape.cli import app

from .servers_util import BAD_SCENE, TINY_SCENE, running

TOOLS = {"validate_scene", "plan_scene", "render_scene", "audition_takes", "keep_take",
         "render_sfx", "list_renders", "read_manifest"}


def cli_error(root: Path, *args: str) -> str:
    """What the CLI prints on stderr, run from ``root``."""
    cwd = os.getcwd()
    os.chdir(root)
    try:
        res = CliRunner().invoke(app, list(args))
    finally:
        os.chdir(cwd)
    assert res.exit_code == 1
    return res.stderr.strip()


def folder(root: Path) -> Path:
    (root / "scenes").mkdir(parents=True)
    (root / "scenes/bad.yaml").write_text(BAD_SCENE)
    (root / "scenes/small.yaml").write_text(TINY_SCENE)
    return root


async def session(client: Any, root: Path) -> None:
    tools = await client.list_tools()
    assert {t.name for t in tools.tools} == TOOLS
    schema = await client.read_resource("soundscape://schema/scene.json")
    assert "elements" in json.loads(schema.contents[0].text)["properties"]

    bad = await client.call_tool("validate_scene", {"scene": "scenes/bad.yaml"})
    assert bad.is_error
    expected = cli_error(root, "validate", "scenes/bad.yaml")
    assert expected.startswith("Error: scenes/bad.yaml:6: elements.rain.volume:")
    # the SDK puts its prefix before a ToolError's message; the message is the CLI's
    assert bad.content[0].text == \
        f"Error executing tool validate_scene: {expected.removeprefix('Error: ')}"
    # the same scene given as YAML text is the same error, and escapes are refused
    inline = await client.call_tool("validate_scene", {"scene": BAD_SCENE})
    assert inline.is_error and "elements.rain.volume: '-6 dbb' is not a level" in \
        inline.content[0].text
    out = await client.call_tool("validate_scene", {"scene": "../outside.yaml"})
    assert out.is_error and out.content[0].text.endswith(
        ": ../outside.yaml: '..' leads out of the server's root; give a path under it")

    plan = await client.call_tool("plan_scene", {"scene": "scenes/small.yaml"})
    assert plan.structured_content["timeline"][0] == "3.00 s at 48000 Hz, 2 channel(s)"
    kept = await client.call_tool("keep_take", {"scene": "scenes/small.yaml",
                                                "element": "rain", "seed": 41})
    assert kept.structured_content == {"scene": "scenes/small.yaml",
                                       "set": "elements.rain.seed", "value": 41}
    assert (root / "scenes/small.yaml").read_text() == \
        TINY_SCENE.replace("volume: -6 dB}", "volume: -6 dB, seed: 41}")

    steps: list[float] = []

    async def progress(step: float, total: float | None, message: str | None) -> None:
        steps.append(step)

    done = await client.call_tool("render_scene", {"scene": "scenes/small.yaml",
                                                   "preview": True},
                                  progress_callback=progress)
    assert not done.is_error, done.content[0].text
    render = done.structured_content["renders"][0]
    assert render["manifest"]["scene"] == "small"
    assert render["mix"] == "renders/small/mix.wav"
    assert steps and steps[-1] > 0
    links = {c.uri: c for c in done.content if c.type == "resource_link"}
    assert "soundscape://files/renders/small/stems/rain.wav" in links
    got = await client.read_resource("soundscape://files/renders/small/manifest.json")
    manifest = json.loads(got.contents[0].text)
    on_disk = json.loads((root / "renders/small/manifest.json").read_text())
    assert manifest == on_disk == render["manifest"]
    assert manifest["elements"][0]["loudness_lufs"] is not None
    mix = await client.read_resource("soundscape://files/renders/small/mix.wav")
    assert base64.b64decode(mix.contents[0].blob) == (root / "renders/small/mix.wav").read_bytes()
    [clip] = [c for c in done.content if c.type == "audio"]
    audio, sr = soundfile.read(io.BytesIO(base64.b64decode(clip.data)))
    assert (clip.mime_type, sr, audio.ndim, len(audio)) == ("audio/wav", 16000, 1, 3 * 16000)
    listed = await client.call_tool("list_renders", {})
    assert [r["directory"] for r in listed.structured_content["renders"]] == ["renders/small"]


def test_mcp_over_stdio(tmp_path: Path, tiny_model: Path) -> None:
    from mcp import Client, StdioServerParameters

    root = folder(tmp_path / "root")
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "soundscape", "mcp", "--root", str(root), "--model", str(tiny_model)],
        env={**os.environ, "OMP_NUM_THREADS": "1"})

    async def main() -> None:
        async with Client(params, read_timeout_seconds=300) as client:
            await session(client, root)

    anyio.run(main)
    assert not list(root.rglob("*.tmp*"))


def test_mcp_over_http(tmp_path: Path, tiny_model: Path) -> None:
    from mcp import Client

    from soundscape.servers.http import build_app
    from soundscape.servers.service import Service, Settings

    root = folder(tmp_path / "root")
    service = Service(Settings(root=root, model=str(tiny_model)))

    async def main(url: str) -> None:
        async with Client(f"{url}/mcp", read_timeout_seconds=300) as client:
            await session(client, root)

    with running(build_app(service)) as url:
        anyio.run(main, url)


@pytest.mark.parametrize("given", ["/etc/passwd", "../x.yaml", "scenes/../../x.yaml"])
def test_service_refuses_paths_out_of_the_root(tmp_path: Path, given: str) -> None:
    from soundscape.servers.service import AccessError, Service, Settings

    service = Service(Settings(root=tmp_path))
    with pytest.raises(AccessError):
        service.path(given)
