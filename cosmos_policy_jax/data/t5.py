"""T5 text embeddings: the reference's pickle, an open format, and a CLI that computes them.

Formats (chosen by file extension):

* ``.pkl`` / ``.pickle``: the reference's ``t5_embeddings.pkl``, a plain pickle of
  ``{instruction: torch tensor (1, L, D)}`` (bf16 in production). Read without PyTorch through the
  restricted unpickler of ``common/torch_pickle.py`` (a pickle asking for anything but tensor
  rebuilding is refused). Written in the same layout, so PyTorch code can ``pickle.load`` it.
* ``.safetensors``: one tensor per instruction, the instruction string being the tensor name; stored
  as float32 (bf16 input is widened losslessly); metadata ``{"format": "cosmos_policy_t5_embeddings"}``.
* ``.npz``: numpy archive keyed by instruction (float32; ``allow_pickle=False`` on read).

CLI (needs the optional ``torch`` extra: ``pip install -e '.[torch]'``)::

    python -m cosmos_policy_jax.data.t5 compute --kind libero --data_dir DIR [--rollout_data_dir DIR2] \
        --out DIR/t5_embeddings.pkl [--model google-t5/t5-11b] [--max_length 512] [--device cuda]
    python -m cosmos_policy_jax.data.t5 list --kind libero --data_dir DIR       # instructions found
    python -m cosmos_policy_jax.data.t5 compute --from_dataset LEROBOT_DIR --out LEROBOT_DIR/t5_embeddings.pkl
    python -m cosmos_policy_jax.data.t5 convert IN OUT                          # between formats

``compute`` follows the reference: T5 encoder, tokens padded/truncated to ``max_length`` (512), the
encoder outputs at padded positions set to zero, one ``(1, max_length, D)`` tensor per instruction.
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import struct
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import ml_dtypes
import numpy as np

from cosmos_policy_jax.common.files import atomic_path, atomic_write_bytes
from cosmos_policy_jax.data.errors import DataError

_PICKLE_EXTS = (".pkl", ".pickle")
_SAFETENSORS_FORMAT = "cosmos_policy_t5_embeddings"


def _ext(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def _check_mapping(obj: Any, path: str) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a dict of instruction -> embedding, got {type(obj).__name__}")
    out: dict[str, np.ndarray] = {}
    for key, value in obj.items():
        if not isinstance(key, str):
            raise DataError(f"{path}: embedding key {key!r} is not an instruction string")
        arr = np.asarray(value)
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[0] != 1):
            raise DataError(f"{path}: embedding of {key!r} has shape {arr.shape}, expected (1, L, D) or (L, D)")
        if arr.dtype.kind != "f" and arr.dtype != ml_dtypes.bfloat16:
            raise DataError(f"{path}: embedding of {key!r} has dtype {arr.dtype}, expected a float type")
        out[key] = arr
    return out


def load_t5_embeddings(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """``{instruction: array (1, L, D) or (L, D)}`` from a ``.pkl``, ``.safetensors`` or ``.npz`` file.

    Raises ``DataError`` (one line, naming the file) for a missing/unreadable file or a pickle that
    references anything other than tensor rebuilding.
    """
    from cosmos_policy_jax.common.torch_pickle import CheckpointFormatError, UnsafeCheckpointError, load_torch_file

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"T5 embeddings file not found: {path}")
    ext = _ext(path)
    try:
        if ext in _PICKLE_EXTS or ext == ".pt":
            obj = load_torch_file(path)
        elif ext == ".safetensors":
            from safetensors import safe_open

            with safe_open(path, framework="numpy") as f:
                obj = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open is not iterable
        elif ext == ".npz":
            with np.load(path, allow_pickle=False) as z:
                obj = {k: z[k] for k in z.files}
        else:
            raise DataError(f"{path}: unknown T5 embeddings format {ext!r} (use .pkl, .safetensors or .npz)")
    except UnsafeCheckpointError as e:
        raise DataError(f"{path}: refusing to load T5 embeddings: {e}") from e
    except CheckpointFormatError as e:
        raise DataError(f"{path}: unreadable T5 embeddings pickle: {e}") from e
    except DataError:
        raise
    except Exception as e:  # safetensors/npz parsers raise assorted types on corrupt input
        raise DataError(f"{path}: unreadable T5 embeddings file ({type(e).__name__}: {e})") from e
    return _check_mapping(obj, path)


# ----------------------------------------------------------------------------------------------
# Writing the reference pickle without PyTorch
# ----------------------------------------------------------------------------------------------

_STORAGE_NAMES = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _op_str(s: str) -> bytes:
    data = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(data)) + data


def _op_int(n: int) -> bytes:
    return b"J" + struct.pack("<i", n)


def _op_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _legacy_storage_bytes(flat: np.ndarray, storage: str) -> bytes:
    """A legacy (non-zip) ``torch.save`` stream of one storage, as ``torch.storage._load_from_bytes`` reads it."""
    out = io.BytesIO()
    for header in (
        _LEGACY_MAGIC,
        1001,
        {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}},
    ):
        out.write(pickle.dumps(header, protocol=2))
    # The object is the storage itself, i.e. only its persistent id.
    out.write(b"\x80\x02(" + _op_str("storage") + _op_global("torch", storage) + _op_str("0") + _op_str("cpu"))
    out.write(_op_int(flat.size) + b"Nt" + b"Q.")
    out.write(pickle.dumps(["0"], protocol=2))
    out.write(struct.pack("<q", flat.size))
    out.write(flat.tobytes())  # little-endian hosts only (checked by the caller)
    return out.getvalue()


def _tensor_pickle_ops(arr: np.ndarray) -> bytes:
    if sys.byteorder != "little":
        raise NotImplementedError("writing T5 pickles is only supported on little-endian hosts")
    storage = _STORAGE_NAMES.get(arr.dtype)
    if storage is None:
        raise ValueError(f"cannot write a {arr.dtype} tensor to a T5 pickle")
    arr = np.ascontiguousarray(arr)
    blob = _legacy_storage_bytes(arr.reshape(-1), storage)
    strides = [int(np.prod(arr.shape[i + 1 :], dtype=np.int64)) for i in range(arr.ndim)]
    ops = _op_global("torch._utils", "_rebuild_tensor_v2") + b"("
    ops += _op_global("torch.storage", "_load_from_bytes") + b"B" + struct.pack("<I", len(blob)) + blob + b"\x85R"
    ops += _op_int(0)
    ops += b"(" + b"".join(_op_int(int(s)) for s in arr.shape) + b"t"
    ops += b"(" + b"".join(_op_int(s) for s in strides) + b"t"
    ops += b"\x89" + _op_global("collections", "OrderedDict") + b")R"
    return ops + b"tR"


def _dump_reference_pickle(embeddings: dict[str, np.ndarray]) -> bytes:
    """Protocol-4 pickle of ``{instruction: torch tensor}`` written opcode by opcode (no torch import)."""
    body = b"\x80\x04}"
    if embeddings:
        body += b"("
        for key, value in embeddings.items():
            body += _op_str(key) + _tensor_pickle_ops(np.asarray(value))
        body += b"u"
    return body + b"."


def save_t5_embeddings(embeddings: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """Write embeddings in the format named by the extension (see the module docstring)."""
    path = os.fspath(path)
    ext = _ext(path)
    clean = {str(k): np.asarray(v) for k, v in embeddings.items()}
    if ext not in (*_PICKLE_EXTS, ".safetensors", ".npz"):
        raise ValueError(f"unknown T5 embeddings format {ext!r} for {path} (use .pkl, .safetensors or .npz)")
    if ext in _PICKLE_EXTS:
        atomic_write_bytes(path, _dump_reference_pickle(clean))
        return
    with atomic_path(path) as tmp:
        if ext == ".safetensors":
            from safetensors.numpy import save_file

            save_file(
                {k: v.astype(np.float32) for k, v in clean.items()}, tmp, metadata={"format": _SAFETENSORS_FORMAT}
            )
        else:
            with open(tmp, "wb") as f:
                np.savez(f, **{k: v.astype(np.float32) for k, v in clean.items()})


def squeeze_embedding(arr: np.ndarray) -> np.ndarray:
    """``(1, L, D)`` or ``(L, D)`` -> float32 ``(L, D)`` (the sample's ``t5_text_embeddings``)."""
    if arr.ndim == 3:
        arr = arr[0]
    return np.asarray(arr, dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# Computing embeddings (optional torch + transformers)
# ----------------------------------------------------------------------------------------------


def compute_t5_embeddings(
    instructions: Sequence[str],
    encoder: Any,
    tokenizer: Callable[..., Any],
    *,
    max_length: int = 512,
    batch_size: int = 8,
    device: str = "cpu",
) -> dict[str, np.ndarray]:
    """``{instruction: float32 (1, max_length, D)}`` from a transformers ``T5EncoderModel``.

    Tokens are padded/truncated to ``max_length``; outputs at padded positions are zeroed (the
    reference's ``get_text_embedding``). ``tokenizer`` is called like a transformers tokenizer:
    ``tokenizer(list_of_str, return_tensors="pt", padding="max_length", truncation=True,
    max_length=max_length)`` and must return ``input_ids`` and ``attention_mask``.
    """
    import torch

    out: dict[str, np.ndarray] = {}
    items = list(dict.fromkeys(instructions))
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        enc = tokenizer(batch, return_tensors="pt", padding="max_length", truncation=True, max_length=max_length)
        ids = enc["input_ids"].to(device)
        mask = enc["attention_mask"].to(device)
        with torch.no_grad():
            hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        hidden = hidden.float() * mask[..., None].to(hidden.dtype).float()
        for text, row in zip(batch, hidden.cpu().numpy()):
            out[text] = row[None].astype(np.float32)
    return out


def load_t5_encoder(model: str, device: str = "cpu") -> tuple[Any, Any]:
    """``(encoder, tokenizer)`` of a transformers T5 model (a hub name or a local directory) on ``device``
    (``"auto"``: CUDA when torch sees a GPU); a missing ``torch`` extra is a ``DataError`` saying how to
    install it."""
    try:
        import torch
        from transformers import AutoTokenizer, T5EncoderModel
    except ImportError as e:
        raise DataError(f"the T5 encoder {model!r} needs the torch extra: pip install -e '.[torch]' ({e})") from e
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        tokenizer = AutoTokenizer.from_pretrained(model)
        encoder = T5EncoderModel.from_pretrained(model).to(device).eval()
    except OSError as e:  # not a local directory and not downloadable
        raise DataError(f"T5 encoder {model!r}: cannot load it ({str(e).splitlines()[0]})") from e
    return encoder, tokenizer


def t5_text_encoder(
    model: str, *, max_length: int = 512, dim: int | None = None, device: str = "auto"
) -> Callable[[str], np.ndarray]:
    """A function ``text -> (max_length, D)`` float32 embedding with the T5 encoder ``model``, computed
    as ``compute`` does (for instructions a checkpoint's table lacks). ``dim``: the width the policy
    expects, checked once here."""
    encoder, tokenizer = load_t5_encoder(model, device)
    device = str(encoder.device)
    width = int(encoder.config.d_model)
    if dim is not None and width != dim:
        raise DataError(f"T5 encoder {model!r} gives {width}-dim embeddings; the policy was trained on {dim}")

    def encode(text: str) -> np.ndarray:
        emb = compute_t5_embeddings([text], encoder, tokenizer, max_length=max_length, batch_size=1, device=device)
        return emb[text][0]

    return encode


def _list_instructions(kind: str, data_dir: str, rollout_data_dir: str) -> list[str]:
    from cosmos_policy_jax.data.registry import list_instructions

    return list_instructions(kind, data_dir, rollout_data_dir)


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cosmos_policy_jax.data.t5", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("compute", "list"):
        p = sub.add_parser(name)
        p.add_argument("--kind", default="libero", choices=("libero", "robocasa", "aloha"))
        p.add_argument("--data_dir", default="")
        p.add_argument("--rollout_data_dir", default="")
        p.add_argument("--from_dataset", default="", help="a LeRobot dataset root: its task strings (overrides --kind)")
        if name == "compute":
            p.add_argument("--out", required=True, help="output file (.pkl, .safetensors or .npz)")
            p.add_argument("--model", default="google-t5/t5-11b")
            p.add_argument("--max_length", type=int, default=512)
            p.add_argument("--batch_size", type=int, default=4)
            p.add_argument("--device", default="cuda")
            p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"), help="stored dtype")
    conv = sub.add_parser("convert")
    conv.add_argument("src")
    conv.add_argument("dst")
    args = parser.parse_args(list(argv) if argv is not None else None)

    try:
        if args.command == "convert":
            save_t5_embeddings(load_t5_embeddings(args.src), args.dst)
            print(f"wrote {args.dst}")
            return 0
        if args.from_dataset:
            from cosmos_policy_jax.data.lerobot import list_instructions

            instructions = list_instructions(args.from_dataset, args.rollout_data_dir)
        elif not args.data_dir:
            parser.error("--data_dir or --from_dataset is required")
        else:
            instructions = _list_instructions(args.kind, args.data_dir, args.rollout_data_dir)
        if args.command == "list":
            print("\n".join(instructions))
            return 0
        encoder, tokenizer = load_t5_encoder(args.model, args.device)
        emb = compute_t5_embeddings(
            instructions, encoder, tokenizer, max_length=args.max_length, batch_size=args.batch_size, device=args.device
        )
        if args.dtype == "bfloat16":
            emb = {k: v.astype(ml_dtypes.bfloat16) for k, v in emb.items()}
        save_t5_embeddings(emb, args.out)
        print(f"wrote {len(emb)} embeddings to {args.out}")
        return 0
    except (DataError, OSError, ValueError) as e:  # bad input or an unwritable output: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
