"""Build a scene in code and render it.

    uv run python examples/build_scene.py [--model DIR] [--out DIR]

Without --model this uses facebook/audiogen-medium (weights must be in the HF cache).
"""

import argparse

import soundscape

parser = argparse.ArgumentParser()
parser.add_argument("--model", default=None)
parser.add_argument("--out", default="renders")
parser.add_argument("--cache-dir", default=None)
args = parser.parse_args()

scene = soundscape.scene_from_dict({
    "name": "campfire",
    "duration": "20 s",
    "seed": 5,
    "defaults": {"duration": "4 s"},
    "elements": {
        "fire": {"prompt": "crackling campfire", "volume": "-8 dB", "loop": {"crossfade": "1 s"},
                 "fade_in": "2 s", "fade_out": "3 s"},
        "owl": {"prompt": "an owl hooting", "duration": "2 s", "volume": "-18 dB",
                "scatter": {"interval": ["5 s", "9 s"], "pan_jitter": 0.8},
                "effects": [{"reverb": {"room_size": 0.8, "wet": 0.4}}]},
    },
    "master": {"loudness": "-18 LUFS"},
})
if args.model:
    scene = scene.model_copy(update={"model": args.model})
for result in soundscape.render(scene, out=args.out, cache_dir=args.cache_dir, log=print):
    print(f"mix: {result.mix} ({result.mix_lufs:.1f} LUFS), stems: {sorted(result.stems)}")
