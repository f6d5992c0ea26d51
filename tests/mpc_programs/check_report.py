"""The end of every check program: leave MPyC cleanly and print party 0's JSON report."""

from __future__ import annotations

import json

from ppa_kernel.party.secure.runtime import allow_disconnects, mpc


async def finish(report: dict) -> None:
    """Shut MPyC down (peers closing is expected now) and print ``report`` at party 0."""
    allow_disconnects()
    await mpc.shutdown()
    if mpc.pid == 0:
        print(json.dumps(report), flush=True)
