"""The ``ppa`` console command."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ppa_kernel.contract.errors import PPAError

if TYPE_CHECKING:
    from ppa_kernel.contract.config import PartyConfig

logger = logging.getLogger(__name__)


def _party_serve(args: argparse.Namespace) -> int:
    from ppa_kernel.contract.config import load_party
    from ppa_kernel.contract.protocol import ERROR_MARKER
    from ppa_kernel.party.kernel import serve

    try:
        config = load_party(args.config)
        serve(config, record_openings=args.record_openings,
              parent_pid=args.exit_with_parent, accept_broken_audit=args.accept_broken_audit)
    except PPAError as exc:
        print(f"{ERROR_MARKER}{json.dumps(exc.to_dict())}", flush=True)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _party_stop(args: argparse.Namespace) -> int:
    """Stop the kernel a party file describes (the local operator's action: SIGTERM)."""
    import signal

    return _signal_kernel(args.config, signal.SIGTERM, "SIGTERM")


WAIT_POLL = 0.2
"""Seconds between ``ppa party wait``'s looks at a kernel that is not ready yet."""


def _party_wait(args: argparse.Namespace) -> int:
    """Wait until the kernel of every party file serves (exit 1 naming those that do not)."""
    import time

    from ppa_kernel.contract.config import load_party

    waiting = {config.name: config for config in map(load_party, args.configs)}
    problems: dict[str, str] = {}
    deadline = time.monotonic() + args.timeout
    while waiting:
        for name, config in list(waiting.items()):
            problem = _not_serving(config)
            if problem is None:
                print(f"{name}: ready on {config.bind_host}:{config.bind_port} "
                      f"(MPC links on port {config.bind_mpc_port})", flush=True)
                del waiting[name]
            else:
                problems[name] = problem
        if waiting and time.monotonic() >= deadline:
            print(f"error: not ready within {args.timeout:g} s:", file=sys.stderr)
            for name in waiting:
                print(f"  - {name}: {problems[name]}", file=sys.stderr)
            return 1
        time.sleep(WAIT_POLL if waiting else 0)
    return 0


def _not_serving(config: PartyConfig) -> str | None:
    """Why the party's kernel does not serve yet, or None once both its ports accept
    connections and a kernel holds its state folder."""
    import socket

    from ppa_kernel.party.kernel import state_locked

    for what, port in (("analysts'", config.bind_port), ("MPC", config.bind_mpc_port)):
        try:
            socket.create_connection((config.bind_host, port), timeout=1.0).close()
        except OSError as exc:
            return (f"nothing answers on its {what} port {config.bind_host}:{port} ({exc}): "
                    "its kernel is not started, still starting, or stopped (see its log)")
    # only now: testing the lock takes it for an instant, which a starting kernel would
    # take for another kernel's; a serving kernel holds it, so the test cannot take it
    if not state_locked(config):
        return (f"its ports answer, but no kernel holds its state folder {config.state_dir}: "
                "another program has them")
    return None


def _party_reload(args: argparse.Namespace) -> int:
    """Make the running kernel re-read its policy (SIGHUP)."""
    import signal

    from ppa_kernel.party.policy_report import check_policy_file

    check = check_policy_file(args.config)  # what the kernel would refuse: say so here
    if not check.ok:
        print(f"error: not reloading {check.party}: its policy is invalid", file=sys.stderr)
        for problem in check.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    return _signal_kernel(args.config, signal.SIGHUP, "SIGHUP (reload the policy)")


def _signal_kernel(path: str, sig: int, what: str) -> int:
    import os

    from ppa_kernel.contract.config import load_party
    from ppa_kernel.party.kernel import PID_FILE, state_locked

    config = load_party(path)
    pid_file = config.state_dir / PID_FILE
    try:
        # a kernel killed outright leaves its pid file, whose pid may be reused: signal
        # only while a kernel holds the state folder's lock (it wrote the pid file)
        if not state_locked(config):
            raise ProcessLookupError
        pid = int(pid_file.read_text().strip())
        os.kill(pid, sig)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        print(f"error: no kernel of {config.name} is running ({pid_file})", file=sys.stderr)
        return 1
    print(f"sent {what} to the kernel of {config.name} (pid {pid})")
    return 0


def _identity_new(args: argparse.Namespace) -> int:
    from ppa_kernel.contract.identity import create_identity

    identity = create_identity(Path(args.folder), args.name, days=args.days)
    print(f"key:         {identity.key_path} (0600; keep it on this machine, never share it)")
    print(f"certificate: {identity.cert_path} (send it to the other parties)")
    print(f"fingerprint: {identity.fingerprint}")
    print("Tell the other parties the fingerprint by a second channel (phone, signed mail) "
          "so they can pin it.")
    return 0


def _identity_show(args: argparse.Namespace) -> int:
    from ppa_kernel.contract.identity import describe, load_certificate

    for path in args.certificates:
        info = describe(load_certificate(path))
        print(f"{path}:")
        for key, value in info.items():
            print(f"  {key + ':':13}{value}")
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    """Check each audit log's hash chain; report the first break (exit 1 if any)."""
    from ppa_kernel.party.audit import AuditError, AuditLog

    status = 0
    for target in args.paths:
        path = Path(target)
        path = path / "audit.jsonl" if path.is_dir() else path
        if not path.is_file():
            print(f"{path}: no audit log", file=sys.stderr)
            status = 1
            continue
        try:
            log = AuditLog(path)
            count = log.verify()
        except AuditError as exc:
            print(f"{path}: BROKEN at record {exc.seq}: {exc.message}")
            status = 1
        else:
            print(f"{path}: ok, {count} records, chain head {log.head}")
    return status


def _audit_compare(args: argparse.Namespace) -> int:
    """Compare parties' audit logs with each other and with receipts (exit 1 unless all agree)."""
    from ppa_kernel.party.audit_compare import compare, format_report

    report = compare(args.paths, args.receipts or ())
    print(format_report(report))
    return 0 if report.ok else 1


def _review(args: argparse.Namespace) -> int:
    """A reviewer's act at one party kernel: list, show, approve, reject, pin, unpin, login."""
    import os

    from ppa_kernel.contract.identity import Identity, IdentityError
    from ppa_kernel.party.review_client import ReviewClient
    from ppa_kernel.party.review_view import format_listing, format_review, parse_ranges

    prefix = args.identity or os.environ.get("PPA_IDENTITY")
    if not prefix:
        raise IdentityError("no reviewer identity given",
                            hint="pass --identity keys/rita (for keys/rita.crt and .key) or "
                                 "set PPA_IDENTITY")
    identity = Identity.from_prefix(prefix)
    identity.check_valid()
    client = ReviewClient(args.consortium, args.party, identity)
    act = args.review_command
    if act == "list":
        print(format_listing(client.list()))
    elif act == "show":
        reply = client.show(args.id)
        print(json.dumps(reply["plan"], indent=1) if args.json else format_review(reply))
    elif act in ("approve", "reject"):
        item = (client.approve(args.id, args.reason or "", plan_hash=args.hash)
                if act == "approve"
                else client.reject(args.id, args.reason, plan_hash=args.hash))["item"]
        print(f"{item['status']} plan {item['id']} ({item['plan_hash'][:12]}) at "
              f"{args.party}")
    elif act == "pin":
        pin = client.pin(args.id, parse_ranges(args.param or []), _duration(args.valid_for),
                         args.reason or "", plan_hash=args.hash)["pin"]
        print(f"pinned plan {pin['plan_hash'][:12]} as pin {pin['id']} at {args.party}, "
              f"valid for {pin['expires'] - pin['created']:.0f} s")
    elif act == "unpin":
        client.unpin(args.pin)
        print(f"removed pin {args.pin} at {args.party}")
    else:  # login
        reply = client.login()
        print(f"open {reply['url']}\n(one-time link, valid {reply['valid']:.0f} s; the page's "
              f"certificate fingerprint is {reply['fingerprint']})")
    return 0


def _duration(text: str | None) -> float | None:
    """``3600``, ``90m``, ``12h`` or ``7d`` as seconds."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    scale = units.get(text[-1:], 1)
    try:
        return float(text[:-1] if text[-1:] in units else text) * scale
    except ValueError:
        raise PPAError(f"malformed duration {text!r}", hint="e.g. 3600, 90m, 12h or 7d") \
            from None


def _worker(args: argparse.Namespace) -> int:
    from ppa_kernel.party.worker import main as worker_main

    if args.spare is not None:
        return worker_main(["--spare", args.spare, args.mpyc_argv or "null"])
    if args.job is None:
        raise PPAError("worker: give a job file, or --spare JOBS")
    return worker_main([args.job])


def _demo(args: argparse.Namespace) -> int:
    from ppa_kernel.analyst.demo import print_report, run_demo

    report = run_demo(Path(args.out), n_core=args.n_core, seed=args.seed,
                      timeout=args.timeout)
    print_report(report)
    return 0


def _synth(args: argparse.Namespace) -> int:
    from ppa_kernel.analyst.synthetic import write_demo_data

    paths = write_demo_data(Path(args.folder), n_core=args.n_core, seed=args.seed,
                            fmt=args.format)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _init(args: argparse.Namespace) -> int:
    from ppa_kernel.analyst.local import write_local_config
    from ppa_kernel.analyst.synthetic import LINK, write_demo_data
    from ppa_kernel.party.datasource import describe_columns, load_table
    from ppa_kernel.party.policy_template import commented_policy

    folder = Path(args.folder)
    paths = write_demo_data(folder / "data", n_core=args.n_core, seed=args.seed, fmt="mixed")
    sources = {n: paths[n] for n in ("insurer", "hospital", "bureau")}
    policies = {name: commented_policy(name, LINK,
                                       describe_columns(load_table(path, link=LINK), LINK))
                for name, path in sources.items()}
    config = write_local_config(folder, sources, LINK, policies)
    print(f"wrote {config}, one party file per party (each with a commented [policy]) and "
          f"throwaway identities in {folder / 'keys'}; check a policy with:")
    print(f"  ppa policy check {folder / 'insurer.toml'}")
    print("start each party with:")
    for name in sources:
        print(f"  ppa party serve {folder / (name + '.toml')}")
    print("wait until all serve with:")
    print(f"  ppa party wait {' '.join(str(folder / (name + '.toml')) for name in sources)}")
    print(f"and connect with identity={str(folder / 'keys' / 'analyst')!r}")
    return 0


def _policy_check(args: argparse.Namespace) -> int:
    """Validate a party file's policy and print what it allows (exit 1 if invalid)."""
    from ppa_kernel.party.policy_report import check_policy_file, render

    result = check_policy_file(args.config, read_data=not args.no_data)
    print(render(result), file=sys.stdout if result.ok else sys.stderr)
    return 0 if result.ok else 1


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``ppa``."""
    p = argparse.ArgumentParser(prog="ppa", description="Privacy-preserving analytics with MPC.")
    p.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the local three-party demo on synthetic data")
    demo.add_argument("--out", default="ppa-demo", help="output folder (default ppa-demo)")
    demo.add_argument("--n-core", type=int, default=4200, help="people at all three parties")
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--timeout", type=float, default=None, help="seconds per query")
    demo.set_defaults(func=_demo)

    party = sub.add_parser("party", help="party kernel commands")
    party_sub = party.add_subparsers(dest="party_command", required=True)
    serve = party_sub.add_parser("serve", help="run this party's kernel")
    serve.add_argument("config", help="the party's TOML file")
    serve.add_argument("--record-openings", action="store_true",
                       help="keep every opened value in run results (testing only)")
    serve.add_argument("--exit-with-parent", type=int, metavar="PID", default=None,
                       help="stop when process PID (the one that started this kernel) exits")
    serve.add_argument("--accept-broken-audit", action="store_true",
                       help="start although the audit log's chain is broken: the old log is "
                            "kept aside and the acknowledgement recorded")
    serve.set_defaults(func=_party_serve)
    stop = party_sub.add_parser("stop", help="stop this party's running kernel (SIGTERM)")
    stop.add_argument("config", help="the party's TOML file")
    stop.set_defaults(func=_party_stop)
    wait = party_sub.add_parser(
        "wait", help="wait until the kernels of these party files serve",
        description="Wait until each party file's kernel on this machine serves: both its "
                    "ports (analysts' requests, MPC links) accept connections and it holds "
                    "its state folder. Prints a line per party as it gets ready; exits 1 "
                    "naming each party not ready in time.")
    wait.add_argument("configs", nargs="+", metavar="PARTY_FILE",
                      help="a party's TOML file (give several to wait for each)")
    wait.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                      help="give up after this many seconds (default 30)")
    wait.set_defaults(func=_party_wait)
    reload = party_sub.add_parser("reload", help="make this party's running kernel re-read "
                                                 "its [policy] (SIGHUP; analysts, ports and "
                                                 "data need a restart)")
    reload.add_argument("config", help="the party's TOML file")
    reload.set_defaults(func=_party_reload)

    audit = sub.add_parser("audit", help="check a party's audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="check the hash chain; report the first break")
    verify.add_argument("paths", nargs="+", metavar="STATE_DIR_OR_LOG",
                        help="a party's state folder (its audit.jsonl) or a log file")
    verify.set_defaults(func=_audit_verify)
    compare = audit_sub.add_parser(
        "compare", help="check that the parties' logs saw the same runs with the same results, "
                        "and match the analyst's receipts (finds a cut tail or a rebuilt chain)")
    compare.add_argument("paths", nargs="+", metavar="STATE_DIR_OR_LOG",
                         help="every party's state folder (its audit.jsonl) or log file")
    compare.add_argument("--receipts", action="append", metavar="FILE",
                         help="an analyst's receipts file (repeat for several); each receipt "
                              "must match the record it names in every party's log")
    compare.set_defaults(func=_audit_compare)

    review = sub.add_parser("review", help="a reviewer's view of the plans waiting at a party")
    review.add_argument("--consortium", default="consortium.toml",
                        help="the consortium file (default consortium.toml)")
    review.add_argument("--party", required=True, help="the party whose plans you review")
    review.add_argument("--identity", default=None,
                        help="your reviewer identity, e.g. keys/rita (default $PPA_IDENTITY)")
    review_sub = review.add_subparsers(dest="review_command", required=True)
    review_sub.add_parser("list", help="plans waiting, decided or refused as not pinned; pins")
    show_review = review_sub.add_parser("show", help="one plan in plain language")
    show_review.add_argument("id", help="the plan's id (its run id) from `ppa review list`")
    show_review.add_argument("--json", action="store_true", help="print the plan itself")
    approve = review_sub.add_parser("approve", help="approve a waiting plan (it runs)")
    approve.add_argument("id")
    approve.add_argument("--reason", default=None, help="a note for the audit log")
    reject = review_sub.add_parser("reject", help="reject a waiting plan, saying why")
    reject.add_argument("id")
    reject.add_argument("--reason", required=True, help="why (the analyst sees it)")
    pin = review_sub.add_parser("pin", help="approve a plan in advance for reruns")
    pin.add_argument("id", help="a plan from `ppa review list` (any status)")
    pin.add_argument("--param", action="append", metavar="PATH=LOW:HIGH",
                     help="a number of the plan that may vary within [LOW, HIGH] (repeat; "
                          "`ppa review show` lists the paths); without any, exactly this plan")
    pin.add_argument("--valid-for", default=None, metavar="DURATION",
                     help="how long the pin holds: seconds, or 90m, 12h, 7d (default: the "
                          "policy's approval_valid)")
    pin.add_argument("--reason", default=None, help="a note for the audit log")
    for act in (approve, reject, pin):
        act.add_argument("--hash", default=None, metavar="PLAN_HASH",
                         help="the plan hash you reviewed (`ppa review show` prints it; 12 "
                              "digits or more): refused if the plan is no longer that one")
    unpin = review_sub.add_parser("unpin", help="remove a pin")
    unpin.add_argument("pin", help="the pin's id from `ppa review list`")
    review_sub.add_parser("login", help="a one-time sign-in link to the reviewer web page")
    review.set_defaults(func=_review)

    identity = sub.add_parser("identity", help="keys and certificates of parties and analysts")
    identity_sub = identity.add_subparsers(dest="identity_command", required=True)
    new = identity_sub.add_parser("new", help="make a key pair and a self-signed certificate")
    new.add_argument("name", help="the party's or analyst's name (the certificate's CN)")
    new.add_argument("--folder", default="keys", help="where to write NAME.key and NAME.crt "
                                                      "(default keys)")
    new.add_argument("--days", type=int, default=730, help="validity in days (default 730)")
    new.set_defaults(func=_identity_new)
    show = identity_sub.add_parser("show", help="print a certificate's name, fingerprint and "
                                                "validity")
    show.add_argument("certificates", nargs="+", metavar="CERT")
    show.set_defaults(func=_identity_show)

    worker = sub.add_parser("worker", help="(internal) run one MPC job for a party kernel")
    worker.add_argument("job", nargs="?", help="job file written by the party kernel")
    worker.add_argument("--spare", metavar="JOBS",
                        help="start ahead: import, then read one job file's path (in the "
                             "folder JOBS) from stdin")
    worker.add_argument("--mpyc-argv", metavar="JSON",
                        help="with --spare: MPyC's command line, to import it ahead")
    worker.set_defaults(func=_worker)

    synth = sub.add_parser("synth", help="write synthetic three-party demo data")
    synth.add_argument("folder")
    synth.add_argument("--n-core", type=int, default=4200)
    synth.add_argument("--seed", type=int, default=7)
    synth.add_argument("--format", choices=("csv", "mixed"), default="csv")
    synth.set_defaults(func=_synth)

    init = sub.add_parser(
        "init", help="write demo data and configs for separately run kernels, each party file "
                     "with a commented policy",
        description="Write a consortium to run kernel by kernel on this machine: synthetic "
                    "data for an insurer, a hospital and a statistics bureau (FOLDER/data/), "
                    "the consortium file (FOLDER/consortium.toml: parties, hosts, ports, "
                    "pinned certificates), one party file per party (FOLDER/NAME.toml: "
                    "identity, state folder, data source, a commented [policy] serving the "
                    "analyst) and throwaway identities (FOLDER/keys/, for this machine only)."
                    " Then start each party with `ppa party serve FOLDER/NAME.toml`, wait "
                    "with `ppa party wait` on the three party files, and connect with "
                    "identity FOLDER/keys/analyst.")
    init.add_argument("folder", metavar="FOLDER",
                      help="where to write the files (created if missing; a folder that "
                           "already holds identities in keys/ is refused)")
    init.add_argument("--n-core", type=int, default=4200, metavar="N",
                      help="people at all three parties, the ones a full link finds; each "
                           "party also holds people the others lack (default 4200)")
    init.add_argument("--seed", type=int, default=7, metavar="SEED",
                      help="random seed of the demo data: the same seed, the same data "
                           "(default 7)")
    init.set_defaults(func=_init)

    policy = sub.add_parser("policy", help="data owners: check a party's policy")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True)
    check = policy_sub.add_parser(
        "check", help="validate a party file's [policy] and print what it allows",
        description="Load a party file as its kernel would, check its [policy] (and its "
                    "columns against the party's data), and print in plain language what it "
                    "allows. Exits 1 listing every problem if the policy is invalid.")
    check.add_argument("config", metavar="PARTY_FILE", help="the party's TOML file")
    check.add_argument("--no-data", action="store_true",
                       help="do not read the party's data (skip checking that the policy's "
                            "columns exist, e.g. for a large SQL source)")
    check.set_defaults(func=_policy_check)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``ppa``."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return args.func(args)
    except PPAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
