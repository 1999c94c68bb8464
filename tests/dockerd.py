"""A private Docker daemon, a local base image and Docker Compose, for tests/test_compose.py.

No image registry is reachable where the tests run, only Debian's and
PyPI's package mirrors, so everything the compose stack needs is made here:

* ``Dockerd`` runs Debian's ``dockerd`` (package ``docker.io``) as a child
  process on a socket of its own, with its own data and exec roots under a
  temporary directory: ``--storage-driver vfs`` (plain directory copies, no
  overlay mounts), ``--iptables=false`` (the machine's firewall is left
  alone) and ``--bridge=none`` (no ``docker0``).  Containers on a compose
  network still reach each other by service name, and reach the host at
  the network's gateway address, which is where the test's HTTP server
  listens; without iptables they reach nothing beyond the host.  The test
  keeps the compose file's own networking rather than ``network_mode:
  host``: Redis is reached as ``redis`` by service name, as users run it,
  and each worker container has an address of its own, by which the test
  server tells their requests apart.  The price is a server on the gateway
  address instead of 127.0.0.1 (``RangeServer(host=...)``).
  ``stop()`` removes every container and network, stops the daemon,
  unmounts what it left mounted and deletes its directories (vfs layers
  are full copies: about 1.5 GB for one compose run).
* ``base_image()`` makes the base the Dockerfile builds on when given
  ``--build-arg BASE=...``: a Debian rootfs of the host's own release made
  with ``debootstrap --variant=minbase`` from Debian's packages, with
  ``python3``, ``python3-venv`` and ``redis-server`` (the same image stands
  in for ``redis:7-alpine``), put in with ``docker import``.  The rootfs
  tarball is cached in ``CACHE_DIR`` (``RANGEFETCH_CI_CACHE``, default
  ``/var/cache/rangefetch-ci``), which outlives the daemon and the
  checkout: only the first run pays for debootstrap.
* ``build_wheelhouse()`` builds rangefetch's wheel and its dependencies'
  on the host, with the host's Debian ``python3``: the very interpreter the
  base image runs (environment markers such as redis's
  ``python_full_version < "3.11.3"`` differ between point releases), so
  ``docker compose build --build-arg WHEELHOUSE=wheelhouse`` installs with
  ``pip install --no-index`` and needs no network.
* ``compose_command()`` is ``docker compose`` where the plugin exists,
  else Debian's ``docker-compose`` (1.29, the one bookworm has).

Everything that means Docker cannot run here (not root, a tool missing,
the daemon not starting or not able to run a container) raises
``Unavailable`` with one line that says why; the test skips with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

CACHE_DIR = Path(os.environ.get("RANGEFETCH_CI_CACHE", "/var/cache/rangefetch-ci"))
DEBIAN_MIRROR = os.environ.get("RANGEFETCH_CI_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_PACKAGES = ("python3", "python3-venv", "redis-server")
HOST_PYTHON = "/usr/bin/python3"  # Debian's, the same build as the base image's python3
# Parts of a minbase rootfs an image does not need (apt's lists and package
# cache, documentation, translations).
PRUNE = ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*", "usr/share/doc/*",
         "usr/share/man/*", "usr/share/locale/*")  # fmt: skip
INSTALL_HINT = "apt-get install docker.io docker-compose debootstrap python3-venv, or: bash tests/run.sh --compose"


class Unavailable(Exception):
    """Docker cannot run on this machine; the message says why in one line."""


def run(
    args: Sequence[str | os.PathLike[str]],
    *,
    timeout: float,
    check: bool = True,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output; with ``check``, a failure is an AssertionError that shows it."""
    try:
        proc = subprocess.run(
            [os.fspath(a) for a in args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{' '.join(map(str, args))}: no end after {timeout:.0f} s\n{exc.stderr!r}") from exc
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, args))}: exit {proc.returncode}\n"
            f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"
        )
    return proc


def require(*tools: str) -> dict[str, str]:
    """The paths of ``tools``; raises ``Unavailable`` naming those that are missing."""
    if os.geteuid() != 0:
        raise Unavailable("dockerd and debootstrap need root")
    found = {tool: shutil.which(tool) for tool in tools}
    missing = [tool for tool, path in found.items() if path is None]
    if missing:
        raise Unavailable(f"{', '.join(missing)} not installed ({INSTALL_HINT})")
    return {tool: path for tool, path in found.items() if path is not None}


def compose_command(env: dict[str, str]) -> list[str]:
    """``docker compose`` if the v2 plugin works, else ``docker-compose``."""
    docker = shutil.which("docker")
    if docker and run([docker, "compose", "version"], timeout=30, check=False, env=env).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy is None:
        raise Unavailable(f"neither `docker compose` nor docker-compose is installed ({INSTALL_HINT})")
    return [legacy]


def host_suite() -> str:
    """The codename of the host's Debian release (``bookworm``), read from /etc/os-release."""
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            key, _, value = line.partition("=")
            if key == "VERSION_CODENAME" and value.strip('"'):
                return value.strip('"')
    raise Unavailable("not a Debian host (no VERSION_CODENAME in /etc/os-release): debootstrap has no suite")


def unmount_under(root: Path) -> None:
    """Lazily unmount everything mounted at or below ``root``, deepest first.

    dockerd leaves its network namespace files mounted under the exec root,
    and a debootstrap that failed half-way can leave ``proc`` and ``sys``
    mounted in its target: removing the directory would walk into them.
    """
    prefix = os.path.realpath(root)
    points = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                points.append(point)
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


def remove_tree(root: Path) -> None:
    """Unmount what is mounted below ``root``, then delete it."""
    unmount_under(root)
    shutil.rmtree(root, ignore_errors=True)


class Dockerd:
    """Debian's dockerd on a private socket: ``with Dockerd() as d: d.docker("info")``.

    ``env`` is the environment for docker and compose commands
    (``DOCKER_HOST`` set to this daemon's socket).  ``start()`` raises
    ``Unavailable`` when the daemon cannot start here.
    """

    def __init__(self) -> None:
        self.tools = require("dockerd", "docker")
        # Short: containerd's socket lives under the exec root, and a unix
        # socket path has at most 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="rfdocker-"))
        self.socket = self.root / "docker.sock"
        self.log = self.root / "dockerd.log"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *, timeout: float = 60) -> Dockerd:
        args = [
            self.tools["dockerd"],
            "--data-root", self.root / "data",
            "--exec-root", self.root / "exec",
            "-H", f"unix://{self.socket}",
            "--pidfile", self.root / "docker.pid",
            "--storage-driver", "vfs",
            "--iptables=false",
            "--bridge=none",
        ]  # fmt: skip
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [os.fspath(a) for a in args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                reason = f"dockerd exited with {self.proc.returncode} at start: {self.last_error()}"
            elif self.socket.exists() and self.docker("version", check=False, timeout=10).returncode == 0:
                return self
            elif time.monotonic() > deadline:
                reason = f"dockerd did not answer within {timeout:.0f} s: {self.last_error()}"
            else:
                time.sleep(0.2)
                continue
            self.stop()
            raise Unavailable(reason)

    def last_error(self) -> str:
        """The daemon log's last error (or last) line, for a one-line reason."""
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        errors = [line for line in lines if "level=error" in line or "level=fatal" in line] or lines
        return errors[-1].strip() if errors else "no log output"

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run([self.tools["docker"], *args], timeout=timeout, check=check, env=self.env)

    def stop(self) -> None:
        """Remove all containers and networks, stop the daemon, delete its directories."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(AssertionError):
                ids = self.docker("ps", "-aq", check=False, timeout=30).stdout.split()
                if ids:
                    self.docker("rm", "-f", "-v", *ids, check=False, timeout=120)
                self.docker("network", "prune", "-f", check=False, timeout=60)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        remove_tree(self.root)

    def __enter__(self) -> Dockerd:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (two runs must not debootstrap into one cache at once)."""
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def base_tarball(cache: Path = CACHE_DIR) -> Path:
    """The cached rootfs tarball of the base image, made with debootstrap if it is not there yet."""
    suite = host_suite()
    key = hashlib.sha256(repr((suite, BASE_PACKAGES, PRUNE, DEBIAN_MIRROR)).encode()).hexdigest()[:12]
    tarball = cache / f"base-{suite}-{key}.tar.gz"
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / ".lock"):
        if tarball.exists():
            return tarball
        debootstrap = require("debootstrap")["debootstrap"]
        work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=cache))
        try:
            rootfs = work / "rootfs"
            run(
                [debootstrap, "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", suite, rootfs,
                 DEBIAN_MIRROR],
                timeout=900,
            )  # fmt: skip
            for pattern in PRUNE:
                for path in rootfs.glob(pattern):
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path)
                    else:
                        path.unlink()
            partial = work / "rootfs.tar.gz"
            run(
                ["tar", "--numeric-owner", "--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*",
                 "-C", rootfs, "-czf", partial, "."],
                timeout=600,
            )  # fmt: skip
            partial.rename(tarball)
        finally:
            remove_tree(work)
    return tarball


def base_image(dockerd: Dockerd, cache: Path = CACHE_DIR) -> str:
    """Import the base rootfs into ``dockerd`` and return its tag (``rangefetch-ci-base:bookworm``)."""
    tag = f"rangefetch-ci-base:{host_suite()}"
    dockerd.docker("import", os.fspath(base_tarball(cache)), tag, timeout=300)
    return tag


def image_python(dockerd: Dockerd, image: str) -> str:
    """The full version of python3 in ``image`` (``3.11.2``), from the first container the daemon runs.

    Raises:
        Unavailable: the daemon cannot run a container (kernel, cgroups, seccomp).
    """
    code = "import platform; print(platform.python_version())"
    proc = dockerd.docker("run", "--rm", "--network", "none", image, "python3", "-c", code, check=False)
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise Unavailable(f"dockerd started but cannot run a container: {reason}")
    return proc.stdout.strip()


def build_wheelhouse(project: Path, *, folder: str = "wheelhouse") -> str:
    """``python3 -m pip wheel . -w wheelhouse`` in ``project``, with the host's Debian python3 in a venv.

    Returns that python3's full version, which must be the base image's.
    """
    if not Path(HOST_PYTHON).exists():
        raise Unavailable(f"{HOST_PYTHON} is missing ({INSTALL_HINT})")
    venv = project.parent / "wheel-venv"
    proc = run([HOST_PYTHON, "-m", "venv", venv], timeout=120, check=False)
    if proc.returncode != 0:
        raise Unavailable(f"{HOST_PYTHON} -m venv fails, python3-venv missing? ({INSTALL_HINT})")
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", ".", "-w", folder], cwd=project,
        timeout=600)  # fmt: skip
    return run([python, "-c", "import platform; print(platform.python_version())"], timeout=30).stdout.strip()


def copy_project(source: Path, dest: Path) -> Path:
    """Copy the files git knows of (tracked, or new and not ignored) from ``source`` to ``dest``.

    That is what a clean clone plus the work in progress holds: no .venv,
    no build/ of an earlier ``pip wheel``, no caches; symlinks stay symlinks.
    """
    listed = run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=source, timeout=60)
    for name in filter(None, listed.stdout.split("\0")):
        src = source / name
        if src.is_symlink():  # rangefetch/producer -> ../producer: a link, as git keeps it
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(src), dest / name)
        elif src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


class Compose:
    """``docker compose`` (or ``docker-compose``) for one project on ``dockerd``.

    The project name and the compose files travel in ``COMPOSE_PROJECT_NAME``
    and ``COMPOSE_FILE``, so each call is the command a user types:
    ``stack("up", "-d", "--scale", "worker=3")`` runs
    ``docker compose up -d --scale worker=3`` in ``project``.
    """

    def __init__(
        self, dockerd: Dockerd, project: Path, *, name: str, files: Sequence[str], env: dict[str, str] | None = None
    ) -> None:
        self.dockerd = dockerd
        self.project = project
        self.name = name
        self.env = {**dockerd.env, "COMPOSE_PROJECT_NAME": name, "COMPOSE_FILE": os.pathsep.join(files), **(env or {})}
        self.command = compose_command(self.env)

    def __call__(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        try:
            return run([*self.command, *args], timeout=timeout, check=check, env=self.env, cwd=self.project)
        finally:  # shown with the test's output: where the time went
            print(f"{time.monotonic() - started:6.1f} s  compose {' '.join(args)}")

    def containers(self, service: str) -> list[str]:
        """Names of the containers of ``service``, running or not, sorted."""
        out = self.dockerd.docker(
            "ps", "-a", "--format", "{{.Names}}",
            "--filter", f"label=com.docker.compose.project={self.name}",
            "--filter", f"label=com.docker.compose.service={service}",
        )  # fmt: skip
        return sorted(out.stdout.split())

    def address(self, container: str) -> str:
        """The IPv4 address of ``container`` on the project's network."""
        fmt = "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}"
        return self.dockerd.docker("inspect", "-f", fmt, container).stdout.strip()

    def gateway(self) -> str:
        """The host's address on the project's default network: where containers reach the host."""
        fmt = "{{range .IPAM.Config}}{{.Gateway}}{{end}}"
        return self.dockerd.docker("network", "inspect", "-f", fmt, f"{self.name}_default").stdout.strip()

    def volume(self, volume: str) -> Path:
        """The host directory that holds the project's named volume ``volume``."""
        fmt = "{{.Mountpoint}}"
        return Path(self.dockerd.docker("volume", "inspect", "-f", fmt, f"{self.name}_{volume}").stdout.strip())

    def down(self) -> None:
        """``docker compose down -v``: containers, network and volumes go."""
        self("down", "-v", "--remove-orphans", "-t", "5", check=False, timeout=180)
