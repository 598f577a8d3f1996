//! A rule pack as a Markdown table with citations and confidence marks, for people (and the
//! operator CLI).

use std::fmt::Write;

use jiff::civil::Date;

use crate::{Jurisdiction, RulesError, Unit, pack};

fn unit(u: Unit) -> &'static str {
    match u {
        Unit::Hours => "h",
        Unit::WorkingDays => "working days",
        Unit::BusinessDays => "business days",
        Unit::CalendarDays => "calendar days",
        Unit::CalendarMonths => "months",
    }
}

/// Renders the pack of `jurisdiction` in force on `on`.
pub fn render_pack(jurisdiction: Jurisdiction, on: Date) -> Result<String, RulesError> {
    let p = pack(jurisdiction, on)?;
    let mut out = String::new();
    let to = p.effective_to.map_or("open".to_owned(), |d| d.to_string());
    let _ = writeln!(
        out,
        "# {} — {} ({} to {})\n",
        p.jurisdiction, p.regime, p.effective_from, to
    );
    let _ = writeln!(
        out,
        "Confidence: V law's wording seen · S secondary source · K background, unconfirmed · ? conflicting or not found\n"
    );
    let _ = writeln!(
        out,
        "| request | stage | period | extension | clock starts | citation | conf. |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for r in &p.deadlines {
        let ext = r.extension.as_ref().map_or("—".to_owned(), |e| {
            format!(
                "+{} {}{}",
                e.duration,
                unit(e.unit),
                if e.reasoned_notice {
                    ", reasoned notice"
                } else {
                    ""
                }
            )
        });
        let note = r.note.as_ref().map_or(String::new(), |n| format!(" ({n})"));
        let _ = writeln!(
            out,
            "| {} | {} | {} {} | {} | {} | {}{} | {} |",
            r.request,
            r.stage,
            r.duration,
            unit(r.unit),
            ext,
            r.clock_start,
            r.citation,
            note,
            r.confidence.mark()
        );
    }
    let c = &p.child;
    let _ = writeln!(
        out,
        "\nChildren: {} [{}] — {}",
        c.age.map_or("no statutory age".to_owned(), |a| format!(
            "guardian below {a}"
        )),
        c.confidence.mark(),
        c.citation
    );
    let f = &p.consent_form;
    let _ = writeln!(
        out,
        "Consent form: per purpose {}, pre-ticked forbidden {}, silence is not consent {}, bundling forbidden {} [{}] — {}",
        f.per_purpose,
        f.pre_ticked_forbidden,
        f.silence_not_consent,
        f.bundling_forbidden_from
            .map_or("no".to_owned(), |d| format!("from {d}")),
        f.confidence.mark(),
        f.citation
    );
    for x in &p.cross_border {
        let _ = writeln!(
            out,
            "Cross-border: {} [{}] — {}",
            x.requirement,
            x.confidence.mark(),
            x.citation
        );
    }
    if let Some(n) = &p.days_note {
        let _ = writeln!(out, "Open point: {n}");
    }
    Ok(out)
}
