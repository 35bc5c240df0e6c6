"""Test launcher: the real ``padnet`` CLI with a pause before the N-th rename onto a file called NAME.

    PADNET_TEST_PAUSE_WRITE=NAME@N python tests/pause_writes.py train --config ...

Every atomic write in padnet (``padnet.files.atomic_write_bytes``) writes a temp file, fsyncs it, then
renames it onto its target with ``os.replace``; this launcher wraps ``os.replace`` so that the N-th
rename onto NAME first prints ``padnet test hook: paused writing NAME`` to stderr and sleeps (the test
kills the process there). The temp file is then complete and the target still the old one: the moment a
crash is most likely to tear a file. Only tests start it; padnet itself carries no hook.
"""

from __future__ import annotations

import os
import sys
import time


def main() -> int:
    target, _, nth = os.environ["PADNET_TEST_PAUSE_WRITE"].partition("@")
    real_replace = os.replace
    count = 0

    def replace(src, dst, *args, **kwargs):
        nonlocal count
        if os.path.basename(os.fspath(dst)) == target:
            count += 1
            if count == int(nth or 1):
                print(f"padnet test hook: paused writing {target}", file=sys.stderr, flush=True)
                time.sleep(600)
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace
    from padnet.cli import main as cli

    return cli(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
