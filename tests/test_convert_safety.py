"""The converter never loses a user's file and never converts garbage (issue 9, converter half; issue 10 point 6).

Every refusal case hashes the whole work tree (every file's sha256, every folder and link) before and after and
requires it unchanged, and requires the error to name the path or argument at fault.
"""

import ast
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import factories
import pytest
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file

import ltx2_diffusers.convert as convert_module
from ltx2_diffusers.convert import convert_checkpoint, main
from ltx2_diffusers.loaders import output_folder
from ltx2_diffusers.loaders.model_cards import _card_fields, render_model_card


SRC = Path(convert_module.__file__).resolve().parents[1]
KINDS = ["ltx-2-dev", "ltx-2-distilled", "ltx-2.3-dev", "ltx-2.3-distilled", "fp8"]


# ------------------------------------------------------------------------------------------------ helpers
def _tree(root: Path) -> dict[str, str]:
    """Every entry under `root`: files by sha256, links by target, folders by name."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _sources():
    checkpoint = factories.cached_checkpoint("checkpoint", "2.3", seed=21)
    upsampler = factories.cached_checkpoint("upsampler", seed=22)
    lora = factories.cached_checkpoint("lora", checkpoint_path=checkpoint, seed=23)
    return checkpoint, upsampler, lora


def _workspace(root: Path) -> dict[str, Path]:
    """The user's files: three safetensors inputs and a Gemma-like folder under root/models, and a script."""
    checkpoint, upsampler, lora = _sources()
    models = root / "models"
    (models / "gemma").mkdir(parents=True)
    files = {
        "checkpoint_path": models / "ltx-2.3-tiny.safetensors",
        "spatial_upsampler_path": models / "upsampler.safetensors",
        "distilled_lora": models / "lora.safetensors",
    }
    for src, dst in zip((checkpoint, upsampler, lora), files.values()):
        shutil.copyfile(src, dst)
    (models / "gemma" / "config.json").write_text('{"architectures": ["Gemma3ForConditionalGeneration"]}')
    (models / "gemma" / "notes.txt").write_text("the user's Gemma folder\n")
    (root / "main.py").write_text("print('the user s own script')\n")
    files["gemma_root"] = models / "gemma"
    return files


def _move_into(files: dict[str, Path], name: str, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / files[name].name
    shutil.move(files[name], target)
    files[name] = target


def _retag(src: Path, dst: Path, key: str, st_dtype: str) -> Path:
    """A copy of `src` whose header says `key` has dtype `st_dtype` (same byte size, data unchanged)."""
    data = Path(src).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    header[key]["dtype"] = st_dtype
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    Path(dst).write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    return Path(dst)


def _with_config(src: Path, dst: Path, section: str, key: str, value) -> Path:
    tensors = load_file(src)
    metadata = factories.read_metadata(src)
    config = json.loads(metadata["config"])
    (config[section] if section else config)[key] = value
    metadata["config"] = json.dumps(config)  # NaN / Infinity are written as JSON extensions, as a fuzzer would
    save_file(tensors, dst, metadata=metadata)
    return Path(dst)


# ------------------------------------------------------------------------------------------------ inputs vs output
def _layout(case, root, files):
    """(output_dir, overwrite, the path the error must name, the message fragment) for `case`."""
    out = root / "out"
    if case in ("checkpoint_path", "spatial_upsampler_path", "distilled_lora", "gemma_root"):
        _move_into(files, case, out)  # the input lies in the output folder
        return out, True, files[case], "lies inside output_dir"
    if case == "output_is_inputs_folder":
        return root / "models", True, files["checkpoint_path"], "lies inside output_dir"
    if case == "output_above_inputs_folder":
        return root, True, files["checkpoint_path"], "lies inside output_dir"
    if case == "output_is_cwd":
        os.chdir(root / "models")
        return Path("."), True, files["checkpoint_path"], "lies inside output_dir"
    if case == "output_is_cwd_holding_user_files":  # no input there, but the user's script
        (root / "project").mkdir()
        (root / "project" / "main.py").write_text("print('mine')\n")
        os.chdir(root / "project")
        return Path("."), True, root / "project", "not a folder this converter wrote"
    if case == "output_inside_gemma_root":
        return files["gemma_root"] / "converted", False, files["gemma_root"], "lies inside gemma_root"
    if case == "output_symlink_to_inputs_folder":
        (root / "link").symlink_to(root / "models", target_is_directory=True)
        return root / "link", True, files["checkpoint_path"], "lies inside output_dir"
    if case == "input_symlink_inside_output":
        out.mkdir()
        (out / "ckpt.safetensors").symlink_to(files["checkpoint_path"])
        files["checkpoint_path"] = out / "ckpt.safetensors"
        return out, True, files["checkpoint_path"], "lies inside output_dir"
    if case == "overwrite_user_folder":
        (root / "project").mkdir()
        (root / "project" / "train.py").write_text("x = 1\n")
        return root / "project", True, root / "project", "not a folder this converter wrote"
    if case == "overwrite_foreign_diffusers_folder":
        (root / "sd").mkdir()
        (root / "sd" / "model_index.json").write_text("{}")
        return root / "sd", True, root / "sd", "not a folder this converter wrote"
    if case.startswith("overwrite_conversion_plus_user_"):
        convert_checkpoint(_sources()[0], out)
        if case.endswith("empty_folder"):
            (out / "renders").mkdir()
        elif case.endswith("link"):
            (out / "vae" / "notes.txt").symlink_to(root / "main.py")
        else:
            extra = out / ("notes.txt" if case.endswith("user_file") else "vae/mine.safetensors")
            extra.write_text("mine")
        return out, True, out, "did not write"
    if case == "overwrite_conversion_link":
        convert_checkpoint(_sources()[0], root / "conv")
        (root / "link").symlink_to(root / "conv", target_is_directory=True)
        return root / "link", True, root / "link", "symbolic link"
    if case == "not_empty_without_overwrite":
        out.mkdir()
        (out / "a.txt").write_text("a")
        return out, False, out, "exists and is not empty"
    if case == "output_is_a_file":
        (root / "out.txt").write_text("a file")
        return root / "out.txt", True, root / "out.txt", "not a folder"
    raise AssertionError(case)


OVERLAP_CASES = [
    "checkpoint_path",
    "spatial_upsampler_path",
    "distilled_lora",
    "gemma_root",
    "output_is_inputs_folder",
    "output_above_inputs_folder",
    "output_is_cwd",
    "output_is_cwd_holding_user_files",
    "output_inside_gemma_root",
    "output_symlink_to_inputs_folder",
    "input_symlink_inside_output",
    "overwrite_user_folder",
    "overwrite_foreign_diffusers_folder",
    "overwrite_conversion_plus_user_file",
    "overwrite_conversion_plus_user_file_in_subfolder",
    "overwrite_conversion_plus_user_empty_folder",
    "overwrite_conversion_plus_user_link",
    "overwrite_conversion_link",
    "not_empty_without_overwrite",
    "output_is_a_file",
]


@pytest.mark.parametrize("case", OVERLAP_CASES)
def test_output_that_would_touch_user_files_is_refused(tmp_path, monkeypatch, case):
    root = tmp_path / "work"
    files = _workspace(root)
    monkeypatch.chdir(tmp_path)
    output, overwrite, named, fragment = _layout(case, root, files)
    before = _tree(root)
    with pytest.raises(ValueError, match=re.escape(fragment)) as error:
        convert_checkpoint(
            files["checkpoint_path"],
            output,
            spatial_upsampler_path=files["spatial_upsampler_path"],
            distilled_lora=files["distilled_lora"],
            gemma_root=files["gemma_root"],
            overwrite=overwrite,
        )
    assert os.fspath(named) in str(error.value) or os.fspath(Path(named).absolute()) in str(error.value)
    assert _tree(root) == before


@pytest.mark.parametrize("output", [".", "..", "models"])
def test_cli_refuses_overwrite_of_the_inputs_folder(tmp_path, monkeypatch, capsys, output):
    root = tmp_path / "work"
    files = _workspace(root)
    monkeypatch.chdir(root / "models")
    if output == "models":
        monkeypatch.chdir(root)
    before = _tree(tmp_path)
    argv = ["--checkpoint-path", str(files["checkpoint_path"]), "--output-dir", output, "--overwrite"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "lies inside output_dir" in err and str(files["checkpoint_path"]) in err
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("below", ["notes.txt/sub", "notes.txt/a/b", "dangling/sub"])
def test_cli_refuses_an_output_below_a_file_before_any_work(tmp_path, monkeypatch, capsys, below):
    """`--output-dir notes.txt/sub` (notes.txt a file, or a link to nowhere): a clear error naming the path before
    the checkpoint is read, not a FileExistsError traceback after the planning."""
    root = tmp_path / "work"
    files = _workspace(root)
    (root / "notes.txt").write_text("the user's notes\n")
    os.symlink("nowhere", root / "dangling")
    monkeypatch.chdir(root)
    monkeypatch.setattr(convert_module, "convert_checkpoint", lambda *a, **k: pytest.fail("the conversion started"))
    before = _tree(tmp_path)
    argv = ["--checkpoint-path", str(files["checkpoint_path"]), "--output-dir", below]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --output-dir") and below in err and below.split("/")[0] in err, err
    assert "Traceback" not in err
    assert _tree(tmp_path) == before


def test_cli_names_the_path_when_the_folder_changes_meanwhile(tmp_path, monkeypatch, capsys):
    """A folder made into a file after the check (the conversion's own mkdir fails): exit 2 naming the path."""
    root = tmp_path / "work"
    files = _workspace(root)

    def racing(checkpoint, output_dir, **kwargs):
        raise FileExistsError(17, "File exists", os.fspath(Path(output_dir).parent))

    monkeypatch.setattr(convert_module, "convert_checkpoint", racing)
    before = _tree(tmp_path)
    assert main(["--checkpoint-path", str(files["checkpoint_path"]), "--output-dir", str(root / "x" / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and str(root / "x") in err and "File exists" in err
    assert _tree(tmp_path) == before


def test_overwrite_replaces_a_previous_conversion_and_nothing_else(tmp_path):
    root = tmp_path / "work"
    files = _workspace(root)
    out = root / "out"
    convert_checkpoint(files["checkpoint_path"], out, distilled_lora=files["distilled_lora"])
    first = json.loads((out / output_folder.MARKER_NAME).read_text())
    inputs = {k: v for k, v in _tree(root).items() if not k.startswith("out")}
    convert_checkpoint(files["checkpoint_path"], out, overwrite=True)
    second = json.loads((out / output_folder.MARKER_NAME).read_text())
    assert first["id"] != second["id"] and not (out / "distilled_lora").exists()
    assert sorted(second["files"]) == sorted(
        k[len("out/") :] + ("/" if v == "dir" else "")
        for k, v in _tree(root).items()
        if k.startswith("out/") and not k.endswith(output_folder.MARKER_NAME)
    )
    assert {k: v for k, v in _tree(root).items() if not k.startswith("out")} == inputs
    assert sorted(p.name for p in root.iterdir()) == ["main.py", "models", "out"]  # no temp folder left


# ------------------------------------------------------------------------------------------------ races
def _during_conversion(monkeypatch, action):
    """Run `action()` after every tensor is written, just before the final move."""
    original = convert_module._verify

    def hooked(ledger):
        original(ledger)
        action()

    monkeypatch.setattr(convert_module, "_verify", hooked)


@pytest.mark.parametrize("start", ["absent", "empty", "conversion"])
def test_target_that_changed_meanwhile_is_not_replaced(tmp_path, monkeypatch, start):
    checkpoint = _sources()[0]
    out = tmp_path / "out"
    if start == "empty":
        out.mkdir()
    elif start == "conversion":
        convert_checkpoint(checkpoint, out)

    def user_writes():
        out.mkdir(exist_ok=True)
        (out / "user.txt").write_text("written while the converter ran")

    _during_conversion(monkeypatch, user_writes)
    with pytest.raises(ValueError, match="changed during the conversion|appeared during|no longer empty") as error:
        convert_checkpoint(checkpoint, out, overwrite=start == "conversion")
    assert os.fspath(out) in str(error.value)
    assert (out / "user.txt").read_text() == "written while the converter ran"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


@pytest.mark.parametrize("overwrite", [False, True])
def test_two_threads_into_one_folder_cannot_both_succeed(tmp_path, monkeypatch, overwrite):
    checkpoint = _sources()[0]
    out = tmp_path / "out"
    if overwrite:  # both start from the same previous conversion: only one may replace it
        convert_checkpoint(checkpoint, out)
    barrier = threading.Barrier(2, timeout=120)
    _during_conversion(monkeypatch, barrier.wait)  # both finish writing before either moves
    results = []

    def run(seed_name):
        try:
            convert_checkpoint(checkpoint, out, repo_id=seed_name, overwrite=overwrite)
            results.append("ok")
        except ValueError as e:
            results.append(str(e))

    threads = [threading.Thread(target=run, args=(f"run{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r == "ok" for r in results) == [False, True], results
    assert os.fspath(out) in next(r for r in results if r != "ok")
    output_folder._conversion_id(out)  # the winner's folder is a complete conversion
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import ltx2_diffusers.convert as c
    from ltx2_diffusers.loaders import output_folder
    mode, checkpoint, out = sys.argv[1:4]
    if mode == "kill_partial":
        c._verify = lambda ledger: os.kill(os.getpid(), signal.SIGKILL)
    elif mode == "kill_old":
        def killer(src, dst):
            if ".partial-" in str(src):  # the previous conversion is already aside
                os.kill(os.getpid(), signal.SIGKILL)
        output_folder._rename_noreplace = killer
    elif mode == "barrier":
        import time
        original = c._verify
        def wait(ledger):
            original(ledger)
            while not os.path.exists(out + ".go"):
                time.sleep(0.05)
        c._verify = wait
        open(out + "." + str(os.getpid()) + ".ready", "w").close()
    argv = ["--checkpoint-path", checkpoint, "--output-dir", out]
    sys.exit(c.main(argv + (["--overwrite"] if mode == "kill_old" else [])))
    """
)


def _child(mode, checkpoint, out):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, mode, str(checkpoint), str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_into_one_folder_cannot_both_succeed(tmp_path):
    checkpoint = _sources()[0]
    out = tmp_path / "out"
    children = [_child("barrier", checkpoint, out) for _ in range(2)]
    import time

    deadline = time.time() + 300
    while len(list(tmp_path.glob("out.*.ready"))) < 2 and time.time() < deadline:
        time.sleep(0.1)
    # both are past the start checks (out absent) before either may finish
    (tmp_path / "out.go").touch()
    codes = [c.wait(timeout=300) for c in children]
    errors = [c.stderr.read() for c in children]
    assert sorted(codes) == [0, 2], (codes, errors)
    assert os.fspath(out) in errors[codes.index(2)]
    output_folder._conversion_id(out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_leftovers_of_killed_runs_are_named_and_removed(tmp_path, caplog):
    checkpoint = _sources()[0]
    out = tmp_path / "out"

    def leftovers():
        return sorted(p for p in tmp_path.iterdir() if p.name.startswith(".out."))

    assert _child("kill_partial", checkpoint, out).wait(timeout=300) == -9
    first = leftovers()
    assert [p.name.split("-")[0] for p in first] == [".out.partial"]
    with caplog.at_level(logging.WARNING, logger="ltx2_diffusers.loaders.output_folder"):
        convert_checkpoint(checkpoint, out, repo_id="first")
    assert os.fspath(first[0]) in caplog.text and not first[0].exists()
    caplog.clear()
    first_conversion = _tree(out)
    assert _child("kill_old", checkpoint, out).wait(timeout=300) == -9
    second = leftovers()
    assert [p.name.split("-")[0] for p in second] == [".out.old", ".out.partial"]
    assert not out.exists()  # killed between the two moves: the previous conversion sits in .old-*
    foreign = tmp_path / ".out.partial-users"  # looks like ours by name, but has no marker: never touched
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    held = output_folder.TempFolder(out, "partial")  # a live run's folder (its lock is held): never touched
    try:
        with caplog.at_level(logging.WARNING, logger="ltx2_diffusers.loaders.output_folder"):
            # the killed run replaced nothing: its previous conversion is moved back, and needs --overwrite again
            with pytest.raises(ValueError, match="overwrite"):
                convert_checkpoint(checkpoint, out, repo_id="second")
            assert _tree(out) == first_conversion
            convert_checkpoint(checkpoint, out, repo_id="second", overwrite=True)
        assert held.path.is_dir()
    finally:
        held.release(remove=True)
    for path in second:
        assert not path.exists()
        assert os.fspath(path) in caplog.text
    assert (foreign / "keep.txt").read_text() == "mine"
    assert "second" in (out / "README.md").read_text()
    assert not (out / output_folder.TEMP_MARKER_NAME).exists()


def test_leftovers_are_removed_when_the_parent_is_reached_through_a_link(tmp_path):
    """`--output-dir models/out` with `models -> /data/models`: the killed run's folder beside `out` is still ours."""
    (tmp_path / "data").mkdir()
    (tmp_path / "models").symlink_to(tmp_path / "data")
    out = (tmp_path / "models" / "out").absolute()
    killed = output_folder.TempFolder(out, "partial")
    killed.release(remove=False)  # the lock is free: its run is gone
    assert output_folder.remove_leftovers(out, {}) == [killed.path]
    assert not killed.path.exists() and os.listdir(tmp_path / "data") == []


# ------------------------------------------------------------------------------------------------ garbage
@pytest.mark.parametrize(
    "key",
    [
        "model.diffusion_model.transformer_blocks.0.attn1.to_q.weight",
        "vae.decoder.conv_out.conv.weight",
        "audio_vae.decoder.conv_out.conv.weight",
    ],
)
def test_integer_tensor_refused_by_converter(tmp_path, key):
    source = _retag(_sources()[0], tmp_path / "retagged.safetensors", key, "I16")
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match="dtype torch.int16") as error:
        convert_checkpoint(source, tmp_path / "out")
    assert os.fspath(source) in str(error.value) and key in str(error.value)
    assert _tree(tmp_path) == before


def test_integer_lora_and_upsampler_refused_by_converter(tmp_path):
    checkpoint, upsampler, lora = _sources()
    lora_key = next(iter(load_file(lora)))
    bad_lora = _retag(lora, tmp_path / "lora.safetensors", lora_key, "I16")
    up_key = next(iter(load_file(upsampler)))
    bad_up = _retag(upsampler, tmp_path / "up.safetensors", up_key, "I16")
    before = _tree(tmp_path)
    for kwargs, path, key in (
        ({"distilled_lora": bad_lora}, bad_lora, lora_key),
        ({"spatial_upsampler_path": bad_up}, bad_up, up_key),
    ):
        with pytest.raises(ValueError, match="int16") as error:
            convert_checkpoint(checkpoint, tmp_path / "out", **kwargs)
        assert os.fspath(path) in str(error.value) and key in str(error.value)
    assert _tree(tmp_path) == before


def _loaders():
    from ltx2_diffusers.loaders.single_file_connectors import load_connectors_from_single_file
    from ltx2_diffusers.loaders.single_file_video_vae import load_video_vae_from_single_file
    from ltx2_diffusers.models.autoencoder_audio_mel import AutoencoderAudioMel
    from ltx2_diffusers.models.transformer_ltx2_av import LTX2AudioVideoTransformer
    from ltx2_diffusers.models.vocoder_hifigan import LTX2HiFiGANVocoder

    return {
        "transformer": (
            LTX2AudioVideoTransformer.from_single_file,
            "model.diffusion_model.transformer_blocks.0.attn1.to_q.weight",
        ),
        "connectors": (
            load_connectors_from_single_file,
            "model.diffusion_model.video_embeddings_connector.transformer_1d_blocks.0.attn1.to_q.weight",
        ),
        "vae": (load_video_vae_from_single_file, "vae.decoder.conv_out.conv.weight"),
        "audio_vae": (AutoencoderAudioMel.from_single_file, "audio_vae.decoder.conv_out.conv.weight"),
        "vocoder": (LTX2HiFiGANVocoder.from_single_file, None),
    }


@pytest.mark.parametrize("component", ["transformer", "connectors", "vae", "audio_vae", "vocoder", "latent_upsampler"])
def test_integer_tensor_refused_by_single_file_loaders(tmp_path, component):
    checkpoint, upsampler, _ = _sources()
    if component == "latent_upsampler":
        from ltx2_diffusers.loaders.single_file_upsampler import load_latent_upsampler_from_single_file

        load, source, key = load_latent_upsampler_from_single_file, upsampler, next(iter(load_file(upsampler)))
    else:
        load, key = _loaders()[component]
        source = checkpoint
        if key is None:
            key = next(k for k in load_file(checkpoint) if k.startswith("vocoder."))
    bad = _retag(source, tmp_path / "bad.safetensors", key, "I16")
    with pytest.raises(ValueError, match="int16|I16") as error:
        load(bad)
    assert os.fspath(bad) in str(error.value) and key in str(error.value)


CONFIG_CASES = [
    ("transformer", "num_layers", 10**9),
    ("transformer", "num_layers", 2.5),
    ("transformer", "num_layers", -1),
    ("transformer", "num_attention_heads", 10**6),
    ("transformer", "attention_head_dim", 10**9),
    ("transformer", "caption_channels", "48"),
    ("transformer", "norm_eps", float("nan")),
    ("transformer", "positional_embedding_theta", float("inf")),
    ("vae", "latent_channels", 10**12),
    ("audio_vae", "sampling_rate", 1e30),
]


@pytest.mark.parametrize("section, key, value", CONFIG_CASES, ids=[f"{s}.{k}={v!r}" for s, k, v in CONFIG_CASES])
def test_absurd_config_values_are_refused_before_building(tmp_path, section, key, value):
    from ltx2_diffusers.models.transformer_ltx2_av import LTX2AudioVideoTransformer

    source = _with_config(_sources()[0], tmp_path / "bad.safetensors", section, key, value)
    before = _tree(tmp_path)
    for call in (
        lambda: convert_checkpoint(source, tmp_path / "out"),
        lambda: LTX2AudioVideoTransformer.from_single_file(source),
    ):
        with pytest.raises((ValueError, TypeError)) as error:
            call()
        assert os.fspath(source) in str(error.value) or key in str(error.value)
        assert key in str(error.value) or section in str(error.value)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("version", ["2.3.0\n<script>", "2.3.0`", "", "x" * 40])
def test_bad_model_version_is_refused(tmp_path, version):
    checkpoint = _sources()[0]
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(checkpoint), bad, metadata={**factories.read_metadata(checkpoint), "model_version": version})
    nover = tmp_path / "nover.safetensors"
    save_file(load_file(checkpoint), nover, metadata={"config": factories.read_metadata(checkpoint)["config"]})
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match="model_version") as error:
        convert_checkpoint(bad, tmp_path / "out")
    assert os.fspath(bad) in str(error.value)
    with pytest.raises(ValueError, match="model_version"):
        convert_checkpoint(nover, tmp_path / "out", model_version=version)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("strength", ["nan", "inf", "-0.5", "1e30", "11"])  # argparse itself rejects "-inf"
def test_bad_distilled_lora_strength_is_refused(tmp_path, capsys, strength):
    checkpoint, _, lora = _sources()
    out = tmp_path / "out"
    before = _tree(tmp_path)
    assert (
        main(["--checkpoint-path", str(checkpoint), "--output-dir", str(out), "--distilled-lora", str(lora), strength])
        == 2
    )
    assert "--distilled-lora STRENGTH" in capsys.readouterr().err
    assert _tree(tmp_path) == before
    value = float(strength)
    for value in [value] + ([-value] if not abs(value) <= 10 else []):  # -inf, -1e30, -11 through the API
        with pytest.raises(ValueError, match="distilled_lora_scale"):
            convert_checkpoint(checkpoint, out, distilled_lora=lora, distilled_lora_scale=value)
    assert _tree(tmp_path) == before


def test_model_index_is_strict_json(tmp_path):
    checkpoint, _, lora = _sources()
    convert_checkpoint(checkpoint, tmp_path / "out", distilled_lora=lora, distilled_lora_scale=0.25)
    text = (tmp_path / "out" / "model_index.json").read_text()
    index = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert index["distilled_lora_scale"] == 0.25


# ------------------------------------------------------------------------------------------------ model cards
HOSTILE = [
    "quote\"s and 'single'",
    "back`ticks`` and ```fences",
    "<script>alert(1)</script>",
    "line\nbreak\r\n# heading\n---\nyaml: injected",
    "| table | cells |",
    "[link](javascript:alert(1)) ![img](http://x/y.png) <http://evil>",
    "\\backslash\\ *emph* _u_ {x} $dollar ${x}",
    "tab\tnul\x00 bell\x07 sep\u2028 rtl\u202e lone\udcff",
    "üñíçødé 🎬",
]


def _render(kind, value):
    fields = _card_fields(
        "2.0.0" if kind.startswith("ltx-2-") else "2.3.0",
        "distilled" if "distilled" in kind else "dev",
        value,
        Path(f"{value}.safetensors"),
        f"{value}-lora.safetensors",
        0.8,
        None,
        True,
        True,
        kind == "fp8",
    )
    fields["model_version"] = value  # metadata given explicitly is inserted too
    return render_model_card(kind, fields)


def _snippets(text):
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("value", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_fields_are_escaped(kind, value):
    text = _render(kind, value)
    reference = _render(kind, "plain")
    card = ModelCard(text)
    assert card.data.to_dict() == ModelCard(reference).data.to_dict()  # front matter untouched
    assert text.count("\n") == reference.count("\n")  # no field adds a line
    assert len(_snippets(text)) == len(_snippets(reference))
    for snippet in _snippets(text):
        tree = ast.parse(snippet)
    calls = [
        n
        for n in ast.walk(ast.parse(_snippets(text)[0]))
        if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "from_pretrained"
    ]
    assert ast.literal_eval(calls[0].args[0]) == value
    for line_hostile, line_plain in zip(text.splitlines(), reference.splitlines()):
        if line_plain.startswith("|"):  # table rows keep their cells
            assert len(re.findall(r"(?<!\\)\|", line_hostile)) == len(re.findall(r"(?<!\\)\|", line_plain))
    body, plain = "".join(text.split("```")[0::2]), "".join(reference.split("```")[0::2])  # outside code blocks
    for ch in "`<>[]()*_|#!{}~\n":  # the hostile value adds no markup character (only escaped ones)
        assert len(re.findall(rf"(?<!\\){re.escape(ch)}", body)) == len(
            re.findall(rf"(?<!\\){re.escape(ch)}", plain)
        ), ch
    assert "<script" not in text and "javascript:" not in body
    assert tree is not None


@pytest.mark.parametrize("name", ['q"uote', "b`tick`", "<script>alert(1)", "new\nline", "it's $HOME"])
def test_hostile_output_folder_name(tmp_path, name):
    out = tmp_path / name
    convert_checkpoint(_sources()[0], out)
    text = (out / "README.md").read_text(encoding="utf-8")
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "Lightricks/LTX-2.3"
    snippet = _snippets(text)[0]
    calls = [
        n
        for n in ast.walk(ast.parse(snippet))
        if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "from_pretrained"
    ]
    assert ast.literal_eval(calls[0].args[0]) == name
    assert "<script>" not in text.split("```")[0]


def test_tiny_checkpoints_are_labelled_in_their_cards(tmp_path):
    convert_checkpoint(_sources()[0], tmp_path / "tiny", variant="dev")
    text = (tmp_path / "tiny" / "README.md").read_text()
    assert "tiny test/demo checkpoint" in text and "NOT the released LTX\\-2\\.3 22B model" in text
    assert "full\\-quality" not in text and "full-quality" not in text
    released = _card_fields(
        "2.3.0", "dev", "r", Path("c.safetensors"), None, 0.8, None, False, False, False, 22_000_000_000
    )
    released_text = render_model_card("ltx-2.3-dev", released)
    assert "tiny" not in released_text and "full\\-quality LTX\\-2\\.3 22B model" in released_text
