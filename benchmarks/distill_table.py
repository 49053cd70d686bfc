"""Issue 26's fidelity targets for students, read from one `mdiff-evaluate` report whose first
set is the teacher's: every figure's d (and spread ratio) per set, and for each other set the
targets: figures as real at most one fewer than the teacher's, every phase's spread ratio of
φ and S_V no farther from 1 than the teacher's by more than 0.15, and percolating fraction and D_eff/D effect sizes
no worse than the teacher's by more than 0.2.

    python benchmarks/distill_table.py REPORT.json > TABLE.md
"""
import json
import sys


def name(path):
    return path.split("/")[-2] if path.endswith("/samples") else path


def main(path):
    report = json.load(open(path))
    sets = [s["name"] for s in report["sets"]]
    teacher = sets[0]
    rows = {}
    for v in report["verdicts"]:
        rows.setdefault((v["phase"], v["figure"]), {})[v["set"]] = v
    print(f"| phase | figure | {' | '.join(name(s) for s in sets)} |")
    print("|---|---|" + "---|" * len(sets))
    print("| | **as real** | " + " | ".join(f"**{s['as_real']} of {s['figures']}**"
                                           for s in report["sets"]) + " |")
    missed = {s: [] for s in sets[1:]}
    for (phase, figure), got in rows.items():
        cells = []
        for s in sets:
            v, t = got[s], got[teacher]
            mark = " ✓" if v["verdict"] == "as real" else ""
            if figure == "s2":
                cells.append(f"NRMSE {v['nrmse']:.3f}{mark}")
                continue
            if v["d"] is None:      # a figure constant in every cube: no effect size
                cells.append(f"—{mark}")
                continue
            cells.append(f"{v['d']:.2f} ({v['spread_ratio']:.2f}×){mark}")
            if s == teacher or t["d"] is None:
                continue
            if figure in ("volume_fraction", "specific_surface_area") \
                    and abs(v["spread_ratio"] - 1) > abs(t["spread_ratio"] - 1) + 0.15:
                missed[s].append(f"{phase} {figure} spread {v['spread_ratio']:.2f} against "
                                 f"{t['spread_ratio']:.2f}")
            if figure in ("percolating_fraction", "effective_diffusivity") \
                    and v["d"] > t["d"] + 0.2:
                missed[s].append(f"{phase} {figure} d {v['d']:.2f} against {t['d']:.2f}")
        print(f"| {phase} | {figure} | {' | '.join(cells)} |")
    print()
    counts = {s["name"]: s["as_real"] for s in report["sets"]}
    for s, why in missed.items():
        if counts[s] < counts[teacher] - 1:
            why.insert(0, f"{counts[s]} as real against the teacher's {counts[teacher]}")
        print(f"- {name(s)}: " + ("every target met" if not why else "missed: " + "; ".join(why)))


if __name__ == "__main__":
    main(sys.argv[1])
