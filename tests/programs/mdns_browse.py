"""A stranger on the LAN: browse `_p2pgate._tcp.local.` for SECONDS and print every
service's name, host and TXT record as JSON (IP SECONDS)."""

from __future__ import annotations

import json
import sys
import time

from zeroconf import IPVersion, ServiceBrowser, ServiceStateChange, Zeroconf

SERVICE = "_p2pgate._tcp.local."


def main(ip: str, seconds: str = "4") -> None:
    zc = Zeroconf(interfaces=[ip], ip_version=IPVersion.V4Only)
    found: dict[str, None] = {}

    def on_change(zeroconf: Zeroconf, service_type: str, name: str,
                  state_change: ServiceStateChange) -> None:
        found[name] = None

    browser = ServiceBrowser(zc, SERVICE, handlers=[on_change])
    time.sleep(float(seconds))
    out = []
    for name in found:
        info = zc.get_service_info(SERVICE, name, 3000)
        if info:
            out.append({"name": name, "server": info.server,
                        "txt": {k.decode(): (v or b"").decode()
                                for k, v in info.properties.items()}})
    browser.cancel()
    zc.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:])
