"""Heavier tests of marble_nb.io: every failure mode of a file raises MarbleFormatError, fuzzing included."""

import json
import zipfile
from io import BytesIO
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marble_nb import io as mio
from marble_nb.engine import run
from marble_nb.graph import GraphBuilder
from marble_nb.io import MarbleFormatError, load, save
from marble_nb.ops import Gather


def example_graph():
    torch.manual_seed(0)
    b = GraphBuilder("example")
    x = b.input((2, 5, 5))
    c = b.conv2d(x, torch.randn(3, 2, 3, 3), torch.randn(3), padding=1, activation="relu")
    h = b.linear(c, torch.randn(4, 75), torch.randn(4), activation="sigmoid")
    gates = b.group(2, "logic", name="gates", params={"gate": torch.tensor([6, 14])})
    b.connect(h, gates, Gather(torch.tensor([0, 1]), torch.tensor(1.0)), slot=0)
    b.connect(h, gates, Gather(torch.tensor([2, 3]), torch.tensor(1.0)), slot=1)
    return b.output(h, gates)


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    return save(example_graph(), tmp_path_factory.mktemp("io") / "good.marble")


def rewrite(good: Path, out: Path, manifest_edit=None, arrays_edit=None, members=None, rehash=True) -> Path:
    "A copy of `good` with its manifest/arrays edited (structure hash updated unless rehash=False), or other members."
    with zipfile.ZipFile(good) as z:
        manifest, arrays = json.loads(z.read(mio.MANIFEST)), z.read(mio.ARRAYS)
    if manifest_edit:
        manifest_edit(manifest)
        if rehash and isinstance(manifest.get("graph"), dict):
            manifest["graph_sha256"] = mio._structure_hash(manifest["graph"])
    if arrays_edit:
        arrays = arrays_edit(arrays)
    content = members if members is not None else {mio.MANIFEST: json.dumps(manifest), mio.ARRAYS: arrays}
    buf = BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in content.items():
            z.writestr(name, data)
    out.write_bytes(buf.getvalue())
    return out


def test_round_trip_runs_identically(tmp_path):
    g = example_graph()
    x = torch.rand(3, 2, 5, 5)
    for suffix in (".marble", ".json"):
        again = load(save(g, tmp_path / f"g{suffix}"))
        for a, b in zip(run(g, x), run(again, x), strict=True):
            assert torch.equal(a, b)
        for a, b in zip(run(g, x, mode="synapse"), run(again, x, mode="synapse"), strict=True):
            assert torch.equal(a, b)


def test_shared_tensor_stays_shared(tmp_path):
    w = torch.randn(3, 3)
    b = GraphBuilder("shared")
    x = b.input(3)
    b.dense(x, b.group(3, name="a"), w)
    b.dense(x, b.group(3, name="b"), w)
    g = b.output("a", "b")
    manifest, arrays = mio.graph_to_manifest(g)
    assert len(arrays) == 1
    again = load(save(g, tmp_path / "s.marble"))
    assert again.connections[0].op.weight.data_ptr() == again.connections[1].op.weight.data_ptr()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(format_version=7), "written by a newer marble_nb"),
        (lambda m: m.update(format_version=0), "written by an older marble_nb"),
        (lambda m: m.update(format="zip"), "does not declare format 'marble'"),
        (lambda m: m.pop("arrays"), "has no field 'arrays'"),
        (lambda m: m["graph"].pop("outputs"), "graph has no field 'outputs'"),
        (lambda m: m["graph"]["groups"][1].update(kind="spiking"), "Neuron kind 'spiking' is not registered"),
        (lambda m: m["graph"]["groups"][1].update(shape=[3, 4, 4]), "inconsistent"),
        (lambda m: m["graph"]["connections"][0].update(op="Teleport"), "Unknown operator 'Teleport'"),
        (lambda m: m["graph"]["connections"][0].update(slot="0"), "slot should be int"),
        (lambda m: m["graph"]["connections"][0]["tensors"].update(weight="nowhere"), "not in the file"),
        (lambda m: m["graph"].update(outputs=["ghost"]), "ghost"),
        (lambda m: m["arrays"][next(iter(m["arrays"]))].update(shape=[99]), "the manifest says"),
        (lambda m: m["arrays"][next(iter(m["arrays"]))].update(sha256="0" * 64), "sha256"),
    ],
)
def test_bad_manifest_is_one_clear_error(good_file, tmp_path, edit, message):
    with pytest.raises(MarbleFormatError, match=None) as info:
        load(rewrite(good_file, tmp_path / "bad.marble", manifest_edit=edit))
    assert message in str(info.value)


def test_tampered_structure_fails_checksum(good_file, tmp_path):
    def swap_slots(m):
        m["graph"]["connections"][-1]["slot"] = 0

    with pytest.raises(MarbleFormatError, match="structure fails its sha256"):
        load(rewrite(good_file, tmp_path / "s.marble", manifest_edit=swap_slots, rehash=False))


def test_tampered_weight_fails_checksum(good_file, tmp_path):
    flip_last = lambda a: a[:-1] + bytes([a[-1] ^ 0x10])
    with pytest.raises(MarbleFormatError, match="sha256"):
        load(rewrite(good_file, tmp_path / "t.marble", arrays_edit=flip_last))


def test_large_graph_hashed_on_threads_round_trips_and_detects_a_flipped_byte(tmp_path):
    "Above 1 MB of arrays the checksums are computed on several threads: same digests, same detection."
    torch.manual_seed(0)
    b = GraphBuilder("large")
    h = b.linear(b.input(600), torch.randn(500, 600), torch.randn(500), activation="relu")
    g = b.output(b.linear(h, torch.randn(300, 500), torch.randn(300)))
    _, arrays = mio.graph_to_manifest(g)
    assert sum(t.numel() * t.element_size() for t in arrays.values()) > mio._PARALLEL_HASH_BYTES
    assert mio._sha256_all(arrays) == {name: mio._sha256(t) for name, t in arrays.items()}
    path = save(g, tmp_path / "large.marble")
    x = torch.rand(4, 600)
    assert torch.equal(run(load(path), x), run(g, x))
    flip_middle = lambda a: a[: len(a) // 2] + bytes([a[len(a) // 2] ^ 0x01]) + a[len(a) // 2 + 1 :]
    with pytest.raises(MarbleFormatError, match="fails its sha256 check"):
        load(rewrite(path, tmp_path / "flipped.marble", arrays_edit=flip_middle))


@pytest.mark.parametrize(
    "members, message",
    [
        ({"readme.txt": "hi"}, "has no manifest.json"),
        ({mio.MANIFEST: "{not json"}, "not valid JSON"),
        (
            {mio.MANIFEST: json.dumps({"format": "marble", "format_version": 1, "arrays": {}})},
            "has no arrays.safetensors",
        ),
    ],
)
def test_not_marble_archives(good_file, tmp_path, members, message):
    with pytest.raises(MarbleFormatError) as info:
        load(rewrite(good_file, tmp_path / "n.marble", members=members))
    assert message in str(info.value)


def test_truncated_and_garbage_files(good_file, tmp_path):
    raw = good_file.read_bytes()
    for cut in (0, 10, len(raw) // 3, len(raw) - 1):
        p = tmp_path / f"cut{cut}.marble"
        p.write_bytes(raw[:cut])
        with pytest.raises(MarbleFormatError):
            load(p)


def test_json_size_limit_and_extension(tmp_path):
    g = example_graph()
    with pytest.raises(ValueError, match="Save it as .marble"):
        save(g, tmp_path / "big.json", max_json_values=10)
    assert not (tmp_path / "big.json").exists()
    with pytest.raises(ValueError, match="unknown extension"):
        save(g, tmp_path / "g.onnx")
    with pytest.raises(FileNotFoundError):
        load(tmp_path / "missing.marble")


def test_interrupted_save_keeps_old_file(tmp_path, monkeypatch):
    target = save(example_graph(), tmp_path / "m.marble")
    before = target.read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mio, "_save_marble", lambda graph, f: (f.write(b"half a file"), interrupted()))
    with pytest.raises(KeyboardInterrupt):
        save(example_graph(), target)
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.marble"]


def test_loading_never_unpickles(good_file, tmp_path, monkeypatch):
    import pickle

    def refuse(*args, **kwargs):
        raise AssertionError("pickle used while loading a MARBLE file")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    load(good_file)
    load(save(example_graph(), tmp_path / "g.json"))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_files_load_or_raise_marble_format_error(good_file, tmp_path, data):
    raw = bytearray(good_file.read_bytes())
    for _ in range(data.draw(st.integers(1, 8), label="flips")):
        i = data.draw(st.integers(0, len(raw) - 1), label="offset")
        raw[i] ^= data.draw(st.integers(1, 255), label="mask")
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[: data.draw(st.integers(0, len(raw)), label="length")]
    p = tmp_path / "fuzz.marble"
    p.write_bytes(bytes(raw))
    try:
        g = load(p)
    except MarbleFormatError:
        return
    # a flip in a part that carries no information (zip padding, timestamps, JSON whitespace) may load:
    # then the graph must be the original one
    x = torch.rand(2, 2, 5, 5)
    for a, b in zip(run(g, x), run(example_graph(), x), strict=True):
        assert torch.equal(a, b)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_json_files(tmp_path, data):
    g = example_graph()
    raw = bytearray(save(g, tmp_path / "g.json").read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    p = tmp_path / "fuzz.json"
    p.write_bytes(bytes(raw))
    try:
        again = load(p)
    except MarbleFormatError:
        return
    x = torch.rand(2, 2, 5, 5)
    for a, b in zip(run(g, x), run(again, x), strict=True):
        assert torch.equal(a, b)


def test_safetensors_layout_agrees_with_the_reference_library():
    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    arrays = {
        "odd_bools": torch.tensor([True, False, True]),
        "f32": torch.randn(3, 5),
        "i8": torch.arange(7, dtype=torch.int8),
        "bf16": torch.randn(4, dtype=torch.bfloat16),
        "i64": torch.arange(3, dtype=torch.int64),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.zeros(0, 4),
    }
    ours = BytesIO()
    mio.write_safetensors(ours, arrays)
    for name, t in st_load(ours.getvalue()).items():  # the reference reader reads our files
        assert t.dtype == arrays[name].dtype and torch.equal(t, arrays[name])
    for name, t in mio.read_safetensors(bytearray(st_save(arrays))).items():  # and we read its files
        assert t.dtype == arrays[name].dtype and torch.equal(t, arrays[name])


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[:4], "truncated"),
        (lambda b: (10**9).to_bytes(8, "little") + b[8:], "header claims"),
        (lambda b: b[:-1], "do not fill the member"),
        (lambda b: b + b"\0" * 8, "do not fill the member"),
    ],
)
def test_damaged_safetensors_member(damage, message):
    buf = BytesIO()
    mio.write_safetensors(buf, {"w": torch.randn(4), "b": torch.randn(2)})
    with pytest.raises(MarbleFormatError, match=message):
        mio.read_safetensors(bytearray(damage(buf.getvalue())))


def test_dtypes_empty_and_scalar_tensors_round_trip_exactly(tmp_path):
    torch.manual_seed(1)
    b = GraphBuilder("dtypes")
    x = b.input(4)
    b.sparse(x, b.group(3, name="none"), torch.tensor([], dtype=torch.int32), torch.tensor([], dtype=torch.int32), [])
    gates = b.group(2, "logic", name="gates", params={"gate": torch.tensor([6, 1], dtype=torch.int8)})
    b.connect(x, gates, Gather(torch.tensor([0, 3], dtype=torch.int32), torch.tensor(0.5, dtype=torch.float64)))
    b.connect(x, gates, Gather(torch.tensor([1, -1], dtype=torch.int32), torch.tensor(1.0)), slot=1)
    g = b.output("none", gates)
    _, arrays = mio.graph_to_manifest(g)
    assert any(t.numel() == 0 for t in arrays.values()) and any(t.dim() == 0 for t in arrays.values())
    for suffix in (".marble", ".json"):
        _, again = mio.graph_to_manifest(load(save(g, tmp_path / f"d{suffix}")))
        assert list(again) == list(arrays)
        for name, t in arrays.items():
            u = again[name]
            assert (u.dtype, u.shape) == (t.dtype, t.shape), name
            assert mio._tensor_bytes(u) == mio._tensor_bytes(t), name


def test_zip_bomb_is_refused_before_decompressing(good_file, tmp_path):
    with zipfile.ZipFile(good_file) as z:
        manifest = z.read(mio.MANIFEST)
    p = tmp_path / "bomb.marble"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(mio.MANIFEST, manifest)
        with z.open(mio.ARRAYS, "w", force_zip64=True) as member:
            for _ in range(80):
                member.write(bytes(1 << 20))
    assert p.stat().st_size < 1 << 20
    with pytest.raises(MarbleFormatError, match="more than the"):
        load(p)


def test_manifest_claiming_huge_arrays_is_refused(good_file, tmp_path):
    def huge(m):
        m["arrays"][next(iter(m["arrays"]))]["shape"] = [1 << 40]

    with pytest.raises(MarbleFormatError, match="bytes of arrays, more than"):
        load(rewrite(good_file, tmp_path / "huge.marble", manifest_edit=huge))
