"""save_pretrained -> from_pretrained round trips (our class and DiffusionPipeline with the shim), and the
DiffusionPipeline route on a converted folder gives the same pipeline as our class."""

import hashlib
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from diffusers import DiffusionPipeline
from factories import build_checkpoint, build_lora, build_upsampler
from safetensors import safe_open
from test_pipeline import call
from tiny_a2v import single_file_pipe

from ltx2_diffusers import LTX2AudioToVideoPipeline
from ltx2_diffusers.convert import PIPELINE_SHIM_SOURCE, convert_checkpoint


TOL = 1e-5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("saveload")
    checkpoint = build_checkpoint(root / "ltx-2.3.safetensors", "2.3", seed=41, dtype=torch.float32)
    upsampler = build_upsampler(root / "upsampler.safetensors", seed=42, dtype=torch.float32)
    distilled = build_lora(root / "distilled.safetensors", checkpoint, seed=43, dtype=torch.float32)
    user = build_lora(root / "user.safetensors", checkpoint, seed=44, dtype=torch.float32, include_connectors=True)
    rate = 16000
    t = np.arange(int(rate * 0.5)) / rate
    sf.write(root / "a.wav", np.stack([np.sin(2 * np.pi * 250 * t), np.cos(2 * np.pi * 4 * t)], 1) * 0.3, rate)
    converted = root / "converted"
    convert_checkpoint(
        checkpoint, converted, spatial_upsampler_path=upsampler, distilled_lora=distilled, distilled_lora_scale=0.7
    )
    return dict(
        root=root, checkpoint=checkpoint, upsampler=upsampler, distilled=distilled, user=user,
        audio=root / "a.wav", converted=converted,
    )  # fmt: skip


def single_file(setup):
    return single_file_pipe(setup["checkpoint"], setup["upsampler"], setup["distilled"], 0.7)


def latents(pipe, setup):
    return call(pipe, setup["audio"], output_type="latent").frames


def assert_clean_folder(folder):
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "LTX2AudioToVideoPipeline"]
    assert (folder / "pipeline.py").read_text() == PIPELINE_SHIM_SOURCE
    assert (folder / "distilled_lora" / "pytorch_lora_weights.safetensors").is_file()
    for component in ("transformer", "connectors"):
        for path in (folder / component).glob("*.safetensors"):
            with safe_open(path, "pt") as f:
                bad = [k for k in f.keys() if "base_layer" in k or "lora_" in k]
            assert not bad, bad[:5]


def assert_nothing_on_meta(pipe):
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            meta = [n for n, p in component.state_dict().items() if p.is_meta]
            assert not meta, (name, meta[:5])


def test_round_trip_with_a_user_adapter(setup, tmp_path):
    pipe = single_file(setup)
    pipe.load_lora_weights(setup["user"], adapter_name="user")
    pipe.set_adapters("user", 0.6)
    expected = latents(pipe, setup)
    pipe.save_pretrained(tmp_path / "saved")
    assert_clean_folder(tmp_path / "saved")
    with safe_open(tmp_path / "saved" / "user_loras" / "user" / "pytorch_lora_weights.safetensors", "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith(("transformer.", "connectors.")) for k in keys)
    assert any(k.startswith("connectors.") for k in keys)
    assert (latents(pipe, setup) - expected).abs().max() == 0  # saving left the pipeline as it was

    for load in (
        lambda d: LTX2AudioToVideoPipeline.from_pretrained(d),
        lambda d: DiffusionPipeline.from_pretrained(d, trust_remote_code=True),
    ):
        loaded = load(tmp_path / "saved")
        assert type(loaded) is LTX2AudioToVideoPipeline
        assert_nothing_on_meta(loaded)
        assert loaded.distilled_lora is not None and loaded.config.distilled_lora_scale == 0.7
        assert loaded.get_active_adapters() == ["user"]
        diff = (latents(loaded, setup) - expected).abs().max().item()
        assert diff <= TOL, diff
        # the stage-2 delta is there: without it the result moves by far more than the tolerance
        assert (
            call(loaded, setup["audio"], output_type="latent", distilled_lora_scale=0.0).frames - expected
        ).abs().max() > 100 * TOL

    # and a second save of the reloaded pipeline is again a clean folder
    loaded.save_pretrained(tmp_path / "again")
    assert_clean_folder(tmp_path / "again")


def test_round_trip_of_a_converted_folder_and_diffusion_pipeline_route(setup, tmp_path):
    ours = LTX2AudioToVideoPipeline.from_pretrained(setup["converted"])
    generic = DiffusionPipeline.from_pretrained(setup["converted"], trust_remote_code=True)
    assert type(generic) is LTX2AudioToVideoPipeline and generic.distilled_lora is not None
    expected = latents(ours, setup)
    assert torch.equal(latents(generic, setup), expected)
    reference = latents(single_file(setup), setup)
    assert (expected - reference).abs().max().item() <= TOL
    ours.save_pretrained(tmp_path / "saved")
    assert_clean_folder(tmp_path / "saved")
    assert not (tmp_path / "saved" / "user_loras").exists()
    reloaded = DiffusionPipeline.from_pretrained(tmp_path / "saved", trust_remote_code=True)
    assert_nothing_on_meta(reloaded)
    assert (latents(reloaded, setup) - expected).abs().max().item() <= TOL


def test_save_refuses_fused_loras_and_a_foreign_pipeline_py(setup, tmp_path):
    pipe = single_file(setup)
    pipe.load_lora_weights(setup["user"], adapter_name="user")
    pipe.fuse_lora()
    with pytest.raises(ValueError, match="unfuse_lora"):
        pipe.save_pretrained(tmp_path / "fused")
    assert not (tmp_path / "fused").exists()
    pipe.unfuse_lora()
    target = tmp_path / "mine"
    target.mkdir()
    (target / "pipeline.py").write_text("print('my own file')\n")
    digest = hashlib.sha256((target / "pipeline.py").read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="pipeline.py"):
        pipe.save_pretrained(target)
    assert hashlib.sha256((target / "pipeline.py").read_bytes()).hexdigest() == digest
    assert sorted(p.name for p in target.iterdir()) == ["pipeline.py"]


def test_a_converted_folder_listing_the_distilled_lora_component(setup, tmp_path):
    """What the converter should write: `"distilled_lora": ["ltx2_diffusers", "LTX2DistilledLoRA"]` in
    model_index.json (the `distilled_lora/` folder as today, no config.json needed): both routes load it as a
    component, with the same frames as the folder without the entry."""
    import shutil

    folder = tmp_path / "listed"
    shutil.copytree(setup["converted"], folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["distilled_lora"] = ["ltx2_diffusers", "LTX2DistilledLoRA"]
    (folder / "model_index.json").write_text(json.dumps(index))
    assert not (folder / "distilled_lora" / "config.json").exists()
    expected = latents(LTX2AudioToVideoPipeline.from_pretrained(setup["converted"]), setup)
    for pipe in (
        LTX2AudioToVideoPipeline.from_pretrained(folder),
        DiffusionPipeline.from_pretrained(folder, trust_remote_code=True),
    ):
        assert type(pipe.distilled_lora).__name__ == "LTX2DistilledLoRA"
        assert torch.equal(latents(pipe, setup), expected)


def test_from_pipe_keeps_the_users_adapter_state(setup, tmp_path):
    """`from_pipe` records the source folder again (`_name_or_path`): the saved `user_loras/` state must not be
    re-applied over the adapters the shared transformer already carries (the user's weights and enabled flag)."""
    pipe = single_file(setup)
    pipe.load_lora_weights(setup["user"], adapter_name="user")
    pipe.set_adapters("user", 0.6)
    pipe.save_pretrained(tmp_path / "saved")
    loaded = LTX2AudioToVideoPipeline.from_pretrained(tmp_path / "saved")
    layers = [m for m in loaded.transformer.modules() if "user" in getattr(m, "scaling", {})]
    base = layers[0].scaling["user"] / 0.6  # lora_alpha / r
    loaded.set_adapters("user", 0.1)
    loaded.disable_lora()
    shared = {k: getattr(loaded, k) for k in ("vae", "audio_vae", "connectors", "transformer", "vocoder")}
    other = LTX2AudioToVideoPipeline.from_pipe(loaded, **shared)
    assert other.transformer is loaded.transformer
    assert all(layer.scaling["user"] == pytest.approx(0.1 * base) for layer in layers)
    assert all(layer.disable_adapters for layer in layers)


def test_an_explicit_distilled_lora_none_is_honoured(setup):
    """`from_pretrained(folder, distilled_lora=None)` drops the folder's distilled LoRA, as for any component."""
    assert LTX2AudioToVideoPipeline.from_pretrained(setup["converted"]).distilled_lora is not None
    pipe = LTX2AudioToVideoPipeline.from_pretrained(setup["converted"], distilled_lora=None)
    assert pipe.distilled_lora is None
    assert pipe.config.distilled_lora == (None, None)
    with pytest.raises(ValueError, match="stage_2=True needs the distilled LoRA"):
        call(pipe, setup["audio"], output_type="latent")


def test_adapter_names_that_are_paths_are_refused(setup, tmp_path):
    """An adapter's name becomes the folder `user_loras/<adapter>/`: a name holding a path separator (or `..`)
    would write outside the saved folder, so save_pretrained refuses it before writing anything, and loading
    refuses such a name read from a folder's adapters.json."""
    from ltx2_diffusers.pipelines.pipeline_saving import restore_user_adapters

    pipe = single_file(setup)
    outside = tmp_path / "outside"
    pipe.load_lora_weights(setup["user"], adapter_name=str(outside))
    with pytest.raises(ValueError, match="adapter name .* without path separators"):
        pipe.save_pretrained(tmp_path / "saved")
    assert not (tmp_path / "saved").exists() and not outside.exists()

    crafted = tmp_path / "crafted" / "user_loras"
    crafted.mkdir(parents=True)
    (crafted / "adapters.json").write_text(json.dumps({"weights": {"..": 1.0}, "active": [".."], "enabled": True}))
    with pytest.raises(ValueError, match=r"adapter name '\.\.' cannot be saved"):
        restore_user_adapters(single_file(setup), str(tmp_path / "crafted"))


@pytest.mark.parametrize(
    "state, match",
    [
        ("{", "is not valid JSON"),
        ([], "an object with 'weights', 'active' and 'enabled'"),
        ({"weights": {"c": 1.0}, "active": ["c"]}, "an object with 'weights', 'active' and 'enabled'"),
        ({"weights": [1.0], "active": [], "enabled": True}, "'weights' must map adapter names"),
        ({"weights": {"c": 1.0}, "active": ["d"], "enabled": True}, "'active' must list saved adapters"),
        ({"weights": {"c": 1.0}, "active": ["c"], "enabled": "yes"}, "'active' must list saved adapters"),
        ({"weights": {"c": {"transformer": 1.0}}, "active": {"transformer": ["c"]}, "enabled": True}, "per component"),
        ({"weights": {"c": 1.0}, "active": {"transformer": ["c"]}, "enabled": {}}, "with per-component weights"),
        ({"weights": {"c": {"transformer": 1.0}}, "active": {"connectors": ["c"]}, "enabled": {}}, "has no weight"),
        ({"weights": {"c": {"transformer": 1.0}}, "active": {}, "enabled": {"transformer": 1}}, "true or false"),
    ],
)
def test_a_malformed_adapters_json_is_refused_naming_it(setup, tmp_path, state, match):
    """A hand-edited or truncated `user_loras/adapters.json`: ValueError naming the file before any adapter loads
    (a missing component gave a KeyError, `enabled` not a dict an AttributeError)."""
    from ltx2_diffusers.pipelines.pipeline_saving import restore_user_adapters

    crafted = tmp_path / "crafted" / "user_loras"
    crafted.mkdir(parents=True)
    (crafted / "adapters.json").write_text(state if isinstance(state, str) else json.dumps(state))
    pipe = single_file(setup)
    with pytest.raises(ValueError, match="adapters.json: .*" + match if match != "is not valid JSON" else match):
        restore_user_adapters(pipe, str(tmp_path / "crafted"))
    assert pipe.get_list_adapters() == {}


def test_a_failed_adapter_write_leaves_nothing_behind(setup, tmp_path, monkeypatch):
    import safetensors.torch

    pipe = single_file(setup)
    pipe.load_lora_weights(setup["user"], adapter_name="user")

    real_save_file = safetensors.torch.save_file

    def full_disk(tensors, path, metadata=None):
        if "user_loras" not in str(path):  # the components save as usual
            return real_save_file(tensors, path, metadata=metadata)
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    with pytest.raises(OSError, match="No space left"):
        pipe.save_pretrained(tmp_path / "saved")
    # the folder is built beside the target and moved into place only when complete: nothing is left anywhere
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_from_pipe_never_reads_the_saved_folder_again(setup, tmp_path):
    """`from_pipe` of a pipeline loaded from a saved folder: adapters the user unloaded stay unloaded (nothing is
    restored into the shared transformer, the original's outputs do not move) and the distilled LoRA is the
    source pipeline's, or the one passed in (`distilled_lora=None` honoured), never the folder's `distilled_lora/`."""
    from ltx2_diffusers import LTX2AudioVideoPipeline

    pipe = single_file(setup)
    pipe.load_lora_weights(setup["user"], adapter_name="u1")
    pipe.load_lora_weights(setup["user"], adapter_name="u2")
    pipe.set_adapters(["u1", "u2"], [0.6, 0.4])
    pipe.save_pretrained(tmp_path / "saved")
    loaded = LTX2AudioToVideoPipeline.from_pretrained(tmp_path / "saved")
    assert loaded.get_list_adapters() == {"transformer": ["u1", "u2"], "connectors": ["u1", "u2"]}
    loaded.unload_lora_weights()
    expected = latents(loaded, setup)

    other = LTX2AudioVideoPipeline.from_pipe(loaded)
    assert other.transformer is loaded.transformer and other.distilled_lora is loaded.distilled_lora
    assert loaded.get_list_adapters() == {} and other.get_list_adapters() == {}
    assert torch.equal(latents(loaded, setup), expected)

    bare = LTX2AudioVideoPipeline.from_pipe(loaded, distilled_lora=None)
    assert bare.distilled_lora is None and loaded.distilled_lora is not None
    assert loaded.get_list_adapters() == {}

    without = LTX2AudioToVideoPipeline.from_pretrained(tmp_path / "saved", distilled_lora=None)
    assert without.distilled_lora is None and without.get_active_adapters() == ["u1", "u2"]
    assert LTX2AudioVideoPipeline.from_pipe(without).distilled_lora is None


def through_connectors(pipe, setup):
    """Latents from text-encoder features (`prompt_embeds`), which go through the connectors and their LoRA."""
    config = pipe.connectors.config
    g = torch.Generator().manual_seed(9)
    embeds = [torch.randn(1, 128, config.caption_channels * config.text_proj_in_factor, generator=g) for _ in "pn"]
    return call(
        pipe, setup["audio"], output_type="latent", prompt_contexts=None, negative_prompt_contexts=None,
        prompt_embeds=embeds[0], negative_prompt_embeds=embeds[1], max_sequence_length=128,
        prompt_attention_mask=torch.ones(1, 128, dtype=torch.long),
        negative_prompt_attention_mask=torch.ones(1, 128, dtype=torch.long),
    ).frames  # fmt: skip


def _round_trip(pipe, setup, folder):
    expected = through_connectors(pipe, setup)
    pipe.save_pretrained(folder)
    loaded = LTX2AudioToVideoPipeline.from_pretrained(folder)
    return (through_connectors(loaded, setup) - expected).abs().max().item(), loaded


def test_per_component_adapter_weights_and_enabled_survive_a_round_trip(setup, tmp_path):
    """`set_adapters` with per-component weights, and LoRA disabled in one component only: saved per component."""
    pipe = single_file(setup)
    pipe.load_lora_weights(setup["user"], adapter_name="c")
    pipe.set_adapters("c", [{"transformer": 0.5, "connectors": 1.5}])
    before = through_connectors(pipe, setup)
    pipe.set_adapters("c", [{"transformer": 0.5, "connectors": 0.5}])
    assert (through_connectors(pipe, setup) - before).abs().max() > 1e-2  # the connectors' weight matters
    pipe.set_adapters("c", [{"transformer": 0.5, "connectors": 1.5}])
    diff, loaded = _round_trip(pipe, setup, tmp_path / "weights")
    assert diff <= 1e-6, diff
    assert loaded.get_active_adapters() == ["c"]

    pipe.connectors.disable_lora()
    diff, loaded = _round_trip(pipe, setup, tmp_path / "enabled")
    assert diff <= 1e-6, diff
    assert all(m.disable_adapters for _, m in _tuner_layers(loaded.connectors))
    assert not any(m.disable_adapters for _, m in _tuner_layers(loaded.transformer))


def test_an_adapter_whose_first_layer_is_at_weight_0_survives_a_round_trip(setup, tmp_path):
    """Per-block weights with the first block at 0: the adapter's weight is read from a layer at a non-zero weight
    (it was read from the first layer: every layer came back at 0, off by 0.917)."""
    pipe = single_file(setup)
    pipe.load_lora_weights(setup["user"], adapter_name="c")
    pipe.set_adapters("c", [{"transformer": {"transformer_blocks.0.": 0.0, "": 0.7}, "connectors": 1.0}])
    scalings = {m.scaling["c"] for _, m in _tuner_layers(pipe.transformer)}
    assert 0.0 in scalings and len(scalings) > 1, scalings
    diff, _ = _round_trip(pipe, setup, tmp_path / "zero_first")
    assert diff <= 1e-6, diff


def _tuner_layers(model):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]


def test_per_layer_rank_and_alpha_patterns_survive_a_round_trip(setup, tmp_path):
    """An adapter whose layers have their own rank and alpha (`rank_pattern` / `alpha_pattern`): each layer's own
    `lora_alpha / r` is folded into its saved `lora_B`, not one global one."""
    from peft import LoraConfig

    pipe = single_file(setup)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        rank_pattern={"attn1.to_q": 2, "attn2.to_v": 3}, alpha_pattern={"attn1.to_k": 3, "attn2.to_v": 9},
    )  # fmt: skip
    pipe.transformer.add_adapter(config, adapter_name="p")
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for _, layer in _tuner_layers(pipe.transformer):
            for weight in (layer.lora_A["p"].weight, layer.lora_B["p"].weight):
                weight.copy_(torch.randn(weight.shape, generator=generator) * 0.3)
    scalings = {m.scaling["p"] for _, m in _tuner_layers(pipe.transformer)}
    assert len(scalings) >= 3, scalings  # the patterns give the layers different scalings
    pipe.set_adapters("p", 0.7)
    diff, loaded = _round_trip(pipe, setup, tmp_path / "patterns")
    assert diff <= 1e-6, diff
    assert loaded.get_active_adapters() == ["p"]
