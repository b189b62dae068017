"""Fargate entry point of the stream consumer: wiring only, the logic lives in `ohip_relay.stream`.

The container runs `python app.py`; settings come from the task's environment and, for the OHIP
credentials, from Secrets Manager (`OHIP_SECRET_ARN`). SIGTERM (ECS stopping the task) makes the
consumer complete its subscription, drain, checkpoint and exit 0.
"""

from __future__ import annotations

import sys

from ohip_relay.cli import main

if __name__ == "__main__":
    sys.exit(main(["--log-format", "json", "stream"]))
