"""Reading the audit trail: list runs, verify the hash chain, render a run to HTML."""

from __future__ import annotations

import html
from pathlib import Path

from hcbpg import secrets as hsecrets
from hcbpg.engine import jupyter, signing, timeline
from hcbpg.engine import manifest as mf
from hcbpg.engine.terminal import skip_reason
from hcbpg.errors import AuditError, HcbpgError
from hcbpg.params import load_params


def runs_table(base: Path, env: str | None = None) -> list[dict[str, str]]:
    rows = []
    for run in mf.list_runs(base, env):
        try:
            d = run.read()
        except AuditError as exc:
            rows.append({"run": run.run_id, "env": run.env, "status": f"unreadable: {exc}"})
            continue
        done = sum(1 for s in d["steps"] if s["status"] in mf.DONE)  # skipped: ended itself, nothing to do
        current = next((s["key"] for s in d["steps"] if s["status"] not in mf.DONE), "")
        rows.append({
            "run": d["run_id"], "env": d["environment"], "mode": d["mode"], "status": d["status"],
            "steps": f"{done}/{len(d['steps'])}", "at": current, "operator": d["operator"],
            "created": d["created"][:19].replace("T", " "),
            "changes": str(sum(s.get("changes") or 0 for s in d["steps"])),
        })
    return rows


def runs_json(base: Path, env: str | None = None) -> list[dict[str, object]]:
    """The runs as ``hcbpg runs --json`` gives them: counts as numbers, times as ISO 8601."""
    out: list[dict[str, object]] = []
    for run in mf.list_runs(base, env):
        try:
            d = run.read()
        except AuditError as exc:
            out.append({"run": run.run_id, "env": run.env, "status": "unreadable", "problem": str(exc)})
            continue
        steps = d["steps"]
        out.append({
            "run": d["run_id"], "env": d["environment"], "mode": d["mode"], "status": d["status"],
            "dry_run": bool(d.get("dry_run")),
            "steps_done": sum(1 for s in steps if s["status"] in mf.DONE), "steps_total": len(steps),
            "at": next((s["key"] for s in steps if s["status"] not in mf.DONE), None),
            "operator": d["operator"], "created": d["created"], "finished": d.get("finished"),
            "changes": sum(int(s.get("changes") or 0) for s in steps),
            "duration_s": round(sum(float(s.get("duration_s") or 0) for s in steps), 3),
        })
    return out


def trust_of(base: Path, env: str) -> signing.Trust:
    """Where *env*'s trust is kept (its params' ``audit:``; the defaults when the params do not load)."""
    try:
        params = load_params(env, base)
    except HcbpgError:
        params = None
    return signing.trust_for(params, env, base)


def verify(base: Path, env: str | None = None) -> list[str]:
    """Problems in the audit trail of one or every environment (empty: all verified).

    Every environment with runs under ``outputs/`` or a head file beside the params is
    checked, so removing an environment's whole directory is noticed too."""
    outputs = mf.outputs_dir(base)
    if env:
        envs = [env]
    else:
        found = {p.name for p in outputs.iterdir() if p.is_dir() and not p.name.startswith(".")} \
            if outputs.is_dir() else set()
        found |= {p.name.removesuffix(".audit-head") for p in (base / "params").glob("*.audit-head")}
        envs = sorted(found)
    problems: list[str] = []
    for e in envs:
        problems += mf.verify_env(base, e, trust_of(base, e))
    return problems


def verify_run(base: Path, run: mf.Run) -> list[str]:
    """Problems in the record a run continues from: its environment's whole chain (resume, approve)."""
    return mf.verify_env(base, run.env, trust_of(base, run.env))


def _checks_cell(s: dict) -> str:
    """A step's checks for the index: pass/warn/fail counts, and those not passed by name."""
    checks = s.get("checks") or (s.get("summary") or {}).get("checks") or {}
    if not checks:
        return ""
    colors = {"pass": "#137333", "warn": "#b06000", "fail": "#c5221f"}
    counts = " ".join(f"<span class='{k}' style='color:{colors[k]}'>{k} {int(checks.get(k) or 0)}</span>"
                      for k in ("pass", "warn", "fail"))
    named = "".join(f"<li class='{html.escape(c.get('status', ''))}'>{html.escape(c.get('status', ''))}: "
                    f"{html.escape(c.get('name', ''))}{' on ' + html.escape(c['target']) if c.get('target') else ''}</li>"
                    for c in checks.get("not_passed", []))
    return counts + (f"<ul>{named}</ul>" if named else "")


def _status_cell(s: dict) -> str:
    """A step's status for the index; a skipped step's with why it ended itself early."""
    why = skip_reason(s)
    return html.escape(s["status"]) + (f"<br><small>{html.escape(why)}</small>" if why else "")


def _changed_cell(s: dict) -> str:
    changed = (s.get("summary") or {}).get("changed") or []
    if not changed:
        return "" if s.get("changes") is None else "nothing" if not s["changes"] else str(s["changes"])
    return "<ul>" + "".join(f"<li>{html.escape(str(c))}</li>" for c in changed) + "</ul>"


def render_html(run: mf.Run, *, code: bool = True) -> Path:
    """Render every executed notebook of a run with nbconvert, plus an index page (the run's timeline and
    totals, the cutover window, each step's checks and what it changed, a link to each notebook); returns the
    index.  *code* False: the notebooks without their code cells (prose, outputs, tables: for reviewers)."""
    jupyter.skip_iri_parser()
    import nbformat  # noqa: PLC0415 - nbconvert/nbformat are heavy; only the HTML report needs them
    from nbconvert import HTMLExporter  # noqa: PLC0415 - heavy, only the HTML report needs it

    data = run.read()
    out_dir = run.path / "html"
    out_dir.mkdir(exist_ok=True)
    exporter = HTMLExporter(exclude_input=not code, exclude_input_prompt=not code)
    rows = []
    steps_rows = "".join(
        f"<tr><td>{html.escape(s['key'])}</td><td>{html.escape(s.get('title') or '')}</td>"
        f"<td>{_status_cell(s)}</td><td>{_checks_cell(s)}</td><td>{_changed_cell(s)}</td>"
        f"<td>{_notebook_link(run, s)}</td></tr>" for s in data["steps"])
    for s in data["steps"]:
        for att in s["attempts"]:
            nb_path = run.path / att["notebook"]
            link = ""
            if nb_path.is_file():
                body, _ = exporter.from_notebook_node(nbformat.read(nb_path, as_version=4))
                target = out_dir / (Path(att["notebook"]).stem + ".html")
                target.write_text(hsecrets.scrub(body))
                link = f"<a href='{html.escape(target.name)}'>{html.escape(att['notebook'])}</a>"
            rows.append(
                f"<tr><td>{html.escape(s['key'])}</td><td>{att['n']}</td><td>{html.escape(att['status'])}</td>"
                f"<td>{html.escape(att.get('start') or '')}</td><td>{att.get('duration_s') or ''}</td>"
                f"<td>{'' if s.get('changes') is None else s['changes']}</td><td>{link}</td></tr>")
    gates = "".join(
        f"<tr><td>{html.escape(g)}</td><td>{html.escape(v.get('question', ''))}</td>"
        f"<td>{html.escape(str(v.get('approved_by') or 'waiting'))}</td>"
        f"<td>{html.escape(str(v.get('approved_at') or ''))}</td>"
        f"<td>{html.escape(str(v.get('note') or ''))}</td></tr>" for g, v in data.get("gates", {}).items())
    git = data.get("git") or {}
    index = f"""<!doctype html><html><head><meta charset="utf-8"><title>hcbpg run {data['run_id']}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}}
td.num{{text-align:right}}table.totals th,table.downtime th{{background:#f6f6f6}}p.legend{{color:#555;font-size:90%;max-width:60em}}</style></head><body>
<h1>Run {html.escape(data['run_id'])} — {html.escape(data['environment'])} ({html.escape(data['mode'])})</h1>
<p>Status <b>{html.escape(data['status'])}</b>; operator {html.escape(data['operator'])} on {html.escape(data['machine'])};
created {html.escape(data['created'])}; git {html.escape(str(git.get('commit')))}{' (dirty)' if git.get('dirty') else ''};
params sha256 {html.escape(data['params_sha256'])}.</p>
<h2>Timeline</h2>
<p class="legend">Each step's attempts from start to end (green succeeded, grey skipped, red failed, orange
interrupted); ◆ a gate's approval, a pale blue stripe the wait for it; shaded red: the downtime window
(maintenance on → traffic on); ⋯ an idle stretch, not to scale.</p>
{timeline.render_timeline_svg(data)}
{timeline.render_totals_html(data)}
{'<h2>Cutover window</h2>' + timeline.render_downtime_html(data) if data.get('downtime') else ''}
<h2>Steps</h2><table class="steps"><tr><th>step</th><th>title</th><th>status</th><th>checks</th><th>changed</th><th>notebook</th></tr>
{steps_rows}</table>
<h2>Attempts</h2><table><tr><th>step</th><th>attempt</th><th>status</th><th>start</th><th>seconds</th><th>changes</th><th>notebook</th></tr>
{''.join(rows)}</table>
<h2>Gates</h2><table><tr><th>gate</th><th>question</th><th>approved by</th><th>at</th><th>note</th></tr>{gates}</table>
</body></html>"""  # noqa: E501 - the page is one template
    index_path = out_dir / "index.html"
    index_path.write_text(hsecrets.scrub(index))
    return index_path


def _notebook_link(run: mf.Run, s: dict) -> str:
    name = s.get("notebook") or ""
    if not (run.path / name).is_file():
        return html.escape(name)
    return f"<a href='{html.escape(Path(name).stem + '.html')}'>{html.escape(name)}</a>"
