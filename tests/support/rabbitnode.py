"""A private, throw-away RabbitMQ node for tests that stop, kill or restart "the broker".

The machine may run a shared broker (``rabbit@localhost`` on 5672).  That one is never touched:
this module starts its own node with its own name, ports, data directory, configuration files
and Erlang cookie, and only ever signals processes whose environment carries its own node name.

Isolation, in short:

* data directory ``/tmp/bridgetest-rabbitmq-<pid>-XXXX`` (owned by the ``rabbitmq`` user when
  we run as root; the server is started as that user, the CLI runs as us);
* ``HOME`` of both the server and every ``rabbitmqctl`` call is the data directory, which holds
  a freshly generated ``.erlang.cookie`` -- so the cookie always matches, whatever exists (or
  not) in ``/var/lib/rabbitmq`` or ``/root``, and nothing is ever written to ``/root``;
* ``RABBITMQ_CONF_ENV_FILE``, ``RABBITMQ_CONFIG_FILE``, ``RABBITMQ_ADVANCED_CONFIG_FILE`` and
  ``RABBITMQ_ENABLED_PLUGINS_FILE`` point into the data directory, so nothing from
  ``/etc/rabbitmq`` (which configures the shared node's name and listener) is read;
* the scripts are run from ``/usr/lib/rabbitmq/bin`` (not the ``/usr/sbin`` wrappers, which
  ``su`` to ``rabbitmq`` and force ``HOME=/var/lib/rabbitmq``); the privilege drop is done here;
* ports: 5673/25673 when free, else the next free pair; ports already claimed by another live
  test session (even while its broker is stopped) are skipped; the node name contains our pid.

Everything here is synchronous (``subprocess``); from async tests call it through
``asyncio.to_thread``.  Use the session fixture ``own_rabbit``::

    from tests.support.rabbitnode import own_rabbit  # noqa: F401  (in a conftest or test module)

The repository root must be on ``sys.path`` (pytest ``pythonpath = ["."]``).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import itertools
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import string
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

__all__ = [
    "AmqpProbeError",
    "RabbitCluster",
    "RabbitCtlError",
    "RabbitNode",
    "RabbitNodeError",
    "amqp_probe",
    "own_cluster",
    "own_rabbit",
    "rabbitmq_available",
]

SHARED_NODE = "rabbit@localhost"
TMP_ROOT = Path("/tmp")
DIR_PREFIX = "bridgetest-rabbitmq-"
LOCK_FILE = TMP_ROOT / "bridgetest-rabbitmq.lock"
PORTS_FILE = "ports.json"
OWNER_ENV = "BRIDGETEST_RABBIT_OWNER"  # pid of the test process that started the node
DIR_ENV = "BRIDGETEST_RABBIT_DIR"  # its data directory
SBIN_ENV = "BRIDGETEST_RABBITMQ_SBIN"  # optional: directory holding rabbitmq-server/rabbitmqctl
RABBITMQ_USER = "rabbitmq"
HOST = "127.0.0.1"

_SBIN_CANDIDATES = ("/usr/lib/rabbitmq/bin", "/usr/local/lib/rabbitmq/bin")
_PREFERRED_PORTS = [(5673 + i, 25673 + i) for i in range(20)]
# Never hand out: AMQP, epmd, management, the shared node's dist port, the CLI's dist range.
_RESERVED_PORTS = frozenset({5672, 4369, 15672, 25672, *range(35672, 35683)})


class RabbitNodeError(RuntimeError):
    """The private node could not be started, reached or stopped."""


class RabbitCtlError(RabbitNodeError):
    """A ``rabbitmqctl`` call exited non-zero."""

    def __init__(self, cmd: list[str], returncode: int, stdout: str, stderr: str) -> None:
        self.cmd = cmd
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        super().__init__(
            f"{' '.join(cmd)} exited {returncode}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        )


class AmqpProbeError(RabbitNodeError):
    """The AMQP handshake did not complete."""


# --------------------------------------------------------------------------------------------
# AMQP 0-9-1 probe: a real connection (PLAIN auth, Connection.Open of the vhost), then a clean
# Connection.Close.  Plain sockets on purpose: usable from sync code, in any thread.
# --------------------------------------------------------------------------------------------

_FRAME_METHOD = 1
_FRAME_HEARTBEAT = 8
_FRAME_END = 0xCE


def _shortstr(value: bytes) -> bytes:
    return struct.pack("!B", len(value)) + value


def _longstr(value: bytes) -> bytes:
    return struct.pack("!I", len(value)) + value


def _method_frame(class_id: int, method_id: int, args: bytes) -> bytes:
    payload = struct.pack("!HH", class_id, method_id) + args
    return struct.pack("!BHI", _FRAME_METHOD, 0, len(payload)) + payload + bytes([_FRAME_END])


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise AmqpProbeError("connection closed by the server during the AMQP handshake")
        buf += chunk
    return bytes(buf)


def _expect_method(sock: socket.socket, class_id: int, method_id: int) -> bytes:
    while True:
        header = _recv_exact(sock, 7)
        if header.startswith(b"AMQP"):
            raise AmqpProbeError(f"server rejected the protocol header: {header!r}")
        frame_type, _channel, size = struct.unpack("!BHI", header)
        payload = _recv_exact(sock, size)
        if _recv_exact(sock, 1)[0] != _FRAME_END:
            raise AmqpProbeError("malformed AMQP frame")
        if frame_type == _FRAME_HEARTBEAT:
            continue
        if frame_type != _FRAME_METHOD:
            raise AmqpProbeError(f"unexpected AMQP frame type {frame_type}")
        got = struct.unpack("!HH", payload[:4])
        if got == (class_id, method_id):
            return payload[4:]
        if got == (10, 50):  # Connection.Close from the server
            (code,) = struct.unpack("!H", payload[4:6])
            text = payload[7 : 7 + payload[6]].decode(errors="replace")
            raise AmqpProbeError(f"server closed the connection: {code} {text}")
        raise AmqpProbeError(f"expected method {class_id}.{method_id}, got {got[0]}.{got[1]}")


def amqp_probe(
    host: str,
    port: int,
    *,
    user: str = "guest",
    password: str = "guest",
    vhost: str = "/",
    timeout: float = 5.0,
) -> None:
    """Open (and cleanly close) a real AMQP 0-9-1 connection; raise if that is not possible.

    Raises ``OSError`` when the TCP connection fails and ``AmqpProbeError`` when the broker
    accepts TCP but does not complete the handshake (booting, auth failure, vhost down...).
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        _expect_method(sock, 10, 10)  # Connection.Start
        client_properties = _shortstr(b"connection_name") + b"S" + _longstr(b"bridgetest-probe")
        sock.sendall(
            _method_frame(
                10,
                11,  # Connection.StartOk
                _longstr(client_properties)
                + _shortstr(b"PLAIN")
                + _longstr(b"\0" + user.encode() + b"\0" + password.encode())
                + _shortstr(b"en_US"),
            )
        )
        channel_max, frame_max, _heartbeat = struct.unpack(
            "!HIH",
            _expect_method(sock, 10, 30)[:8],  # Connection.Tune
        )
        sock.sendall(_method_frame(10, 31, struct.pack("!HIH", channel_max, frame_max, 0)))
        sock.sendall(_method_frame(10, 40, _shortstr(vhost.encode()) + _shortstr(b"") + b"\0"))
        _expect_method(sock, 10, 41)  # Connection.OpenOk
        sock.sendall(
            _method_frame(10, 50, struct.pack("!H", 200) + _shortstr(b"probe done") + b"\0" * 4)
        )
        with contextlib.suppress(OSError, AmqpProbeError):
            _expect_method(sock, 10, 51)  # Connection.CloseOk


# --------------------------------------------------------------------------------------------
# processes, ports, directories
# --------------------------------------------------------------------------------------------


def find_rabbitmq_tool(name: str) -> str | None:
    """Path of ``rabbitmq-server``/``rabbitmqctl``, preferring the real scripts over the
    Debian/RPM ``/usr/sbin`` wrappers (those ``su`` to rabbitmq and reset ``HOME``)."""
    dirs = [d for d in (os.environ.get(SBIN_ENV), *_SBIN_CANDIDATES) if d]
    for directory in dirs:
        path = Path(directory) / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return shutil.which(name)


def rabbitmq_available() -> bool:
    return all(find_rabbitmq_tool(t) for t in ("rabbitmq-server", "rabbitmqctl"))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _proc_environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def _beam_processes() -> Iterator[tuple[int, dict[str, str]]]:
    """(pid, environment) of every Erlang VM we may look at."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
        except OSError:
            continue
        if comm.startswith("beam"):
            yield int(entry.name), _proc_environ(int(entry.name))


def _wait_pids_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if _pid_alive(p) and not _is_zombie(p)]
        if not alive:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same flag as the Erlang listener: ignore TIME_WAIT leftovers, collide with listeners.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _kernel_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _global_lock() -> Iterator[None]:
    """Serialises port choice between concurrent test sessions on this machine."""
    fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _dir_owner(path: Path) -> int | None:
    match = re.fullmatch(re.escape(DIR_PREFIX) + r"(\d+)-.*", path.name)
    return int(match.group(1)) if match else None


def _reap_orphans_and_collect_claims() -> set[int]:
    """Remove nodes/directories left by dead test sessions; return ports live ones still use."""
    orphans = []
    for pid, env in _beam_processes():
        owner = env.get(OWNER_ENV)
        if owner and owner.isdigit() and not _pid_alive(int(owner)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                orphans.append(pid)
    _wait_pids_gone(orphans, 10.0)  # so that their ports are free again
    claimed: set[int] = set()
    for path in TMP_ROOT.glob(DIR_PREFIX + "*"):
        owner = _dir_owner(path)
        if owner is None or not path.is_dir():
            continue
        if _pid_alive(owner):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                ports = json.loads((path / PORTS_FILE).read_text())
                claimed.update({int(ports["amqp"]), int(ports["dist"])})
                if ports.get("management"):
                    claimed.add(int(ports["management"]))
        else:
            shutil.rmtree(path, ignore_errors=True)
    return claimed


def _pick_port(claimed: set[int]) -> int:
    """One free port the kernel hands out, claimed by nobody."""
    for _ in range(100):
        port = _kernel_port()
        if port not in claimed | _RESERVED_PORTS:
            return port
    raise RabbitNodeError("could not find a free TCP port")


def _pick_ports(claimed: set[int]) -> tuple[int, int]:
    taken = claimed | _RESERVED_PORTS
    for amqp, dist in _PREFERRED_PORTS:
        if amqp not in taken and dist not in taken and _port_free(amqp) and _port_free(dist):
            return amqp, dist
    for _ in range(100):
        amqp, dist = _kernel_port(), _kernel_port()
        if amqp != dist and not {amqp, dist} & taken:
            return amqp, dist
    raise RabbitNodeError("could not find two free TCP ports")


def new_cookie() -> str:
    """An Erlang cookie: the nodes of one cluster (and their CLI calls) must share one."""
    return "".join(secrets.choice(string.ascii_uppercase) for _ in range(32))


# --------------------------------------------------------------------------------------------
# the node
# --------------------------------------------------------------------------------------------


class RabbitNode:
    """One private RabbitMQ node, started and stopped by the test session that owns it."""

    _seq = itertools.count(1)

    def __init__(
        self,
        *,
        name: str | None = None,
        amqp_port: int | None = None,
        dist_port: int | None = None,
        startup_timeout: float = 120.0,
        cookie: str | None = None,
        management: bool = False,
    ) -> None:
        self._name = name or f"bridgetest-{os.getpid()}-{next(self._seq)}@localhost"
        if self._name == SHARED_NODE or self._name.startswith("rabbit@"):
            raise ValueError(f"refusing to manage {self._name}: that is the shared broker's name")
        self._wanted_ports = (amqp_port, dist_port)
        self._amqp_port: int | None = None
        self._dist_port: int | None = None
        self._cookie = cookie  # the nodes of one cluster share one
        self._management = management  # rabbitmq_management on a port of its own
        self._management_port: int | None = None
        self.data_dir: Path | None = None
        self.startup_timeout = startup_timeout
        #: seconds taken by the last start / stop_app / start_app / restart ...
        self.timings: dict[str, float] = {}
        self._server = find_rabbitmq_tool("rabbitmq-server")
        self._ctl = find_rabbitmq_tool("rabbitmqctl")
        self._run_as: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            with contextlib.suppress(KeyError):
                self._run_as = pwd.getpwnam(RABBITMQ_USER)

    # -- properties ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def host(self) -> str:
        return HOST

    @property
    def port(self) -> int:
        if self._amqp_port is None:
            raise RabbitNodeError("node not started")
        return self._amqp_port

    @property
    def dist_port(self) -> int:
        if self._dist_port is None:
            raise RabbitNodeError("node not started")
        return self._dist_port

    @property
    def management_port(self) -> int:
        if self._management_port is None:
            raise RabbitNodeError("node not started, or started without management")
        return self._management_port

    @property
    def management_url(self) -> str:
        return f"http://{HOST}:{self.management_port}"

    @property
    def amqp_url(self) -> str:
        # guest/guest is only accepted from loopback, which is where we connect from.
        return f"amqp://guest:guest@{HOST}:{self.port}/"

    @property
    def log_file(self) -> Path:
        return self._dir / "log" / f"{self._name}.log"

    @property
    def _dir(self) -> Path:
        if self.data_dir is None:
            raise RabbitNodeError("node not started (or already stopped)")
        return self.data_dir

    def __repr__(self) -> str:
        return f"<RabbitNode {self._name} amqp={self._amqp_port} dir={self.data_dir}>"

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> RabbitNode:
        """Create the data directory and boot the node; return once AMQP accepts connections."""
        if self.data_dir is not None:
            raise RabbitNodeError(f"{self._name} already started")
        if not (self._server and self._ctl):
            raise RabbitNodeError("rabbitmq-server / rabbitmqctl not found")
        with _global_lock():
            claimed = _reap_orphans_and_collect_claims()
            amqp, dist = self._wanted_ports
            if amqp is None or dist is None:
                picked = _pick_ports(claimed | {p for p in (amqp, dist) if p})
                amqp, dist = amqp or picked[0], dist or picked[1]
            for port in (amqp, dist):
                if port in claimed or not _port_free(port):
                    raise RabbitNodeError(f"port {port} is in use")
            management = None
            if self._management:
                management = _pick_port(claimed | {amqp, dist})
            self.data_dir = Path(
                tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-", dir=TMP_ROOT)
            )
            self._amqp_port, self._dist_port = amqp, dist
            self._management_port = management
            (self.data_dir / PORTS_FILE).write_text(
                json.dumps(
                    {"amqp": amqp, "dist": dist, "management": management, "node": self._name}
                )
            )
        atexit.register(self.stop)
        try:
            self._prepare_dir()
            started = time.monotonic()
            self._launch()
            self.timings["start"] = time.monotonic() - started
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the node, make sure none of its VMs survive, delete its data. Idempotent."""
        atexit.unregister(self.stop)
        if self.data_dir is None:
            return
        try:
            with contextlib.suppress(Exception):
                self._shutdown(timeout=30.0)
        finally:
            self._kill_all(signal.SIGKILL, timeout=10.0)
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None

    def stop_app(self) -> None:
        """Broker outage: stop the RabbitMQ application (the VM stays up, listeners close)."""
        started = time.monotonic()
        self.rabbitmqctl("stop_app")
        self.timings["stop_app"] = time.monotonic() - started

    def start_app(self, timeout: float = 60.0) -> None:
        """Recovery after :meth:`stop_app`; returns once AMQP accepts connections again."""
        started = time.monotonic()
        self.rabbitmqctl("start_app", timeout=timeout)
        self.wait_amqp(timeout)
        self.timings["start_app"] = time.monotonic() - started

    def kill(self, timeout: float = 10.0) -> None:
        """Crash the node: SIGKILL its Erlang VM (data directory kept; see :meth:`restart`)."""
        started = time.monotonic()
        if not self._kill_all(signal.SIGKILL, timeout=timeout):
            raise RabbitNodeError(f"{self._name} survived SIGKILL")
        self.timings["kill"] = time.monotonic() - started

    def restart(self, *, hard: bool = False) -> None:
        """Stop the whole VM (gracefully, or SIGKILL with ``hard=True``) and boot it again on
        the same data directory and ports. Durable queues / persistent messages survive."""
        started = time.monotonic()
        if hard:
            self.kill()
        else:
            self._shutdown(timeout=60.0)
        self._launch()
        self.timings["restart"] = time.monotonic() - started

    def ensure_running(self) -> None:
        """Bring the node back to "up and serving AMQP" from any state tests may leave it in."""
        if not self.beam_pids():
            self._launch()
        elif not self.is_amqp_up():
            self.rabbitmqctl("start_app", check=False)
            self.wait_amqp(60.0)

    # -- queries and operations ---------------------------------------------------------------

    def rabbitmqctl(self, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        """Run ``rabbitmqctl -n <this node> *args``; return stdout (raise on failure)."""
        if self._ctl is None:
            raise RabbitNodeError("rabbitmqctl not found")
        cmd = [self._ctl, "-n", self._name, *args]
        proc = subprocess.run(
            cmd,
            env=self._cli_env(),
            cwd=self._dir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise RabbitCtlError(cmd, proc.returncode, proc.stdout, proc.stderr)
        return proc.stdout

    def list_queues(self, vhost: str = "/") -> dict[str, int]:
        """``{queue name: ready + unacked message count}`` of a vhost."""
        out = self.rabbitmqctl(
            "-q", "list_queues", "-p", vhost, "--formatter", "json", "name", "messages"
        )
        rows = json.loads(out) if out.strip() else []
        return {
            row["name"]: int(row["messages"]) if row.get("messages") not in (None, "") else 0
            for row in rows
        }

    def close_all_connections(self, reason: str = "closed by the bridge tests") -> int:
        """Force-close every client connection (all vhosts); return how many were closed."""
        out = self.rabbitmqctl("close_all_connections", "--global", reason)
        match = re.search(r"Closed (\d+) connection", out)
        return int(match.group(1)) if match else 0

    def beam_pids(self) -> list[int]:
        """Erlang VMs of this node, found by node name in their environment."""
        return [
            pid
            for pid, env in _beam_processes()
            if env.get("RABBITMQ_NODENAME") == self._name and not _is_zombie(pid)
        ]

    def is_amqp_up(self, timeout: float = 2.0) -> bool:
        try:
            amqp_probe(HOST, self.port, timeout=timeout)
        except (OSError, AmqpProbeError):
            return False
        return True

    def wait_amqp(self, timeout: float = 60.0) -> None:
        """Wait until a real AMQP connection (guest, vhost /) can be opened."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                amqp_probe(HOST, self.port, timeout=2.0)
            except (OSError, AmqpProbeError) as exc:
                if time.monotonic() > deadline:
                    raise RabbitNodeError(
                        f"{self._name}: AMQP on port {self.port} not up after {timeout}s: {exc}"
                    ) from exc
                time.sleep(0.2)
            else:
                return

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for path in (self._dir / "launch.log", self.log_file):
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {path}\n" + "\n".join(text))
        return "\n".join(parts)

    # -- internals ----------------------------------------------------------------------------

    def _prepare_dir(self) -> None:
        d = self._dir
        for sub in ("mnesia", "log"):
            (d / sub).mkdir()
        plugins = "rabbitmq_management" if self._management else ""
        (d / "enabled_plugins").write_text(f"[{plugins}].\n")
        (d / "advanced.config").write_text("[].\n")
        (d / "rabbitmq-env.conf").write_text("# private test node: /etc/rabbitmq is not used\n")
        management = (
            f"management.tcp.ip = {HOST}\nmanagement.tcp.port = {self._management_port}\n"
            if self._management
            else ""
        )
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {HOST}:{self.port}\n"
            "loopback_users.guest = true\n"
            "log.console = false\n"
            "log.file.level = info\n" + management
        )
        (d / "launch.log").touch()
        cookie = d / ".erlang.cookie"
        cookie.write_text(self._cookie or new_cookie())
        cookie.chmod(0o400)
        if self._run_as is not None:
            uid, gid = self._run_as.pw_uid, self._run_as.pw_gid
            for path in (d, *d.rglob("*")):
                os.chown(path, uid, gid)

    def _base_env(self) -> dict[str, str]:
        # Built from scratch: nothing RABBITMQ_*/ERL_*/NOTIFY_SOCKET leaks in from our caller.
        path = os.environ.get("PATH", "")
        return {
            "PATH": f"{path}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "HOME": str(self._dir),  # -> $HOME/.erlang.cookie is our cookie
            "RABBITMQ_CONF_ENV_FILE": str(self._dir / "rabbitmq-env.conf"),
        }

    def _cli_env(self) -> dict[str, str]:
        return self._base_env()

    def _server_env(self) -> dict[str, str]:
        d = self._dir
        return {
            **self._base_env(),
            "RABBITMQ_NODENAME": self._name,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
            # no scheduler busy-waiting: idle VMs (a cluster is three) leave the CPUs to
            # whatever runs beside them on a small machine
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": (
                "-kernel inet_dist_use_interface {127,0,0,1}"
                " +sbwt none +sbwtdcpu none +sbwtdio none"
            ),
            # Only matters if no epmd runs yet: then the one we spawn listens on loopback only.
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_CRASH_DUMP": str(d / "erl_crash.dump"),
            OWNER_ENV: str(os.getpid()),
            DIR_ENV: str(d),
        }

    def _launch(self) -> None:
        """``rabbitmq-server -detached`` (as the rabbitmq user), then wait for AMQP."""
        assert self._server is not None
        if self.beam_pids():
            raise RabbitNodeError(f"{self._name} is already running")
        run_as = self._run_as
        launched = time.monotonic()
        with (self._dir / "launch.log").open("ab") as log:
            proc = subprocess.run(
                [self._server, "-detached"],
                env=self._server_env(),
                cwd=self._dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                timeout=60,
                check=False,
                # the server drops to this user itself only via the /usr/sbin wrappers
                user=run_as.pw_uid if run_as else None,
                group=run_as.pw_gid if run_as else None,
                extra_groups=[] if run_as else None,
            )
        if proc.returncode != 0:
            raise RabbitNodeError(f"rabbitmq-server exited {proc.returncode}\n{self.log_tail()}")
        deadline = launched + self.startup_timeout
        seen = False
        while True:
            if self.beam_pids():
                seen = True
            elif seen or time.monotonic() - launched > 20.0:
                raise RabbitNodeError(f"{self._name} died while booting\n{self.log_tail()}")
            if seen and self.is_amqp_up():
                break
            if time.monotonic() > deadline:
                raise RabbitNodeError(
                    f"{self._name} not serving AMQP after {self.startup_timeout}s\n"
                    f"{self.log_tail()}"
                )
            time.sleep(0.25)
        self.rabbitmqctl("await_startup", "--timeout", "60", timeout=90)

    def _shutdown(self, timeout: float) -> None:
        """Graceful ``rabbitmqctl stop``; escalate to SIGTERM, then SIGKILL."""
        pids = self.beam_pids()
        if not pids:
            return
        with contextlib.suppress(RabbitNodeError, subprocess.TimeoutExpired):
            self.rabbitmqctl("stop", timeout=timeout, check=False)
        if _wait_pids_gone(pids, timeout):
            return
        if not self._kill_all(signal.SIGTERM, timeout=10.0):
            self._kill_all(signal.SIGKILL, timeout=10.0)

    def _kill_all(self, sig: signal.Signals, timeout: float) -> bool:
        """Signal every VM of this node (matched by node name only); wait for them to go."""
        pids = self.beam_pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return _wait_pids_gone(pids, timeout)


# --------------------------------------------------------------------------------------------
# a cluster of private nodes
# --------------------------------------------------------------------------------------------


class RabbitCluster:
    """Private nodes joined into one RabbitMQ cluster (``join_cluster``), sharing one cookie.

    Each node is a :class:`RabbitNode` (its own name, ports, data directory, ``HOME``); all
    boot at once, then every node but the first in turn runs ``stop_app``, ``join_cluster
    <first>``, ``start_app``. :meth:`kill` SIGKILLs one node's VM, :meth:`restart` boots it again on its
    data directory and waits until the cluster lists it as running.
    """

    def __init__(self, size: int = 3, *, management: bool = False) -> None:
        cookie = new_cookie()
        #: with ``management``, the first node runs the management plugin (only it: it
        #: boots slower); its API lists the connections made to that node
        self.nodes = [
            RabbitNode(cookie=cookie, management=management and k == 0) for k in range(size)
        ]
        #: seconds taken by the last start (boot + join) / restart of a node
        self.timings: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"<RabbitCluster {', '.join(n.name for n in self.nodes)}>"

    @property
    def urls(self) -> list[str]:
        return [node.amqp_url for node in self.nodes]

    @property
    def names(self) -> list[str]:
        return [node.name for node in self.nodes]

    @property
    def amqp_url(self) -> str:
        """The URL of the first node that serves AMQP now."""
        for node in self.nodes:
            if node.is_amqp_up():
                return node.amqp_url
        raise RabbitNodeError(f"{self}: no node is up")

    def start(self) -> RabbitCluster:
        started = time.monotonic()
        try:
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                list(pool.map(RabbitNode.start, self.nodes))
            self.timings["boot all"] = time.monotonic() - started
            for node in self.nodes[1:]:  # one at a time: joining together can fail in mnesia
                self._join(node)
            self.wait_running()
        except BaseException:
            self.stop()
            raise
        self.timings["start"] = time.monotonic() - started
        return self

    def _join(self, node: RabbitNode) -> None:
        started = time.monotonic()
        node.rabbitmqctl("stop_app")
        node.rabbitmqctl("join_cluster", self.nodes[0].name, timeout=120)
        joined = time.monotonic()
        node.rabbitmqctl("start_app", timeout=120)
        node.wait_amqp()
        self.timings[f"join {node.name}"] = joined - started
        self.timings[f"start_app {node.name}"] = time.monotonic() - joined

    def stop(self) -> None:
        """Stop every node and delete their data. Idempotent. The VMs are SIGKILLed: a
        graceful stop of a cluster's last nodes waits for its quorum queues, and nothing of
        the data is kept anyway."""
        for node in self.nodes:
            if node.data_dir is not None:
                node._kill_all(signal.SIGKILL, timeout=10.0)
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(RabbitNode.stop, self.nodes))

    def running(self, via: RabbitNode | None = None) -> set[str]:
        """The cluster's running nodes, as one live node (``via``, else the first up) sees it."""
        candidates = [via] if via is not None else [n for n in self.nodes if n.beam_pids()]
        for node in candidates:
            out = node.rabbitmqctl("cluster_status", "--formatter", "json", check=False)
            with contextlib.suppress(ValueError):
                return set(json.loads(out)["running_nodes"])
        return set()

    def wait_running(self, timeout: float = 120.0, via: RabbitNode | None = None) -> None:
        """Until every node serves AMQP and ``via`` (default: the first node) sees all of them
        running. One ``rabbitmqctl`` call per try: each starts an Erlang VM, and a busy
        two-core machine feels them."""
        deadline = time.monotonic() + timeout
        everyone = set(self.names)
        via = via or self.nodes[0]
        while not (all(node.is_amqp_up() for node in self.nodes) and self.running(via) == everyone):
            if time.monotonic() > deadline:
                raise RabbitNodeError(f"{self}: not all running after {timeout}s")
            time.sleep(0.5)

    def kill(self, index: int) -> None:
        """SIGKILL one node's Erlang VM (its data directory stays)."""
        self.nodes[index].kill()

    def restart(self, index: int) -> None:
        """Boot a killed (or stopped) node again on its data directory; wait for the cluster."""
        started = time.monotonic()
        self.nodes[index].ensure_running()
        self.timings["boot"] = time.monotonic() - started
        self.wait_running(via=self.nodes[index])
        self.timings["restart"] = time.monotonic() - started

    def ensure_running(self) -> None:
        """Every node up and clustered again, whatever a test did to them."""
        for node in self.nodes:
            node.ensure_running()
        self.wait_running()

    def rabbitmqctl(self, *args: str, timeout: float = 60.0) -> str:
        """``rabbitmqctl`` against the first node that is up."""
        for node in self.nodes:
            if node.is_amqp_up():
                return node.rabbitmqctl(*args, timeout=timeout)
        raise RabbitNodeError(f"{self}: no node is up")

    def queue_members(self, vhost: str = "/") -> dict[str, set[str]]:
        """``{quorum queue: nodes holding a member}`` of a vhost."""
        out = self.rabbitmqctl(
            "-q", "list_queues", "-p", vhost, "--formatter", "json", "name", "type", "members"
        )
        rows = json.loads(out) if out.strip() else []
        return {
            row["name"]: set(row.get("members") or ()) for row in rows if row["type"] == "quorum"
        }


# --------------------------------------------------------------------------------------------
# pytest fixture
# --------------------------------------------------------------------------------------------


class _SessionNode:
    """One node per process, however many times ``own_rabbit`` got registered.

    A conftest doing ``from tests.support.rabbitnode import own_rabbit`` and a test module doing
    the same create two fixture definitions; both hand out this one node (refcounted).
    """

    node: RabbitNode | None = None
    users = 0

    @classmethod
    def acquire(cls) -> RabbitNode:
        if cls.node is None:
            node = RabbitNode()
            node.start()  # registers node.stop with atexit for abrupt exits
            cls.node = node
        cls.users += 1
        return cls.node

    @classmethod
    def release(cls) -> None:
        cls.users -= 1
        if cls.users <= 0 and cls.node is not None:
            node, cls.node, cls.users = cls.node, None, 0
            node.stop()


class _SessionCluster:
    """One three-node cluster per process, shared by every test that asks (refcounted)."""

    cluster: RabbitCluster | None = None
    users = 0

    @classmethod
    def acquire(cls) -> RabbitCluster:
        if cls.cluster is None:
            cls.cluster = RabbitCluster(3, management=True).start()
        cls.users += 1
        return cls.cluster

    @classmethod
    def release(cls) -> None:
        cls.users -= 1
        if cls.users <= 0 and cls.cluster is not None:
            cluster, cls.cluster, cls.users = cls.cluster, None, 0
            cluster.stop()


@pytest.fixture(scope="session")
def own_cluster() -> Iterator[RabbitCluster]:
    """A private three-node RabbitMQ cluster for the whole session (started once, ~30 s:
    the nodes boot together, then nodes 2 and 3 join node 1 in turn). Tests may kill and
    restart nodes; they must leave all three running (``ensure_running``). Stopped and its
    data deleted at session end (or at exit; orphans are reaped like a single node's)."""
    if not rabbitmq_available():
        pytest.skip("rabbitmq-server / rabbitmqctl are not installed")
    cluster = _SessionCluster.acquire()
    try:
        yield cluster
    finally:
        _SessionCluster.release()


@pytest.fixture(scope="session")
def own_rabbit() -> Iterator[RabbitNode]:
    """A private RabbitMQ node for the whole session (started once, ~5-15 s).

    Tests may stop/kill/restart it; they should leave it running again (``ensure_running``).
    It is stopped and its data deleted at session end, or at interpreter exit (atexit) if the
    session dies; nodes orphaned by a SIGKILLed session are reaped by the next session's start.
    """
    if not rabbitmq_available():
        pytest.skip("rabbitmq-server / rabbitmqctl are not installed")
    node = _SessionNode.acquire()
    try:
        yield node
    finally:
        _SessionNode.release()
