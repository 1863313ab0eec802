"""`diagnose --html FILE`, `replay --html FILE` and the agent's live page: one
self-contained HTML file with the verdict, the label timeline, charts of the key
series per resource, the key numbers, the evidence and the advice.

Everything is inline (CSS, SVG): opened from a disk with no network it draws
the same. The text parts are the terminal report's own (ai_bottleneck.report,
ai_bottleneck.report_tables), so the page and the terminal cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

from ai_bottleneck.capacity import LINK_SPEED
from ai_bottleneck.figures import run_figures
from ai_bottleneck.path_use import capacity_text, window_uses
from ai_bottleneck.pipeline import WindowResult
from ai_bottleneck.probes.vocabulary import HttpPhase
from ai_bottleneck.report import ReportOptions, verdict_lines, warning_lines, why_lines
from ai_bottleneck.report_tables import key_numbers
from ai_bottleneck.svgchart import LABEL_FILL, Series, label_band, line_chart, stacked_bars
from ai_bottleneck.termstyle import Style
from ai_bottleneck.timeline import runs
from ai_bottleneck.units import bits, clock, pct, secs
from ai_bottleneck.verdict import Verdict

#: Text is laid out by the browser: render the shared text parts unwrapped.
_WIDE = ReportOptions(width=10_000)
_PLAIN = Style(False)
#: Up to this many GPUs get a chart each; more share one chart for busy, one for memory.
GPUS_CHARTED_APART = 2
#: HTTP targets charted (the busiest first).
TARGETS_CHARTED = 3

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#fafafa;color:#222}
main{max-width:800px;margin:0 auto;padding:16px}
h1{font-size:16px;font-weight:600;margin:0 0 8px}
h2{font-size:15px;margin:22px 0 6px;border-bottom:1px solid #ddd}
.verdict{font-size:26px;font-weight:700;padding:6px 12px;border-radius:6px;color:#fff;
display:inline-block}
pre{font:12px/1.35 ui-monospace,monospace;background:#fff;border:1px solid #e3e3e3;
padding:8px;overflow-x:auto}
svg{width:100%;height:auto;background:#fff;margin:4px 0}
svg .t{font:600 12px sans-serif}svg .yl{font:10px sans-serif;text-anchor:end}
svg .xl{font:10px sans-serif}svg .lg{font:10px sans-serif}svg .ml{font:10px sans-serif;fill:#555}
svg .plot{fill:none;stroke:#ccc}svg .grid{stroke:#eee}svg .mark{stroke:#555;stroke-dasharray:4 3}
ul{padding-left:20px}li{margin:2px 0}.muted{color:#666}
"""


def _mid(r: WindowResult) -> float:
    return (r.start + r.end) / 2


def _charts(results: Sequence[WindowResult]) -> list[str]:
    if not results:
        return []
    t0, t1 = results[0].start, results[-1].end
    out: list[str] = []
    gpu_ids = list(dict.fromkeys(g.id for r in results if r.readings for g in r.readings.gpus))
    busy: dict[str, list[tuple[float, float | None]]] = {gid: [] for gid in gpu_ids}
    memory: dict[str, list[tuple[float, float | None]]] = {gid: [] for gid in gpu_ids}
    for r in results:
        seen = {g.id: g for g in r.readings.gpus} if r.readings else {}
        for gid in gpu_ids:
            g = seen.get(gid)
            busy[gid].append((_mid(r), g.busy if g else None))
            memory[gid].append((_mid(r), g.memory_used_ratio if g else None))
    if len(gpu_ids) <= GPUS_CHARTED_APART:
        out += [line_chart(f"GPU {gid}: busy and memory used", [
            Series("busy", busy[gid]), Series("memory used", memory[gid])], t0, t1,
            y_fmt=pct, y_max=1.0) for gid in gpu_ids]
    else:  # many GPUs: one line each, in one chart for busy and one for memory
        out.append(line_chart("GPU busy, per GPU", [Series(f"GPU {gid}", busy[gid])
                                                    for gid in gpu_ids], t0, t1,
                              y_fmt=pct, y_max=1.0))
        out.append(line_chart("GPU memory used, per GPU", [Series(f"GPU {gid}", memory[gid])
                                                           for gid in gpu_ids], t0, t1,
                              y_fmt=pct, y_max=1.0))
    host = [r.readings.host if r.readings else None for r in results]
    if any(h is not None for h in host):
        def pts(attr: str) -> list[tuple[float, float | None]]:
            return [(_mid(r), getattr(h, attr) if h is not None else None)
                    for r, h in zip(results, host, strict=True)]
        out.append(line_chart("CPU and pressure", [
            Series("CPU", pts("cpu")), Series("busiest core", pts("busiest_core"), dashed=True),
            Series("CPU pressure", pts("cpu_pressure")),
            Series("IO pressure", pts("io_pressure"))], t0, t1, y_fmt=pct, y_max=1.0))
    nic_names = list(dict.fromkeys(n.name for r in results if r.readings
                                   for n in r.readings.nics if not n.loopback))
    out += [_nic_chart(name, results, t0, t1) for name in nic_names]
    targets = [t.target for t in sorted(run_figures(results).targets, key=lambda t: -t.calls)]
    for target in targets[:TARGETS_CHARTED]:
        names = [p.value for p in HttpPhase]
        bars = []
        for r in results:
            h = next((h for h in r.readings.http if h.target == target), None) \
                if r.readings else None
            if h is not None and h.phases:
                bars.append((r.start, r.end,
                             [h.phases.get(p.value_name, 0.0) for p in HttpPhase]))
            elif h is not None and h.total is not None:
                # No phases read: the whole call counts as the server's.
                bars.append((r.start, r.end, [h.total.mean if p is HttpPhase.SERVER else 0.0
                                              for p in HttpPhase]))
        if bars:
            used = [i for i in range(len(names)) if any(b[2][i] > 0 for b in bars)]
            out.append(stacked_bars(f"{target}: mean request time by phase",
                                    [(s, e, [v[i] for i in used]) for s, e, v in bars],
                                    [names[i] for i in used], t0, t1, y_fmt=secs))
    return out


def _nic_chart(name: str, results: Sequence[WindowResult], t0: float, t1: float) -> str:
    """A NIC's rx and tx, with the capacities its use was judged against (a declared,
    shaped, plateau or measured path: ai_bottleneck.path_use; the link speed) drawn as
    lines where the traffic reaches a quarter of them; the link speed, else, named in
    the title."""
    rx, tx, link = [], [], None
    paths: dict[tuple[str, str], list[float]] = {}
    for r in results:
        n = next((n for n in r.readings.nics if n.name == name), None) if r.readings else None
        rx.append((_mid(r), n.rx_bits_per_second if n else None))
        tx.append((_mid(r), n.tx_bits_per_second if n else None))
        link = (n.link_bits_per_second if n and n.link_bits_per_second else link)
        for u in window_uses(n, r.saturations).values() if n else ():
            if u.basis != LINK_SPEED and u.capacity_bits_per_second:
                paths.setdefault((u.direction, u.basis), []).append(u.capacity_bits_per_second)
    peak = max((v for _, v in (*rx, *tx) if v is not None), default=0.0)
    marks = [(max(caps), f"{direction} {capacity_text(caps, basis)}")
             for (direction, basis), caps in paths.items() if peak >= max(caps) / 4]
    against = ["its path"] if marks else []
    if link and peak >= link / 4:
        marks.append((link, f"link {bits(link)}"))
        against.append("its link speed")
        note = ""
    else:  # drawn to scale the link would flatten the traffic into the axis
        use = f", peak {pct(peak / link, 1)} of it" if link else ""
        note = f" (link {bits(link) if link else 'speed unknown'}{use})"
    title = f"NIC {name}: traffic" + (f" against {' and '.join(against)}" if against else "")
    return line_chart(title + note, [Series("rx", rx), Series("tx", tx)], t0, t1,
                      y_fmt=bits, marks=marks)


def _list(items: Sequence[str]) -> str:
    return "<ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>"


def _now(current: WindowResult) -> str:
    fill = LABEL_FILL.get(current.label, "#7f7f7f")
    return (f'<p id="now">now (window {clock(current.start)}-{clock(current.end)}): '
            f'<span class="verdict" style="background:{fill};font-size:18px">'
            f"{escape(current.label)}</span> confidence {current.confidence:.2f}</p>")


def report_main(results: Sequence[WindowResult], verdict: Verdict, *, title: str,
                not_measured: Mapping[str, str], notes: Sequence[str] = (),
                current: WindowResult | None = None) -> str:
    """The page's content (inside <main>): what the live page swaps in place.
    ``current``: the latest window, shown above the verdict over all of them."""
    fill = LABEL_FILL.get(verdict.label, "#7f7f7f")
    head = verdict_lines(results, verdict, _WIDE, _PLAIN)
    parts = [f"<h1>{escape(title)}</h1>", _now(current) if current is not None else "",
             f'<div class="verdict" style="background:{fill}" id="verdict">'
             f"{escape(verdict.label)}</div> <span>confidence {verdict.confidence:.2f}</span>",
             _list([line.strip() for line in head[1:]])]
    if results:
        t0, t1 = results[0].start, results[-1].end
        spans = [(r.start, r.end, r.label) for r in runs(results)]
        parts += ["<h2>Label timeline</h2>", label_band(spans, t0, t1)]
        parts += ["<h2>Charts</h2>", *_charts(results)]
    numbers = key_numbers(run_figures(results), _WIDE.width, _PLAIN)
    if numbers:
        parts += [f"<h2>Key numbers</h2><p class=muted>over all {len(results)} windows; a/b = "
                  "mean of the window values / the highest window</p>",
                  "<pre>" + escape("\n".join(numbers)) + "</pre>"]
    why = why_lines(verdict, _WIDE, _PLAIN, not_measured)
    if why:
        parts += [f"<h2>Evidence</h2><p class=muted>{escape(why[0][len('WHY  '):])}</p>",
                  _list([line.strip()[2:] for line in why[1:]])]
    if verdict.advice:
        parts += ["<h2>Advice</h2>", _list(list(verdict.advice))]
    warnings = warning_lines(results, not_measured, _WIDE, _PLAIN)
    if warnings:
        parts += ["<h2>Warnings</h2>", _list([w.strip()[2:] for w in warnings[1:]])]
    if not_measured:
        parts += ["<h2>Not measured</h2>",
                  _list([f"{k}: {v}" for k, v in sorted(not_measured.items())])]
    if notes:
        parts += [f"<p class=muted>{escape(n)}</p>" for n in notes]
    return "\n".join(parts)


def render_html(results: Sequence[WindowResult], verdict: Verdict, *, title: str,
                not_measured: Mapping[str, str], notes: Sequence[str] = (),
                refresh_seconds: float | None = None,
                current: WindowResult | None = None) -> str:
    """The whole page. ``refresh_seconds``: the live page fetches its content again
    this often and swaps it in place (same origin, same credentials); a file has none."""
    script = ""
    if refresh_seconds is not None:
        ms = int(refresh_seconds * 1000)
        # location.origin, not a relative URL: a page opened as http://user:pw@host/
        # would hand fetch() a URL with credentials, which it refuses; the browser
        # sends the cached basic-auth credentials to the same origin by itself.
        script = ("<script>\nlet refreshed = 0;\nsetInterval(async () => {\n"
                  "  const main = document.getElementById('report');\n"
                  "  try {\n"
                  "    const url = location.origin + location.pathname + '?part=main';\n"
                  "    const r = await fetch(url, {cache: 'no-store'});\n"
                  "    if (!r.ok) { main.dataset.stale = r.status; return; }\n"
                  "    main.innerHTML = await r.text();\n"
                  "    main.dataset.refreshed = ++refreshed;\n"
                  "    delete main.dataset.stale;\n"
                  "  } catch (e) { main.dataset.stale = 'unreachable'; }"
                  "  // the agent restarts: keep the last page\n"
                  f"}}, {ms});\n</script>")
    body = report_main(results, verdict, title=title, not_measured=not_measured, notes=notes,
                       current=current)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{CSS}</style></head>\n"
            f"<body><main id=\"report\">\n{body}\n</main>{script}</body></html>\n")
