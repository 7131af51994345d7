"""The "coupler" page of the scheduler's Dask dashboard: channels, actors, loss curves, live.

Dask's dashboard is a Bokeh server inside the scheduler: ``distributed``
builds one ``BokehTornado`` application from the ``applications`` dict of
:mod:`distributed.dashboard.scheduler` when the scheduler starts, and serves it
through the scheduler's ``RoutingApplication``. That dict is read only then,
and the ``distributed.scheduler.http.routes`` setting too, so neither reaches
a scheduler that is already running -- the usual case for a coupling that
joins a cluster. But the routing application consults its list of
applications on every request, so :func:`install` (called by the broker when
it starts on the scheduler) adds a second ``BokehTornado`` with the one page
``/coupler``, built by distributed's own ``BokehApplication`` with the same
prefix, template and navigation variables as the built-in pages. The page name
joins the navigation list that every dashboard page renders (the scheduler's
memoized ``template_variables``), so pages opened from then on link to it.

The page reads the broker directly (it runs on the scheduler's event loop,
like the broker) and refreshes every ``UPDATE_MS`` milliseconds. Its tables are
HTML in ``Div`` models rather than Bokeh ``DataTable`` widgets: with Bokeh 3.9
a DataTable whose source is replaced by as many rows again keeps showing the
old cells in the browser (the browser test saw it), while a ``Div`` redraws.
"""

from __future__ import annotations

import html
import logging
import time
from collections import deque
from typing import Any

from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, Div
from bokeh.palettes import Category10_10
from bokeh.plotting import figure
from bokeh.server.server import BokehTornado
from tornado.ioloop import IOLoop

from coupler.runtime.control.broker import BROKER_NAME, Broker
from coupler.runtime.control.status import ActorStatus, ChannelStats
from coupler.runtime.version import __version__

logger = logging.getLogger(__name__)

PAGE = "coupler"
ROUTE = f"/{PAGE}"
UPDATE_MS = 500
# Height (pixels) beyond which a table scrolls.
MAX_TABLE_HEIGHT = 400
TABLE_STYLE = (
    "<style>.coupler-table{border-collapse:collapse;width:100%;font-size:13px}"
    ".coupler-table th,.coupler-table td{border-bottom:1px solid #ddd;padding:3px 8px;text-align:left;"
    "white-space:nowrap}.coupler-table td.num{text-align:right;font-variant-numeric:tabular-nums}"
    f".coupler-scroll{{max-height:{MAX_TABLE_HEIGHT}px;overflow:auto}}</style>"
)
# Seconds of message-rate history a page keeps for its plot.
RATE_HISTORY_SECONDS = 300.0


def page_link(dashboard_link: str) -> str:
    """The coupler page's URL next to a dashboard link (``.../status`` -> ``.../coupler``)."""
    base = dashboard_link.rstrip("/").rpartition("/")[0]
    return f"{base}/{PAGE}"


# -- registration on a running scheduler ------------------------------------------------------
def install(scheduler: Any) -> BokehTornado | None:
    """Serve the coupler page on ``scheduler``'s dashboard and link it from its navigation.

    Returns:
        The Bokeh application added (for :func:`uninstall`), or ``None`` when the
        scheduler has no dashboard or already serves the page.
    """
    routing = getattr(scheduler, "http_application", None)
    if routing is None:
        return None
    bokeh_apps = [a for a in routing.applications if isinstance(a, BokehTornado)]
    dask_app = next((a for a in bokeh_apps if "/status" in a.app_paths), None)
    if dask_app is None:
        logger.info("the scheduler serves no dashboard: no coupler page")
        return None
    if any(ROUTE in a.app_paths for a in bokeh_apps):
        return None
    # distributed's dashboard modules load here, not with this module: a driver asking only for page_link needs none.
    from distributed.dashboard.core import BokehApplication
    from distributed.dashboard.scheduler import template_variables

    variables = template_variables(scheduler)  # memoized: the very dict every page renders from
    app = BokehApplication({ROUTE: coupler_doc}, scheduler, prefix=dask_app.prefix, template_variables=variables)
    routing.add_application(app)
    app.initialize(IOLoop.current())
    app.start()
    pages = variables["pages"]
    if PAGE not in pages:
        pages.insert(pages.index("info") if "info" in pages else len(pages), PAGE)
    return app


def uninstall(scheduler: Any, app: BokehTornado) -> None:
    """Stop serving the page that :func:`install` added, and unlink it."""
    routing = scheduler.http_application
    if app in routing.applications:
        routing.applications.remove(app)
        app.stop()
    from distributed.dashboard.scheduler import template_variables

    pages = template_variables(scheduler)["pages"]
    if PAGE in pages:
        pages.remove(PAGE)


# -- the page ------------------------------------------------------------------------------------
def coupler_doc(scheduler: Any, extra: dict[str, Any], doc: Any) -> None:
    """Build one browser session's page (Bokeh calls it per session)."""
    from distributed.dashboard.components.scheduler import BOKEH_THEME, env

    page = CouplerPage(scheduler)
    page.update()
    doc.add_periodic_callback(page.update, UPDATE_MS)
    doc.title = "Dask: coupler"
    doc.add_root(page.root)
    doc.template = env.get_template("simple.html")
    doc.template_variables.update(extra)
    doc.theme = BOKEH_THEME


def describe_policy(policy: dict[str, Any]) -> str:
    """``{"kind": "reservoir", "capacity": 4096}`` -> ``"reservoir capacity=4096"``."""
    rest = " ".join(f"{k}={v}" for k, v in sorted(policy.items()) if k != "kind" and v is not None)
    return f"{policy.get('kind', '?')} {rest}".strip()


Columns = list[tuple[str, str, str | None]]  # (field, title, format spec of a number or None)


def html_table(columns: Columns, data: dict[str, list[Any]]) -> str:
    """An HTML table of ``data`` (field -> column values), numbers formatted, text escaped."""
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title, _ in columns)
    n = len(data[columns[0][0]]) if columns else 0
    body = []
    for i in range(n):
        cells = []
        for f, _, fmt in columns:
            v = data[f][i]
            if fmt is None:
                cells.append(f"<td>{html.escape(str(v))}</td>")
            else:
                cells.append(f'<td class="num">{format(v, fmt)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'{TABLE_STYLE}<div class="coupler-scroll"><table class="coupler-table"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


class CouplerPage:
    """The Bokeh models of one session's page and their refresh from the broker.

    Args:
        scheduler: the scheduler whose broker the page shows.
    """

    CHANNEL_COLUMNS: Columns = [
        ("channel", "channel", None), ("policy", "policy", None), ("producers", "producers", None),
        ("consumers", "consumers", None), ("message_rate", "messages/s", ",.1f"), ("mb_rate", "MB/s", ",.3f"),
        ("sent", "sent", ",d"), ("received", "received", ",d"), ("depth", "depth", ",d"),
        ("dropped", "dropped", ",d"), ("lag_ms", "max lag (ms)", ",.1f"), ("closed", "closed", None),
    ]
    CONSUMER_COLUMNS: Columns = [
        ("channel", "channel", None), ("consumer", "consumer", None), ("worker", "worker", None),
        ("received", "received", ",d"), ("taken", "taken", ",d"), ("depth", "depth", ",d"),
        ("dropped", "dropped", ",d"), ("lag_ms", "lag (ms)", ",.1f"),
    ]
    ACTOR_COLUMNS: Columns = [
        ("actor", "actor", None), ("cls", "class", None), ("state", "state", None), ("worker", "worker", None),
        ("device", "device", None), ("steps", "steps", ",d"), ("step_rate", "steps/s", ",.1f"),
        ("metrics", "metrics", None), ("weights", "weights in use", None), ("waiting", "waits for", None),
        ("error", "last error", None),
    ]

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        # The tables' columns as last shown (field -> values), and the Divs that show them.
        self.data: dict[str, dict[str, list[Any]]] = {}
        self.tables = {key: Div(text="", sizing_mode="stretch_width") for key in ("channels", "consumers", "actors")}
        self.curves = ColumnDataSource({"xs": [], "ys": [], "label": [], "color": []})
        self.rates = ColumnDataSource({"xs": [], "ys": [], "label": [], "color": []})
        self._rate_history: dict[str, deque[tuple[float, float]]] = {}
        self._t0 = time.time()
        self.summary = Div(text="", sizing_mode="stretch_width")

        loss = figure(
            title="Metrics actors record (e.g. learner loss), by step; values > 0 on a log axis",
            y_axis_type="log", height=300, sizing_mode="stretch_width", tools="pan,wheel_zoom,box_zoom,reset",
        )
        loss.xaxis.axis_label = "step"
        loss.multi_line(xs="xs", ys="ys", line_color="color", legend_field="label", source=self.curves, line_width=2)
        rates = figure(
            title="Messages sent per second, by channel", height=300, sizing_mode="stretch_width",
            tools="pan,wheel_zoom,box_zoom,reset",
        )
        rates.xaxis.axis_label = "seconds since this page opened"
        rates.multi_line(xs="xs", ys="ys", line_color="color", legend_field="label", source=self.rates, line_width=2)
        for fig in (loss, rates):
            fig.legend.location = "top_right"
            fig.legend.background_fill_alpha = 0.5

        self.root = column(
            self.summary,
            Div(text="<h3>Channels</h3>"),
            self.tables["channels"],
            Div(text="<h3>Consumers</h3>"),
            self.tables["consumers"],
            Div(text="<h3>Actors</h3>"),
            self.tables["actors"],
            row(loss, rates, sizing_mode="stretch_width"),
            sizing_mode="stretch_width",
        )

    def broker(self) -> Broker | None:
        """The scheduler's broker, if one is installed."""
        broker = self.scheduler.plugins.get(BROKER_NAME)
        return broker if isinstance(broker, Broker) else None

    def update(self) -> None:
        """Refresh every table and plot from the broker."""
        broker = self.broker()
        if broker is None:
            self.summary.text = f"<p><b>coupler {__version__}</b>: no coupling on this scheduler (no coupler broker is installed).</p>"
            return
        channels, actors = broker.channel_stats(), broker.actor_statuses()
        last = broker.last_metrics()
        running = sum(a.state == "running" for a in actors.values())
        self.summary.text = (
            f"<p><b>coupler {__version__}</b>: {len(channels)} channels, {len(actors)} actors ({running} running), "
            f"{sum(c.message_rate for c in channels.values()):,.1f} messages/s, "
            f"{sum(c.byte_rate for c in channels.values()) / 1e6:,.3f} MB/s</p>"
        )
        self.data = {
            "channels": self.channel_rows(channels),
            "consumers": self.consumer_rows(channels),
            "actors": self.actor_rows(actors, last),
        }
        for key, columns in (
            ("channels", self.CHANNEL_COLUMNS), ("consumers", self.CONSUMER_COLUMNS), ("actors", self.ACTOR_COLUMNS)
        ):
            self.tables[key].text = html_table(columns, self.data[key])
        self.curves.data = self.curve_lines(broker.metric_series())
        self.rates.data = self.rate_lines(channels)

    def channel_rows(self, channels: dict[str, ChannelStats]) -> dict[str, list[Any]]:
        """Columns of the channel table."""
        rows = [channels[n] for n in sorted(channels)]
        return {
            "channel": [c.name for c in rows],
            "policy": [describe_policy(c.policy) for c in rows],
            "producers": [", ".join(c.producers) for c in rows],
            "consumers": [", ".join(c.consumers) for c in rows],
            "message_rate": [c.message_rate for c in rows],
            "mb_rate": [c.byte_rate / 1e6 for c in rows],
            "sent": [c.sent for c in rows],
            "received": [c.received for c in rows],
            "depth": [c.depth for c in rows],
            "dropped": [c.dropped for c in rows],
            "lag_ms": [1e3 * max((s.lag for s in c.consumer_stats), default=0.0) for c in rows],
            "closed": ["closed" if c.closed else "open" for c in rows],
        }

    def consumer_rows(self, channels: dict[str, ChannelStats]) -> dict[str, list[Any]]:
        """Columns of the consumer table (one row per consumer of each channel)."""
        pairs = [(n, s) for n in sorted(channels) for s in channels[n].consumer_stats]
        return {
            "channel": [n for n, _ in pairs],
            "consumer": [s.ident for _, s in pairs],
            "worker": [s.worker for _, s in pairs],
            "received": [s.received for _, s in pairs],
            "taken": [s.taken for _, s in pairs],
            "depth": [s.depth for _, s in pairs],
            "dropped": [s.dropped for _, s in pairs],
            "lag_ms": [1e3 * s.lag for _, s in pairs],
        }

    def actor_rows(self, actors: dict[str, ActorStatus], last: dict[str, dict[str, float]]) -> dict[str, list[Any]]:
        """Columns of the actor table."""
        rows = [actors[n] for n in sorted(actors)]
        now = time.time()
        return {
            "actor": [a.name for a in rows],
            "cls": [a.cls for a in rows],
            "state": [a.state for a in rows],
            "worker": [a.worker for a in rows],
            "device": [a.device for a in rows],
            "steps": [a.steps for a in rows],
            "step_rate": [a.step_rate for a in rows],
            "metrics": [" ".join(f"{k}={v:.4g}" for k, v in sorted(last.get(a.name, {}).items())) for a in rows],
            "weights": ["" if a.weights is None else a.weights.describe(now) for a in rows],
            "waiting": [a.explanation for a in rows],
            "error": [a.last_error for a in rows],
        }

    @staticmethod
    def curve_lines(series: dict[str, dict[str, tuple[list[int], list[float]]]]) -> dict[str, list[Any]]:
        """One line per (actor, metric), positive values only (the axis is logarithmic)."""
        out: dict[str, list[Any]] = {"xs": [], "ys": [], "label": [], "color": []}
        for actor in sorted(series):
            for metric, (steps, values) in sorted(series[actor].items()):
                kept = [(s, v) for s, v in zip(steps, values) if v > 0]
                if not kept:
                    continue
                out["xs"].append([s for s, _ in kept])
                out["ys"].append([v for _, v in kept])
                out["label"].append(f"{actor} {metric}")
                out["color"].append(Category10_10[(len(out["label"]) - 1) % 10])
        return out

    def rate_lines(self, channels: dict[str, ChannelStats]) -> dict[str, list[Any]]:
        """One line per channel: its message rate over the time this page has been open."""
        now = time.time() - self._t0
        for name, c in channels.items():
            hist = self._rate_history.setdefault(name, deque())
            hist.append((now, c.message_rate))
            while hist and hist[0][0] < now - RATE_HISTORY_SECONDS:
                hist.popleft()
        names = sorted(self._rate_history)
        return {
            "xs": [[t for t, _ in self._rate_history[n]] for n in names],
            "ys": [[r for _, r in self._rate_history[n]] for n in names],
            "label": names,
            "color": [Category10_10[i % 10] for i in range(len(names))],
        }


__all__ = ["CouplerPage", "html_table", "install", "page_link", "uninstall"]
