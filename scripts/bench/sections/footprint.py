"""The footprint table: idle and peak RSS of the services (from the ingest
and end-to-end sections) and the sleeping lanes' line. Not a section of its
own: derived from the two."""

from . import sleeping_lanes


def derive(ingest_footprint, end_to_end_rows):
    return {
        "ingest_idle_rss_mb": ingest_footprint["ingest_idle_rss_mb"],
        "processor_idle_rss_mb": ingest_footprint["processor_idle_rss_mb"],
        "ingest_peak_rss_mb": max([ingest_footprint["ingest_peak_rss_mb"]]
                                  + [r["ingest_peak_rss_mb"] for r in end_to_end_rows]),
        "processor_peak_rss_mb": max(r["processor_peak_rss_mb"] for r in end_to_end_rows),
    }


def render(footprint, sleeping):
    lines = ["Footprint"]
    f = footprint
    if f:
        lines.append(f"  idle RSS: ingest {f['ingest_idle_rss_mb']:.1f} MB, processor {f['processor_idle_rss_mb']:.1f} MB")
        lines.append(f"  peak RSS: ingest {f['ingest_peak_rss_mb']:.1f} MB, processor {f['processor_peak_rss_mb']:.1f} MB")
    if sleeping:
        lines += sleeping_lanes.render(sleeping)
    lines.append("")
    return lines
