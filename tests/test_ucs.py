"""UCS naming in SFX lists: names that validate against UCS's rules, one clear error per bad
field (file:line), and a library render whose file names, catalog.csv and bext agree."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from soundscape.cli import app
from soundscape.errors import SceneError
from soundscape.scene.sfxlist import load_sfx_list, sound_ucs, variation_file
from soundscape.scene.ucs import ucs_name
from tests.oracles import parse_ucs_name


def test_issue_example_name_validates_and_parses_back() -> None:
    name = ucs_name("DOORWood", "Creak Open", "SNDSCP", "MyGame")
    assert name == "DOORWood_Creak Open_SNDSCP_MyGame"
    # the seed is the UserData block: the SourceID stays MyGame
    assert parse_ucs_name(name + "_seed42") == ("DOORWood", "Creak Open", "SNDSCP", "MyGame",
                                                "seed42")
    assert parse_ucs_name(name) == ("DOORWood", "Creak Open", "SNDSCP", "MyGame", None)
    with pytest.raises(ValueError, match="'MyGame-seed42' holds '-', which UCS keeps"):
        parse_ucs_name(name + "-seed42")  # what soundscape wrote before


@pytest.mark.parametrize("blocks,message", [
    (("doorwood", "Creak", "SNDSCP", "G"), "'doorwood' is not a UCS CatID"),
    (("DOOR_Wood", "Creak", "SNDSCP", "G"), "'DOOR_Wood' is not a UCS CatID"),
    (("DOOR", "Creak", "SNDSCP", "G"), "'DOOR' is not a UCS CatID"),
    (("DOORWood", "Creak_Open", "SNDSCP", "G"), "'Creak_Open' holds '_', which UCS keeps"),
    (("DOORWood", "A very long creaking door opening", "SNDSCP", "G"),
     "is 33 characters; UCS keeps the FXName to 25 or fewer"),
    (("DOORWood", "Creak", "SND SCP", "G"), "'SND SCP' holds a space"),
    (("DOORWood", "Creak", "SNDSCP", "My/Game"), "'My/Game' holds '/'"),
    (("DOORWood", "Slam-Hard", "SNDSCP", "G"),
     "'Slam-Hard' holds '-', which UCS keeps for separating a block from its sub-block; "
     "use a space"),
    (("DOORWood", "Slam", "SNDSCP", "my-game"),
     "'my-game' holds '-', which UCS keeps for separating a block from its sub-block; "
     "join the words, e.g. MyGame"),
    (("DOORWood", "Slam", "ACME-2", "G"), "'ACME-2' holds '-'"),
])
def test_bad_blocks_are_refused(blocks: tuple[str, str, str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ucs_name(*blocks)
    if not any("_" in b for b in blocks):  # an extra '_' reads as a fifth block (UserData)
        with pytest.raises(ValueError):  # read back from a file name, refused too
            parse_ucs_name("_".join(blocks))


def _list(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "lib.yaml"
    p.write_text(text)
    return p


def test_list_and_sound_fields_merge(tmp_path: Path) -> None:
    lst = load_sfx_list(_list(tmp_path, """\
name: my_game
ucs: {category: DOORWood, creator: ACME}
sounds:
  - {name: creak_open, prompt: a wooden door creaking open}
  - {name: slam, prompt: a door slamming, ucs: {category: DOORMetl, name: Slam Hard,
                                                source: Demo}}
  - {name: plain, prompt: a plain sound}
"""))
    a, b, c = lst.sounds
    assert variation_file(lst, a, 42, "wav") == \
        "creak_open/DOORWood_Creak Open_ACME_MyGame_seed42.wav"
    assert variation_file(lst, b, 7, "flac") == "slam/DOORMetl_Slam Hard_ACME_Demo_seed7.flac"
    assert sound_ucs(lst, c) is not None  # the list's ucs names every sound
    lst2 = load_sfx_list(_list(tmp_path, "sounds: [{name: p, prompt: x}]\n"))
    assert variation_file(lst2, lst2.sounds[0], 3, "wav") == "p/p-seed3.wav"  # no UCS


@pytest.mark.parametrize("text,line", [
    ("sounds:\n  - {name: d, prompt: x, ucs: {category: door wood}}\n",
     "lib.yaml:2: sounds[0].ucs.category: 'door wood' is not a UCS CatID: write the category's "
     "short name in capitals then its subcategory, e.g. DOORWood, AMBForst or UIClick "
     "(universalcategorysystem.com lists them)"),
    ("sounds:\n  - {name: d, prompt: x, ucs: {category: DOORWood, name: Creak_Open}}\n",
     "lib.yaml:2: sounds[0].ucs.name: 'Creak_Open' holds '_', which UCS keeps for separating "
     "the blocks of a name; use a space"),
    ("sounds:\n  - {name: d, prompt: x,\n     ucs: {category: DOORWood, name: Slam-Hard}}\n",
     "lib.yaml:3: sounds[0].ucs.name: 'Slam-Hard' holds '-', which UCS keeps for separating a "
     "block from its sub-block; use a space"),
    ("name: x\nucs: {category: DOORWood, source: my-game}\nsounds:\n  - {name: d, prompt: x}\n",
     "lib.yaml:2: ucs.source: 'my-game' holds '-', which UCS keeps for separating a block from "
     "its sub-block; join the words, e.g. MyGame"),
    ("ucs: {creator: ME}\nsounds:\n  - {name: d, prompt: x}\n",
     "lib.yaml:3: sounds[0] (d): ucs: no category (CatID); add e.g. 'category: DOORWood' to "
     "the sound's ucs or to the list's"),
    ("ucs: {category: DOORWood}\nsounds:\n  - {name: a_door_creaking_open_very_slowly, "
     "prompt: x}\n",
     "lib.yaml:3: sounds[0] (a_door_creaking_open_very_slowly): ucs: the FXName made from the "
     "sound's name: 'A Door Creaking Open Very Slowly' is 32 characters; UCS keeps the FXName "
     "to 25 or fewer (put more in the prompt, which goes into the description); set ucs.name"),
])
def test_bad_ucs_is_one_error_with_its_line(tmp_path: Path, text: str, line: str) -> None:
    path = _list(tmp_path, text)
    with pytest.raises(SceneError) as e:
        load_sfx_list(path)
    assert e.value.lines == [f"{tmp_path}/{line}"]
    r = CliRunner().invoke(app, ["sfx", str(path), "--out", str(tmp_path / "o")])
    assert r.exit_code == 1 and r.stderr.splitlines() == [f"Error: {tmp_path}/{line}"]
    assert not (tmp_path / "o").exists()


def test_library_render_names_catalog_and_bext(tmp_path: Path, tiny_model: Path) -> None:
    from wavinfo import WavInfoReader

    path = _list(tmp_path, """\
name: my_game
defaults: {duration: 1 s, variations: 2}
ucs: {category: DOORWood, creator: SNDSCP}
sounds:
  - {name: creak_open, prompt: a wooden door creaking open, seed: 42}
  - {name: knock, prompt: a knock, ucs: {category: DOORMetl, name: Knock Knock}}
  - {name: plain, prompt: a plain sound}
""")
    r = CliRunner().invoke(app, ["sfx", str(path), "--model", str(tiny_model), "--out",
                                 str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    root = tmp_path / "o/my_game"
    rows = list(csv.DictReader((root / "catalog.csv").open(newline="")))
    m = json.loads((root / "manifest.json").read_text())
    assert [row["file"] for row in rows] == [v["file"] for v in m["variations"]]
    assert len(rows) == 6
    first = rows[0]
    assert first["file"] == "creak_open/DOORWood_Creak Open_SNDSCP_MyGame_seed42.wav"
    assert (first["name"], first["prompt"], first["seed"]) == (
        "creak_open", "a wooden door creaking open", "42")
    for row, v in zip(rows, m["variations"], strict=True):
        file = root / row["file"]
        assert file.is_file()
        cat, fx, creator, source, user = parse_ucs_name(file.stem)  # every name validates
        assert (row["CatID"], row["FXName"], row["CreatorID"], row["SourceID"]) == (
            cat, fx, creator, source)
        assert user == f"seed{row['seed']}" and "-" not in file.stem
        assert float(row["loudness_lufs"]) == v["loudness_lufs"]
        assert float(row["true_peak_dbtp"]) == v["true_peak_dbtp"] <= -0.9
        assert float(row["duration_s"]) == pytest.approx(v["duration_s"], abs=1e-6)
        bext = WavInfoReader(file).bext
        assert bext.description == f"my_game {row['name']}: {row['prompt']}"
        assert bext.loudness_value == pytest.approx(v["loudness_lufs"], abs=0.011)
        assert bext.originator_ref == v["key"][:32]
    assert rows[2]["CatID"] == "DOORMetl" and rows[2]["FXName"] == "Knock Knock"
