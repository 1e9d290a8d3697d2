"""The demo's report as a table (`summary_table`), markdown (`report.md`) and charts (`cascade.png`,
`cumulative_cost.png`), from a `DemoReport`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

from distiller.demo.report import ROUTES, DemoReport
from distiller.scorers import scorer_lines


def _usd(value: float | None, digits: int = 8) -> str:
    return "—" if value is None else f"${value:.{digits}f}"


def _score(s: dict[str, float] | None) -> str:
    return "—" if s is None else f"{s['mean']:.3f} [{s['ci_low']:.3f}–{s['ci_high']:.3f}] (n={int(s['n'])})"


def _num(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def _parity_note(report: DemoReport) -> str:
    kind = (report.scorer or {}).get("kind", "fields")
    if kind in ("exact", "fields", "tools"):
        measure = "JSON field by field" if kind == "fields" else f"the {kind} scorer"
        majority = ("the field-by-field majority of the teacher's JSON answers in the train part" if kind == "fields"
                    else "the teacher's most common answer in the train part")
    else:
        measure = (f"the {kind} scorer the student was registered with, on the scale the distiller measured: 1 is as "
                   "close as the teacher's own second answer, 0 as close as its answer to another request")
        majority = "the teacher's most common answer in the train part"
    return (f"Parity is agreement with the teacher's answer to the same held-out request ({measure}); the "
            f"majority-answer baseline answers every request with {majority}. *Student alone* scores (and prices) "
            "the student's own answers on the requests routed to it, including those the cascade rejected: what "
            "serving it without a threshold would give.")


def _shadow_line(shadow: dict[str, Any]) -> str:
    live = "—" if shadow["live_parity"] is None else f"{shadow['live_parity']:.3f} [{shadow['ci_low']:.3f}–" \
        f"{shadow['ci_high']:.3f}]"
    return (f"- shadow scoring (cascade.shadow_rate {shadow['rate']}): the teacher was asked again for "
            f"{shadow['shadow_rows']} of the {shadow['student_answers']} answers the student served; "
            f"{shadow['comparisons']} comparisons on the version's scorer, live parity {live} (store rows; /metrics: "
            f"{shadow['metrics_comparisons']} comparisons, parity {_num(shadow['metrics_live_parity'], 3)}); "
            f"unscored: {shadow['unscored'] or 0}; the shadow calls cost {_usd(shadow['cost_usd'], 6)} "
            f"(/metrics {_usd(shadow['metrics_cost_usd'], 6)}), on top of Protégé's cost above")


def summary_rows(report: DemoReport) -> list[tuple[str, str, str, str]]:
    """(metric, teacher only, student alone, Protégé) rows for the final table and report.md. *Student alone* is
    the student answering every request routed to it, its rejected answers included; Protégé is the cascade."""
    c, t, h, lat = report.cost, report.tokens, report.held_out, report.latency_p50_s
    evaluation = report.distill_evaluation or {}
    base = next((b for b in evaluation.get("baselines", []) if str(b.get("name", "")).startswith("base")), None)
    student_eval = evaluation.get("student")
    saving = c.get("saving")
    routed = h["routes"].get("student", 0) + h["routes"].get("fallback", 0)
    rows = [
        ("cost per request", _usd(c["teacher_only_per_request_usd"]), _usd(c.get("student_only_per_request_usd")),
         _usd(c["protege_per_request_usd"]) + ("" if saving is None else f" ({saving:.0%} less)")),
        ("input tokens per request", _num(t["teacher_only_input_per_request"]), _num(t["student_input_per_request"]),
         _num(t["protege_input_per_request"])),
        ("latency p50 (s)", _num(lat["teacher_only"], 2), "",
         " / ".join(f"{r} {_num(lat[r], 2)}" for r in ROUTES if lat.get(r) is not None) or "—"),
        ("parity with the teacher (held-out, 95% CI)", "1 (reference)", _score(report.parity["student_alone"]),
         _score(report.parity["served"])),
        ("majority-answer baseline", "", "", _score(report.parity["majority_answer"])),
        ("student share / fallback rate", "0% / —", "100% / 0%" if routed else "—",
         f"{h['student_share']:.0%} / " + ("—" if h["fallback_rate"] is None else f"{h['fallback_rate']:.0%}")),
    ]
    if report.field_accuracy.get("teacher") is not None:
        rows.append(("fields right (vs the ticket)", _num(report.field_accuracy["teacher"], 3), "",
                     _num(report.field_accuracy["protege"], 3)))
    shadow = report.shadow
    if shadow is not None:
        live = "—" if shadow["live_parity"] is None else (
            f"{shadow['live_parity']:.3f} [{shadow['ci_low']:.3f}–{shadow['ci_high']:.3f}] "
            f"(n={shadow['comparisons']})")
        rows.append(("live parity (shadow scoring of the student's answers)", "", "", live))
    if student_eval is not None:
        s = student_eval["score"]
        rows.append(("distiller test split: student parity", "", f"{s['mean']:.3f} [{s['ci_low']:.3f}–"
                     f"{s['ci_high']:.3f}] (n={s['n']})", ""))
    if base is not None:
        s = base["score"]
        rows.append(("distiller test split: base model parity", "", f"{s['mean']:.3f} (n={s['n']})", ""))
    return rows


def summary_table(report: DemoReport) -> Table:
    table = Table(title=f"Protégé demo — task {report.task}: teacher {report.teacher} → student {report.student} "
                  f"({report.student_status})")
    for column in ("metric", "teacher only", "student alone", "Protégé (cascade)"):
        table.add_column(column)
    for row in summary_rows(report):
        table.add_row(*row)
    return table


def kind_rows(report: DemoReport) -> list[str]:
    """report.md's lines on each ticket kind: where the cascade sent it and what that did to parity."""
    lines = ["| tickets | n | routes | student alone | served (cascade) |", "|---|---|---|---|---|"]
    for kind, k in (report.held_out.get("by_kind") or {}).items():
        routes = ", ".join(f"{route} {count}" for route, count in k["routes"].items())
        lines.append(f"| {kind} | {k['n']} | {routes} | {_num(k['student_alone_parity'], 2)} | "
                     f"{_num(k['served_parity'], 2)} |")
    return lines


def to_markdown(report: DemoReport) -> str:
    s = report.sizes
    lines = [f"# Protégé demo — task `{report.task}`", "",
             f"Teacher `{report.teacher}`; student `{report.student}` — **{report.student_status}** ({report.gate}).",
             f"{s['requests']} tickets: {s['train']} captured for training, {s['held_out']} held out "
             f"(answered by the teacher at rollout 0%, then replayed at rollout "
             f"{100 if report.promoted else 0}%). Prices (USD per million tokens, input/output): teacher "
             f"{report.prices['teacher']['input_usd_per_m']}/{report.prices['teacher']['output_usd_per_m']} "
             f"({report.prices['teacher'].get('source', 'given')}), student "
             f"{report.prices['student']['input_usd_per_m']}/{report.prices['student']['output_usd_per_m']} "
             f"({report.prices['student'].get('source', 'given')}). Token counts are measured; costs are those "
             "tokens at these prices.",
             "", "| metric | teacher only | student alone | Protégé (cascade) |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in summary_rows(report)]
    lines += ["", _parity_note(report), "", "### By kind of ticket", "",
              f"A share of the held-out tickets ({report.settings.get('unusual_fraction', 0):.0%}) is unlike any "
              "training ticket; the cascade should hand those to the teacher.", "", *kind_rows(report), ""]
    if report.rule_checks:
        lines += ["### The system prompt's rules", "", "Share of the held-out answers that follow each rule (for "
                  "information: parity is measured against the teacher, whatever it wrote).", "",
                  "| rule | teacher | Protégé (cascade) |", "|---|---|---|"]
        lines += [f"| {rule} | {_num(v['teacher'], 2)} | {_num(v['protege'], 2)} |"
                  for rule, v in report.rule_checks.items()]
        lines.append("")
    c = report.curation
    if c.get("splits"):
        lines.append(f"Curated from {c.get('input')} captured exchanges: {c['splits']} "
                     f"(dropped: {c.get('dropped') or 0}; prompt-distilled: {c.get('prompt_distilled')}).")
    lines += ["", "## Held-out replay", "",
              f"- routes (response headers): {report.held_out['routes']}; fallback reasons: "
              f"{report.held_out['fallback_reasons'] or '—'}; errors: {report.held_out['errors']}",
              f"- consistency: store {report.consistency['routes_in_store']}, /metrics "
              f"{report.consistency['routes_in_metrics']}; costs in the store match /metrics: "
              f"{report.consistency['cost_store_matches_metrics']}",
              f"- cost: teacher only {_usd(report.cost['teacher_only_usd'], 6)}, Protégé "
              f"{_usd(report.cost['protege_usd'], 6)} (store rows; /metrics says "
              f"{_usd(report.cost['metrics_teacher_only_usd'], 6)} and {_usd(report.cost['metrics_protege_usd'], 6)})"]
    if report.shadow is not None:
        lines.append(_shadow_line(report.shadow))
    if report.calibration:
        c, served = report.calibration, report.parity["served"] or {}
        lines.append(f"- calibration (validation split): {c['method']}, threshold {c['threshold']}, expected student "
                     f"share {c['student_share']:.2f} at parity {c['parity']:.3f} (target {c['target_parity']}); "
                     "measured on the held-out replay, which calibration never saw: student share "
                     f"{report.held_out['student_share']:.2f} at parity {_num(served.get('mean'), 3)}")
    lines += ["", "## Time", "", "| phase | seconds |", "|---|---|"]
    lines += [f"| {k.removesuffix('_s')} | {v} |" for k, v in report.timings_s.items()]
    if report.distill_evaluation:
        lines += ["", "## Distiller evaluation (curated test split)", "", *scorer_lines(report.scorer),
                  "| model | parity | 95% CI | n |", "|---|---|---|---|"]
        for m in (report.distill_evaluation["student"], *report.distill_evaluation["baselines"]):
            sc = m["score"]
            lines.append(f"| {m['name']} | {sc['mean']:.3f} | {sc['ci_low']:.3f}–{sc['ci_high']:.3f} | {sc['n']} |")
    if report.charts:
        lines += ["", "## Charts", ""] + [f"![{Path(c).stem}]({Path(c).name})" for c in report.charts]
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    lines += ["", f"Settings: `{json.dumps(report.settings)}`"]
    return "\n".join(lines) + "\n"


def write_charts(report: DemoReport) -> list[str]:
    """cascade.png (the calibration's deferral curve with cost) and cumulative_cost.png; [] without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        report.notes.append("charts skipped: matplotlib is not installed")
        return []
    out = Path(report.run_dir)
    written = []
    ratio = report.cost.get("student_to_teacher_cost_ratio") or 0.1
    if report._curve:
        shares = [p["student_share"] for p in report._curve]
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot(shares, [p["parity"] for p in report._curve], marker=".",
                label="served parity (validation: calibrated on)")
        if report._held_out_curve:
            ax.plot([p["student_share"] for p in report._held_out_curve],
                    [p["parity"] for p in report._held_out_curve], marker=".", color="tab:purple",
                    label="served parity (held-out replay: not calibrated on)")
        ax.set_xlabel("student share")
        ax.set_ylabel("parity with the teacher")
        ax.set_ylim(0, 1.05)
        cost_ax = ax.twinx()
        cost_ax.plot(shares, [ratio + 1 - s for s in shares], color="tab:orange", linestyle="--",
                     label=f"cost × teacher-only (student = {ratio:.2f}× teacher, from the replay's rows)")
        cost_ax.set_ylabel("cost relative to teacher only")
        cost_ax.set_ylim(0, 1.2)
        if report.calibration:
            ax.scatter([report.calibration["student_share"]], [report.calibration["parity"]], color="tab:red",
                       zorder=5, label="calibrated threshold")
        served = report.parity["served"]
        if served is not None:
            ax.scatter([report.held_out["student_share"]], [served["mean"]], color="tab:green", marker="*", s=150,
                       zorder=5, label="measured on the held-out replay")
        handles = ax.get_legend_handles_labels()[0] + cost_ax.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="lower left", fontsize=8)
        ax.set_title("Cascade: student share vs parity vs cost")
        fig.tight_layout()
        fig.savefig(out / "cascade.png", dpi=110)
        plt.close(fig)
        written.append(str(out / "cascade.png"))
    if report._cumulative.get("teacher_only"):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        xs = range(1, len(report._cumulative["teacher_only"]) + 1)
        ax.plot(xs, report._cumulative["teacher_only"], label="teacher only")
        ax.plot(xs, report._cumulative["protege"], label="Protégé (student, fallback to teacher)")
        ax.set_xlabel("held-out requests")
        ax.set_ylabel("cumulative cost (USD)")
        ax.legend()
        ax.set_title("Cumulative cost over the replay")
        fig.tight_layout()
        fig.savefig(out / "cumulative_cost.png", dpi=110)
        plt.close(fig)
        written.append(str(out / "cumulative_cost.png"))
    return written


def write_report(report: DemoReport, *, charts: bool = True) -> None:
    out = Path(report.run_dir)
    if charts:
        report.charts = write_charts(report)
    (out / "report.md").write_text(to_markdown(report), encoding="utf-8")
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2, default=str), encoding="utf-8")
