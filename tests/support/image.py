"""The built images (``tools/image/build.sh``), run as a pod would run them, without a container engine.

A container is created from the image with buildah and its root filesystem
mounted; a command then runs in it through ``chroot`` inside a mount
namespace of its own: as user 10001, the root filesystem read-only, ``/tmp`` a
fresh tmpfs (the chart's emptyDir), ``/proc`` and ``/dev`` from the host, and
the host's network (so the tests reach what it serves on 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import pathlib
import subprocess
from collections.abc import Iterator, Mapping

SCHEDULEZERO = "localhost/schedulezero:test"
VENDOR = "localhost/acme-processor-handler:test"
BUILDAH = ["buildah", "--storage-driver", "vfs"]
USER = "10001:10001"
PATH = "/opt/schedulezero/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_ENTER = f"""
set -e
root=$1; shift
mount --bind "$root" "$root"
mount -o remount,bind,ro "$root"
mount -t proc proc "$root/proc"
mount -t tmpfs -o size=64m,mode=1777 tmpfs "$root/tmp"
mount --bind /dev "$root/dev"
while [ "$1" != -- ]; do
  mkdir -p "$root$2"; mount --bind -o ro "$1" "$root$2"; shift 2
done
shift
exec chroot --userspec={USER} "$root" "$@"
"""


def buildah(*args: str) -> str:
    return subprocess.run([*BUILDAH, *args], capture_output=True, text=True, check=True).stdout.strip()


@contextlib.contextmanager
def rootfs(image: str) -> Iterator[pathlib.Path]:
    """The image's root filesystem, in a container removed afterwards."""
    container = buildah("from", "--pull-never", image)
    try:
        yield pathlib.Path(buildah("mount", container))
    finally:
        buildah("rm", container)


def command(
    root: pathlib.Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    binds: Mapping[str, str] | None = None,
) -> list[str]:
    """``args`` run in ``root`` as a pod runs the image; ``binds``: host directory -> path inside, read-only."""
    mounts = [part for source, target in (binds or {}).items() for part in (source, target)]
    variables = {"PATH": PATH, "HOME": "/tmp", "PYTHONUNBUFFERED": "1", **(env or {})}
    environment = [f"{name}={value}" for name, value in variables.items()]
    return [
        "unshare", "--mount", "--propagation", "private", "bash", "-c", _ENTER, "enter", str(root),
        *mounts, "--", "/usr/bin/env", "-i", *environment, *args,
    ]  # fmt: skip
