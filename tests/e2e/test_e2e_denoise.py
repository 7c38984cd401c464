"""End to end with the real model: a real aiortc peer publishes real noisy speech (Opus) over
WHIP to a real SFU running the shipped DFN3 in a LocalEngine with default deadlines; a real
WHEP subscriber records what it hears, which is aligned to what was sent and compared with the
clean speech. The server's own hop counters (`/metrics`) must agree.

The same clip goes through four times, one publisher at a time: `mode=off` (what arrives must
be what was sent: the publisher's own Opus, forwarded), the same on a server that re-encodes
mode off (`forward_mode_off=False`: the fair SI-SDR reference, through two lossy Opus hops like
the denoised audio), then `mode=on` and `mode=auto` (denoised)."""

from __future__ import annotations

import pytest

from denoiser.engine import Engine
from sfu.bench.e2e import run_clip
from support.audio import assert_denoised, assert_untouched, noisy_test_clip, report
from support.sfu import SfuFactory

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


async def test_subscriber_hears_the_speaker_denoised(sfu_factory: SfuFactory,
                                                    model_engine: Engine) -> None:
    clip = noisy_test_clip(snr_db=5.0, lead_s=1.5)
    sfu = await sfu_factory(model_engine)  # default hop deadline and latency budget
    off = await run_clip(sfu, clip, "off", room="e2e-off")
    print(report(off))
    assert_untouched(off)
    reencoding = await sfu_factory(model_engine, forward_mode_off=False)
    reference = await run_clip(reencoding, clip, "off", room="e2e-off-reencoded")
    print(report(reference))
    assert_untouched(reference)
    # forwarding is the more transparent of the two (one codec pass fewer)
    assert off.measures.waveform_corr >= reference.measures.waveform_corr
    for mode in ("on", "auto"):
        result = await run_clip(sfu, clip, mode, room=f"e2e-{mode}")
        print(report(result))
        assert_denoised(result, reference)
