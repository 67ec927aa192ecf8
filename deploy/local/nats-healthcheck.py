"""Healthy when this container's nats-server says so on its monitoring port."""

import sys
import urllib.request

try:
    with urllib.request.urlopen("http://127.0.0.1:8222/healthz", timeout=4) as answer:
        sys.exit(0 if answer.status == 200 else 1)
except Exception as e:  # 503 (not ready yet) arrives as an HTTPError
    print(f"nats-server not healthy: {e}")
    sys.exit(1)
