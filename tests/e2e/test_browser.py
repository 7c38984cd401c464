"""The demo page in headless Chromium against a real SFU with the shipped model.

Ada joins through the page (fake microphone: real speech in restaurant noise); Bob is a real
aiortc client of the room protocol that publishes a tone. Bob must receive Ada's processed
speech (energy, and the envelope of that very recording), the page must list Bob with a live
level meter, Ada's mode switch must reach the server, the raw/denoised toggle must be
confirmed, and leaving must remove Ada from the room. A screenshot goes to /tmp.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

from denoiser.paths import SHARED_DATA_DIR
from sfu.bench.harness import ToneTrack
from sfu.signalling.ws import WS_HUB
from support.browser.chromium import best_envelope_correlation, launch, noisy_speech_wav
from support.browser.wsclient import WsPeer

# Its noise (restaurant) and control speech come from the training corpus.
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.corpus, pytest.mark.timeout(180)]

SCREENSHOT = Path("/tmp/denoise-sfu-demo.png")
OTHER_SPEECH = SHARED_DATA_DIR / "clean" / "freesound_48k"


PAGE_STATE = """async () => {
  const c = window.denoiseDemo;
  const stats = [];
  if (c.pc) (await c.pc.getStats()).forEach((r) => {
    if (r.type === "inbound-rtp") stats.push([r.mid, r.packetsReceived, r.audioLevel]);
    if (r.type === "outbound-rtp") stats.push(["out", r.mid, r.packetsSent]);
  });
  return {people: [...c.people.entries()].map(([k, p]) => [k, p.mid, p.trackId,
                                                           p.meter.value]),
          mids: c.pc ? c.pc.getTransceivers().map((t) => [t.mid, t.currentDirection]) : [],
          stats, audio: c.audio && c.audio.state,
          status: document.getElementById("status").textContent};
}"""


async def poll(predicate, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def test_demo_page_end_to_end(sfu_factory, model_engine, make_token, tmp_path) -> None:
    playwright_api = pytest.importorskip("playwright.async_api")
    wav, clean = noisy_speech_wav(tmp_path)
    sfu = await sfu_factory(model_engine)
    registry = sfu.ctx.registry
    async with playwright_api.async_playwright() as pw:
        browser = await launch(pw, wav, sfu.base_url)
        page = await browser.new_page(viewport={"width": 900, "height": 820})
        console: list[str] = []
        page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
        bob = WsPeer(sfu.session, sfu.base_url, make_token("demo", "bob"), ToneTrack(440.0))
        try:
            token = make_token("demo", "ada")
            await page.goto(f"{sfu.base_url}/?room=demo&name=ada#token={token}")
            await page.get_by_role("button", name="Join").click()
            try:
                await page.wait_for_selector("#call-panel:not([hidden])", timeout=15_000)
            except Exception as err:
                status = await page.text_content("#status")
                raise AssertionError(f"page did not join: {status!r}; console {console}") from err
            await poll(lambda: "ada" in (registry.get("demo").participants
                                         if registry.get("demo") else {}),
                       what="ada publishing through the page")

            assert (await bob.join())["type"] == "joined"
            await bob.publish()
            await bob.wait_participants(lambda ps: "ada" in ps and ps["ada"]["mid"] is not None)

            # The page lists bob and its meter moves with bob's tone.
            bob_item = page.locator("li.participant[data-identity=bob]")
            await bob_item.wait_for(timeout=15_000)
            try:
                await page.wait_for_function(
                    "() => document.querySelector('li[data-identity=bob] meter').value > 0.3",
                    timeout=15_000)
            except Exception as err:
                state = await page.evaluate(PAGE_STATE)
                raise AssertionError(f"bob's meter never moved: {state} {console}") from err
            await page.wait_for_function(
                "() => document.getElementById('my-meter').value > 0.2", timeout=10_000)

            # Bob hears ada's speech: energy, and the envelope of that recording.
            stream = registry.get("demo").participants["ada"].pipeline.stream
            await asyncio.sleep(2.0)
            mark = bob.mark()
            await asyncio.sleep(6.0)
            heard = bob.received_since("ada", mark)
            pipeline = registry.get("demo").participants["ada"].pipeline
            if heard.size <= 4 * 48_000:
                page_state = await page.evaluate(PAGE_STATE)
                raise AssertionError(
                    f"bob heard {heard.size} samples of ada; bob's audio "
                    f"{ {k: len(v) for k, v in bob.audio.items()} }, participants "
                    f"{bob.participants}, stream {stream.counters}, pipeline "
                    f"{pipeline.counters.as_dict()}, page {page_state}, console {console}")
            assert np.sqrt(np.mean(heard**2)) > 0.005
            match = best_envelope_correlation(heard, clean)
            other, _ = soundfile.read(sorted(OTHER_SPEECH.glob("*.wav"))[0], dtype="float32")
            control = best_envelope_correlation(heard, other)
            print(f"envelope correlation: ada's speech {match:.2f}, other speech {control:.2f};"
                  f" stream counters {stream.counters}")
            assert match > 0.5 and match > control + 0.2, (match, control)
            # Every hop went out denoised or was passed through for a counted reason, and the
            # model kept up for most of them (97 % measured on 2 otherwise idle cores; late hops
            # on a loaded machine pass through, counted).
            assert sum(stream.counters.values()) >= pipeline.counters.hops_out - 2
            assert stream.counters["denoised"] > 0.5 * sum(stream.counters.values()), (
                stream.counters)

            await page.screenshot(path=str(SCREENSHOT), full_page=True)

            # The mode switch reaches the server and bob is told.
            await page.get_by_role("radio", name="Off").check()
            await poll(lambda: registry.get("demo").participants["ada"].mode == "off",
                       what="mode off on the server")
            assert stream.mode == "off"
            await bob.wait_participants(lambda ps: ps["ada"]["mode"] == "off")
            await page.wait_for_function(
                "() => document.getElementById('mode-group').dataset.confirmed === 'off'")

            # Hear bob raw: the server confirms and the button says so.
            button = bob_item.get_by_role("button")
            await button.click()
            await page.wait_for_function(
                "() => document.querySelector('li[data-identity=bob] button')"
                ".getAttribute('aria-pressed') === 'true'", timeout=10_000)
            session = sfu.app[WS_HUB].rooms["demo"]["ada"]
            assert [s.raw for s in session.slots if s.target == "bob"] == [True]

            # Leave: ada is gone from the room, bob is told.
            await page.get_by_role("button", name="Leave").click()
            await bob.wait_participants(lambda ps: set(ps) == {"bob"})
            assert "ada" not in registry.get("demo").participants
            assert not bob.errors, bob.errors
            assert not [c for c in console if c.startswith("error")], console
        finally:
            await bob.close()
            await browser.close()
