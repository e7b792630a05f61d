"""Weight prefetch (`ltx2_diffusers.loaders.prefetch`): a converted folder's weight files read ahead in the background
while `from_pretrained` builds the pipeline.

1. `read_sequentially` reads every byte of every file and changes none (hash before and after); an unreadable file
   is skipped.
2. `prefetch_files` reads, in order, the files that fit half the available memory (passing over one that no longer
   fits); it starts nothing when switched off (`LTX2_PREFETCH_WEIGHTS=0`), for no files, when no file fits, or
   when the available memory is unknown.
3. `from_pretrained` on a converted folder prefetches exactly the folder's component weight files (all of them,
   not the ones of a component the caller passes in), and loads the same weights as without the prefetch.
4. `weight_files` picks the files of the variant `from_pretrained` loads: the shards its index names (inside the
   component folder only), else the single file of that variant; other variants' files are not read.
5. `wait_until_read` blocks until the prefetch has read a folder's files (and no longer once it has ended, however it
   ended); a component loaded with a `device_map` waits for its folder, without one it does not.
6. The pipeline loads its components in one order in every process (`LOADING_ORDER`), and the prefetch reads in it.
"""

import hashlib
import json
import os
import threading

import pytest
import torch
from converted_folder import converted_folder

from ltx2_diffusers import LTX2AudioToVideoPipeline
from ltx2_diffusers.loaders import prefetch
from ltx2_diffusers.pipelines.pipeline_loading import LOADING_ORDER


def _hash(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return converted_folder(tmp_path_factory.mktemp("prefetch"), seed=17)


def _all_weight_files(folder) -> set[str]:
    return {os.path.join(d, f) for d, _, files in os.walk(folder) for f in files if f.endswith(".safetensors")}


def test_read_sequentially_reads_every_byte_and_writes_none(tmp_path):
    files = []
    for i, size in enumerate([0, 1, 5 * 2**20 + 3, 2**20]):
        path = tmp_path / f"w{i}.safetensors"
        path.write_bytes(os.urandom(size))
        files.append(str(path))
    before = {f: (_hash(f), os.stat(f).st_mtime_ns) for f in files}
    assert prefetch.read_sequentially([*files, str(tmp_path / "missing.safetensors")], chunk_bytes=2**20) == sum(
        os.path.getsize(f) for f in files
    )
    assert {f: (_hash(f), os.stat(f).st_mtime_ns) for f in files} == before


def test_prefetch_files_starts_only_when_it_can_help(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"x" * 4096)
    seen = []
    monkeypatch.setattr(prefetch, "read_sequentially", lambda files: seen.append(files))
    monkeypatch.setattr(prefetch, "available_memory_bytes", lambda: 10**9)
    thread = prefetch.prefetch_files([str(path)])
    assert isinstance(thread, threading.Thread) and thread.daemon
    thread.join(10)
    assert seen == [[str(path)]]
    assert prefetch.prefetch_files([]) is None
    monkeypatch.setenv(prefetch.ENV_SWITCH, "0")
    assert prefetch.prefetch_files([str(path)]) is None
    monkeypatch.delenv(prefetch.ENV_SWITCH)
    monkeypatch.setattr(prefetch, "available_memory_bytes", lambda: 8191)  # 4096 B > half of it
    assert prefetch.prefetch_files([str(path)]) is None
    monkeypatch.setattr(prefetch, "available_memory_bytes", lambda: None)
    assert prefetch.prefetch_files([str(path)]) is None
    assert seen == [[str(path)]]


def test_prefetch_reads_what_fits_half_the_available_memory(tmp_path, monkeypatch):
    """In order, each file that still fits the rest of the budget: a large file is passed over, smaller later ones
    are still read."""
    sizes = {"a": 3000, "big": 9000, "b": 2000, "c": 1500}
    files = []
    for name, size in sizes.items():
        (tmp_path / f"{name}.safetensors").write_bytes(b"x" * size)
        files.append(str(tmp_path / f"{name}.safetensors"))
    assert prefetch.prefetch_selection(files, 6000) == [files[0], files[2]]  # 3000 + 2000; 1500 no longer fits
    assert prefetch.prefetch_selection(files, 6500) == [files[0], files[2], files[3]]
    assert prefetch.prefetch_selection(files, 10**6) == files
    assert prefetch.prefetch_selection(files, 1000) == []
    seen = []
    monkeypatch.setattr(prefetch, "read_sequentially", lambda chosen: seen.append(chosen))
    monkeypatch.setattr(prefetch, "available_memory_bytes", lambda: 13000)  # budget 6500
    prefetch.prefetch_files(files).join(10)
    assert seen == [[files[0]], [files[2]], [files[3]]]  # file by file


def test_available_memory_is_read_from_the_kernel():
    available = prefetch.available_memory_bytes()
    if os.path.isfile("/proc/meminfo"):
        assert isinstance(available, int) and available > 0
    else:
        assert available is None


def _components(folder, files) -> list[str]:
    """The component folders of `files`, in order, each once."""
    return list(dict.fromkeys(os.path.relpath(f, folder).split(os.sep)[0] for f in files))


def test_from_pretrained_prefetches_the_folder_weights(folder, monkeypatch):
    import diffusers.pipelines.pipeline_utils as pipeline_utils

    started, loaded = [], []
    real, load_sub_model = prefetch.prefetch_files, pipeline_utils.load_sub_model

    def spy(files):
        started.append(list(files))
        return real(files)

    def loading(*args, **kwargs):
        if kwargs["name"] not in ("scheduler", "tokenizer", "text_encoder"):  # no weight files in this folder
            loaded.append(kwargs["name"])
        return load_sub_model(*args, **kwargs)

    monkeypatch.setattr(prefetch, "prefetch_files", spy)
    monkeypatch.setattr(pipeline_utils, "load_sub_model", loading)
    before = {f: _hash(f) for f in _all_weight_files(folder)}
    pipe = LTX2AudioToVideoPipeline.from_pretrained(folder)
    assert len(started) == 1 and len(set(started[0])) == len(started[0])
    assert set(started[0]) == _all_weight_files(folder)
    assert _components(folder, started[0]) == loaded  # diffusers' loading order (below)

    started.clear()
    LTX2AudioToVideoPipeline.from_pretrained(folder, vae=pipe.vae)
    assert set(started[0]) == {f for f in _all_weight_files(folder) if os.sep + "vae" + os.sep not in f}

    monkeypatch.setenv(prefetch.ENV_SWITCH, "0")
    plain = LTX2AudioToVideoPipeline.from_pretrained(folder)
    for name in ("transformer", "vae", "latent_upsampler"):
        ours, theirs = getattr(pipe, name).state_dict(), getattr(plain, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    assert {f: _hash(f) for f in _all_weight_files(folder)} == before


def test_weight_files_are_the_requested_variants(tmp_path):
    single, sharded = tmp_path / "vae", tmp_path / "transformer"
    single.mkdir()
    sharded.mkdir()
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors", "notes.txt"):
        (single / name).write_bytes(b"x")
    shards = [
        "diffusion_pytorch_model-00001-of-00002.safetensors",
        "diffusion_pytorch_model-00002-of-00002.safetensors",
    ]
    for name in [*shards, "diffusion_pytorch_model-00001-of-00001.fp16.safetensors", "stray.safetensors"]:
        (sharded / name).write_bytes(b"x")
    weight_map = {"a": shards[0], "b": shards[1], "c": shards[0], "d": "../vae/diffusion_pytorch_model.safetensors"}
    (sharded / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    fp16_map = {"a": "diffusion_pytorch_model-00001-of-00001.fp16.safetensors"}
    (sharded / "diffusion_pytorch_model.safetensors.index.fp16.json").write_text(json.dumps({"weight_map": fp16_map}))

    found = prefetch.weight_files(tmp_path, ["vae", "transformer", "missing"])
    assert found == [str(single / "diffusion_pytorch_model.safetensors"), *(str(sharded / s) for s in shards)]
    plain = tmp_path / "distilled_lora"  # no fp16 file: loaded without the variant, as diffusers does
    plain.mkdir()
    (plain / "pytorch_lora_weights.safetensors").write_bytes(b"x")
    found = prefetch.weight_files(tmp_path, ["vae", "transformer", "distilled_lora"], variant="fp16")
    assert found == [
        str(single / "diffusion_pytorch_model.fp16.safetensors"),
        str(sharded / fp16_map["a"]),
        str(plain / "pytorch_lora_weights.safetensors"),
    ]
    (sharded / "diffusion_pytorch_model.safetensors.index.json").write_text("{not json")
    # an unreadable index: the variant's files by name (from_pretrained reports the index)
    assert prefetch.weight_files(tmp_path, ["transformer"]) == [
        str(sharded / n) for n in [*shards, "stray.safetensors"]
    ]
    assert prefetch.weight_files(tmp_path, ["vae"], variant=3) == []


ORDER_SCRIPT = """
import json, os, sys
import diffusers.pipelines.pipeline_utils as pipeline_utils
from ltx2_diffusers import LTX2AudioToVideoPipeline
from ltx2_diffusers.loaders import prefetch
folder, started, loaded = sys.argv[1], [], []
real, load_sub_model = prefetch.prefetch_files, pipeline_utils.load_sub_model
prefetch.prefetch_files = lambda files: started.extend(files) or real(files)
def loading(*args, **kwargs):
    loaded.append(kwargs["name"])
    return load_sub_model(*args, **kwargs)
pipeline_utils.load_sub_model = loading
LTX2AudioToVideoPipeline.from_pretrained(folder)
read = list(dict.fromkeys(os.path.relpath(f, folder).split(os.sep)[0] for f in started))
print(json.dumps({"read": read, "loaded": [n for n in loaded if n in read]}))
"""


def test_the_prefetch_follows_the_loading_order_in_every_process(folder):
    """diffusers would load the components in the order of a set of names, which changes with the process's string
    hash seed; the pipeline fixes the order (`LOADING_ORDER`), and the prefetch reads in it, whatever the seed."""
    import subprocess
    import sys

    orders = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", ORDER_SCRIPT, str(folder)], env=env, capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr[-3000:]
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["read"] == result["loaded"], seed
        orders.add(tuple(result["loaded"]))
    (order,) = orders
    assert order == tuple(n for n in LOADING_ORDER if n in order) and order[0] == "transformer"
    assert set(order) == {"transformer", "connectors", "audio_vae", "vae", "distilled_lora", "latent_upsampler",
                          "vocoder"}  # fmt: skip


def _two_folders(tmp_path):
    files = []
    for folder in ("first", "second"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "w.safetensors").write_bytes(b"x" * 1000)
        files.append(str(tmp_path / folder / "w.safetensors"))
    return files


def test_wait_until_read_blocks_until_the_folder_is_read(tmp_path, monkeypatch):
    first, second = _two_folders(tmp_path)
    release, done = threading.Event(), []
    real = prefetch.read_sequentially

    def slow(files):
        if files == [second]:
            assert release.wait(10)
        return real(files)

    monkeypatch.setattr(prefetch, "read_sequentially", slow)
    monkeypatch.setattr(prefetch, "available_memory_bytes", lambda: 10**9)
    thread = prefetch.prefetch_files([first, second])
    assert prefetch.wait_until_read(tmp_path / "first") == 1  # read, though the second file is not
    waiter = threading.Thread(target=lambda: done.append(prefetch.wait_until_read(tmp_path / "second")))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive() and done == []  # still waiting for the second folder
    release.set()
    waiter.join(10)
    thread.join(10)
    assert done == [1]
    assert prefetch.wait_until_read(tmp_path) == 0  # the prefetch ended: nothing is pending
    assert prefetch._PENDING == {}


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the thread's MemoryError
def test_waiters_are_released_when_the_prefetch_fails(tmp_path, monkeypatch):
    first, second = _two_folders(tmp_path)

    def broken(files):
        raise MemoryError("no buffer")

    monkeypatch.setattr(prefetch, "read_sequentially", broken)
    monkeypatch.setattr(prefetch, "available_memory_bytes", lambda: 10**9)
    thread = prefetch.prefetch_files([first, second])
    thread.join(10)
    assert not thread.is_alive() and prefetch._PENDING == {}
    assert prefetch.wait_until_read(tmp_path / "second") == 0


@pytest.mark.parametrize("mapped", [True, False])
def test_components_read_onto_a_device_wait_for_their_folder(folder, monkeypatch, mapped):
    """With a `device_map`, each of this package's components (transformer, audio VAE, vocoder, distilled LoRA)
    waits for its own folder before loading; without one (memory-mapped, read when touched) none waits."""
    import ltx2_diffusers.loaders.distilled_lora as distilled_lora

    waited = []
    spy = lambda path: waited.append(os.path.relpath(os.path.realpath(path), os.path.realpath(folder))) or 0  # noqa: E731
    monkeypatch.setattr(prefetch, "wait_until_read", spy)
    monkeypatch.setattr(distilled_lora, "wait_until_read", spy)
    LTX2AudioToVideoPipeline.from_pretrained(folder, **({"device_map": "cpu"} if mapped else {}))
    expected = ["transformer", "audio_vae", "distilled_lora", "vocoder"] if mapped else []
    assert waited == expected  # in the loading order


def test_a_wait_ends_when_the_prefetch_thread_is_gone(tmp_path, monkeypatch):
    """A forked child inherits pending files but not the thread: it forgets them; and an entry whose thread died
    without setting its event does not block."""
    first, _ = _two_folders(tmp_path)
    dead = threading.Thread(target=lambda: None)
    dead.start()
    dead.join()
    monkeypatch.setattr(prefetch, "_PENDING", {prefetch._key(first): (threading.Event(), dead)})
    assert prefetch.wait_until_read(tmp_path / "first") == 1  # returned: the thread is not alive
    prefetch._forget_after_fork()
    assert prefetch._PENDING == {} and prefetch.wait_until_read(tmp_path) == 0


def test_a_prefetch_that_cannot_start_leaves_nothing_pending(tmp_path, monkeypatch):
    first, second = _two_folders(tmp_path)

    def refuse(self):
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(prefetch, "available_memory_bytes", lambda: 10**9)
    monkeypatch.setattr(threading.Thread, "start", refuse)
    assert prefetch.prefetch_files([first, second]) is None
    assert prefetch._PENDING == {}


def test_linked_files_are_waited_for_in_their_folder(tmp_path, monkeypatch):
    """A Hugging Face cache snapshot's files are links to blobs elsewhere: the wait is for the folder they are in."""
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshot" / "transformer"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    (blobs / "0123abcd").write_bytes(b"x" * 1000)
    (snapshot / "w.safetensors").symlink_to(blobs / "0123abcd")
    release = threading.Event()
    real = prefetch.read_sequentially
    monkeypatch.setattr(prefetch, "read_sequentially", lambda files: release.wait(10) and real(files))
    monkeypatch.setattr(prefetch, "available_memory_bytes", lambda: 10**9)
    thread = prefetch.prefetch_files([str(snapshot / "w.safetensors")])
    counted = []
    waiter = threading.Thread(target=lambda: counted.append(prefetch.wait_until_read(snapshot)))
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive()  # waits for the linked file
    release.set()
    waiter.join(10)
    thread.join(10)
    assert counted == [1]
