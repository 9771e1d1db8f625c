#!/usr/bin/env bash
# Debian packages the tests need: GStreamer's RTSP server and plugins (tests/rtsp_server.py runs with
# Debian's /usr/bin/python3), nginx with its RTMP module (a real RTMP server for the streaming
# tests), Chromium (a real headless browser for the live preview's tests) and srt-tools
# (srt-live-transmit: SRT inputs and outputs, and the SRT tests' listener). Does nothing when they
# are already there.
set -euo pipefail
pkgs=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
      gstreamer1.0-plugins-ugly gstreamer1.0-tools nginx-light libnginx-mod-rtmp chromium
      srt-tools)
if /usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0')" 2>/dev/null \
   && command -v gst-inspect-1.0 >/dev/null && gst-inspect-1.0 x264enc >/dev/null 2>&1 \
   && [ -x /usr/sbin/nginx ] && [ -f /usr/lib/nginx/modules/ngx_rtmp_module.so ] \
   && command -v chromium >/dev/null && command -v srt-live-transmit >/dev/null; then
  exit 0
fi
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
