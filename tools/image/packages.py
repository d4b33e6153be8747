"""Prepare a virtualenv for packages installed beside it at run time (the handler chart's `packages`).

The handler chart installs catalog packages when a pod starts, with
``pip install --prefix PREFIX --constraint CONSTRAINTS``, into a volume: the
image's own files stay read-only. This writes, into the virtualenv it runs in:

- a ``.pth`` file naming PREFIX's site-packages, so Python finds what lands
  there (a missing directory is skipped, so the image works without it);
- ``constraints.txt``, the versions the virtualenv holds, so pip reuses them
  and a package that needs other versions fails clearly instead of being
  shadowed by the image's copies.

    python tools/image/packages.py /opt/schedulezero/packages
"""

from __future__ import annotations

import argparse
import pathlib
import subprocess
import sys
import sysconfig


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prefix", type=pathlib.Path, help="where packages are installed at run time")
    args = parser.parse_args()
    prefix = str(args.prefix)
    site = sysconfig.get_path("purelib", vars={"base": prefix, "platbase": prefix})
    pathlib.Path(sysconfig.get_path("purelib"), "schedulezero-packages.pth").write_text(site + "\n")
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pathlib.Path(sys.prefix, "constraints.txt").write_text(frozen)
    return 0


if __name__ == "__main__":
    sys.exit(main())
