"""Render a game's SFX list: N trimmed, loudness-normalised variations per sound.

    uv run python examples/render_sfx.py [--model DIR] [--out DIR]
"""

import argparse
from pathlib import Path

import soundscape

parser = argparse.ArgumentParser()
parser.add_argument("--model", default=None)
parser.add_argument("--out", default="renders")
parser.add_argument("--cache-dir", default=None)
parser.add_argument("--list", default=str(Path(__file__).with_name("game_sfx.yaml")))
args = parser.parse_args()

result = soundscape.render_sfx(args.list, args.out, model=args.model,
                               cache_dir=args.cache_dir, log=print)
for v in result.variations:
    print(f"{v.file}: {v.duration_s:.2f} s, {v.loudness_lufs} LUFS")
print(f"manifest: {result.manifest}")
