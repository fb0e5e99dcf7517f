"""Cached Debian bookworm images for lab servers, stored as stacked overlayfs layers.

An image is a chain of layer directories: the `debootstrap --variant=minbase` tree at the bottom, then
one directory per package set (the upper dir of the overlay the packages were installed through; its
whiteouts and opaque markers are read correctly when it serves as a lower layer, as Docker's overlay2
does). A server mounts the chain read-only under a fresh upper dir, so it starts in about a second and
never changes the cache.

Layers live under the cache dir (`ISPCP_LAB_CACHE`, default /var/cache/ispcp-recovery/lab), named by
image name + a hash of everything that shapes them (parent, packages, preseeds, recipe version). A layer
is built under `<dir>.tmp` and renamed into place when complete, under a lock file, so two test processes
never build the same layer at once and an interrupted build is never reused.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ispcp_lib.lab.host import NamespaceHost

DEFAULT_CACHE = "/var/cache/ispcp-recovery/lab"
SUITE = "bookworm"
HOST_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
# Nothing in a lab image may start a service while packages install: the servers start their own.
POLICY_RC_D = "#!/bin/sh\nexit 101\n"
# Translations are never read in the lab; leaving them out makes every layer smaller. (Man pages stay:
# maildrop's postinst registers man pages as update-alternatives slaves and fails without them.)
DPKG_EXCLUDES = "path-exclude=/usr/share/locale/*\npath-include=/usr/share/locale/locale.alias\n"


def cache_dir() -> Path:
    path = Path(os.environ.get("ISPCP_LAB_CACHE") or DEFAULT_CACHE)
    path.mkdir(parents=True, exist_ok=True)
    return path


def log(msg: str) -> None:
    # The clock time shows where a lab run spends its minutes (the upgrade chain runs in its own thread).
    print(f"[lab {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass(frozen=True)
class ImageSpec:
    """One layer: packages installed over the parent image (None = the debootstrap base)."""

    name: str
    packages: tuple[str, ...] = ()
    preseed: tuple[str, ...] = ()  # debconf-set-selections lines
    parent: ImageSpec | None = None
    # Runs inside the building host after the packages; its behaviour is keyed by `recipe`.
    post: Callable[[NamespaceHost], None] | None = field(default=None, compare=False)
    recipe: str = "1"
    # A layer built with services running (ispcp-setup) gets a private network with this address;
    # package layers keep the host's network, which apt needs.
    address: str = ""
    hostname: str = "srv01.ispcp.test"

    def key(self) -> str:
        data = {
            "name": self.name,
            "packages": sorted(self.packages),
            "preseed": list(self.preseed),
            "recipe": self.recipe,
            "address": self.address,
            "hostname": self.hostname,
            "parent": self.parent.key() if self.parent else base_key(),
        }
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]

    def dirname(self) -> str:
        return f"{self.name}-{self.key()}"


def mirror() -> str:
    """The Debian mirror this machine's apt uses (debootstrap must use the same one)."""
    text = HOST_SOURCES.read_text() if HOST_SOURCES.exists() else ""
    for block in text.split("\n\n"):
        if re.search(rf"^Suites:.*\b{SUITE}\b(?!-)", block, re.M):
            m = re.search(r"^URIs:\s*(\S+)", block, re.M)
            if m:
                return m.group(1)
    return "http://deb.debian.org/debian"


def base_key() -> str:
    return hashlib.sha256(f"minbase|{SUITE}|{mirror()}|{DPKG_EXCLUDES}|3".encode()).hexdigest()[:12]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_tools(*tools: tuple[str, str]) -> None:
    """Install missing Debian packages on the host (pairs of binary, package): the tests set up what they need."""
    missing = [pkg for binary, pkg in tools if shutil.which(binary) is None]
    if missing:
        log(f"installing host packages: {' '.join(missing)}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True, env=env)


def _layers_root() -> Path:
    path = cache_dir() / "layers"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _configure_base(root: Path) -> None:
    """Apt inside the image uses the host's mirror and settings; no service starts, no question is asked."""
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    if HOST_SOURCES.exists():
        (root / "etc/apt/sources.list.d").mkdir(parents=True, exist_ok=True)
        shutil.copy2(HOST_SOURCES, root / "etc/apt/sources.list.d/debian.sources")
    else:
        (root / "etc/apt/sources.list").write_text(f"deb {mirror()} {SUITE} main\n")
    # A snapshot mirror's Release files are older than their Valid-Until: the host's apt ignores that too.
    (root / "etc/apt/apt.conf.d/99lab").write_text(
        'Acquire::Check-Valid-Until "false";\nAcquire::Check-Date "false";\n'
        'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n'
    )
    (root / "etc/dpkg/dpkg.cfg.d/01lab-nodoc").write_text(DPKG_EXCLUDES)
    policy = root / "usr/sbin/policy-rc.d"
    policy.write_text(POLICY_RC_D)
    policy.chmod(0o755)
    shutil.copy2("/etc/resolv.conf", root / "etc/resolv.conf")


def ensure_base() -> Path:
    """The debootstrap minbase layer (built once, about 30 s)."""
    final = _layers_root() / f"minbase-{SUITE}-{base_key()}"
    if final.is_dir():
        return final
    with _locked(_layers_root() / f".{final.name}.lock"):
        if final.is_dir():
            return final
        ensure_tools(("debootstrap", "debootstrap"), ("zstd", "zstd"))
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        started = time.monotonic()
        log(f"debootstrap --variant=minbase {SUITE} from {mirror()}")
        subprocess.run(
            ["debootstrap", "--variant=minbase", SUITE, str(tmp), mirror()],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        _unmount_under(tmp)  # debootstrap leaves nothing mounted on success; be sure anyway
        _configure_base(tmp)
        tmp.rename(final)
        log(f"minbase built in {time.monotonic() - started:.0f} s")
    return final


def ensure_image(spec: ImageSpec) -> list[Path]:
    """The layer chain of `spec`, top layer first (the order of overlayfs' lowerdir)."""
    parent_layers = ensure_image(spec.parent) if spec.parent else [ensure_base()]
    final = _layers_root() / spec.dirname()
    if final.is_dir():
        return [final, *parent_layers]
    with _locked(_layers_root() / f".{final.name}.lock"):
        if not final.is_dir():
            _build_layer(spec, parent_layers, final)
    return [final, *parent_layers]


def _build_layer(spec: ImageSpec, lower: list[Path], final: Path) -> None:
    from ispcp_lib.lab.host import NamespaceHost

    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        _unmount_under(tmp)
        shutil.rmtree(tmp)
    started = time.monotonic()
    log(f"building image layer {spec.dirname()} ({len(spec.packages)} packages)")
    # Built with the host's network (apt needs the mirror), in its own pid, mount and UTS namespaces.
    host = NamespaceHost.start(
        lower,
        name=f"build-{spec.name}",
        network=bool(spec.address),
        address=spec.address or "127.0.0.2",
        hostname=spec.hostname,
        state_dir=tmp,
    )
    try:
        if spec.preseed:
            host.exec(["debconf-set-selections"], input="\n".join(spec.preseed) + "\n")
        env = {"DEBIAN_FRONTEND": "noninteractive", "DEBCONF_NONINTERACTIVE_SEEN": "true"}
        if spec.packages:
            host.exec(["apt-get", "update", "-qq"], env=env)
            host.exec(
                ["apt-get", "install", "-y", "-qq", "-o", "Dpkg::Options::=--force-confold", *spec.packages],
                env=env,
                capture=False,
            )
        if spec.post:
            spec.post(host)
        host.exec(["sh", "-c", "apt-get clean; rm -rf /var/lib/apt/lists/* /tmp/* /var/tmp/*"])
        upper = host.upper
        host.stop(keep_upper=True)
        upper.rename(final)
        shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        host.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"layer {final.name} built in {time.monotonic() - started:.0f} s")


def _unmount_under(path: Path) -> None:
    from ispcp_lib.lab.host import unmount_under

    unmount_under(path)


def clear_cache() -> None:
    """Removes every cached layer (for `lab` users who want a cold build)."""
    root = _layers_root()
    for child in root.iterdir():
        if child.is_dir():
            _unmount_under(child)
            shutil.rmtree(child)


# -- the SSH test server ------------------------------------------------------------------------------
PYTHON_WRAPPER = """#!/bin/sh
# Lab server: there is no Python here (ispCP servers need none). Record who tried, then fail as a
# missing command would, so a test can prove nothing ran python on the server.
printf '%s %s %s\\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$0" "$*" >> /var/log/python-attempts.log
echo "$0: not found (no python on this server)" >&2
exit 127
"""


def _python_absent(host: NamespaceHost) -> None:
    """Fails the build if any package brought a Python interpreter in."""
    found = host.sh(
        "ls /usr/bin/python* /usr/local/bin/python* 2>/dev/null; dpkg-query -W -f '${Package} ${Status}\\n' 'python*' "
        "2>/dev/null | grep ' installed$' || true",
        check=False,
    ).stdout.strip()
    if found:
        raise RuntimeError(f"the image must contain no python, found:\n{found}")


def _sshtarget_post(host: NamespaceHost) -> None:
    _python_absent(host)
    for name in ("python", "python2", "python3"):
        path = host.root / "usr/local/bin" / name
        path.write_text(PYTHON_WRAPPER)
        path.chmod(0o755)
    log_file = host.root / "var/log/python-attempts.log"
    log_file.touch()
    log_file.chmod(0o622)  # any user's attempt is recorded; only root reads them


SSHTARGET = ImageSpec(
    name="sshtarget",
    packages=tuple(
        "openssh-server openssh-client rsync mariadb-server mariadb-client perl libcrypt-cbc-perl "
        "libcrypt-blowfish-perl passwd procps postfix findutils tar coreutils bzip2 gzip".split()
    ),
    preseed=(
        "postfix postfix/main_mailer_type select Local only",
        "postfix postfix/mailname string srv01.ispcp.test",
    ),
    post=_sshtarget_post,
    recipe="1",
)
