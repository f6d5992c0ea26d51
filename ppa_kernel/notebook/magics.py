"""``%ppa`` and ``%%secure``: the IPython extension loaded by ``%load_ext ppa_kernel``.

``%ppa demo|connect FILE|status|catalog|progress MODE|stop`` manages the session's
consortium. A ``%%secure`` cell body is secure-frame code that ends with a query; the
magic builds the plan from it in this kernel, sends only the plan, and shows the
released table (suppressed cells marked), bound to ``-o NAME`` (default ``_secure``).
Workbench errors (bad plans, policy refusals, failed parties) are shown as one short
message per party, without a traceback, and still fail the cell (so papermill stops);
so are the cell's own slips (a misspelt name, column or method), with the line and a
"did you mean". Tab completes both magics (:mod:`.completion`).
``%ppa mock [SNAPSHOT]`` swaps the consortium for a mock of it (design mode: synthetic
data; every result is marked mock and is never a release).
"""

from __future__ import annotations

import html
import json
import logging
from typing import Any

import pandas as pd
from IPython.core.error import UsageError
from IPython.core.magic import Magics, cell_magic, line_magic, magics_class
from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
from IPython.display import display

from ppa_kernel.analyst.progress import MODES
from ppa_kernel.analyst.results import (
    MOCK_CAPTION,
    RELEASE_KEY,
    format_html,
    format_table,
    is_mock,
    mock_banner_html,
)
from ppa_kernel.contract.errors import ConsortiumError, PPAError
from ppa_kernel.contract.plan import plan_hash
from ppa_kernel.notebook import completion
from ppa_kernel.notebook.cell import cell_query
from ppa_kernel.notebook.session import Session

logger = logging.getLogger(__name__)

DEFAULT_OUT = "_secure"
COMMANDS = ("demo", "connect", "mock", "status", "catalog", "progress", "stop")
DEMO_ROWS = 4200
DEMO_SEED = 7


def error_lines(exc: PPAError) -> list[str]:
    """A workbench error as short lines: one per party, hints included."""
    errors = exc.errors if isinstance(exc, ConsortiumError) else [exc]
    head = "secure run failed" if isinstance(exc, ConsortiumError) else type(exc).__name__
    lines = [f"{head}:"] if len(errors) > 1 or isinstance(exc, ConsortiumError) else []
    for error in errors:
        origin = error.party or "analyst"
        text = f"{origin}: {type(error).__name__}: {error.message}"
        if error.hint:
            text += f" (hint: {error.hint})"
        lines.append(f"  {text}" if lines else text)
    return lines


def _show_error(shell: Any, etype: type, value: BaseException, tb: Any,
                tb_offset: int | None = None) -> list[str]:
    """IPython's handler for PPAError: no traceback, one line per party; the cell fails."""
    lines = error_lines(value) if isinstance(value, PPAError) else [str(value)]
    shell._showtraceback(etype, value, lines)
    return lines


@magics_class
class PPAMagics(Magics):
    """The workbench's magics; they share one :class:`Session`."""

    def __init__(self, shell: Any, session: Session) -> None:
        super().__init__(shell)
        self.session = session

    # ------------------------------------------------------------------ %ppa
    @magic_arguments()
    @argument("command", choices=COMMANDS, help="what to do")
    @argument("target", nargs="?", default=None,
              help="consortium file for 'connect'; catalog snapshot (JSON file or variable) "
                   "for 'mock'; widget|text|bar|off|auto for 'progress'")
    @argument("--rows", type=int, default=None,
              help=f"demo: people at all three parties (default {DEMO_ROWS}); mock: rows of "
                   "the largest party (default 2000)")
    @argument("--seed", type=int, default=None,
              help=f"seed of the synthetic data (default: demo {DEMO_SEED}, mock 0)")
    @argument("--timeout", type=float, default=None,
              help="connect: seconds to wait for each party (default 30)")
    @argument("--identity", default=None,
              help="connect: your key and certificate as a path prefix, e.g. keys/alice "
                   "(default $PPA_IDENTITY)")
    @line_magic
    def ppa(self, line: str) -> Any:
        """Manage the consortium: ``%ppa demo|connect FILE|mock [SNAPSHOT]|status|catalog|
        progress MODE|stop``."""
        args = parse_argstring(self.ppa, line)
        if args.command not in ("connect", "mock", "progress") and args.target:
            raise UsageError(f"%ppa {args.command} takes no argument {args.target!r}")
        return getattr(self, f"_ppa_{args.command}")(args)

    def _ppa_demo(self, args: Any) -> None:
        rows = DEMO_ROWS if args.rows is None else args.rows
        if rows < 1:
            raise UsageError("--rows must be at least 1")
        print(f"starting the local three-party demo ({rows} linked people) ...", flush=True)
        consortium = self.session.start_demo(n_core=rows,
                                             seed=DEMO_SEED if args.seed is None else args.seed)
        rows = ", ".join(f"{p} {info['rows']:,} rows" for p, info in consortium.parties.items())
        print(f"connected to the demo consortium: {rows}")

    def _ppa_connect(self, args: Any) -> None:
        if not args.target:
            raise UsageError("usage: %ppa connect consortium.toml")
        kwargs: dict[str, Any] = {"connect_timeout": args.timeout} if args.timeout else {}
        if args.identity:
            kwargs["identity"] = args.identity
        consortium = self.session.connect(args.target, **kwargs)
        print(f"connected to {', '.join(consortium.names)} ({args.target})")

    def _ppa_mock(self, args: Any) -> None:
        if args.rows is not None and args.rows < 1:
            raise UsageError("--rows must be at least 1")
        source: Any = args.target
        if source is not None and source.isidentifier() and source in self.shell.user_ns:
            source = self.shell.user_ns[source]  # a snapshot dict (or a Consortium)
        elif source is None and not self.session.connected:
            raise UsageError("usage: %ppa mock [snapshot.json | VARIABLE] (without one: a mock "
                             "of the current consortium)")
        print("starting a mock consortium on synthetic data ...", flush=True)
        consortium = self.session.start_mock(source, rows=args.rows, seed=args.seed or 0,
                                             label=args.target)
        rows = ", ".join(f"{p} {info['rows']:,} rows" for p, info in consortium.parties.items()
                         if info.get("holds_data", True))
        print(f"{MOCK_CAPTION}: design mode, {self.session.source}; {rows}. Every result is "
              "marked mock; run the notebook against the real consortium for releases.")

    def _ppa_status(self, args: Any) -> pd.DataFrame:
        return self.session.status()

    def _ppa_catalog(self, args: Any) -> pd.DataFrame:
        self.session.require().refresh()
        return self.session.catalog()

    def _ppa_progress(self, args: Any) -> None:
        if args.target not in MODES:
            raise UsageError(f"usage: %ppa progress {'|'.join(MODES)}")
        self.session.progress = args.target
        print(f"progress display: {args.target}")

    def _ppa_stop(self, args: Any) -> None:
        print("stopped" if self.session.stop() else "nothing to stop")

    # --------------------------------------------------------------- %%secure
    @magic_arguments()
    @argument("-o", "--out", default=DEFAULT_OUT,
              help=f"variable for the released table (default {DEFAULT_OUT})")
    @argument("--timeout", type=float, default=None,
              help="seconds the parties may take (default 600)")
    @argument("--show-plan", action="store_true", help="show the plan and its hash")
    @argument("--dry-run", action="store_true",
              help="check the plan with every party's policy; compute nothing")
    @argument("--progress", choices=MODES, default=None,
              help="progress display for this cell (default: %%ppa progress setting)")
    @cell_magic
    def secure(self, line: str, cell: str) -> pd.DataFrame | None:
        """Run secure-frame code as an MPC analysis; show and bind the released table.

        The body is Python that runs in this kernel only to build a plan. It can use
        each party's name (``insurer``, ``hospital``, ...: a secure frame of that party),
        ``link(party, ...)`` (the secure inner join; no arguments: all data parties),
        ``consortium`` and your own variables. Its last line must be a query: an
        aggregate such as ``.agg(...)``, ``.count()``, ``.histogram(...)``,
        ``.crosstab(...)`` or a statistic (``.ttest(...)``, ``.ols(...)``, ...). Only
        that query's plan goes to the parties. Tab completes party names, columns after
        ``t.`` and in ``t["...``, and the options. Example::

            %%secure -o effect
            t = link(insurer, hospital, bureau)
            t = t.assign(cost_change=t.cost_2021 - t.cost_2020)
            t.groupby(["income_band", "app_user"]).agg(n=("cost_change", "count"),
                                                       mean=("cost_change", "mean"))
        """
        args = parse_argstring(self.secure, line)
        if not args.out.isidentifier():
            raise UsageError(f"-o needs a variable name, not {args.out!r}")
        if args.timeout is not None and args.timeout <= 0:
            raise UsageError("--timeout must be a positive number of seconds")
        consortium = self.session.require()
        query = cell_query(cell, consortium, self.shell.user_ns, first_line=2)
        if args.show_plan:
            display(_PlanView(consortium.prepare(query.plan())))
        if args.dry_run:
            digest = consortium.check(query.plan(), timeout=args.timeout)
            print(f"dry run: plan {digest[:12]} accepted by {', '.join(consortium.names)}; "
                  "nothing was computed")
            return None
        result = query.collect(timeout=args.timeout,
                               progress=args.progress or self.session.progress)
        self.shell.user_ns[args.out] = result
        return result


class _PlanView:
    """A plan with its hash: JSON in text, a collapsible block in HTML."""

    def __init__(self, plan: dict) -> None:
        self.plan = plan
        self.digest = plan_hash(plan)

    def __repr__(self) -> str:
        return f"plan {self.digest}\n{json.dumps(self.plan, indent=2)}"

    def _repr_html_(self) -> str:
        body = html.escape(json.dumps(self.plan, indent=2))
        return (f"<details open><summary>plan <code>{self.digest}</code></summary>"
                f"<pre>{body}</pre></details>")


def _released_html(frame: pd.DataFrame) -> str | None:
    if RELEASE_KEY in frame.attrs or (is_mock(frame) and "plan" in frame.attrs):
        return format_html(frame)
    if is_mock(frame):  # e.g. a mock consortium's status, or a table made from a result
        return mock_banner_html() + (frame._repr_html_() or "")
    return frame._repr_html_()


def _released_text(frame: pd.DataFrame, printer: Any, cycle: bool) -> None:
    if RELEASE_KEY in frame.attrs or (is_mock(frame) and "plan" in frame.attrs):
        printer.text(format_table(frame))
    elif is_mock(frame):
        printer.text(f"{MOCK_CAPTION}\n{frame!r}")
    else:
        printer.text(repr(frame))


def load(shell: Any) -> None:
    """Register the magics, the released-table formatters and the error display."""
    if getattr(shell, "_ppa_session", None) is not None:
        return
    session = Session()
    shell._ppa_session = session
    magics = PPAMagics(shell, session)
    shell.register_magics(magics)
    completion.install(shell, session, magics)
    formatters = shell.display_formatter.formatters
    formatters["text/html"].for_type(pd.DataFrame, _released_html)
    formatters["text/plain"].for_type(pd.DataFrame, _released_text)
    shell.set_custom_exc((PPAError,), _show_error)


def unload(shell: Any) -> None:
    """Stop what the session started and remove the formatters and error display."""
    session = getattr(shell, "_ppa_session", None)
    if session is not None:
        session.stop()
        shell._ppa_session = None
    completion.remove(shell)
    formatters = shell.display_formatter.formatters
    for mime in ("text/html", "text/plain"):
        formatters[mime].pop(pd.DataFrame, None)
    shell.set_custom_exc((), None)

