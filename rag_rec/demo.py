"""`rag-rec demo`: the whole product on the bundled data and embedded defaults, shown on real shoppers."""

from __future__ import annotations

import time

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from rag_rec.schemas import BundleRequest, BundleResponse
from rag_rec.settings import Settings


def show(console: Console, heading: str, response: BundleResponse) -> None:
    table = Table(title=heading, show_lines=True, title_justify="left")
    table.add_column("bundle", style="bold")
    table.add_column("items")
    table.add_column("why")
    for b in response.bundles:
        items = "\n".join(f"• {i.title[:70]}" + (f" (${i.price:.2f})" if i.price is not None else "") for i in b.items)
        table.add_row(b.title, items, b.reason)
    console.print(table)
    console.print(f"[dim]produced by: {response.produced_by}"
                  + (f" ({response.model})" if response.model else "")
                  + f" · {response.candidates_considered} candidates · {response.latency_ms:.0f} ms"
                  + (f" · notes: {'; '.join(response.notes)}" if response.notes else "") + "[/dim]")


def run_demo(settings: Settings, *, serve: bool = False, use_llm: bool = True, port: int | None = None) -> int:
    from rag_rec.pipeline import BundlePipeline

    console = Console()
    console.print(Panel.fit("rag_rec demo — complementary bundles from the Amazon electronic catalogue "
                            "(Sun et al., SIGIR 2022)", style="bold cyan"))
    pipeline = BundlePipeline.from_settings(settings)
    try:
        ds = pipeline.dataset
        session = next((s for s in ds.sessions.values() if s.user_id and len(s.items) >= 3
                        and all(i in ds.products and not ds.products[i].placeholder for i in s.items)),
                       None)
        requests = []
        if session is None:
            console.print("[yellow]No session of a known shopper with 3+ titled products in this catalogue: "
                          "skipping the returning-shopper example[/yellow]")
        else:
            anchor = session.items[0]
            requests.append((f"Shopper {session.user_id} is looking at: {ds.products[anchor].title[:80]}",
                             BundleRequest(user_id=session.user_id, anchor_items=[anchor], k=2, use_llm=use_llm)))
        requests += [
            ("A need in words: 'I'm starting a podcast on a budget'",
             BundleRequest(need="I'm starting a podcast on a budget", k=2, use_llm=use_llm)),
            ("An unknown shopper with no history (cold start)",
             BundleRequest(user_id="new-visitor", need="gaming setup for a teenager", k=2, use_llm=use_llm)),
        ]
        if use_llm:
            started = time.perf_counter()
            composer = pipeline.composer(True)
            if composer is not pipeline.heuristic:
                console.print(f"[dim]LLM engine ready in {time.perf_counter() - started:.0f} s (once per process; "
                              "the times below are per batch of requests)[/dim]")
        responses = pipeline.recommend_many([r for _, r in requests])
        for (heading, _), response in zip(requests, responses):
            show(console, heading, response)
        truth = [b for b in ds.bundles if session is not None and b.session_id == session.id]
        if truth:
            console.print("[dim]Crowd-labelled bundles in that session: "
                          + "; ".join(f"{b.intent!r}: {len(b.items)} items" for b in truth) + "[/dim]")
        if serve:
            from rag_rec.serve.app import serve_main

            if port is not None:
                settings.serve.port = port
            where = settings.serve.port or "<the free port uvicorn logs>"
            console.print(f"Serving the chat page on http://{settings.serve.host}:{where}/ (Ctrl-C to stop)")
            serve_main(settings, pipeline)
    finally:
        pipeline.close()
    return 0
