#!/usr/bin/env bash
# System packages the tests use: a real redis-server, Debian's Chromium (driven by Playwright
# as the system browser: no browser download), and GStreamer with webrtcbin and its Python
# bindings (the non-browser WebRTC client of tests/e2e/test_gstreamer_interop.py, run by the
# system python3).
set -euo pipefail
need=()
command -v redis-server >/dev/null || need+=(redis-server)
command -v chromium >/dev/null || need+=(chromium)
gst_ok() {
  /usr/bin/python3 -c "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstWebRTC', '1.0'); gi.require_version('GstSdp', '1.0'); from gi.repository import Gst; Gst.init(None); assert all(Gst.ElementFactory.find(e) for e in ('webrtcbin', 'opusenc', 'opusdec', 'rtpopuspay', 'nicesrc', 'wavparse', 'dtlssrtpenc'))" 2>/dev/null
}
gst_ok || need+=(python3-gi gir1.2-gstreamer-1.0 gir1.2-gst-plugins-base-1.0
                 gir1.2-gst-plugins-bad-1.0 gstreamer1.0-tools gstreamer1.0-plugins-base
                 gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-nice)
if ((${#need[@]})); then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
