#!/usr/bin/env python3
"""Generates the working-day calendars in crates/rules/data/calendars/ and the Rust list that
embeds them (crates/rules/src/calendar_files.rs) from python-holidays (pinned in
requirements.txt) and the corrections in overlays.toml.

    generate.py           write the files
    generate.py --check   exit 1 when the committed files differ from what would be written

Run it with the project's venv: .venv/bin/pip install -r tools/calendars/requirements.txt
"""

import datetime as dt
import sys
import tomllib
from pathlib import Path

import holidays

PINNED = "0.109"
FIRST_YEAR = 2020
LAST_YEAR = 2040
ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "crates/rules/data/calendars"
RUST_LIST = ROOT / "crates/rules/src/calendar_files.rs"
OVERLAYS = Path(__file__).with_name("overlays.toml")
LIBRARY = f"python-holidays {PINNED} (https://github.com/vacanza/holidays)"

EU_STATES = {
    "AT": "Austria", "BE": "Belgium", "BG": "Bulgaria", "HR": "Croatia", "CY": "Cyprus",
    "CZ": "Czechia", "DK": "Denmark", "EE": "Estonia", "FI": "Finland", "FR": "France",
    "DE": "Germany", "GR": "Greece", "HU": "Hungary", "IE": "Ireland", "IT": "Italy",
    "LV": "Latvia", "LT": "Lithuania", "LU": "Luxembourg", "MT": "Malta", "NL": "Netherlands",
    "PL": "Poland", "PT": "Portugal", "RO": "Romania", "SK": "Slovakia", "SI": "Slovenia",
    "ES": "Spain", "SE": "Sweden",
}
AU_STATES = {
    "ACT": "Australian Capital Territory", "NSW": "New South Wales", "NT": "Northern Territory",
    "QLD": "Queensland", "SA": "South Australia", "TAS": "Tasmania", "VIC": "Victoria",
    "WA": "Western Australia",
}
# Russia's last year fixed by a Government transfer decree (the library carries the decrees).
RU_LAST_DECREE_YEAR = 2027


def years():
    return range(FIRST_YEAR, LAST_YEAR + 1)


def is_weekend(d):
    return d.weekday() >= 5


class Cal:
    """One calendar being built: non-working weekdays and working weekend days, with labels."""

    def __init__(self, cid, name, header, sources, notes=(), assumption=None):
        self.id = cid
        self.name = name
        self.header = header
        self.sources = list(sources)
        self.notes = list(notes)
        self.assumption = assumption
        self.non_working = {}
        self.working_weekend = {}

    def take(self, h, keep_swaps=True):
        for d, label in h.items():
            if FIRST_YEAR <= d.year <= LAST_YEAR and (keep_swaps or "substituted from" not in label):
                self.non_working[d] = label
        if keep_swaps:
            for d in getattr(h, "weekend_workdays", ()):
                if FIRST_YEAR <= d.year <= LAST_YEAR:
                    self.working_weekend[d] = "working day (transfer)"


def library(country, subdiv=None, categories=None):
    kw = {"years": years()}
    if subdiv:
        kw["subdiv"] = subdiv
    if categories:
        kw["categories"] = categories
    return holidays.country_holidays(country, **kw)


def russia():
    c = Cal(
        "RU",
        "Russia, official production calendar",
        "Russia: the official production calendar (five-day week). Non-working weekdays and\n"
        "working weekend days (transfers); every other Saturday and Sunday is a day off.",
        [
            "Labour Code Art. 112",
            "Government transfer decrees (2025: No. 1335 of 04.10.2024; 2026: No. 1466 of 24.09.2025; "
            "2027: No. 1187 of 17.09.2026), as carried by " + LIBRARY,
        ],
        [
            f"after {RU_LAST_DECREE_YEAR} no transfer decree exists yet: the days are Art. 112's, with its "
            "automatic move of a non-January holiday on a weekend to the next working day; the "
            "January transfers the Government decrees each year are missing",
            "regional holidays of federal subjects are not included",
        ],
    )
    h = library("RU")
    c.take(h)
    # Art. 112 pt 2: a holiday (other than 1–8 January) on a weekend moves to the next working
    # day. The library applies it only through the decrees; later years get it here.
    for y in range(RU_LAST_DECREE_YEAR + 1, LAST_YEAR + 1):
        for d, label in sorted(h.items()):
            if d.year != y or d.month == 1 or not is_weekend(d):
                continue
            nxt = d + dt.timedelta(days=1)
            while is_weekend(nxt) or nxt in c.non_working:
                nxt += dt.timedelta(days=1)
            c.non_working[nxt] = f"{label} (moved from {d}, Art. 112 pt 2)"
    return c


def vietnam():
    c = Cal(
        "VN",
        "Vietnam, public holidays (private employers)",
        "Vietnam: public holidays for employers (Labour Code 2019 Art. 112, compensatory days under\n"
        "Art. 111(3)). The government's yearly day swaps bind civil servants only and are left out.",
        [
            "Labour Code 2019 Arts. 111(3), 112",
            "Tết and National Day days as fixed by the Prime Minister each year, as carried by " + LIBRARY,
        ],
        [
            "years without a PM decision carry the library's estimate of the Tết and National Day days",
            "civil-service swap days (and their working Saturdays) are left out: they bind civil servants only",
        ],
    )
    c.take(library("VN"), keep_swaps=False)
    return c


def us_ca():
    c = Cal(
        "US-CA",
        "US federal + California holidays (assumed business-day calendar)",
        'United States, California: "business days" are not defined by the CCPA. This set — US\n'
        "federal legal public holidays (as observed) plus the California state-office closures — is\n"
        "an ASSUMPTION of this product, labelled as such in every result.",
        ["5 U.S.C. 6103(a),(b); EO 11582", "California Gov. Code 6700; CalHR state holidays", LIBRARY],
        assumption="the CCPA does not define business days; US federal legal public holidays "
        "(5 U.S.C. 6103) plus California state-office closures (CalHR) are assumed",
    )
    # The federal legal public holidays as observed; one-off executive closures are not among them.
    c.take(library("US"))
    closures = ("Cesar Chavez Day", "Day After Thanksgiving")
    for d, label in library("US", subdiv="CA").items():
        if label in closures:
            c.non_working[d] = label
    return c


def nth_weekday(y, month, weekday, n):
    """The n-th (1-based; -1 = last) `weekday` (Mon = 0) of a month."""
    if n > 0:
        d = dt.date(y, month, 1)
        d += dt.timedelta(days=(weekday - d.weekday()) % 7)
        return d + dt.timedelta(weeks=n - 1)
    d = dt.date(y + month // 12, month % 12 + 1, 1) - dt.timedelta(days=1)
    return d - dt.timedelta(days=(d.weekday() - weekday) % 7)


def us_ca_judicial():
    c = Cal(
        "US-CA-CCP",
        "California judicial holidays (CCP § 135), for rolling a last day under CCP § 12a",
        "California judicial holidays: Code of Civil Procedure § 135 (the Gov. Code 6700 holidays\n"
        "except Admission Day, Columbus Day, Lunar New Year, Genocide Remembrance Day and Diwali) plus\n"
        "the day after Thanksgiving; CCP § 12a also counts every Saturday. Computed from the statutes.",
        [
            "CCP §§ 12a, 135; Gov. Code §§ 6700, 6701 (a Sunday holiday moves to Monday; 11 Nov on a Saturday to Friday)",
            "shared/CALENDARS.md §3.2",
        ],
        [
            "Juneteenth is included from 2022 (AB 1655); CALENDARS.md marks its place in CCP 135 uncertain",
            "days appointed by the President or the Governor are not known in advance and not included",
        ],
    )
    for y in years():
        fixed = [
            (dt.date(y, 1, 1), "New Year's Day"),
            (dt.date(y, 2, 12), "Lincoln Day"),
            (dt.date(y, 3, 31), "Cesar Chavez Day"),
            (dt.date(y, 7, 4), "Independence Day"),
            (dt.date(y, 11, 11), "Veterans Day"),
            (dt.date(y, 12, 25), "Christmas Day"),
        ]
        for d, label in fixed:
            c.non_working[d] = label
            if d.weekday() == 6:
                c.non_working[d + dt.timedelta(days=1)] = f"{label} (observed)"
            if d.weekday() == 5 and d.month == 11:
                c.non_working[d - dt.timedelta(days=1)] = f"{label} (observed)"
        if y >= 2022:
            c.non_working[dt.date(y, 6, 19)] = "Juneteenth"
        thanksgiving = nth_weekday(y, 11, 3, 4)
        for d, label in [
            (nth_weekday(y, 1, 0, 3), "Martin Luther King Jr. Day"),
            (nth_weekday(y, 2, 0, 3), "Presidents' Day"),
            (nth_weekday(y, 5, 0, -1), "Memorial Day"),
            (nth_weekday(y, 9, 0, 1), "Labor Day"),
            (nth_weekday(y, 9, 4, 4), "Native American Day"),
            (thanksgiving, "Thanksgiving Day"),
            (thanksgiving + dt.timedelta(days=1), "Day after Thanksgiving"),
        ]:
            c.non_working[d] = label
    return c


def australia_national(states):
    """The days that are non-working in every state and territory (observed days included)."""
    c = Cal(
        "AU",
        "Australia, national public holidays",
        "Australia: the days off in every state and territory (observed days included). State holidays\n"
        "differ: a tenant that names its state gets that state's calendar.",
        ["Public holiday Acts of the states and territories, as carried by " + LIBRARY],
        ["national days only: King's Birthday, Labour Day and Anzac substitutes depend on the state"],
    )
    first, rest = states[0], states[1:]
    for d, label in first.non_working.items():
        if all(d in s.non_working for s in rest):
            c.non_working[d] = label
    return c


def australia(state):
    c = Cal(
        f"AU-{state}",
        f"Australia, {AU_STATES[state]} public holidays",
        f"Australia, {AU_STATES[state]}: national holidays plus the state's or territory's own, with\n"
        "its substitute days.",
        [f"Public holiday legislation of {AU_STATES[state]}, as carried by " + LIBRARY],
        ["part-day holidays (e.g. the evenings of 24 and 31 December) are not non-working days"],
    )
    c.take(library("AU", subdiv=state))
    return c


def eu_state(code):
    c = Cal(
        f"EU-{code}",
        f"{EU_STATES[code]}, nationwide public holidays",
        f"{EU_STATES[code]}: nationwide public holidays, the Member State's days for Regulation 1182/71\n"
        "Art. 3(4). Regional holidays are not included.",
        [f"Public holidays of {EU_STATES[code]}, as carried by " + LIBRARY],
        ["regional holidays are not included"],
    )
    c.take(library(code))
    return c


def build():
    states = [australia(s) for s in AU_STATES]
    cals = [russia(), vietnam(), us_ca(), us_ca_judicial(), australia_national(states)] + states
    cals += [eu_state(code) for code in EU_STATES]
    by_id = {c.id: c for c in cals}
    overlays = tomllib.loads(OVERLAYS.read_text())
    for o in overlays.get("drop", []):
        c = by_id[o["calendar"]]
        hit = [d for d, label in c.non_working.items() if label.startswith(o["name"])]
        if not hit:
            sys.exit(f"overlay drop {o['calendar']} {o['name']!r} matches nothing")
        for d in hit:
            del c.non_working[d]
        c.notes.append(f"not a day off: {o['name']} — {o['reason']}")
        c.sources.append(f"overlay: {o['source']}")
    for o in overlays.get("remove", []):
        c = by_id[o["calendar"]]
        d = dt.date.fromisoformat(o["date"])
        if c.non_working.pop(d, None) is None and c.working_weekend.pop(d, None) is None:
            sys.exit(f"overlay remove {o['calendar']} {d} matches nothing")
        c.sources.append(f"overlay: {o['source']}")
    for o in overlays.get("add", []):
        c = by_id[o["calendar"]]
        d = dt.date.fromisoformat(o["date"])
        target = c.working_weekend if o["kind"] == "working_weekend" else c.non_working
        target[d] = o["label"]
        c.sources.append(f"overlay: {o['source']}")
    return cals


def toml_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(c):
    out = ["# GENERATED by tools/calendars/generate.py — edit tools/calendars/overlays.toml, not this file."]
    out += ["# " + line for line in c.header.split("\n")]
    out += [
        f"id = {toml_str(c.id)}",
        f"name = {toml_str(c.name)}",
        f"first_year = {FIRST_YEAR}",
        f"last_year = {LAST_YEAR}",
    ]
    if c.assumption:
        out.append(f"assumption = {toml_str(c.assumption)}")
    out.append("sources = [")
    out += [f"  {toml_str(s)}," for s in dict.fromkeys(c.sources)]
    out.append("]")
    # Weekend holidays change nothing for a five-day week: only weekdays are listed.
    out.append("non_working = [")
    out += [
        f'  "{d}",  # {d:%a} {label}'
        for d, label in sorted(c.non_working.items())
        if not is_weekend(d)
    ]
    out.append("]")
    out.append("working_weekend = [")
    out += [f'  "{d}",  # {d:%a} {label}' for d, label in sorted(c.working_weekend.items())]
    out.append("]")
    out.append("notes = [")
    out += [f"  {toml_str(n)}," for n in c.notes]
    out.append("]")
    return "\n".join(out) + "\n"


def file_name(c):
    return c.id.lower() + ".toml"


def rust_list(cals):
    out = [
        "//! GENERATED by tools/calendars/generate.py: the shipped calendar files, embedded.",
        "",
        "#[rustfmt::skip]",
        "pub(crate) const CALENDAR_FILES: &[(&str, &str)] = &[",
    ]
    for c in cals:
        name = file_name(c)
        out.append(f'    ("{c.id}", include_str!("../data/calendars/{name}")),')
    out.append("];")
    return "\n".join(out) + "\n"


def main():
    if holidays.__version__ != PINNED:
        sys.exit(f"python-holidays {holidays.__version__} is installed; the data is made with {PINNED} "
                 "(pip install -r tools/calendars/requirements.txt)")
    check = "--check" in sys.argv[1:]
    cals = build()
    wanted = {DATA / file_name(c): render(c) for c in cals}
    wanted[RUST_LIST] = rust_list(cals)
    stale = [p for p in DATA.glob("*.toml") if p not in wanted]
    differ = [p for p, text in wanted.items() if not p.exists() or p.read_text() != text]
    if check:
        for p in differ:
            print(f"differs from the generator's output: {p.relative_to(ROOT)}")
        for p in stale:
            print(f"not made by the generator: {p.relative_to(ROOT)}")
        if differ or stale:
            sys.exit("calendar data is not what tools/calendars/generate.py makes: run it and commit")
        print(f"calendar data matches the generator ({len(cals)} calendars, {FIRST_YEAR}–{LAST_YEAR})")
        return
    DATA.mkdir(parents=True, exist_ok=True)
    for p in stale:
        p.unlink()
    for p, text in wanted.items():
        p.write_text(text)
    print(f"wrote {len(cals)} calendars ({FIRST_YEAR}–{LAST_YEAR}) and {RUST_LIST.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
