"""T5 embedding files: the reference pickle (read and written without torch), open formats, the CLI."""

from __future__ import annotations

import importlib.util
import os
import pickle
import pickletools

import ml_dtypes
import numpy as np
import pytest

from cosmos_policy_jax.data import t5 as t5_lib
from cosmos_policy_jax.data.errors import DataError
from tests.fixture_utils import fixture_path, load_fixture

HAVE_TORCH = importlib.util.find_spec("torch") is not None
HAVE_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


def _globals(data: bytes) -> set[str]:
    """Globals referenced by a pickle stream (GLOBAL / STACK_GLOBAL with string operands)."""
    found, strings = set(), []
    for op, arg, _pos in pickletools.genops(data):
        if op.name == "GLOBAL":
            found.add(arg.replace(" ", "."))
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif op.name == "STACK_GLOBAL":
            found.add(f"{strings[-2]}.{strings[-1]}")
    return found


def test_reads_reference_pickle():
    tensors, info = load_fixture("libero_dataset_samples.safetensors")
    table = t5_lib.load_t5_embeddings(fixture_path("libero_synthetic") / "t5_embeddings.pkl")
    assert set(table) == set(info["commands"])
    shapes = {v.shape for v in table.values()}
    assert len(shapes) == 1 and next(iter(shapes))[0] == 1
    squeezed = [t5_lib.squeeze_embedding(v) for v in table.values()]
    for idx in info["samples"]:
        rec = tensors[f"sample{idx}.t5_text_embeddings"]
        assert any(np.array_equal(rec, s) for s in squeezed), idx


@pytest.mark.parametrize("ext", [".pkl", ".safetensors", ".npz"])
@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16])
def test_round_trip(tmp_path, ext, dtype):
    rng = np.random.default_rng(0)
    table = {
        "pick up the bowl": rng.standard_normal((1, 7, 16)).astype(dtype),
        "open the drawer / then close it": rng.standard_normal((1, 7, 16)).astype(dtype),
    }
    path = str(tmp_path / f"emb{ext}")
    t5_lib.save_t5_embeddings(table, path)
    back = t5_lib.load_t5_embeddings(path)
    assert set(back) == set(table)
    for k, v in table.items():
        want_dtype = np.dtype(dtype) if ext == ".pkl" else np.dtype(np.float32)
        assert back[k].dtype == want_dtype and back[k].shape == v.shape
        assert np.array_equal(back[k].astype(np.float32), v.astype(np.float32))


def test_written_pickle_uses_only_the_reference_globals(tmp_path):
    path = tmp_path / "t5_embeddings.pkl"
    t5_lib.save_t5_embeddings({"a": np.ones((1, 3, 4), ml_dtypes.bfloat16), "b": np.zeros((1, 3, 4), np.float32)}, path)
    ours = path.read_bytes()
    with open(fixture_path("libero_synthetic") / "t5_embeddings.pkl", "rb") as f:
        ref = f.read()
    assert (
        _globals(ours)
        == _globals(ref)
        == {
            "torch._utils._rebuild_tensor_v2",
            "torch.storage._load_from_bytes",
            "collections.OrderedDict",
        }
    )
    # Inner legacy torch.save streams name the storage types.
    inner = [arg for op, arg, _ in pickletools.genops(ours) if op.name == "BINBYTES"]
    assert len(inner) == 2
    storages = set()
    for blob in inner:
        for op, arg, _ in pickletools.genops(blob[blob.index(b"\x80\x02(") :]):
            if op.name == "GLOBAL":
                storages.add(arg)
            if op.name == "STOP":
                break
    assert storages == {"torch BFloat16Storage", "torch FloatStorage"}


@pytest.mark.skipif(not HAVE_TORCH, reason="torch not installed (optional extra)")
def test_written_pickle_loads_in_torch(tmp_path):
    import torch

    path = tmp_path / "t5_embeddings.pkl"
    value = np.arange(24, dtype=np.float32).reshape(1, 4, 6)
    t5_lib.save_t5_embeddings({"x": value}, path)
    with open(path, "rb") as f:
        loaded = pickle.load(f)
    assert torch.equal(loaded["x"], torch.from_numpy(value))


def test_rejects_non_embedding_content(tmp_path):
    bad_shape = tmp_path / "shape.npz"
    np.savez(bad_shape, x=np.zeros((2, 3, 4), np.float32))
    with pytest.raises(DataError, match="shape"):
        t5_lib.load_t5_embeddings(bad_shape)
    ints = tmp_path / "ints.npz"
    np.savez(ints, x=np.zeros((3, 4), np.int32))
    with pytest.raises(DataError, match="dtype"):
        t5_lib.load_t5_embeddings(ints)
    unknown = tmp_path / "emb.json"
    unknown.write_text("{}")
    with pytest.raises(DataError, match="unknown T5 embeddings format"):
        t5_lib.load_t5_embeddings(unknown)
    plain = tmp_path / "list.pkl"
    with open(plain, "wb") as f:
        pickle.dump([1, 2], f)
    with pytest.raises(DataError, match=r"list\.pkl"):
        t5_lib.load_t5_embeddings(plain)


def test_cli_list_and_convert(tmp_path, capsys):
    info = load_fixture("libero_dataset_samples.safetensors")[1]
    root = str(fixture_path("libero_synthetic"))
    assert t5_lib.main(["list", "--kind", "libero", "--data_dir", root]) == 0
    assert capsys.readouterr().out.split("\n")[:-1] == sorted(info["commands"])
    dst = str(tmp_path / "emb.safetensors")
    assert t5_lib.main(["convert", os.path.join(root, "t5_embeddings.pkl"), dst]) == 0
    a = t5_lib.load_t5_embeddings(os.path.join(root, "t5_embeddings.pkl"))
    b = t5_lib.load_t5_embeddings(dst)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # bad input: exit 2, like every CLI
    assert t5_lib.main(["list", "--kind", "libero", "--data_dir", str(tmp_path / "missing")]) == 2
    assert "dataset directory not found" in capsys.readouterr().err


@pytest.mark.skipif(HAVE_TORCH and HAVE_TRANSFORMERS, reason="the torch extra is installed")
def test_cli_compute_without_torch_explains(tmp_path, capsys):
    root = str(fixture_path("libero_synthetic"))
    code = t5_lib.main(["compute", "--data_dir", root, "--out", str(tmp_path / "e.pkl"), "--device", "cpu"])
    assert code == 2 and "pip install" in capsys.readouterr().err


@pytest.mark.skipif(
    not (HAVE_TORCH and HAVE_TRANSFORMERS), reason="needs the optional torch extra (torch + transformers)"
)
def test_compute_with_tiny_random_t5():
    import torch
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4)
    encoder = T5EncoderModel(cfg).eval()

    def tokenizer(texts, return_tensors, padding, truncation, max_length):
        ids = torch.zeros(len(texts), max_length, dtype=torch.long)
        mask = torch.zeros(len(texts), max_length, dtype=torch.long)
        for i, text in enumerate(texts):
            tok = [*[3 + (ord(c) % 60) for c in text][: max_length - 1], 1]  # ..., </s>
            ids[i, : len(tok)] = torch.tensor(tok)
            mask[i, : len(tok)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    texts = ["pick up the bowl", "open it"]
    out = t5_lib.compute_t5_embeddings(texts, encoder, tokenizer, max_length=24, batch_size=1)
    assert set(out) == set(texts)
    for text in texts:
        emb = out[text]
        n = len(text) + 1
        assert emb.shape == (1, 24, 16) and emb.dtype == np.float32
        assert not emb[0, n:].any() and np.abs(emb[0, :n]).sum(axis=-1).min() > 0
    # Batched and one-by-one encodings agree (padding does not leak into valid positions).
    both = t5_lib.compute_t5_embeddings(texts, encoder, tokenizer, max_length=24, batch_size=2)
    for text in texts:
        np.testing.assert_allclose(both[text], out[text], atol=1e-5)


@pytest.mark.skipif(HAVE_TORCH and HAVE_TRANSFORMERS, reason="the torch extra is installed")
def test_text_encoder_without_torch_names_the_extra():
    with pytest.raises(DataError, match=r"T5 encoder 'google-t5/t5-11b' needs the torch extra: pip install"):
        t5_lib.t5_text_encoder("google-t5/t5-11b")


def tiny_t5_dir(directory, d_model: int = 16) -> str:
    """A random ``d_model``-wide T5 encoder and a word-level tokenizer saved as a local transformers model."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

    torch.manual_seed(0)
    words = ["<pad>", "</s>", "<unk>", "pick", "up", "the", "bowl", "open", "it"]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    fast.save_pretrained(directory)
    cfg = T5Config(vocab_size=len(words), d_model=d_model, d_kv=4, d_ff=32, num_layers=2, num_heads=4)
    T5EncoderModel(cfg).eval().save_pretrained(directory)
    return str(directory)


@pytest.mark.skipif(
    not (HAVE_TORCH and HAVE_TRANSFORMERS), reason="needs the optional torch extra (torch + transformers)"
)
def test_text_encoder_from_a_local_model_matches_compute(tmp_path):
    model = tiny_t5_dir(tmp_path / "t5")
    encode = t5_lib.t5_text_encoder(model, max_length=12, dim=16, device="cpu")
    encoder, tokenizer = t5_lib.load_t5_encoder(model)
    want = t5_lib.compute_t5_embeddings(["pick up the bowl"], encoder, tokenizer, max_length=12)["pick up the bowl"]
    got = encode("pick up the bowl")
    assert got.shape == (12, 16) and got.dtype == np.float32
    np.testing.assert_allclose(got, want[0], atol=1e-6)
    assert not got[4:].any() and np.abs(got[:4]).sum(axis=-1).min() > 0  # 4 word tokens, then padding
    with pytest.raises(DataError, match="gives 16-dim embeddings; the policy was trained on 1024"):
        t5_lib.t5_text_encoder(model, dim=1024, device="cpu")
    with pytest.raises(DataError, match="cannot load it"):
        t5_lib.t5_text_encoder(str(tmp_path / "missing"), device="cpu")
