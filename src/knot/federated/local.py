"""Real Flower processes on one machine: a SuperLink and SuperNodes on loopback.

:class:`LocalFederation` starts ``flower-superlink`` and ``flower-supernode`` as
processes of their own (each in its own session, bound to ``127.0.0.1`` on free ports,
with a private ``FLWR_HOME``), submits a Flower app with ``flwr run`` and, on leaving
its ``with`` block, kills every process it started *and every process those started*
(Flower detaches its SuperExec and app processes into sessions of their own, so they
are found by a tag in their environment, never by name). :func:`run_local` drives a
whole federated run that way (``knot federated local``); with ``simulation=True`` the
SuperLink runs Flower's Simulation Runtime, the way Flower now recommends for local
simulation (``flwr run`` against a simulation SuperLink) instead of the deprecated
``flwr.simulation.run_simulation`` (``knot federated run``).

Security (see the README's "Federated across machines"):

* TLS: :func:`write_certs` makes a self-signed CA and a server certificate for loopback
  (``ca.crt``, ``server.pem``, ``server.key``); the SuperLink serves with it, the
  SuperNodes and ``flwr`` verify it with ``ca.crt``. Real deployments pass their own
  files with the same names.
* SuperNode authentication: :func:`write_node_key` makes a node's EC P-384 key pair in
  OpenSSH format; the SuperLink runs with ``--enable-supernode-auth`` and accepts only
  nodes whose public key the operator registered (``flwr supernode register KEY.pub``).
* ``insecure=True`` drops both (plain HTTP, any node may join) and logs a warning.

Needs the ``flower`` extra for the processes, and ``cryptography`` (a Flower
dependency) for the certificates and keys. Nothing here imports Flower itself.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

from knot.utils import atomic_path, atomic_write_text

__all__ = [
    "TAG_VARIABLE",
    "CERT_FILES",
    "free_port",
    "flower_environment",
    "write_certs",
    "write_node_key",
    "tagged_processes",
    "LocalFederation",
    "run_local",
]

log = logging.getLogger(__name__)

#: Environment variable that tags every process a :class:`LocalFederation` starts (and,
#: through inheritance, the processes those start), so that all of them can be stopped.
TAG_VARIABLE = "KNOT_FEDERATION_TAG"
#: File names :func:`write_certs` writes and :class:`LocalFederation` reads from a
#: certificates folder: the CA the clients trust, the server's certificate and key.
CERT_FILES = {"ca": "ca.crt", "cert": "server.pem", "key": "server.key"}
#: Name of the SuperLink connection in the private ``FLWR_HOME/config.toml``.
CONNECTION = "knot"
INSECURE_WARNING = (
    "INSECURE: the SuperLink runs without TLS (traffic is readable by anyone on the path) and "
    "without SuperNode authentication (any process that reaches it may join as a client); "
    "use this for local experiments only"
)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that was free a moment ago (bound and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def flower_environment(flwr_home: str | os.PathLike, tag: str | None = None) -> dict[str, str]:
    """Environment of the Flower processes: a private ``FLWR_HOME``, no telemetry and no
    update check, offline Hugging Face, one torch thread per process, this Python's
    scripts first on ``PATH`` (Flower starts ``flower-superexec`` by name) and the tag.

    >>> env = flower_environment("/tmp/h", tag="t1")
    >>> env["FLWR_HOME"], env["FLWR_TELEMETRY_ENABLED"], env["OMP_NUM_THREADS"], env[TAG_VARIABLE]
    ('/tmp/h', '0', '1', 't1')
    """
    scripts = str(Path(sys.executable).parent)
    env = {
        "FLWR_HOME": str(flwr_home),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_DEDUP_LOGS": "0",
        "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PATH": scripts + os.pathsep + os.environ.get("PATH", ""),
    }
    if tag:
        env[TAG_VARIABLE] = tag
    return env


# ---------------------------------------------------------------------------
# certificates and node keys
# ---------------------------------------------------------------------------


def write_certs(folder: str | os.PathLike, hosts: Sequence[str] = ("127.0.0.1", "localhost"),
                days: int = 30) -> dict[str, Path]:
    """Write a self-signed CA and a server certificate for ``hosts`` into ``folder``.

    Files (:data:`CERT_FILES`): ``ca.crt`` (give it to every SuperNode and to ``flwr``),
    ``ca.key`` (keep it; it signs nothing else here), ``server.pem`` and ``server.key``
    (the SuperLink's). For loopback tests and demonstrations: across machines use a
    certificate from your organisation's CA for the SuperLink's real host name, under
    the same file names.

    Returns ``{"ca", "ca_key", "cert", "key"}`` -> path.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    valid_from, valid_to = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)

    def name(cn: str):
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "knot federated"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("knot federated CA")).issuer_name(name("knot federated CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(valid_from).not_valid_after(valid_to)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP384R1())
    alt = []
    for h in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            alt.append(x509.DNSName(h))
    cert = (
        x509.CertificateBuilder().subject_name(name(hosts[0])).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(valid_from).not_valid_after(valid_to)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    def private(k) -> bytes:
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    out = {"ca": folder / CERT_FILES["ca"], "ca_key": folder / "ca.key",
           "cert": folder / CERT_FILES["cert"], "key": folder / CERT_FILES["key"]}
    _write_secret(out["ca_key"], private(ca_key))
    _write_secret(out["key"], private(key))
    atomic_write_text(out["ca"], ca.public_bytes(serialization.Encoding.PEM).decode())
    atomic_write_text(out["cert"], cert.public_bytes(serialization.Encoding.PEM).decode())
    return out


def write_node_key(folder: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write a SuperNode's authentication key pair: ``folder/name`` (EC P-384 private key,
    OpenSSH format, mode 0600: stays with the data owner) and ``folder/name.pub`` (the
    public key the owner sends to the operator, who registers it). Returns both paths."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    priv, pub = folder / name, folder / f"{name}.pub"
    _write_secret(priv, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                          serialization.NoEncryption()))
    line = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    atomic_write_text(pub, line.decode() + f" knot-{name}\n")
    return priv, pub


def _write_secret(path: Path, data: bytes) -> None:
    """Write ``data`` atomically with mode 0600 (a private key)."""
    with atomic_path(path, private=True) as tmp:
        tmp.write_bytes(data)


# ---------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------


def _signal_group(proc: subprocess.Popen, sig: int) -> bool:
    """Send ``sig`` to the process group of ``proc`` (started in a session of its own) if it
    is still running; returns whether it was."""
    if proc.poll() is not None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    return True


def tagged_processes(tag: str, variable: str = TAG_VARIABLE) -> list[int]:
    """Process ids (of this user) whose environment carries ``variable=tag`` (default: a
    federation's tag; ``FLWR_HOME``: the processes of the federation with that home)."""
    needle = f"{variable}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            env = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and needle in env.split(b"\0"):
            found.append(int(entry.name))
    return sorted(found)


def _toml_quote(value: str) -> str:
    import json

    return json.dumps(str(value))


class LocalFederation:
    """A SuperLink and SuperNodes as separate processes on loopback (a context manager).

    Parameters
    ----------
    work : path
        Folder for the private ``FLWR_HOME``, the process logs and the SuperLink's state.
    certs : path, optional
        Folder with ``ca.crt``, ``server.pem`` and ``server.key`` (:func:`write_certs`):
        the SuperLink serves TLS with them. Required unless ``insecure``.
    node_auth : bool
        Run the SuperLink with SuperNode authentication: only nodes whose public key was
        registered (:meth:`register`) may connect.
    insecure : bool
        Plain HTTP and no node authentication; logs :data:`INSECURE_WARNING`.
    simulation : bool
        The SuperLink runs Flower's Simulation Runtime (no SuperNodes to start).
    """

    def __init__(self, work: str | os.PathLike, *, certs: str | os.PathLike | None = None, node_auth: bool = False,
                 insecure: bool = False, simulation: bool = False):
        if not insecure and certs is None:
            raise ValueError("federation: give a certificates folder (knot federated certs DIR) or insecure=True")
        if insecure and node_auth:
            raise ValueError("federation: node authentication needs TLS (drop insecure)")
        self.work = Path(work).resolve()
        self.certs = Path(certs).resolve() if certs is not None else None
        self.node_auth = bool(node_auth)
        self.insecure = bool(insecure)
        self.simulation = bool(simulation)
        self.tag = uuid.uuid4().hex
        self.home = self.work / "flwr-home"
        self.env = {**os.environ, **flower_environment(self.home, self.tag)}
        self.env.pop("KNOT_CACHE", None)  # every node keeps its features in its own work dir
        self.procs: dict[str, subprocess.Popen] = {}
        self.port: int | None = None
        if self.certs is not None:
            missing = [f for f in CERT_FILES.values() if not (self.certs / f).is_file()]
            if missing:
                raise FileNotFoundError(f"{self.certs}: no {', '.join(missing)} (make them with `knot federated certs`)")

    # -- context ------------------------------------------------------------
    def __enter__(self) -> "LocalFederation":
        self.work.mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def address(self) -> str:
        if self.port is None:
            raise RuntimeError("the SuperLink is not started")
        return f"127.0.0.1:{self.port}"

    def log_path(self, name: str) -> Path:
        return self.work / f"{name}.log"

    def _start(self, name: str, cmd: list[str], env: Mapping[str, str] | None = None) -> subprocess.Popen:
        if name in self.procs and self.procs[name].poll() is None:
            raise ValueError(f"process {name!r} is already running")
        out = open(self.log_path(name), "ab")
        try:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=dict(env or self.env), cwd=self.work, start_new_session=True)
        finally:
            out.close()
        self.procs[name] = proc
        log.debug("started %s (pid %d): %s", name, proc.pid, " ".join(cmd))
        return proc

    def _tls_args(self, *, client: bool) -> list[str]:
        if self.insecure:
            return ["--insecure"]
        assert self.certs is not None
        if client:
            return ["--root-certificates", str(self.certs / CERT_FILES["ca"])]
        return ["--ssl-ca-certfile", str(self.certs / CERT_FILES["ca"]),
                "--ssl-certfile", str(self.certs / CERT_FILES["cert"]),
                "--ssl-keyfile", str(self.certs / CERT_FILES["key"])]

    def start_superlink(self, startup_timeout: float = 60.0) -> None:
        """Start ``flower-superlink`` on a free loopback port and wait until it answers;
        write the ``flwr`` connection (``FLWR_HOME/config.toml``)."""
        if self.insecure:
            log.warning(INSECURE_WARNING)
        self.port = free_port()
        cmd = ["flower-superlink", *self._tls_args(client=False), "--host", "127.0.0.1", "--port", str(self.port),
               "--disable-runtime-dependency-installation"]  # state in memory: nothing outlives the run
        if self.node_auth:
            cmd.append("--enable-supernode-auth")
        if self.simulation:
            cmd.append("--simulation")
        lines = ["[superlink]", f"default = {_toml_quote(CONNECTION)}", "", f"[superlink.{CONNECTION}]",
                 f"address = {_toml_quote(self.address)}"]
        lines += ["insecure = true"] if self.insecure else [
            f"root-certificates = {_toml_quote(self.certs / CERT_FILES['ca'])}"]
        atomic_write_text(self.home / "config.toml", "\n".join(lines) + "\n")
        log_file = self.log_path("superlink")
        offset = log_file.stat().st_size if log_file.is_file() else 0  # the log of an earlier run stays above
        proc = self._start("superlink", cmd)
        deadline = time.monotonic() + startup_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"flower-superlink exited with status {proc.returncode}; see "
                                   f"{self.log_path('superlink')}:\n{self.tail('superlink')}")
            with open(log_file, "rb") as f:
                f.seek(offset)
                if b"Application startup complete" in f.read():
                    return
            time.sleep(0.2)
        raise RuntimeError(f"flower-superlink did not start within {startup_timeout:g} s; see {self.log_path('superlink')}")

    def start_supernode(self, name: str, node_config: Mapping[str, str], *, key: str | os.PathLike | None = None,
                        root_certificates: str | os.PathLike | None = None, insecure: bool | None = None,
                        trust_ca: bool = True, max_wait: float | None = None,
                        env: Mapping[str, str] | None = None) -> subprocess.Popen:
        """Start ``flower-supernode`` ``name`` with ``node_config`` (``domain``, ``data-root``,
        ``work-dir``), on a free loopback port for its own runtime API.

        ``key``: its private key (node authentication). ``root_certificates``: the CA it
        trusts (default: the federation's ``ca.crt``; ``trust_ca=False``: only the
        system's CAs, as a node that was not given the CA). ``insecure``: override (a node
        that tries plain HTTP against a TLS SuperLink, for tests). ``max_wait``: seconds
        it keeps retrying to connect before giving up. ``env``: variables added to the
        federation's environment for this node (and its ClientApp) alone.
        """
        insecure = self.insecure if insecure is None else insecure
        cmd = ["flower-supernode", "--superlink", self.address, "--port", str(free_port())]
        if insecure:
            cmd.append("--insecure")
        elif trust_ca and (root_certificates is not None or self.certs is not None):
            cmd += ["--root-certificates", str(root_certificates or self.certs / CERT_FILES["ca"])]
        if key is not None:
            cmd += ["--auth-supernode-private-key", str(Path(key).resolve())]
        if max_wait is not None:
            cmd += ["--max-wait-time", str(max_wait)]
        config = " ".join(f"{k}={_toml_quote(v)}" for k, v in node_config.items())
        if config:
            cmd += ["--node-config", config]
        return self._start(name, cmd, {**self.env, **env} if env else None)

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """``flwr ARGS`` against this federation's SuperLink connection."""
        return subprocess.run(["flwr", *args], env=self.env, cwd=self.work, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def register(self, public_key: str | os.PathLike, name: str | None = None) -> None:
        """Register a SuperNode's public key with the SuperLink (``flwr supernode register``)."""
        args = ["supernode", "register", str(Path(public_key).resolve()), CONNECTION]
        if name:
            args += ["--name", name]
        done = self.flwr(*args)
        if done.returncode != 0:
            raise RuntimeError(f"flwr supernode register {public_key}: {(done.stdout + done.stderr).strip()}")

    def submit(self, app_dir: str | os.PathLike, *, federation_config: Mapping[str, Any] | None = None,
               run_config: Mapping[str, Any] | None = None) -> subprocess.Popen:
        """``flwr run APP_DIR --stream`` in the background (its log: ``flwr-run.log``); it
        exits when the run ends."""
        cmd = ["flwr", "run", str(Path(app_dir).resolve()), CONNECTION, "--stream"]
        if federation_config:
            cmd += ["--federation-config", " ".join(f"{k}={_toml_value(v)}" for k, v in federation_config.items())]
        if run_config:
            cmd += ["--run-config", " ".join(f"{k}={_toml_value(v)}" for k, v in run_config.items())]
        return self._start("flwr-run", cmd)

    def kill(self, name: str) -> None:
        """SIGKILL process ``name``'s whole process group (a crash, for tests)."""
        proc = self.procs[name]
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)

    def tail(self, name: str, chars: int = 3000) -> str:
        path = self.log_path(name)
        if not path.is_file():
            return ""
        return path.read_text(encoding="utf-8", errors="replace")[-chars:]

    def logs(self) -> str:
        """Every process log, concatenated with headers."""
        return "\n".join(f"==> {p.name} <==\n{p.read_text(encoding='utf-8', errors='replace')}"
                         for p in sorted(self.work.glob("*.log")))

    def leftovers(self) -> list[int]:
        """Processes started by this federation (directly or not) still alive."""
        return tagged_processes(self.tag)

    def close(self, grace: float = 5.0) -> None:
        """Stop everything: SIGTERM to each started process group, then SIGKILL to whatever
        carries this federation's tag (Flower's detached SuperExec and app processes)."""
        for proc in self.procs.values():
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for _ in range(3):
            left = self.leftovers()
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.3)
        for proc in self.procs.values():
            if _signal_group(proc, signal.SIGKILL):
                proc.wait(10)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return _toml_quote(v)


# ---------------------------------------------------------------------------
# a whole run
# ---------------------------------------------------------------------------


def run_local(
    cfg: Any,
    out: str | os.PathLike,
    *,
    data_root: str | os.PathLike | None = None,
    client_root: str | os.PathLike | None = None,
    clients: int | None = None,
    certs: str | os.PathLike | None = None,
    keys: str | os.PathLike | None = None,
    insecure: bool = False,
    simulation: bool = False,
    work: str | os.PathLike | None = None,
    before_submit: Any = None,
    expected_clients: int | None = None,
    holds_lock: bool = False,
) -> dict[str, Any]:
    """Run ``cfg`` federated on real Flower processes on loopback; returns its status.

    A SuperLink and one SuperNode per local domain (node ``i`` owns the ``i``-th local
    domain, works in ``client_root/<domain>``, default ``RUN/federated/clients``, and
    reads ``data_root``); ``clients`` above the number of local domains adds nodes that
    own none (they answer with an error and are excluded). With ``simulation``, the
    SuperLink's Simulation Runtime runs the ``clients`` nodes instead of SuperNode
    processes. ``certs``: TLS files (:func:`write_certs`); ``keys``: a folder of node
    keys (``keys/<domain>``, made with :func:`write_node_key` when missing), each
    registered with the SuperLink, which then admits no other node; ``insecure``: neither.
    ``work``: where the Flower home, app folder and logs go (default ``RUN/federated/local``).
    ``before_submit(federation)``: called once the nodes are started (tests add faulty
    nodes there). ``expected_clients``: the nodes the round waits to be connected
    (default: those started here; more when ``before_submit`` adds some).
    ``holds_lock``: the caller holds the run folder's lock (else the ServerApp takes it).

    Raises :class:`~knot.federated.core.FederatedError` when the run does not end with
    status ``ok``; the message ends with the tail of the server's log.
    """
    from knot.federated.core import FederatedError, read_status
    from knot.federated.deploy import write_app
    from knot.layout import RunLayout

    out = Path(out).resolve()
    layout = RunLayout(out)
    locals_ = [d.name for d in cfg.domains("local")]
    if not locals_:
        raise ValueError("data.domains: a federated run needs at least one domain with role 'local' (one per client)")
    n = len(locals_) if clients is None else int(clients)
    if n < 1:
        raise ValueError(f"--clients: expected a positive number of clients, got {n}")
    keys = Path(keys).resolve() if keys is not None else None
    if simulation and keys is not None:
        raise ValueError("node keys are for SuperNode processes, not the simulation")
    work = Path(work).resolve() if work is not None else layout.federated / "local"
    client_root = Path(client_root).resolve() if client_root is not None else layout.federated / "clients"
    data = str(Path(data_root).resolve()) if data_root else ""
    if layout.federated_status.exists():
        layout.federated_status.unlink()  # a stale "ok" must never pass for this run's result
    app_dir = work / "app"
    write_app(app_dir, cfg, out, data_root=data or None, expected_clients=expected_clients or n,
              client_root=client_root if simulation else None, client_data_root=data if simulation else None,
              launcher_holds_lock=holds_lock)
    limit = cfg.federated.connect_timeout + (cfg.federated.timeout or 0) + 600.0
    with LocalFederation(work, certs=certs, node_auth=keys is not None, insecure=insecure,
                         simulation=simulation) as fed:
        fed.start_superlink()
        if not simulation:
            for i in range(n):
                domain = locals_[i] if i < len(locals_) else None
                name = domain or f"node-{i}"
                key = None
                if keys is not None:
                    key = Path(keys) / name
                    if not key.is_file():
                        write_node_key(keys, name)
                    fed.register(Path(f"{key}.pub"), name=name)
                config = {"domain": domain, "data-root": data, "work-dir": str(client_root / domain)} if domain \
                    else {"partition-id": str(i)}
                fed.start_supernode(f"supernode-{name}", config, key=key)
        if before_submit is not None:
            before_submit(fed)
        federation = None
        if simulation:
            # Flower's simulation config takes whole cores
            cpus = max(1, math.ceil(cfg.federated.client_cpus))
            federation = {"num-supernodes": n, "client-resources-num-cpus": cpus,
                          "init-args-num-cpus": max(os.cpu_count() or 1, cpus)}
        run = fed.submit(app_dir, federation_config=federation)
        try:
            run.wait(limit)
        except subprocess.TimeoutExpired:
            raise FederatedError(f"the federated run did not end within {limit:g} s; logs in {work}") from None
        try:
            status = read_status(out)
        except (FileNotFoundError, ValueError):
            status = None
        if status is None or status.get("status") != "ok":
            why = (status or {}).get("error") or "the ServerApp did not record a status (it never ran or was killed)"
            raise FederatedError(f"federated run failed: {why}\n--- flwr run (last lines) ---\n{fed.tail('flwr-run')}")
    return status
