"""The converter: tiny original LTX-2 / LTX-2.3 files -> a diffusers folder whose components equal ltx-core's."""

import json
import os
import runpy
import sys
import zlib
from pathlib import Path

import factories
import pytest
import torch
from diffusers import AutoencoderKLLTX2Video, DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors
from diffusers.pipelines.ltx2.latent_upsampler import LTX2LatentUpsamplerModel
from factories import REFERENCE_KEYS, needs_reference_keys
from ltx_core.model.transformer.modality import Modality
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import ltx2_diffusers
from ltx2_diffusers import convert as convert_module
from ltx2_diffusers.convert import (
    PIPELINE_SHIM_SOURCE,
    convert_checkpoint,
    is_pipeline_shim,
    main,
    parse_size,
)
from ltx2_diffusers.loaders.single_file_connectors import load_connectors_from_single_file
from ltx2_diffusers.loaders.single_file_upsampler import load_latent_upsampler_from_single_file
from ltx2_diffusers.loaders.single_file_video_vae import load_video_vae_from_single_file
from ltx2_diffusers.models.autoencoder_audio_mel import AutoencoderAudioMel
from ltx2_diffusers.models.rope import audio_coords, video_coords
from ltx2_diffusers.models.transformer_ltx2_av import LTX2AudioVideoTransformer
from ltx2_diffusers.models.vocoder_hifigan import LTX2HiFiGANVocoder
from ltx2_diffusers.schedules import DISTILLED_SIGMAS, flow_match_scheduler_config


TOL = 1e-5
REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES = {
    "transformer": LTX2AudioVideoTransformer,
    "connectors": LTX2TextConnectors,
    "vae": AutoencoderKLLTX2Video,
    "audio_vae": AutoencoderAudioMel,
    "vocoder": LTX2HiFiGANVocoder,
    "latent_upsampler": LTX2LatentUpsamplerModel,
}
UPSAMPLER = {"2.3": {"rational_resampler": True}, "2.0": {}}


def _files(version):
    checkpoint = factories.cached_checkpoint("checkpoint", version, seed=11, extra_vae_stats=True)
    upsampler = factories.cached_checkpoint("upsampler", seed=12, **UPSAMPLER[version])
    lora = factories.cached_checkpoint("lora", checkpoint_path=checkpoint, seed=13, include_connectors=True, alpha=8.0)
    return checkpoint, upsampler, lora


@pytest.fixture(scope="module", params=["2.0", "2.3"])
def converted(request, tmp_path_factory):
    version = request.param
    checkpoint, upsampler, lora = _files(version)
    out = tmp_path_factory.mktemp(f"conv{version}") / "folder"
    report = convert_checkpoint(
        checkpoint, out, spatial_upsampler_path=upsampler, distilled_lora=lora, dtype="float32", max_shard_size="8MB"
    )
    return version, out, report, (checkpoint, upsampler, lora)


# ------------------------------------------------------------------------------------------------ parity
def _transformer_parity(out, checkpoint):
    ours = LTX2AudioVideoTransformer.from_pretrained(out, subfolder="transformer").eval()
    ref = factories.load_reference(checkpoint, "transformer")
    c = ours.config
    g = torch.Generator().manual_seed(0)
    frames, height, width, audio_frames, text = 2, 2, 3, 5, 7
    text_dim = c.caption_channels if c.use_prompt_embeddings else None
    video = torch.randn(1, frames * height * width, c.in_channels, generator=g)
    audio = torch.randn(1, audio_frames, c.audio_in_channels, generator=g)
    ctx = torch.randn(1, text, text_dim or c.cross_attention_dim, generator=g)
    actx = torch.randn(1, text, text_dim or c.audio_cross_attention_dim, generator=g)
    sigma = torch.tensor([0.6])
    vc = video_coords(1, frames, height, width, fps=24.0, dtype=torch.float32)
    ac = audio_coords(1, audio_frames)
    vt, at = sigma[:, None].expand(1, video.shape[1]), sigma[:, None].expand(1, audio_frames)
    with torch.no_grad():
        expected = ref(
            Modality(latent=video, sigma=sigma, timesteps=vt, positions=vc, context=ctx),
            Modality(latent=audio, sigma=sigma, timesteps=at, positions=ac, context=actx),
            None,
        )
        got = ours(
            hidden_states=video,
            audio_hidden_states=audio,
            encoder_hidden_states=ctx,
            audio_encoder_hidden_states=actx,
            timestep=vt * 1000,
            audio_timestep=at * 1000,
            sigma=sigma * 1000,
            audio_sigma=sigma * 1000,
            video_coords=vc,
            audio_coords=ac,
            use_cross_timestep=True,
            return_dict=False,
        )
    return max((a - b).abs().max().item() for a, b in zip(got, expected))


def _connectors_parity(out, checkpoint):
    ours = LTX2TextConnectors.from_pretrained(out, subfolder="connectors").eval()
    ref = factories.load_reference(checkpoint, "embeddings_processor")
    hidden, states = factories.text_encoder_dims(checkpoint)
    g = torch.Generator().manual_seed(1)
    hs = tuple(torch.randn(1, factories.TEXT_SEQ_LEN, hidden, generator=g) * (1 + i) for i in range(states))
    mask = torch.zeros(1, factories.TEXT_SEQ_LEN, dtype=torch.long)
    mask[:, -40:] = 1
    with torch.no_grad():
        video, audio, _ = ours(torch.stack(hs, dim=-1).flatten(2), mask)
        expected = ref.process_hidden_states(hs, mask)
    return max(
        (video - expected.video_encoding).abs().max().item(), (audio - expected.audio_encoding).abs().max().item()
    )


def _vae_parity(out, checkpoint):
    vae = AutoencoderKLLTX2Video.from_pretrained(out, subfolder="vae").eval()
    enc, dec = (
        factories.load_reference(checkpoint, "video_encoder"),
        factories.load_reference(checkpoint, "video_decoder"),
    )
    mean, std = vae.latents_mean.view(1, -1, 1, 1, 1), vae.latents_std.view(1, -1, 1, 1, 1)
    video = torch.randn(1, 3, 9, 64, 64, generator=torch.Generator().manual_seed(2))
    z = torch.randn(1, 128, 2, 2, 2, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        d_enc = ((vae.encode(video).latent_dist.mean - mean) / std - enc(video)).abs().max().item()
        zz, temb = z, None
        if vae.config.timestep_conditioning:
            noise = torch.randn(z.size(), generator=torch.Generator().manual_seed(4)) * 0.025
            zz, temb = noise + 0.975 * z, torch.tensor([0.05])
        got = vae.decode(zz * std + mean, temb).sample
        d_dec = (got - dec(z, generator=torch.Generator().manual_seed(4))).abs().max().item()
    return max(d_enc, d_dec)


def _audio_vae_parity(out, checkpoint):
    from ltx_core.components.patchifiers import AudioPatchifier

    ours = AutoencoderAudioMel.from_pretrained(out, subfolder="audio_vae").eval()
    enc, dec = (
        factories.load_reference(checkpoint, "audio_encoder"),
        factories.load_reference(checkpoint, "audio_decoder"),
    )
    patchifier = AudioPatchifier(patch_size=1)
    mel = torch.randn(1, 2, 17, 64, generator=torch.Generator().manual_seed(5))
    latents = torch.randn(1, 8, 4, 16, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        h = ours.encode(mel).latent_dist.parameters[:, : ours.config.latent_channels]
        d_enc = (ours.normalize_tokens(ours.patchify_latents(h)) - patchifier.patchify(enc(mel))).abs().max().item()
        d_dec = (ours.decode_tokens(patchifier.patchify(latents)) - dec(latents)).abs().max().item()
    return max(d_enc, d_dec)


def _vocoder_parity(out, checkpoint):
    ours = LTX2HiFiGANVocoder.from_pretrained(out, subfolder="vocoder").eval()
    ref = factories.load_reference(checkpoint, "vocoder")
    mel = torch.randn(1, 2, 6, 64, generator=torch.Generator().manual_seed(7)) - 2.0
    with torch.no_grad():
        return (ours(mel) - ref(mel)).abs().max().item()


def _upsampler_parity(out, upsampler):
    ours = LTX2LatentUpsamplerModel.from_pretrained(out, subfolder="latent_upsampler").eval()
    ref = factories.load_reference(upsampler, "upsampler")
    latent = torch.randn(1, 128, 2, 3, 4, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        return (ours(latent) - ref(latent)).abs().max().item()


def test_every_component_equals_ltx_core(converted):
    version, out, _, (checkpoint, upsampler, _) = converted
    deltas = {
        "transformer": _transformer_parity(out, checkpoint),
        "connectors": _connectors_parity(out, checkpoint),
        "vae": _vae_parity(out, checkpoint),
        "audio_vae": _audio_vae_parity(out, checkpoint),
        "vocoder": _vocoder_parity(out, checkpoint),
        "latent_upsampler": _upsampler_parity(out, upsampler),
    }
    print(f"LTX-{version} converted folder vs ltx-core, max|delta|: {deltas}")
    assert all(d <= TOL for d in deltas.values()), deltas


def _plain(config):
    return json.loads(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}))


def test_folders_equal_single_file_loaders(converted):
    _, out, _, (checkpoint, upsampler, _) = converted
    single = {
        "transformer": LTX2AudioVideoTransformer.from_single_file(checkpoint, torch_dtype=torch.float32),
        "connectors": load_connectors_from_single_file(checkpoint, torch_dtype=torch.float32),
        "vae": load_video_vae_from_single_file(checkpoint, torch_dtype=torch.float32),
        "audio_vae": AutoencoderAudioMel.from_single_file(checkpoint, torch_dtype=torch.float32),
        "vocoder": LTX2HiFiGANVocoder.from_single_file(checkpoint, torch_dtype=torch.float32),
        "latent_upsampler": load_latent_upsampler_from_single_file(upsampler, torch_dtype=torch.float32),
    }
    for name, model in single.items():
        loaded = CLASSES[name].from_pretrained(out, subfolder=name)
        assert _plain(loaded.config) == _plain(model.config), name
        a, b = loaded.state_dict(), model.state_dict()
        assert a.keys() == b.keys(), name
        assert all(torch.equal(a[k], b[k]) for k in a), name


# ------------------------------------------------------------------------------------------------ accounting
def _crc_entries(tensors):
    return {
        k: (str(v.dtype), tuple(v.shape), zlib.crc32(v.contiguous().reshape(-1).view(torch.uint8).numpy()))
        for k, v in tensors.items()
    }


def test_every_source_tensor_lands_once_with_checksums(converted):
    version, out, report, (checkpoint, upsampler, lora) = converted
    sources = {}
    for path in (checkpoint, upsampler, lora):
        sources.update({f"{os.path.basename(path)}:{k}": v for k, v in load_file(path).items()})
    assert report.source_tensors == len(sources) == report.written_tensors + len(report.ignored)
    expected_ignored = {
        f"{os.path.basename(checkpoint)}:vae.per_channel_statistics.{s}"
        for s in ("channel", "mean-of-stds", "mean-of-stds_over_std-of-means")
    }
    lora_alphas = {k for k in sources if k.startswith(os.path.basename(lora)) and k.endswith(".alpha")}
    assert set(report.ignored) == expected_ignored | lora_alphas
    assert report.source_checksum == convert_module._combined_checksum(
        _crc_entries({k: v for k, v in sources.items() if k not in set(report.ignored)})
    )
    written = {}
    for sub in sorted(p for p in out.iterdir() if p.is_dir()):
        for f in sub.glob("*.safetensors"):
            written.update({f"{sub.name}/{k}": v for k, v in load_file(f).items()})
    assert len(written) == report.written_tensors
    assert report.output_checksum == convert_module._combined_checksum(_crc_entries(written))
    assert report.distilled_lora == "distilled_lora/pytorch_lora_weights.safetensors"
    text = report.summary()
    assert "source checksum" in text and str(report.written_tensors) in text


def test_float32_is_exact_and_default_keeps_source_dtype(converted, tmp_path):
    version, out, _, (checkpoint, _, _) = converted
    source = load_file(checkpoint)
    transformer = {}
    for f in (out / "transformer").glob("*.safetensors"):
        transformer.update(load_file(f))
    from ltx2_diffusers.loaders.single_file_transformer import TRANSFORMER_KEY_TABLE

    for key, value in source.items():
        if TRANSFORMER_KEY_TABLE.owns(key):
            got = transformer[TRANSFORMER_KEY_TABLE.map_key(key)]
            assert got.dtype == torch.float32 and torch.equal(got, value.float())
    kept = convert_checkpoint(checkpoint, tmp_path / "bf16")
    with safe_open(tmp_path / "bf16" / "transformer" / "diffusion_pytorch_model.safetensors", "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    assert kept.source_bytes == kept.written_bytes


def test_sharding_and_index(converted):
    _, out, report, _ = converted
    index = json.loads((out / "vae" / "diffusion_pytorch_model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in (out / "vae").glob("*.safetensors"))
    assert report.components["vae"]["shards"] == len(shards) > 1
    assert set(index["weight_map"].values()) == set(shards)
    # A shard exceeds the limit only when a single tensor does.
    sizes = {s: os.path.getsize(out / "vae" / s) for s in shards}
    assert all(
        size <= 8e6 + 1e5 or sum(1 for v in index["weight_map"].values() if v == s) == 1 for s, size in sizes.items()
    )


def test_model_index_scheduler_and_shim(converted):
    version, out, _, _ = converted
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "LTX2AudioToVideoPipeline"]
    assert index["transformer"] == ["ltx2_diffusers", "LTX2AudioVideoTransformer"]
    assert index["vae"] == ["diffusers", "AutoencoderKLLTX2Video"]
    assert index["connectors"] == ["ltx2", "LTX2TextConnectors"]
    assert index["latent_upsampler"] == ["ltx2", "LTX2LatentUpsamplerModel"]
    assert index["audio_vae"] == ["ltx2_diffusers", "AutoencoderAudioMel"]
    assert index["vocoder"] == ["ltx2_diffusers", "LTX2HiFiGANVocoder"]
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert index["text_encoder"] == index["tokenizer"] == [None, None]
    assert index["model_version"] == ("2.3.0" if version == "2.3" else "2.0.0")
    assert index["distilled_lora_scale"] == 0.8
    assert (out / "pipeline.py").read_text() == PIPELINE_SHIM_SOURCE and is_pipeline_shim(out)
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(out, subfolder="scheduler")
    assert {k: scheduler.config[k] for k in flow_match_scheduler_config()} == flow_match_scheduler_config()
    scheduler.set_timesteps(sigmas=list(DISTILLED_SIGMAS[:-1]))
    assert torch.equal(scheduler.sigmas, torch.tensor(DISTILLED_SIGMAS, dtype=torch.float32))
    assert oct(os.stat(out).st_mode & 0o777) != oct(0o700)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_distilled_lora_is_stored_in_diffusers_format(converted):
    _, out, _, (checkpoint, _, lora) = converted
    stored = load_file(out / "distilled_lora" / "pytorch_lora_weights.safetensors")
    original = load_file(lora)
    pairs = [k for k in original if not k.endswith(".alpha")]
    assert len(stored) == len(pairs)
    assert all(k.startswith(("transformer.", "connectors.")) for k in stored)
    assert any(k.startswith("connectors.video_connector.transformer_blocks.") for k in stored)
    key = "diffusion_model.transformer_blocks.0.attn1.to_q.lora_A.weight"
    assert torch.equal(stored["transformer.transformer_blocks.0.attn1.to_q.lora_A.weight"], original[key].float())


def test_diffusion_pipeline_loads_the_folder(converted):
    _, out, _, _ = converted
    pipe = DiffusionPipeline.from_pretrained(out, trust_remote_code=True)
    assert type(pipe).__name__ == "LTX2AudioToVideoPipeline"
    for name, cls in CLASSES.items():
        assert isinstance(getattr(pipe, name), cls), name
    assert pipe.text_encoder is None and pipe.tokenizer is None
    assert pipe.config.distilled_lora_scale == 0.8
    direct = ltx2_diffusers.LTX2AudioToVideoPipeline.from_pretrained(out)  # no remote code needed
    # the distilled LoRA is the pipeline-owned `distilled_lora` component (never a PEFT adapter), on both routes
    assert direct.distilled_lora is not None and pipe.distilled_lora is not None
    # the reference applies the distilled LoRA to the transformer only: its connector part is not loaded
    assert not getattr(direct.connectors, "peft_config", None) and not getattr(direct.transformer, "peft_config", None)


# ------------------------------------------------------------------------------------------------ extras
def test_gemma_root_is_copied(tmp_path):
    from transformers import AutoTokenizer, Gemma3ForConditionalGeneration

    from ltx2_diffusers.utils.tiny_text_encoder import build_tiny_gemma3

    checkpoint, _, _ = _files("2.3")
    gemma = build_tiny_gemma3(tmp_path / "gemma", seed=0)
    out = tmp_path / "out"
    convert_checkpoint(checkpoint, out, gemma_root=gemma)
    index = json.loads((out / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "Gemma3ForConditionalGeneration"]
    assert index["tokenizer"][0] == "transformers"
    te = Gemma3ForConditionalGeneration.from_pretrained(out, subfolder="text_encoder")
    src = Gemma3ForConditionalGeneration.from_pretrained(gemma / "text_encoder")
    assert all(torch.equal(a, b) for a, b in zip(te.state_dict().values(), src.state_dict().values()))
    tok = AutoTokenizer.from_pretrained(out, subfolder="tokenizer")
    assert tok("a cat").input_ids == AutoTokenizer.from_pretrained(gemma / "tokenizer")("a cat").input_ids


def test_cli_and_wrapper_script(tmp_path, capsys, monkeypatch):
    checkpoint, upsampler, lora = _files("2.0")
    out = tmp_path / "cli"
    argv = ["--checkpoint-path", str(checkpoint), "--output-dir", str(out), "--spatial-upsampler-path", str(upsampler)]
    assert main([*argv, "--distilled-lora", str(lora), "0.6", "--dtype", "float32"]) == 0
    printed = capsys.readouterr().out
    assert "output checksum" in printed and "latent_upsampler" in printed
    assert json.loads((out / "model_index.json").read_text())["distilled_lora_scale"] == 0.6
    assert main(argv) == 2  # output exists and is not empty
    assert "exists and is not empty" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["convert_ltx2_checkpoint.py", *argv, "--overwrite", "--max-shard-size", "1MB"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO_ROOT / "conversion_scripts" / "convert_ltx2_checkpoint.py"), run_name="__main__")
    assert exit_info.value.code == 0
    assert not (out / "distilled_lora").exists()  # overwritten by a run without LoRA
    assert len(list((out / "vae").glob("*.safetensors"))) > 1


def test_push_to_hub(tmp_path, monkeypatch, capsys):
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create", repo_id))

        def upload_folder(self, repo_id, folder_path, **kwargs):
            calls.append(("upload", repo_id, sorted(os.listdir(folder_path))))
            return "https://huggingface.co/me/tiny/commit/0"

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    checkpoint, _, _ = _files("2.0")
    out = tmp_path / "hub"
    assert main(["--checkpoint-path", str(checkpoint), "--output-dir", str(out), "--push-to-hub", "me/tiny"]) == 0
    assert calls[0] == ("create", "me/tiny") and "model_index.json" in calls[1][2]
    assert "me/tiny" in (out / "README.md").read_text()


# ------------------------------------------------------------------------------------------------ bad inputs
def _assert_nothing_left(parent: Path, name: str):
    assert not (parent / name).exists()
    assert not [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def _bad(tmp_path, name, make):
    path = tmp_path / name
    make(path)
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("truncated", "truncated"),
        ("not_safetensors", "not a safetensors file"),
        ("other_model", "belong to no LTX-2 component"),
        ("no_metadata", "no 'config' entry"),
        ("no_model_version", "model_version"),
        ("no_vae_section", "no 'vae' section"),
        ("missing_tensor", "missing keys"),
        ("lora_other_model", "does not fit"),
        ("upsampler_is_checkpoint", "not of a latent upsampler"),
    ],
)
def test_bad_inputs_leave_nothing(tmp_path, case, message):
    checkpoint, upsampler, lora = _files("2.3")
    kwargs = {}
    source = checkpoint
    if case == "truncated":
        data = Path(checkpoint).read_bytes()
        source = tmp_path / "t.safetensors"
        source.write_bytes(data[: len(data) // 2])
    elif case == "not_safetensors":
        source = tmp_path / "x.safetensors"
        source.write_text("this is not a checkpoint\n" * 10)
    elif case == "other_model":
        source = tmp_path / "sd.safetensors"
        save_file(
            {
                "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4),
                "first_stage_model.x": torch.zeros(2),
            },
            source,
            metadata={"config": json.dumps(factories.checkpoint_config("2.3")), "model_version": "2.3.0"},
        )
    elif case == "no_metadata":
        source = tmp_path / "nometa.safetensors"
        save_file(load_file(checkpoint), source)
    elif case == "no_model_version":
        source = tmp_path / "nover.safetensors"
        save_file(load_file(checkpoint), source, metadata={"config": json.dumps(factories.read_config(checkpoint))})
    elif case == "no_vae_section":
        source = tmp_path / "novae.safetensors"
        config = factories.read_config(checkpoint)
        del config["vae"]
        save_file(load_file(checkpoint), source, metadata={"config": json.dumps(config), "model_version": "2.3.0"})
    elif case == "missing_tensor":
        source = tmp_path / "missing.safetensors"
        tensors = load_file(checkpoint)
        tensors.pop("vae.decoder.conv_out.conv.bias")
        save_file(tensors, source, metadata=factories.read_metadata(checkpoint))
    elif case == "lora_other_model":
        # A Flux-style LoRA in the same (ComfyUI) naming.
        kwargs["distilled_lora"] = tmp_path / "flux_lora.safetensors"
        save_file(
            {
                "diffusion_model.double_blocks.0.img_attn.qkv.lora_A.weight": torch.zeros(4, 64),
                "diffusion_model.double_blocks.0.img_attn.qkv.lora_B.weight": torch.zeros(192, 4),
            },
            kwargs["distilled_lora"],
        )
    elif case == "upsampler_is_checkpoint":
        kwargs["spatial_upsampler_path"] = checkpoint
    with pytest.raises(ValueError, match=message):
        convert_checkpoint(source, tmp_path / "out", **kwargs)
    _assert_nothing_left(tmp_path, "out")


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    checkpoint, _, _ = _files("2.3")
    calls = {"n": 0}
    original = convert_module._ShardWriter.write

    def flaky(self, name, tensor, crc=None):
        calls["n"] += 1
        if calls["n"] == 50:
            raise KeyboardInterrupt
        return original(self, name, tensor, crc)

    monkeypatch.setattr(convert_module._ShardWriter, "write", flaky)
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(checkpoint, tmp_path / "out")
    _assert_nothing_left(tmp_path, "out")


def test_bad_arguments(tmp_path):
    checkpoint, _, _ = _files("2.3")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(ValueError, match="output_dir"):
        convert_checkpoint(checkpoint, tmp_path / "full")
    with pytest.raises(ValueError, match="dtype"):
        convert_checkpoint(checkpoint, tmp_path / "o", dtype="int8")
    with pytest.raises(ValueError, match="max_shard_size"):
        convert_checkpoint(checkpoint, tmp_path / "o", max_shard_size="lots")
    with pytest.raises(TypeError, match="distilled_lora_scale"):
        convert_checkpoint(checkpoint, tmp_path / "o", distilled_lora_scale="0.8")
    with pytest.raises(ValueError, match="variant"):
        convert_checkpoint(checkpoint, tmp_path / "o", variant="turbo")
    with pytest.raises(ValueError, match="contradicts"):
        convert_checkpoint(checkpoint, tmp_path / "o", model_version="2.0.0")
    with pytest.raises(ValueError, match="model_version must be a version string such as '2.3.0', got float 2.3"):
        convert_checkpoint(checkpoint, tmp_path / "o", model_version=2.3)
    with pytest.raises(ValueError, match="does not exist"):
        convert_checkpoint(tmp_path / "nope.safetensors", tmp_path / "o")
    with pytest.raises(ValueError, match="gemma_root"):
        convert_checkpoint(checkpoint, tmp_path / "o", gemma_root=tmp_path / "full")
    _assert_nothing_left(tmp_path, "o")
    assert parse_size("2GiB") == 2 << 30 and parse_size("500MB") == 500_000_000 and parse_size(123) == 123
    with pytest.raises(ValueError, match="--distilled-lora"):
        convert_module._parse_lora_arg(["a", "b", "c"])
    assert (
        main(["--checkpoint-path", str(checkpoint), "--output-dir", str(tmp_path / "o"), "--distilled-lora", "x", "y"])
        == 2
    )


@needs_reference_keys
def test_every_reference_key_belongs_to_exactly_one_component():
    """Every key of the full-size listings (shared/reference/keys) is owned by one converter component."""
    keys_dir = REFERENCE_KEYS
    config = factories.checkpoint_config("2.3")
    tables = {
        c.name: (c.source, c.table(config if c.source == "checkpoint" else {})) for c in convert_module.COMPONENTS
    }
    listings = sorted(keys_dir.glob("*.json"))
    assert len(listings) >= 16
    for listing in listings:
        source = "upsampler" if listing.name.startswith("upsampler") else "checkpoint"
        for key in json.loads(listing.read_text()):
            owners = [name for name, (src, table) in tables.items() if src == source and table.owns(key)]
            assert len(owners) == 1, (listing.name, key, owners)


def test_a_model_version_written_shorter_than_the_files_converts(tmp_path):
    """'2.3' names the file's '2.3.0' release (as `from_single_file` takes it); the folder records the file's."""
    checkpoint = factories.cached_checkpoint("checkpoint", "2.3", seed=11)
    convert_checkpoint(checkpoint, tmp_path / "o", model_version="2.3")
    assert json.loads((tmp_path / "o" / "model_index.json").read_text())["model_version"] == "2.3.0"
