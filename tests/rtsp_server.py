"""A real RTSP server for the tests (GStreamer's gst-rtsp-server). Run with Debian's python3:

    /usr/bin/python3 tests/rtsp_server.py PORT MOUNT 'LAUNCH LINE' [record]

Prints "ready" once it listens. With ``record`` the mount takes publishers (ANNOUNCE, RECORD) instead
of serving: the launch line's elements named depay0, depay1, ... receive the published streams.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

Gst.init(None)
port, mount, launch = sys.argv[1], sys.argv[2], sys.argv[3]
record = len(sys.argv) > 4 and sys.argv[4] == "record"
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
factory = GstRtspServer.RTSPMediaFactory()
factory.set_launch(launch)
factory.set_shared(True)
if record:
    factory.set_transport_mode(GstRtspServer.RTSPTransportMode.RECORD)
server.get_mount_points().add_factory(mount, factory)
if server.attach(None) == 0:
    print("failed to listen", flush=True)
    sys.exit(1)
print("ready", flush=True)
GLib.MainLoop().run()
