import os
import sys

# `python -m padnet` puts the current directory first on sys.path; padnet never imports from it (a
# `datasets.py` or a plug-in lying where the user stands would run): plug-ins are named explicitly
# (padnet.plugins) and optional dependencies come from the installed environment.
sys.path[:] = [p for p in sys.path if p not in ("", ".") and os.path.abspath(p) != os.getcwd()]

from padnet.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
