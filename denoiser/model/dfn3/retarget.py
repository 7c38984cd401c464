"""Move trained DFN3 weights to another `df_lookahead` without moving the audio in time.

The deep filter's tap o multiplies frame t - (df_order - 1) + df_lookahead + o, so the same
weights in a config with another `df_lookahead` filter other frames: the shipped weights (trained
at 2) put the direct path on tap 2, which at `df_lookahead` 0 is frame t - 2, and the low band
comes out two hops later than `latency_samples` says (measured: SI-SDR against the input peaks at
1440 samples for every look-ahead). Re-indexing the taps keeps each coefficient on the frame it
was trained for; taps that would reach past the new look-ahead are dropped, and new taps with no
trained counterpart are exactly zero. `conv_lookahead` needs no re-indexing (it only changes how
far ahead the network sees; the network was still trained for its own look-ahead).
"""

from __future__ import annotations

import torch
from torch import Tensor


def retarget_df_lookahead(state_dict: dict[str, Tensor], df_order: int, old: int,
                          new: int) -> dict[str, Tensor]:
    """A copy of `state_dict` whose deep-filter taps trained at `df_lookahead` `old` filter the
    same frames at `new`: the coefficient channels of `df_dec.df_out` and `df_dec.df_convp.pw`
    are moved by `old - new` taps."""
    if not (0 <= old < df_order and 0 <= new < df_order):
        raise ValueError(f"df_lookahead must be in 0..{df_order - 1}, got {old} -> {new}")
    out = dict(state_dict)
    if old == new:
        return out
    shift = old - new  # new tap = old tap + shift
    channels = 2 * df_order  # (tap, re/im) pairs, tap-major
    # source[c'] = old channel feeding new channel c', or -1 where the new tap has none.
    source = torch.full((channels,), -1, dtype=torch.long)
    for tap in range(df_order):
        if 0 <= tap - shift < df_order:
            source[2 * tap:2 * tap + 2] = torch.arange(2 * (tap - shift), 2 * (tap - shift) + 2)
    keep = source >= 0

    def move(t: Tensor, dim: int) -> Tensor:
        """Channels along `dim` (a whole multiple of `channels` long, channel fastest)."""
        moved = t.movedim(dim, -1)
        blocks = moved.reshape(*moved.shape[:-1], -1, channels)
        result = torch.zeros_like(blocks)
        result[..., keep] = blocks[..., source[keep]]
        return result.reshape(moved.shape).movedim(-1, dim).contiguous()

    # df_out: GroupedLinear [G, I/G, H/G]; output index g*(H/G) + h = bin * channels + channel,
    # and H/G is a whole number of bins, so each group's outputs hold whole channel blocks.
    weight = out["df_dec.df_out.weight"]
    if weight.shape[2] % channels:
        raise ValueError("df_out groups do not hold whole frequency bins")
    out["df_dec.df_out.weight"] = move(weight, 2)
    # The DF pathway's 1x1 conv: output channels are the coefficient channels.
    out["df_dec.df_convp.pw.weight"] = move(out["df_dec.df_convp.pw.weight"], 0)
    out["df_dec.df_convp.pw.bias"] = move(out["df_dec.df_convp.pw.bias"], 0)
    return out
