"""The "coupler" page on the scheduler's Dask dashboard, over HTTP and from the broker, on real clusters."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import cloudpickle
import pytest
from distributed import LocalCluster

import inspection_actors
from coupler.runtime import Coupling, Queue
from coupler.runtime.observe.dashboard import describe_policy, html_table, page_link
from coupler.runtime.version import coupler_version
from inspection_actors import Fitter, Ticker

cloudpickle.register_pickle_by_value(inspection_actors)


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200
        return r.read().decode()


def test_page_link_sits_next_to_the_dashboard_link() -> None:
    assert page_link("http://10.0.0.5:8787/status") == "http://10.0.0.5:8787/coupler"
    assert page_link("https://hub.example.org/user/me/proxy/8787/status") == "https://hub.example.org/user/me/proxy/8787/coupler"


def test_policies_and_tables_as_shown() -> None:
    assert describe_policy({"kind": "reservoir", "capacity": 4096, "seed": 0}) == "reservoir capacity=4096 seed=0"
    assert describe_policy({"kind": "latest"}) == "latest"
    table = html_table([("name", "actor", None), ("rate", "steps/s", ",.1f")], {"name": ["a<b", "c"], "rate": [1234.56, 0.0]})
    body = table[table.index("<tbody>") :]
    assert body == (
        '<tbody><tr><td>a&lt;b</td><td class="num">1,234.6</td></tr>'
        '<tr><td>c</td><td class="num">0.0</td></tr></tbody></table></div>'
    )


def test_page_is_served_and_in_the_navigation(coupling: Coupling) -> None:
    page = get(coupling.page_link)
    assert "Bokeh.embed.embed_items" in page  # a Bokeh server document, in Dask's template
    assert 'href="coupler"' in page
    # The built-in pages, opened after the broker started, link to it as well.
    assert 'href="coupler"' in get(coupling.dashboard_link)


@pytest.fixture
def ticking(coupling: Coupling, unique: str) -> Iterator[tuple[str, str, str]]:
    """A Ticker sending ~50 messages/s to a Fitter that records a loss; yields (channel, producer, consumer)."""
    channel, tick, fit = f"page-{unique}", f"tick-{unique}", f"fit-{unique}"
    coupling.channel(channel, Queue(64))
    consumer = coupling.spawn(Fitter, name=fit, inputs={"inp": channel})
    producer = coupling.spawn(Ticker, period=0.02, name=tick, outputs={"out": channel})
    consumer.start()
    producer.start()
    try:
        yield channel, tick, fit
    finally:
        producer.stop()
        consumer.stop()


def page_contents(dask_scheduler: Any) -> dict[str, Any]:
    """Runs on the scheduler: build the page as a browser session would, refresh it, return its data."""
    from coupler.runtime.observe.dashboard import CouplerPage

    page = CouplerPage(dask_scheduler)
    page.update()
    return {
        "summary": page.summary.text,
        "channels": page.data["channels"],
        "consumers": page.data["consumers"],
        "actors": page.data["actors"],
        "html": page.tables["channels"].text + page.tables["actors"].text,
        "curves": dict(page.curves.data),
    }


def row(data: dict[str, list[Any]], key: str, name: str) -> dict[str, Any]:
    """The row of a table's columns whose ``key`` column is ``name``."""
    i = data[key].index(name)
    return {col: values[i] for col, values in data.items()}


def test_page_shows_live_channels_actors_and_loss(coupling: Coupling, ticking: tuple[str, str, str]) -> None:
    channel, tick, fit = ticking
    deadline = time.monotonic() + 20
    while True:
        page = coupling.client.run_on_scheduler(page_contents)
        try:
            ch = row(page["channels"], "channel", channel)
            if ch["message_rate"] > 0 and any(label == f"{fit} loss" for label in page["curves"]["label"]):
                break
        except ValueError:  # not reported yet
            pass
        assert time.monotonic() < deadline, f"the page did not show {channel} live within 20 s: {page}"
        time.sleep(0.5)
    assert ch["policy"] == "queue maxsize=64"
    assert ch["producers"] == tick and ch["consumers"] == f"{fit}/inp"
    assert ch["sent"] > 0 and ch["received"] > 0 and ch["closed"] == "open"
    assert ch["mb_rate"] == pytest.approx(ch["message_rate"] * 256 * 4 / 1e6, rel=1e-9)
    cons = row(page["consumers"], "consumer", f"{fit}/inp")
    assert cons["channel"] == channel and cons["received"] > 0
    for name, cls in ((tick, "Ticker"), (fit, "Fitter")):
        a = row(page["actors"], "actor", name)
        # "cpu" until some actor of that worker starts JAX, "cpu:0" after (the session cluster is shared).
        assert (a["cls"], a["state"], a["error"]) == (cls, "running", "") and a["device"] in ("cpu", "cpu:0")
        assert a["steps"] > 0 and a["worker"].startswith("tcp://")
    assert row(page["actors"], "actor", fit)["metrics"].startswith("loss=")
    i = page["curves"]["label"].index(f"{fit} loss")
    steps, losses = page["curves"]["xs"][i], page["curves"]["ys"][i]
    # Fitter's loss at step k is 1 / (2 + k): the curve carries exactly these points.
    assert losses == pytest.approx([1.0 / (2.0 + k) for k in steps], rel=1e-12)
    assert f"{len(page['channels']['channel'])} channels" in page["summary"]
    assert f"coupler {coupler_version()}</b>" in page["summary"]  # the page says which coupler it is
    assert f"<td>{channel}</td>" in page["html"] and f"<td>{fit}</td>" in page["html"]


def test_joining_a_running_scheduler_adds_the_page_and_closing_takes_it_away() -> None:
    # A scheduler started without coupler: the page is registered when the broker starts on it.
    with LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster:
        link = page_link(cluster.dashboard_link)
        with pytest.raises(urllib.error.HTTPError):
            get(link)
        with Coupling(cluster.scheduler_address) as cp:
            assert "Bokeh.embed.embed_items" in get(cp.page_link)
            assert cp.page_link.rpartition(":")[2] == link.rpartition(":")[2]  # same port and path (hosts may differ)
        scheduler = cluster.scheduler
        assert "coupler-broker" in scheduler.plugins  # the broker outlives the coupling: it is the scheduler's
    # Closed with the scheduler: the page's application is stopped and unlinked.
    from distributed.dashboard.scheduler import template_variables

    assert "coupler" not in template_variables(scheduler)["pages"]
    assert not any("/coupler" in getattr(a, "app_paths", ()) for a in scheduler.http_application.applications)
