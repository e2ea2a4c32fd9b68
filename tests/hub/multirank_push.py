"""Run by test_hub_ranks.py as two processes (RANK 0 and 1): each calls push_to_hub and prints what it got.

argv: package, public key dir, repo id. Prints one JSON line: {"rank", "env_url", "group_url", "error"}.
"""

from __future__ import annotations

import json
import os
import sys

from shared_core.errors import ConfigError
from shared_core.hub import TenSafeHFHubConfig, TenSafeHFHubIntegration


def main() -> None:
    package, keys, repo_id = sys.argv[1:4]
    hub = TenSafeHFHubIntegration(config=TenSafeHFHubConfig(public_key=keys))
    # 1. RANK/WORLD_SIZE only: the integration forms (and tears down) a gloo group itself.
    env_url = hub.push_to_hub(package, repo_id)
    # 2. An initialised process group, as under torchrun / accelerate.
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))
    group_url = hub.push_to_hub(package, repo_id)
    # 3. A failure on rank 0 reaches every rank instead of leaving them waiting.
    error = None
    try:
        hub.push_to_hub(package + "-missing", repo_id)
    except ConfigError as exc:
        error = str(exc)
    dist.destroy_process_group()
    print(json.dumps({"rank": os.environ["RANK"], "env_url": env_url, "group_url": group_url, "error": error}))


if __name__ == "__main__":
    main()
