"""A WHIP publisher and a WHEP subscriber built on GStreamer's webrtcbin (not aiortc, not a
browser), run by tests/e2e/test_gstreamer_interop.py under the system Python (python3-gi).

    /usr/bin/python3 tests/e2e/gst_client.py BASE_URL ROOM PUB_TOKEN SUB_TOKEN IN.wav OUT.raw

Publishes IN.wav (played in real time) as `pub` over WHIP, subscribes to `pub` over WHEP with
the second token, writes what it hears to OUT.raw (48 kHz mono s16le) until the file has been
played and 1.5 s more, DELETEs both sessions, and prints one JSON line: per session the HTTP
status, the exact Content-Type, Location, the answer's a=setup, and webrtcbin's final
connection state. Both webrtcbins keep their default DTLS certificate (GStreamer: RSA 2048).
Only the standard library and GStreamer: this runs outside the project's virtualenv.
"""

from __future__ import annotations

import json
import sys
import threading
import urllib.error
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("GstWebRTC", "1.0")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC  # noqa: E402

OPUS_CAPS = "application/x-rtp,media=audio,encoding-name=OPUS,payload=96,clock-rate=48000"
GATHER_TIMEOUT_S = 5.0
RUN_LIMIT_S = 60.0


def http(method: str, url: str, token: str, body: bytes | None = None) -> dict:
    headers = {"Authorization": f"Bearer {token}"}
    if body is not None:
        headers["Content-Type"] = "application/sdp"
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return {"status": response.status, "headers": dict(response.headers.items()),
                    "body": response.read().decode()}
    except urllib.error.HTTPError as err:
        return {"status": err.code, "headers": dict(err.headers.items()),
                "body": err.read().decode()}


class Session:
    """One webrtcbin that offers, gathers all its candidates, POSTs the offer, applies the
    201's answer (non-trickle, as the server is)."""

    def __init__(self, name: str, webrtc: Gst.Element, url: str, token: str, base: str) -> None:
        self.name, self.webrtc, self.url, self.token, self.base = name, webrtc, url, token, base
        self.result: dict = {"status": None}
        self.location: str | None = None
        self.posted = threading.Event()
        self._candidates: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        self._sent = False
        webrtc.connect("on-negotiation-needed", self._on_negotiation_needed)
        webrtc.connect("on-ice-candidate", self._on_ice_candidate)
        webrtc.connect("notify::ice-gathering-state", self._on_gathering)

    def _on_negotiation_needed(self, webrtc: Gst.Element) -> None:
        promise = Gst.Promise.new_with_change_func(self._on_offer, None)
        webrtc.emit("create-offer", None, promise)

    def _on_offer(self, promise: Gst.Promise, _data: object) -> None:
        reply = promise.get_reply()
        offer = reply.get_value("offer")
        self.webrtc.emit("set-local-description", offer, Gst.Promise.new())
        GLib.timeout_add(int(GATHER_TIMEOUT_S * 1000), self._send)  # in case COMPLETE lags

    def _on_ice_candidate(self, _webrtc: Gst.Element, mline: int, candidate: str) -> None:
        with self._lock:
            self._candidates.append((mline, candidate))

    def _on_gathering(self, webrtc: Gst.Element, _pspec: object) -> None:
        state = webrtc.get_property("ice-gathering-state")
        if state == GstWebRTC.WebRTCICEGatheringState.COMPLETE:
            GLib.idle_add(self._send)

    def _offer_text(self) -> str:
        """The local description with every gathered candidate in its m-section."""
        sdp = self.webrtc.get_property("local-description").sdp.as_text()
        if "a=candidate" in sdp:
            return sdp
        with self._lock:
            lines = [f"a={c}" for _, c in self._candidates]
        head, sep, media = sdp.partition("\r\nm=")
        first, _, rest = media.partition("\r\n")
        return head + sep + first + "\r\n" + "".join(f"{line}\r\n" for line in lines) + rest

    def _send(self) -> bool:
        if self._sent:
            return False
        self._sent = True
        reply = http("POST", self.url, self.token, self._offer_text().encode())
        headers = {k.lower(): v for k, v in reply["headers"].items()}
        self.location = headers.get("location")
        setup = [line for line in reply["body"].splitlines() if line.startswith("a=setup:")]
        self.result = {"status": reply["status"], "content_type": headers.get("content-type"),
                       "location": self.location, "etag": headers.get("etag"),
                       "answer_setup": setup[:1], "error": None if reply["status"] == 201
                       else reply["body"][:300]}
        if reply["status"] == 201:
            _ok, message = GstSdp.SDPMessage.new_from_text(reply["body"])
            answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER,
                                                            message)
            self.webrtc.emit("set-remote-description", answer, Gst.Promise.new())
        self.posted.set()
        return False

    def delete(self) -> int | None:
        if not self.location:
            return None
        return http("DELETE", self.base + self.location, self.token)["status"]

    def state(self) -> str:
        return self.webrtc.get_property("connection-state").value_nick


def main() -> int:
    base, room, pub_token, sub_token, wav, out = sys.argv[1:7]
    Gst.init(None)
    loop = GLib.MainLoop()

    publisher = Gst.parse_launch(
        f"filesrc location={wav} ! wavparse ! identity name=clock sync=true ! audioconvert ! "
        "audioresample ! audio/x-raw,rate=48000,channels=1 ! opusenc bitrate=64000 ! "
        f"rtpopuspay pt=96 ! {OPUS_CAPS} ! webrtcbin name=webrtc bundle-policy=max-bundle")
    pub = Session("whip", publisher.get_by_name("webrtc"), f"{base}/whip/{room}?mode=on",
                  pub_token, base)

    subscriber = Gst.Pipeline.new("subscriber")
    sub_webrtc = Gst.ElementFactory.make("webrtcbin", "webrtc")
    sub_webrtc.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
    subscriber.add(sub_webrtc)
    sub = Session("whep", sub_webrtc, f"{base}/whep/{room}/pub", sub_token, base)

    def on_pad(_webrtc: Gst.Element, pad: Gst.Pad) -> None:
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        sink = Gst.parse_bin_from_description(
            "rtpopusdepay ! opusdec ! audioconvert ! audioresample ! "
            f"audio/x-raw,format=S16LE,rate=48000,channels=1 ! filesink location={out}", True)
        subscriber.add(sink)
        sink.sync_state_with_parent()
        pad.link(sink.get_static_pad("sink"))

    sub_webrtc.connect("pad-added", on_pad)

    def start_subscriber() -> bool:
        if pub.result.get("status") == 201:
            sub_webrtc.emit("add-transceiver", GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY,
                            Gst.Caps.from_string(OPUS_CAPS))
            subscriber.set_state(Gst.State.PLAYING)
        else:
            GLib.idle_add(loop.quit)
        return False

    def watch_publisher() -> None:
        pub.posted.wait(RUN_LIMIT_S)
        GLib.idle_add(start_subscriber)

    def on_file_end(_pad: Gst.Pad, info: Gst.PadProbeInfo) -> Gst.PadProbeReturn:
        # webrtcbin's network sinks never post EOS on the bus: the file's end is seen here.
        event = info.get_event()
        if event is not None and event.type == Gst.EventType.EOS:
            GLib.timeout_add(1500, lambda: loop.quit() or False)
        return Gst.PadProbeReturn.OK

    publisher.get_by_name("clock").get_static_pad("src").add_probe(
        Gst.PadProbeType.EVENT_DOWNSTREAM, on_file_end)

    def on_message(_bus: Gst.Bus, message: Gst.Message) -> None:
        if message.type == Gst.MessageType.ERROR:
            err, debug = message.parse_error()
            print(f"gstreamer error: {err.message} ({debug})", file=sys.stderr)
            loop.quit()

    for pipeline in (publisher, subscriber):
        bus = pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message", on_message)
    threading.Thread(target=watch_publisher, daemon=True).start()
    GLib.timeout_add(int(RUN_LIMIT_S * 1000), lambda: loop.quit() or False)
    publisher.set_state(Gst.State.PLAYING)
    loop.run()

    states = {"whip": pub.state(), "whep": sub.state()}
    deletes = {"whep": sub.delete(), "whip": pub.delete()}
    for pipeline in (subscriber, publisher):
        pipeline.set_state(Gst.State.NULL)
    print(json.dumps({"whip": {**pub.result, "final_state": states["whip"],
                               "delete": deletes["whip"]},
                      "whep": {**sub.result, "final_state": states["whep"],
                               "delete": deletes["whep"]}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
