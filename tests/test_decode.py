"""The fast decoding loop (generate/decode.py) against stock audiocraft, and precision choice.

Token equality is checked in float32, where the fast loop must sample exactly what audiocraft's
``LMModel.generate`` samples for the same per-row seeds: alone and batched, within one window and
extended past it (``extend_stride``), for both attention layouts audiocraft builds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from soundscape.errors import GeneratorError
from soundscape.generate import TakeRequest, audiogen_request
from soundscape.generate.models import resolve
from soundscape.generate.precision import choose_precision, cpu_flags, cpu_has_native_bf16

WINDOW_S = 1.0  # a short window, so an extended take costs few steps


def _model(layout: bool):  # type: ignore[no-untyped-def]
    import torch

    from soundscape.generate.audiogen import AudioGen
    from soundscape.generate.dev.tiny import build_random_model

    compression, lm, _, _ = build_random_model("tiny", seed=3, audiogen_layout=layout)
    compression.eval()
    lm.eval()
    with torch.no_grad():  # audiocraft/torch start biases at zero, which would hide their use
        for name, param in lm.named_parameters():
            if name.endswith("bias") and not name.endswith("norm.bias"):
                param.normal_(0.0, 0.5)
    model = AudioGen("tiny", compression, lm)
    model.max_duration = WINDOW_S  # the LM has no fixed window; audiocraft chunks by this
    return model


@pytest.fixture(scope="module", params=[False, True], ids=["torch-mha", "audiogen-layout"])
def model(request):  # type: ignore[no-untyped-def]
    import torch

    torch.set_num_threads(1)  # tiny models are all per-op overhead (see conftest.tiny_model)
    return _model(request.param)


def _tokens(model, prompts, seeds, duration, fast, **decoder_args):  # type: ignore[no-untyped-def]
    from soundscape.generate.audiogen import per_row_sampling
    from soundscape.generate.decode import FastDecoder, generate_tokens

    model.set_generation_params(use_sampling=True, top_k=250, top_p=0.0, temperature=1.0,
                                duration=duration, cfg_coef=3.0, extend_stride=0.5)
    with per_row_sampling(seeds, "cpu"):
        attributes, _ = model._prepare_tokens_and_attributes(prompts, None)
        if not fast:
            return model._generate_tokens(attributes, None)
        decoder = FastDecoder(model.lm, **decoder_args)
        out = generate_tokens(model, decoder, attributes)
        model.notes = decoder.notes
        return out


@pytest.mark.parametrize("duration", [0.4, 1.7], ids=["short", "extended"])
def test_fast_loop_tokens_equal_stock(model, duration: float) -> None:  # type: ignore[no-untyped-def]
    """Batched and alone, the fast loop samples audiocraft's tokens (1.7 s: three windows)."""
    seeds = [1, 5, 7]
    prompts = ["p1", "p5", "p7"]
    stock = _tokens(model, prompts, seeds, duration, fast=False)
    fast = _tokens(model, prompts, seeds, duration, fast=True)
    alone = _tokens(model, prompts[1:2], seeds[1:2], duration, fast=True)
    assert fast.shape == stock.shape == (3, 4, round(duration * 50))
    assert (fast == stock).all()
    assert (alone == stock[1:2]).all()
    assert (fast[0] != fast[1]).any()


@pytest.mark.parametrize("duration", [0.4, 1.7], ids=["short", "extended"])
def test_fixed_shape_step_equals_stock(model, duration: float) -> None:  # type: ignore[no-untyped-def]
    """The CUDA-graph step (whole cache, masked) decodes what audiocraft decodes."""
    stock = _tokens(model, ["a", "b"], [2, 9], duration, fast=False)
    static = _tokens(model, ["a", "b"], [2, 9], duration, fast=True, static=True)
    assert (static == stock).all()


def test_failed_capture_falls_back_to_eager(model, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import torch

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("no CUDA graphs here\nsecond line")

    monkeypatch.setattr(torch, "compile", broken)
    stock = _tokens(model, ["a"], [4], 0.4, fast=False)
    fast = _tokens(model, ["a"], [4], 0.4, fast=True, compile=True)
    assert (fast == stock).all()
    assert model.notes == ["compiled decoding failed (RuntimeError: no CUDA graphs here); "
                           "decoding eagerly"]


def _req(prompt: str, seed: int, duration: float) -> TakeRequest:
    return audiogen_request("m", prompt, duration, 1.0, 250, 0.0, 3.0, 2.5, seed)


def test_generator_fast_and_stock_takes_are_equal(tiny_model: Path) -> None:
    """Through the real loader (3 s window), an extended 3.5 s take and a short one, batched:
    the fast loop's audio equals audiocraft's loop's audio sample for sample."""
    from soundscape.generate.audiogen import Generator

    fast = Generator(resolve(str(tiny_model)), "cpu", precision="fp32")
    stock = Generator(resolve(str(tiny_model)), "cpu", precision="fp32", loop="stock")
    assert (fast.loop, stock.loop, fast.precision, fast.device) == ("fast", "stock", "fp32", "cpu")
    for duration in (0.5, 3.5):
        reqs = [_req("rain", 1, duration), _req("wind", 2, duration)]
        a, b = fast.generate(reqs), stock.generate(reqs)
        for x, y in zip(a, b, strict=True):
            assert x.shape == (1, round(duration * 16000))
            np.testing.assert_array_equal(x, y)


def test_bf16_generator(tiny_model: Path) -> None:
    import torch

    from soundscape.generate.audiogen import Generator

    gen = Generator(resolve(str(tiny_model)), "cpu", precision="bf16")
    assert gen.precision == "bf16" and gen.loop == "fast"
    assert {p.dtype for p in gen.model.lm.parameters()} == {torch.bfloat16}
    assert next(iter(gen.model.compression_model.parameters())).dtype == torch.float32
    ref = Generator(resolve(str(tiny_model)), "cpu", precision="fp32")
    [take] = gen.generate([_req("rain", 1, 0.5)])
    [take32] = ref.generate([_req("rain", 1, 0.5)])
    assert take.shape == take32.shape == (1, 8000) and np.isfinite(take).all()
    assert np.abs(take).max() > 1e-3


def test_kl_of_equal_logits_is_zero_and_grows() -> None:
    import torch

    from soundscape.generate.dev.diagnostics import kl_divergence

    a = torch.tensor([[2.0, 1.0, 0.0]])
    assert kl_divergence(a, a) == 0.0
    # KL(p||q) of p = softmax(a), q uniform is log(3) - H(p)
    p = torch.softmax(a, -1)
    expected = float(np.log(3) + (p * p.log()).sum())
    assert kl_divergence(a, torch.zeros(1, 3)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("requested", "device", "flags", "expected"), [
    ("auto", "cpu", {"avx512f", "avx512_bf16"}, "bf16"),
    ("auto", "cpu", {"amx_bf16", "amx_tile"}, "bf16"),
    ("auto", "cpu", {"avx512f", "avx2"}, "fp32"),
    ("auto", "cpu", set(), "fp32"),
    ("auto", "cuda", set(), "fp16"),
    ("auto", "mps", set(), "fp16"),
    ("fp32", "cuda", set(), "fp32"),
    ("bf16", "cpu", set(), "bf16"),
    ("fp16", "cpu", {"avx512_bf16"}, "fp16"),
])
def test_precision_choice(requested: str, device: str, flags: set[str], expected: str) -> None:
    assert choose_precision(requested, device, frozenset(flags)) == expected


def test_precision_errors() -> None:
    with pytest.raises(GeneratorError, match=r"^unknown precision 'fp8'; use one of auto, "
                                             r"fp32, bf16, fp16$"):
        choose_precision("fp8", "cpu")
    with pytest.raises(GeneratorError, match="bf16 is not supported on MPS"):
        choose_precision("bf16", "mps")


def test_cpu_flags_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512f "
                    "avx512_bf16 avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(info) == frozenset({"fpu", "avx512f", "avx512_bf16", "avx512_vnni"})
    assert cpu_has_native_bf16(cpu_flags(info))
    assert cpu_flags(tmp_path / "missing") == frozenset()
    assert not cpu_has_native_bf16(frozenset({"avx512f"}))


def test_teacher_forced_logits_equal_audiocraft_forward(model) -> None:  # type: ignore[no-untyped-def]
    """Step by step through the cache, the logits equal audiocraft's whole-sequence forward."""
    import torch
    from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout

    from soundscape.generate.decode import FastDecoder
    from soundscape.generate.dev.diagnostics import teacher_forced_logits

    codes = _tokens(model, ["a", "b"], [2, 9], 0.4, fast=False)
    logits, valid = teacher_forced_logits(model, FastDecoder(model.lm), ["a", "b"], codes)
    lm = model.lm
    attrs, _ = model._prepare_tokens_and_attributes(["a", "b"], None)
    tensors = lm.condition_provider(lm.condition_provider.tokenize(
        attrs + ClassifierFreeGuidanceDropout(p=1.0)(attrs)))
    with torch.no_grad():
        both = lm.compute_predictions(torch.cat([codes, codes]), [], tensors).logits
    cond, uncond = both.split(2)
    expected = uncond + (cond - uncond) * 3.0
    assert logits.shape == expected.shape == (2, 4, 20, 256)
    assert valid.all()  # one window without a prompt: every timestep is predicted
    # audiocraft leaves the delayed codebooks' last steps (never complete in its input) NaN
    known = ~expected.isnan()
    assert known.float().mean() > 0.9
    scale = float(expected[known].abs().max())  # ~100 here: float32 rounding is ~1e-5 of it
    torch.testing.assert_close(logits[known], expected[known], rtol=1e-5, atol=2e-5 * scale)


def test_cost_is_measured_once_per_machine_model_and_precision(tmp_path: Path) -> None:
    from soundscape.generate.cost import cached_cost, cost_line, store_cost

    root = tmp_path / "c"
    assert cached_cost("m1", "cpu", "bf16", root) is None
    store_cost("m1", "cpu", "bf16", 8.25, root)
    store_cost("m1", "cpu", "fp32", 50.0, root)
    assert cached_cost("m1", "cpu", "bf16", root) == 8.25
    assert cached_cost("m1", "cpu", "fp32", root) == 50.0
    assert cached_cost("m2", "cpu", "bf16", root) is None
    assert cached_cost("m1", "cuda", "bf16", root) is None
    (root / "cost.json").write_text("{not json")
    assert cached_cost("m1", "cpu", "bf16", root) is None  # damaged: measured again
    assert cost_line(3, 4.0, "cpu", "bf16", 8.25) == (
        "generating 3 take(s), 4.0 s of audio, on cpu at bf16; measured here: 8.2 s of compute "
        "per second of audio, so about 33 s (less when takes share a batch); a GPU is much faster")
    assert cost_line(1, 600.0, "cuda", "fp16", 0.5).endswith("so about 5 min (less when takes "
                                                              "share a batch)")
    assert cost_line(1, 2.0, "cpu", "fp32", None) == \
        "generating 1 take(s), 2.0 s of audio, on cpu at fp32"


def test_render_measures_cost_once_and_records_precision(tmp_path: Path, tiny_model: Path) -> None:
    """The first render measures this machine (and says so before generating); the second
    reuses the stored figure; the manifest says which device and precision made each take."""
    import json

    from soundscape.generate.cost import cached_cost
    from soundscape.pipelines.render import render

    scene = tmp_path / "s.yaml"
    scene.write_text(f"name: s\nduration: 1\nmodel: {tiny_model}\n"
                     "elements:\n  rain: {prompt: rain, duration: 0.5}\n")
    lines: list[str] = []
    [res] = render(scene, out=tmp_path / "out", device="cpu", precision="fp32",
                   log=lines.append)
    gen_lines = [ln for ln in lines if ln.startswith("generating")]
    assert len(gen_lines) == 1 and "on cpu at fp32; measured here: " in gen_lines[0]
    identity = resolve(str(tiny_model)).identity
    measured = cached_cost(identity, "cpu", "fp32")
    assert measured is not None and measured > 0
    takes = json.loads(res.manifest_path.read_text())["elements"][0]["takes"]
    assert takes[0]["generator"] == {"device": "cpu", "precision": "fp32"}
    scene.write_text(scene.read_text().replace("prompt: rain", "prompt: wind"))
    lines.clear()
    render(scene, out=tmp_path / "out", device="cpu", precision="fp32", log=lines.append)
    assert f"{measured:.2g} s of compute per second" in lines[0]
    assert cached_cost(identity, "cpu", "fp32") == measured  # not measured again


def test_cli_rejects_unknown_precision(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from soundscape.cli import app

    scene = tmp_path / "s.yaml"
    scene.write_text("name: s\nduration: 1\nelements:\n  rain: {prompt: rain}\n")
    result = CliRunner().invoke(app, ["render", str(scene), "--precision", "fp8"])
    assert result.exit_code == 2  # a usage error, found before anything is loaded
    assert result.output == "Error: --precision fp8 is not one of auto, fp32, bf16, fp16\n"
